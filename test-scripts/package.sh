#!/usr/bin/env bash
# Builds the test-signed driver package on Linux: target/package/ (or $CARGO_TARGET_DIR/package/) with
#   kepoch.sys        the driver, Authenticode SHA-256 signed with a throw-away test certificate
#   kepochctl.exe     the user-mode tool, signed the same way
#   kepoch.inf        the stamped INF (UTF-16LE), checked against the primitive-driver rules
#   kepoch-test.cer   the test certificate (DER) the guest imports into Root and TrustedPublisher
#   scripts/          the guest scripts (KepochGuest.psm1, Invoke-KepochAB.ps1)
#   SHA256SUMS        digests of the above
# The private key lives only in a mktemp directory that is deleted on exit: each run makes a new
# certificate, so a guest trusts exactly the package it was given. No kepoch.cat: catalogs need the
# Windows tools (Inf2Cat), see driver/README.md (the guest scripts make one when the WDK is there).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

usage() {
    cat <<EOF
Usage: $(basename "$0") [--out DIR]

Builds, signs and verifies the driver package (default DIR: \${CARGO_TARGET_DIR:-target}/package).
Needs: the Rust targets x86_64-pc-windows-msvc and x86_64-pc-windows-gnu, gcc-mingw-w64-x86-64,
openssl, osslsigncode (test-scripts/setup.sh installs them).
EOF
}

target_dir=${CARGO_TARGET_DIR:-$root/target}
out=$target_dir/package
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "package: unknown argument: $1" >&2; exit 2 ;;
    esac
done
for tool in cargo openssl osslsigncode x86_64-w64-mingw32-gcc; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "package: '$tool' is not installed (run test-scripts/setup.sh)" >&2
        exit 1
    }
done

echo "== build kepoch.sys and kepochctl.exe (release)"
cargo build --release --target x86_64-pc-windows-msvc -p kepoch-driver
cargo build --release --target x86_64-pc-windows-gnu -p kepochctl
echo "== stamp and check the INF (primitive-driver rules)"
cargo test -q --release -p kepoch-driver --test inf

keys=$(mktemp -d -t kepoch-signing.XXXXXX)
trap 'rm -rf "$keys"' EXIT
rm -rf "$out"
mkdir -p "$out/scripts"

echo "== throw-away test certificate and signatures"
bash test-scripts/sign-pe.sh new-cert "$keys"
bash test-scripts/sign-pe.sh sign "$keys" "$target_dir/x86_64-pc-windows-msvc/release/kepoch.sys" "$out/kepoch.sys"
bash test-scripts/sign-pe.sh sign "$keys" "$target_dir/x86_64-pc-windows-gnu/release/kepochctl.exe" "$out/kepochctl.exe"
cp "$keys/kepoch-test.cer" "$out/kepoch-test.cer"
cp "$target_dir/kepoch-package/kepoch.inf" "$out/kepoch.inf"
cp test-scripts/guest/*.psm1 test-scripts/guest/*.ps1 "$out/scripts/"

# Re-verify what is in the package against the certificate shipped with it (DER -> PEM).
openssl x509 -inform DER -in "$out/kepoch-test.cer" -out "$keys/shipped.pem"
for image in kepoch.sys kepochctl.exe; do
    bash test-scripts/sign-pe.sh verify "$keys/shipped.pem" "$out/$image"
done
sums=$(cd "$out" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum)
printf '%s\n' "$sums" >"$out/SHA256SUMS"

echo "== package: $out"
(cd "$out" && find . -type f -printf '   %P (%s bytes)\n' | LC_ALL=C sort)
echo "   certificate: $(openssl x509 -inform DER -in "$out/kepoch-test.cer" -noout -subject -fingerprint -sha1 | tr '\n' ' ')"
echo "   signatures verified with osslsigncode against kepoch-test.cer; no private key kept"
