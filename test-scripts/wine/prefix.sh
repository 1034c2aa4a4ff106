#!/usr/bin/env bash
# Sourced by the Wine tests (driver-smoke.sh, c-sample-smoke.sh, guest-ab-wine.sh): a fresh 64-bit
# prefix ready to load kernel drivers as services. Defines `quiet` (a command bounded to 120 s, output
# dropped), `stop_wine`, `wine_batch`, `wine_prefix_init DIR` and `wine_install_kepoch SYS CTL`.
#
# wine_prefix_init exports WINEPREFIX=DIR/prefix (WINEARCH win64, no Mono or Gecko prompt: there is no
# network), runs wineboot and waits for the prefix's processes to end (the registry is written then),
# turns the crash debugger off (an unhandled exception ends the process instead of hanging it) and
# gives starting services two minutes: Wine's services.exe fails a start that takes longer than
# ServicesPipeTimeout (10 s when absent), which a loaded or cold machine can exceed. Wine is stopped
# at the end: a test starts it again with its own WINEDEBUG and logs (services.exe and winedevice.exe
# keep the environment and the stderr of the session that started them).
set -euo pipefail

quiet() { timeout 120 "$@" >/dev/null 2>&1; }
stop_wine() {
    WINEDEBUG=-all timeout 60 wineserver -k >/dev/null 2>&1 || true
    WINEDEBUG=-all timeout 60 wineserver -w >/dev/null 2>&1 || true
}

# wine_batch DEBUG SECONDS BATCH OUT LOG [PREPARE]: runs `wine cmd /c BATCH` with WINEDEBUG=DEBUG,
# bounded to SECONDS, its stdout in OUT and its stderr in LOG. Wine itself sometimes fails to start one
# of its processes ("failed to map the shared user data": the fixed address Wine needs was taken in the
# new process; seen in CI, services.exe then never started and the batch ran against nothing). Then
# Wine is stopped and the batch run again, at most three times in all, with a loud RETRY line; any
# other failure is the test's to judge. PREPARE, a command, runs before every attempt (Wine stopped
# after it) and puts back the state the batch starts from; without it the batch must hold no state.
# A failing PREPARE fails wine_batch (a FAIL line, status 1) without running the batch.
wine_batch() {
    local debug=$1 limit=$2 batch=$3 out=$4 log=$5 prepare=${6:-} attempt
    for attempt in 1 2 3; do
        if [ -n "$prepare" ]; then
            "$prepare" || { echo "FAIL: $prepare (before attempt $attempt of $batch) failed"; return 1; }
            stop_wine
        fi
        WINEDEBUG=$debug timeout "$limit" wine cmd /c "$batch" >"$out" 2>"$log" || true
        if ! grep -a -q "failed to map the shared user data" "$log"; then
            return 0
        fi
        echo "RETRY: Wine failed to start a process (failed to map the shared user data); attempt $attempt of 3 of $batch"
        stop_wine
    done
}

wine_prefix_init() {
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir"
    export WINEPREFIX=$dir/prefix WINEARCH=win64 WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
    timeout 300 wineboot -i >/dev/null 2>&1
    stop_wine
    quiet wine reg add 'HKLM\Software\Microsoft\Windows NT\CurrentVersion\AeDebug' /v Auto /t REG_SZ /d 1 /f
    quiet wine reg add 'HKLM\Software\Microsoft\Windows NT\CurrentVersion\AeDebug' /v Debugger /t REG_SZ /d false /f
    quiet wine reg add 'HKLM\System\CurrentControlSet\Control' /v ServicesPipeTimeout /t REG_SZ /d 120000 /f
    stop_wine
}

# wine_install_kepoch SYS CTL: kepoch.sys into the drivers folder and kepochctl.exe into C:\kepoch.
# Rust's std imports ProcessPrng from bcryptprimitives.dll (Windows 10+); Wine 8 lacks that DLL, so a
# stand-in (test-scripts/wine/bcryptprimitives.c) goes into the prefix for kepochctl.exe. Never shipped.
wine_install_kepoch() {
    mkdir -p "$WINEPREFIX/drive_c/kepoch"
    cp "$1" "$WINEPREFIX/drive_c/windows/system32/drivers/kepoch.sys"
    cp "$2" "$WINEPREFIX/drive_c/kepoch/kepochctl.exe"
    x86_64-w64-mingw32-gcc -O2 -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
        test-scripts/wine/bcryptprimitives.c -ladvapi32
}
