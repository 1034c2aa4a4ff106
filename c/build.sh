#!/usr/bin/env bash
# Builds kepoch's C API for Windows kernel drivers on Linux and the C sample driver on it:
#   1. the static library kepoch_c.lib (crate kepoch-c, target x86_64-pc-windows-msvc, panic=abort, LTO);
#   2. the headers compiled as C11 and C++17 with -Wall -Wextra -Werror by gcc, clang and mingw-w64
#      (c/tests/ebpf_usage.c uses every ebpf_epoch.h function as eBPF for Windows does; headers.cpp);
#   3. c/sample/kepoch_c_sample.c compiled with x86_64-w64-mingw32-gcc and linked by rust-lld (lld-link)
#      with kepoch_c.lib and mingw-w64's ntoskrnl/hal import libraries into kepoch_c_sample.sys;
#   4. the image checked with llvm-readobj: AMD64, subsystem NATIVE, imports only from ntoskrnl.exe and
#      hal.dll; and a non-zero PE checksum (c/sample-test/tests/sample_image.rs applies kepoch.sys's full PE check).
# Prints the image's path last. Output: target/c/ (kepoch_c.lib, kepoch_c_sample.sys, its map).
# Needs: rustup (adds the target when missing), gcc-mingw-w64-x86-64, g++-mingw-w64-x86-64,
# mingw-w64-x86-64-dev, llvm (llvm-readobj); clang/clang++ are checked when installed (setup.sh
# installs them), otherwise a SKIPPED line says so.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=x86_64-pc-windows-msvc
target_dir=${CARGO_TARGET_DIR:-$root/target}
out=$target_dir/c
mkdir -p "$out"

fail() {
    echo "c/build.sh: $*" >&2
    exit 1
}
for tool in x86_64-w64-mingw32-gcc x86_64-w64-mingw32-g++ gcc g++; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is required (apt-get install gcc-mingw-w64-x86-64 g++-mingw-w64-x86-64 g++)"
done
readobj=$(command -v llvm-readobj || command -v llvm-readobj-14 || true)
[ -n "$readobj" ] || fail "llvm-readobj is required (apt-get install llvm)"
mingw_lib=/usr/x86_64-w64-mingw32/lib
[ -f "$mingw_lib/libntoskrnl.a" ] || fail "$mingw_lib/libntoskrnl.a is missing (apt-get install mingw-w64-x86-64-dev)"
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

echo "== static library (kepoch-c, $target)"
cargo rustc --release -q --target "$target" -p kepoch-c --features staticlib --crate-type staticlib
cp -f "$target_dir/$target/release/kepoch_c.lib" "$out/kepoch_c.lib"

echo "== headers: C11 and C++17, -Wall -Wextra -Werror"
strict=(-Wall -Wextra -Werror -Ic/include)
compilers=(gcc x86_64-w64-mingw32-gcc)
cxx_compilers=(g++ x86_64-w64-mingw32-g++)
if command -v clang >/dev/null 2>&1 && command -v clang++ >/dev/null 2>&1; then
    compilers+=(clang)
    cxx_compilers+=(clang++)
else
    echo "SKIPPED: clang: not installed (apt-get install clang); gcc and mingw-w64 checked"
fi
for cc in "${compilers[@]}"; do
    "$cc" -std=c11 "${strict[@]}" -c c/tests/ebpf_usage.c -o "$out/ebpf_usage.$cc.o"
    "$cc" -std=c11 "${strict[@]}" -c c/tests/kepoch_usage.c -o "$out/kepoch_usage.$cc.o"
    "$cc" -std=c11 "${strict[@]}" -Ic/sample -c c/sample/kepoch_c_sample.c -o "$out/sample.$cc.o"
    echo "   $cc -std=c11: ebpf_usage.c, kepoch_usage.c, kepoch_c_sample.c OK"
done
for cxx in "${cxx_compilers[@]}"; do
    "$cxx" -std=c++17 "${strict[@]}" -c c/tests/headers.cpp -o "$out/headers.$cxx.o"
    echo "   $cxx -std=c++17: headers.cpp OK"
done

echo "== kepoch_c_sample.sys (mingw-w64 C, rust-lld)"
x86_64-w64-mingw32-gcc -std=c11 "${strict[@]}" -Ic/sample -O2 -ffreestanding -fno-stack-protector \
    -mno-stack-arg-probe -fno-asynchronous-unwind-tables -c c/sample/kepoch_c_sample.c -o "$out/kepoch_c_sample.obj"
lld=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/rust-lld
[ -x "$lld" ] || fail "rust-lld not found at $lld"
image=$out/kepoch_c_sample.sys
"$lld" -flavor link /NOLOGO /DRIVER /SUBSYSTEM:NATIVE /ENTRY:DriverEntry /NODEFAULTLIB /RELEASE /TSAWARE:NO \
    /OPT:REF,ICF /MACHINE:X64 "/MAP:$out/kepoch_c_sample.map" "/OUT:$image" \
    "$out/kepoch_c_sample.obj" "$out/kepoch_c.lib" "$mingw_lib/libntoskrnl.a" "$mingw_lib/libhal.a"

echo "== llvm-readobj"
headers=$("$readobj" --file-headers "$image")
imports=$("$readobj" --coff-imports "$image")
grep -q 'Machine: IMAGE_FILE_MACHINE_AMD64' <<<"$headers" || fail "$image is not AMD64"
grep -q 'Subsystem: IMAGE_SUBSYSTEM_NATIVE' <<<"$headers" || fail "$image is not subsystem NATIVE"
# IMAGE_OPTIONAL_HEADER64.CheckSum (llvm-readobj 14 prints 0 for it): e_lfanew + 4 + 20 + 64.
lfanew=$(od -An -tu4 -j60 -N4 "$image" | tr -d ' ')
checksum=0x$(od -An -tx4 -j$((lfanew + 88)) -N4 "$image" | tr -d ' ')
[ "$((checksum))" -ne 0 ] || fail "$image has no PE checksum (linked without /RELEASE?)"
dlls=$(sed -n 's/^ *Name: //p' <<<"$imports" | sort -u | tr '\n' ' ')
for dll in $dlls; do
    case $dll in
        ntoskrnl.exe | hal.dll) ;;
        *) fail "$image imports from $dll (only ntoskrnl.exe and hal.dll are allowed)" ;;
    esac
done
echo "   machine AMD64, subsystem NATIVE, checksum $checksum, imports from: $dlls"
echo "$image"
