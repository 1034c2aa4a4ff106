#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 with Rust (rustup), skipping what is already there:
# the linter for every .sh (shellcheck), wine64 (loads kepoch.sys in the smoke test), jq (reads its JSON),
# mingw-w64 (links kepochctl.exe; its DDK headers, import libraries and C/C++ compilers check the
# driver's ABI), openssl and osslsigncode (the test-signed package), qemu-system-x86 and socat (the QEMU
# hot-add check; QEMU without its recommends), liburcu-dev (the liburcu peer of the benchmark report), clang
# and llvm (the C API's headers compile under gcc, clang and mingw; llvm-readobj checks the C sample driver), the
# Windows targets, rustfmt/clippy, and nightly with Miri (optional: without it the Miri step prints
# SKIPPED and says why). test-all.sh runs it first.
set -euo pipefail

missing=()
for package in shellcheck wine64 jq gcc-mingw-w64-x86-64 g++-mingw-w64-x86-64 mingw-w64-x86-64-dev openssl osslsigncode qemu-system-x86 socat liburcu-dev clang llvm; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "setup: installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    # qemu-system-x86 without its recommends (GUI, OVMF, block drivers): the check needs none of them.
    plain=() lean=()
    for package in "${missing[@]}"; do
        case $package in
            qemu-system-x86) lean+=("$package") ;;
            *) plain+=("$package") ;;
        esac
    done
    if [ "${#plain[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${plain[@]}" >/dev/null
    fi
    if [ "${#lean[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
    fi
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
