#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 with Rust (rustup), skipping what is already there:
# the linter for every .sh (shellcheck), wine64 (loads kepoch.sys in the smoke test), jq (reads its JSON),
# mingw (links kepochctl.exe), liburcu-dev (the liburcu peer of the benchmark report), the Windows targets, rustfmt/clippy, and nightly with Miri (optional:
# without it the Miri step prints SKIPPED and says why). test-all.sh runs it first.
set -euo pipefail

missing=()
for package in shellcheck wine64 jq gcc-mingw-w64-x86-64 liburcu-dev; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "setup: installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

installed_targets=$(rustup target list --installed)
for target in x86_64-pc-windows-msvc x86_64-pc-windows-gnu; do
    grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done
installed_components=$(rustup component list --installed)
for component in rustfmt clippy; do
    grep -q "^$component" <<<"$installed_components" || rustup component add "$component"
done
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal --component miri,rust-src >/dev/null 2>&1 ||
        echo "setup: SKIPPED: Miri: could not install the nightly toolchain with miri"
fi
