#!/usr/bin/env bash
# Test signing of PE images on Linux: a throw-away code-signing certificate (openssl) and an Authenticode
# SHA-256 signature (osslsigncode), verified against that certificate. Used by package.sh and by the PE
# check (driver/tests/pe_check.rs). The private key never leaves the directory given to new-cert, which
# the caller creates with mktemp and deletes; nothing here is ever committed.
set -euo pipefail

usage() {
    cat <<EOF
Usage: $(basename "$0") new-cert DIR
       $(basename "$0") sign DIR IN OUT
       $(basename "$0") verify CERT.pem FILE

  new-cert DIR       Writes a throw-away self-signed code-signing key and certificate to DIR:
                     key.pem (mode 0600), cert.pem, and kepoch-test.cer (DER, for the guest's
                     certificate stores). RSA 3072, SHA-256, EKU codeSigning, valid 365 days.
  sign DIR IN OUT    Signs the PE image IN with DIR's key (Authenticode, SHA-256 file digest, the
                     PE checksum recomputed by osslsigncode) into OUT, then verifies OUT.
  verify CERT FILE   osslsigncode verify of FILE with CERT as the only trusted root.

Needs: openssl, osslsigncode (Debian: apt-get install -y openssl osslsigncode).
EOF
}

die() { echo "sign-pe: error: $*" >&2; exit 1; }

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed (apt-get install -y $tool)"
    done
}

verify() {
    local cert=$1 file=$2 out
    [[ -f "$cert" ]] || die "certificate not found: $cert"
    [[ -f "$file" ]] || die "file not found: $file"
    if ! out=$(osslsigncode verify -CAfile "$cert" -in "$file" 2>&1); then
        printf '%s\n' "$out" >&2
        die "signature of $file does not verify against $cert"
    fi
    grep -q '^Signature verification: ok' <<<"$out" || {
        printf '%s\n' "$out" >&2
        die "osslsigncode did not report 'Signature verification: ok' for $file"
    }
}

case "${1:-}" in
    new-cert)
        [[ $# -eq 2 ]] || { usage >&2; exit 2; }
        need openssl
        dir=$2
        [[ -d "$dir" ]] || die "not a directory: $dir"
        (
            umask 077
            openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days 365 \
                -keyout "$dir/key.pem" -out "$dir/cert.pem" \
                -subj "/CN=kepoch test signing (throw-away $(date -u +%Y-%m-%d))" \
                -addext "basicConstraints=critical,CA:FALSE" \
                -addext "keyUsage=critical,digitalSignature" \
                -addext "extendedKeyUsage=codeSigning" >/dev/null 2>"$dir/openssl.log" ||
                { cat "$dir/openssl.log" >&2; die "openssl could not create the certificate"; }
        )
        openssl x509 -in "$dir/cert.pem" -outform DER -out "$dir/kepoch-test.cer"
        chmod 0644 "$dir/cert.pem" "$dir/kepoch-test.cer"
        ;;
    sign)
        [[ $# -eq 4 ]] || { usage >&2; exit 2; }
        need osslsigncode
        dir=$2 in=$3 out=$4
        [[ -f "$dir/key.pem" && -f "$dir/cert.pem" ]] || die "$dir has no key.pem/cert.pem (run new-cert first)"
        [[ -f "$in" ]] || die "file not found: $in"
        rm -f "$out"
        osslsigncode sign -certs "$dir/cert.pem" -key "$dir/key.pem" -h sha256 \
            -n "kepoch (test-signed)" -in "$in" -out "$out" >"$dir/osslsigncode.log" 2>&1 ||
            { cat "$dir/osslsigncode.log" >&2; die "osslsigncode could not sign $in"; }
        verify "$dir/cert.pem" "$out"
        ;;
    verify)
        [[ $# -eq 3 ]] || { usage >&2; exit 2; }
        need osslsigncode
        verify "$2" "$3"
        ;;
    -h|--help) usage ;;
    *) usage >&2; exit 2 ;;
esac
