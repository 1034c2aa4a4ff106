#!/usr/bin/env bash
# Sourced by the Wine tests (driver-smoke.sh, c-sample-smoke.sh): a fresh 64-bit prefix ready to load
# kernel drivers as services. Defines `quiet`, `stop_wine` and `wine_prefix_init DIR`.
#
# wine_prefix_init exports WINEPREFIX=DIR/prefix (WINEARCH win64, no Mono or Gecko prompt: there is no
# network), runs wineboot and waits for the prefix's processes to end (the registry is written then),
# turns the crash debugger off (an unhandled exception ends the process instead of hanging it) and
# gives starting services two minutes: Wine's services.exe fails a start that takes longer than
# ServicesPipeTimeout (10 s when absent), which a loaded or cold machine can exceed. Wine is stopped
# at the end: a test starts it again with its own WINEDEBUG and logs (services.exe and winedevice.exe
# keep the environment and the stderr of the session that started them).
set -euo pipefail

quiet() { "$@" >/dev/null 2>&1; }
stop_wine() {
    WINEDEBUG=-all wineserver -k >/dev/null 2>&1 || true
    WINEDEBUG=-all wineserver -w >/dev/null 2>&1 || true
}

wine_prefix_init() {
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir"
    export WINEPREFIX=$dir/prefix WINEARCH=win64 WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
    quiet wineboot -i
    stop_wine
    quiet wine reg add 'HKLM\Software\Microsoft\Windows NT\CurrentVersion\AeDebug' /v Auto /t REG_SZ /d 1 /f
    quiet wine reg add 'HKLM\Software\Microsoft\Windows NT\CurrentVersion\AeDebug' /v Debugger /t REG_SZ /d false /f
    quiet wine reg add 'HKLM\System\CurrentControlSet\Control' /v ServicesPipeTimeout /t REG_SZ /d 120000 /f
    stop_wine
}
