#!/usr/bin/env bash
# kepoch A/B with live CPU hot-add on a QEMU/KVM host.
#
# Boots a Windows Server guest with `-smp BOOT,maxcpus=MAX` and a QMP socket, and for each round starts
# `kepochctl ab --rounds 1 --strategies S --hot-add-file C:\kepoch\hotadd.txt` in the guest (through the
# guest agent; kepochctl writes the registry, restarts the driver, runs the load and restores what it
# found), hot-adds CPUs with QMP `device_add` (slots from `query-hotpluggable-cpus`) on a schedule while
# the load runs, announces their number in the hot-add file, waits for kepochctl and copies the guest
# file back.
# Windows never removes processors, so every round is a fresh boot (the disk is opened with -snapshot
# after the one-time install boot, so rounds do not change the image).
#
# `--qmp-only SOCKET` runs only the hot-add code path against an already running QEMU's QMP socket (no
# guest, no image): test-scripts/qemu-hotadd-check.sh uses it against a real QEMU.
#
# Transport choice: the QEMU guest agent (qemu-ga from the virtio-win ISO, over virtio-serial). It needs
# no network and no shared-folder driver: `guest-exec` runs PowerShell, `guest-file-*` copies the
# package and scripts in and the JSON out.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GUEST_SCRIPTS="$(cd "$SCRIPT_DIR/../../guest" && pwd)"

IMAGE=""
PACKAGE=""
RESULTS="results"
BOOT_CPUS=2
MAX_CPUS=8
MEMORY=4096
ROUNDS=3
STRATEGIES="lazy,callback,eager"
LOAD_RATE=100000
LOAD_SECONDS=60
HOT_ADD=()
CPU_MODEL="host"
QEMU="${QEMU:-qemu-system-x86_64}"
VNC=""
NO_HOT_ADD=0
KEEP_TMP=0
QMP_ONLY=""
GUEST_ROOT='C:\kepoch'

usage() {
    cat <<EOF
Usage: $(basename "$0") --image DISK --package DIR [options]
       $(basename "$0") --qmp-only SOCKET --hot-add COUNT@SEC [--hot-add ...]

Boots a Windows Server guest with -smp BOOT,maxcpus=MAX and hot-adds CPUs over QMP during kepoch load.

Required:
  --image DISK          Windows Server disk image (qcow2/raw) with test signing on (Secure Boot off),
                        qemu-ga (QEMU guest agent) installed and running, and an edition that supports
                        dynamic partitioning (processor hot-add): Server Standard/Datacenter.
  --package DIR         Folder with kepoch.sys, kepoch.inf, kepochctl.exe and kepoch-test.cer
                        (test-scripts/package.sh builds it: target/package).

Options:
  --results DIR         Where the per-round JSON files go (default: results).
  --boot-cpus N         CPUs at boot (default: $BOOT_CPUS).
  --max-cpus M          maxcpus: hot-pluggable slots up to M (default: $MAX_CPUS).
  --memory MIB          Guest memory (default: $MEMORY).
  --rounds N            Rounds per strategy (default: $ROUNDS); one boot per round.
  --strategies LIST     Comma-separated, alternated per boot (default: $STRATEGIES).
  --load-rate N         Load generator rate, operations/s (default: $LOAD_RATE).
  --load-seconds S      Load duration per round (default: $LOAD_SECONDS).
  --hot-add COUNT@SEC   Hot-add COUNT CPUs SEC seconds after load starts; repeatable
                        (default: 2@10 and 2@30).
  --cpu MODEL           QEMU -cpu model (default: host). Hyper-V enlightenments (hv-*) can make
                        Windows refuse hot-add; the script checks the guest's hot-add flag either way.
  --no-hot-add          Run load rounds without hot-add (for guests without hot-add support).
  --vnc DISPLAY         Show the guest on VNC display (e.g. :1); default: no display.
  --keep-tmp            Keep the temporary folder with the QMP/QGA sockets and logs.
  --qmp-only SOCKET     Only hot-add: connect to the QMP UNIX socket of a running QEMU, plug CPUs on
                        the --hot-add schedule (seconds from now), check every plugged CPU is listed
                        by query-cpus-fast, print {"added":[ids],"vcpus":N} and exit; asking for more
                        CPUs than free slots (maxcpus) fails before plugging any. No guest needed.
  -h, --help            Show this help.

Needs on the host: $QEMU with KVM, socat, jq, base64.

A hot-add result is only claimed when the guest reports hot-add support (KUSER_SHARED_DATA
SharedDataFlags bit 0x20) and its active processor count grew during the round; otherwise the script
refuses to run hot-add rounds (exit 3) unless --no-hot-add is given.

Compare afterwards with: kepoch-sim report $RESULTS/*.json
EOF
}

die() { echo "kepoch-qemu: error: $*" >&2; exit 1; }
log() { echo "kepoch-qemu: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --image) IMAGE="${2:?--image needs a value}"; shift 2 ;;
        --package) PACKAGE="${2:?--package needs a value}"; shift 2 ;;
        --results) RESULTS="${2:?--results needs a value}"; shift 2 ;;
        --boot-cpus) BOOT_CPUS="${2:?}"; shift 2 ;;
        --max-cpus) MAX_CPUS="${2:?}"; shift 2 ;;
        --memory) MEMORY="${2:?}"; shift 2 ;;
        --rounds) ROUNDS="${2:?}"; shift 2 ;;
        --strategies) STRATEGIES="${2:?}"; shift 2 ;;
        --load-rate) LOAD_RATE="${2:?}"; shift 2 ;;
        --load-seconds) LOAD_SECONDS="${2:?}"; shift 2 ;;
        --hot-add) HOT_ADD+=("${2:?}"); shift 2 ;;
        --cpu) CPU_MODEL="${2:?}"; shift 2 ;;
        --no-hot-add) NO_HOT_ADD=1; shift ;;
        --vnc) VNC="${2:?}"; shift 2 ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        --qmp-only) QMP_ONLY="${2:?--qmp-only needs a QMP socket path}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

if [[ -n "$QMP_ONLY" ]]; then
    [[ ${#HOT_ADD[@]} -gt 0 ]] || { usage >&2; die "--qmp-only needs at least one --hot-add COUNT@SEC"; }
    [[ -S "$QMP_ONLY" ]] || die "no QMP socket at $QMP_ONLY"
    TOOLS=(socat jq)
else
    [[ -n "$IMAGE" ]] || { usage >&2; die "--image is required"; }
    [[ -n "$PACKAGE" ]] || { usage >&2; die "--package is required"; }
    [[ -f "$IMAGE" ]] || die "image not found: $IMAGE"
    for f in kepoch.sys kepoch.inf kepochctl.exe; do
        [[ -f "$PACKAGE/$f" ]] || die "$f missing from package folder $PACKAGE"
    done
    for n in "$BOOT_CPUS" "$MAX_CPUS" "$MEMORY" "$ROUNDS" "$LOAD_RATE" "$LOAD_SECONDS"; do
        [[ "$n" =~ ^[0-9]+$ ]] || die "not a number: $n"
    done
    (( MAX_CPUS > BOOT_CPUS )) || die "--max-cpus ($MAX_CPUS) must exceed --boot-cpus ($BOOT_CPUS) to leave hot-add slots"
    if [[ ${#HOT_ADD[@]} -eq 0 ]]; then HOT_ADD=("2@10" "2@30"); fi
    TOOLS=("$QEMU" socat jq base64)
fi
for spec in "${HOT_ADD[@]}"; do
    [[ "$spec" =~ ^[1-9][0-9]*@[0-9]+$ ]] || die "bad --hot-add '$spec' (want COUNT@SECONDS, COUNT >= 1)"
done
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed"
done
if [[ -z "$QMP_ONLY" && ! -r /dev/kvm ]]; then
    log "warning: /dev/kvm not readable; the guest will be very slow without KVM"
fi

TMP="$(mktemp -d -t kepoch-qemu.XXXXXX)"
QMP_SOCK="$TMP/qmp.sock"
QGA_SOCK="$TMP/qga.sock"
QEMU_PID=""
QMP_IN=""
QMP_OUT=""
QGA_IN=""
QGA_OUT=""

cleanup() {
    close_channels
    if [[ -n "$QEMU_PID" ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if [[ "$KEEP_TMP" -eq 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

close_channels() {
    if [[ -n "$QMP_IN" ]]; then exec {QMP_IN}>&- {QMP_OUT}<&-; QMP_IN=""; QMP_OUT=""; fi
    if [[ -n "$QGA_IN" ]]; then exec {QGA_IN}>&- {QGA_OUT}<&-; QGA_IN=""; QGA_OUT=""; fi
}

# open_channel SOCKET NAME: a persistent socat connection through two FIFOs; sets NAME_IN / NAME_OUT fds.
open_channel() {
    local sock="$1" name="$2" fifo_in="$TMP/$2.in" fifo_out="$TMP/$2.out" w r
    rm -f "$fifo_in" "$fifo_out"
    mkfifo "$fifo_in" "$fifo_out"
    socat - "UNIX-CONNECT:$sock" <"$fifo_in" >"$fifo_out" 2>>"$TMP/socat.log" &
    exec {w}>"$fifo_in"
    exec {r}<"$fifo_out"
    printf -v "${name}_IN" '%s' "$w"
    printf -v "${name}_OUT" '%s' "$r"
}

# qmp JSON: sends one QMP command, prints its "return" (skipping asynchronous events); fails on "error".
qmp() {
    local line
    printf '%s\n' "$1" >&"$QMP_IN"
    while IFS= read -r -t 60 -u "$QMP_OUT" line; do
        if jq -e 'has("event")' <<<"$line" >/dev/null 2>&1; then continue; fi
        if jq -e 'has("error")' <<<"$line" >/dev/null 2>&1; then
            log "QMP error for $1: $(jq -c .error <<<"$line")"; return 1
        fi
        jq -c '.return' <<<"$line"; return 0
    done
    die "no QMP reply to $1"
}

# qga JSON [TIMEOUT]: sends one guest-agent command, prints its "return"; fails on "error".
qga() {
    local line
    printf '%s\n' "$1" >&"$QGA_IN"
    while IFS= read -r -t "${2:-60}" -u "$QGA_OUT" line; do
        line="${line#$'\xff'}"
        if ! jq -e . <<<"$line" >/dev/null 2>&1; then continue; fi
        if jq -e 'has("error")' <<<"$line" >/dev/null; then
            log "guest agent error: $(jq -c .error <<<"$line")"; return 1
        fi
        jq -c '.return' <<<"$line"; return 0
    done
    return 1
}

# qga_sync: flushes stale replies with guest-sync-delimited and a random id.
qga_sync() {
    local id=$((RANDOM * 32768 + RANDOM)) line
    printf '\xff{"execute":"guest-sync-delimited","arguments":{"id":%d}}\n' "$id" >&"$QGA_IN"
    while IFS= read -r -t 10 -u "$QGA_OUT" line; do
        line="${line#$'\xff'}"
        if [[ "$(jq -r '.return // empty' <<<"$line" 2>/dev/null)" == "$id" ]]; then return 0; fi
    done
    return 1
}

# guest_ps_start COMMAND: starts PowerShell in the guest through guest-exec and prints its pid.
guest_ps_start() {
    local req
    req="$(jq -cn --arg c "$1" '{execute:"guest-exec",arguments:{path:"powershell.exe",
        arg:["-NoProfile","-NonInteractive","-ExecutionPolicy","Bypass","-Command",$c],"capture-output":true}}')"
    qga "$req" | jq -r .pid
}

# guest_ps COMMAND: runs PowerShell in the guest through guest-exec, prints stdout, fails on non-zero exit.
guest_ps() {
    local pid
    pid="$(guest_ps_start "$1")" || die "guest-exec failed"
    guest_ps_wait "$pid"
}

# guest_ps_wait PID: waits for a guest-exec'd PowerShell, prints its stdout, fails on non-zero exit.
guest_ps_wait() {
    local pid="$1" status exited code out err
    while :; do
        status="$(qga "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}")" || die "guest-exec-status failed"
        exited="$(jq -r .exited <<<"$status")"
        [[ "$exited" == "true" ]] && break
        sleep 1
    done
    code="$(jq -r '.exitcode // 0' <<<"$status")"
    out="$(jq -r '."out-data" // ""' <<<"$status" | base64 -d 2>/dev/null || true)"
    err="$(jq -r '."err-data" // ""' <<<"$status" | base64 -d 2>/dev/null || true)"
    if [[ "$code" != "0" ]]; then
        log "guest PowerShell failed (exit $code): $err"
        printf '%s' "$out"
        return 1
    fi
    printf '%s' "$out"
}

# guest_put LOCAL GUESTPATH: copies a file into the guest in 48 KiB chunks (guest-file-write).
guest_put() {
    local src="$1" dst="$2" handle size offset=0 chunk=49152 b64
    handle="$(qga "$(jq -cn --arg p "$dst" '{execute:"guest-file-open",arguments:{path:$p,mode:"wb"}}')")" ||
        die "cannot open $dst in the guest"
    size="$(stat -c %s "$src")"
    while (( offset < size )); do
        b64="$(dd if="$src" bs="$chunk" skip=$((offset / chunk)) count=1 status=none | base64 -w0)"
        qga "$(jq -cn --argjson h "$handle" --arg b "$b64" '{execute:"guest-file-write",arguments:{handle:$h,"buf-b64":$b}}')" >/dev/null ||
            die "write to $dst failed"
        offset=$((offset + chunk))
    done
    qga "{\"execute\":\"guest-file-close\",\"arguments\":{\"handle\":$handle}}" >/dev/null
}

# guest_get GUESTPATH LOCAL: copies a file out of the guest (guest-file-read until eof).
guest_get() {
    local src="$1" dst="$2" handle reply eof
    handle="$(qga "$(jq -cn --arg p "$src" '{execute:"guest-file-open",arguments:{path:$p,mode:"rb"}}')")" ||
        die "cannot open $src in the guest"
    : >"$dst"
    while :; do
        reply="$(qga "{\"execute\":\"guest-file-read\",\"arguments\":{\"handle\":$handle,\"count\":1048576}}")" ||
            die "read of $src failed"
        jq -r '."buf-b64"' <<<"$reply" | base64 -d >>"$dst"
        eof="$(jq -r .eof <<<"$reply")"
        [[ "$eof" == "true" ]] && break
    done
    qga "{\"execute\":\"guest-file-close\",\"arguments\":{\"handle\":$handle}}" >/dev/null
}

# boot_guest SNAPSHOT: starts QEMU, connects QMP and the guest agent.
boot_guest() {
    local snapshot="$1" args
    rm -f "$QMP_SOCK" "$QGA_SOCK"
    args=(
        -machine "q35,accel=kvm" -cpu "$CPU_MODEL"
        -smp "$BOOT_CPUS,maxcpus=$MAX_CPUS" -m "$MEMORY"
        -drive "file=$IMAGE,if=ide,cache=writeback"
        -qmp "unix:$QMP_SOCK,server=on,wait=off"
        -chardev "socket,path=$QGA_SOCK,server=on,wait=off,id=qga0"
        -device virtio-serial -device "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"
        -nic none
    )
    if [[ "$snapshot" -eq 1 ]]; then args+=(-snapshot); fi
    if [[ -n "$VNC" ]]; then args+=(-vnc "$VNC"); else args+=(-display none); fi
    "$QEMU" "${args[@]}" >>"$TMP/qemu.log" 2>&1 &
    QEMU_PID=$!
    local i
    for i in $(seq 1 50); do [[ -S "$QMP_SOCK" && -S "$QGA_SOCK" ]] && break; sleep 0.2; done
    [[ -S "$QMP_SOCK" ]] || die "QEMU did not start; see $TMP/qemu.log (use --keep-tmp)"
    open_channel "$QMP_SOCK" QMP
    read -r -t 10 -u "$QMP_OUT" _ || die "no QMP greeting"
    qmp '{"execute":"qmp_capabilities"}' >/dev/null
    open_channel "$QGA_SOCK" QGA
    log "waiting for the guest agent (Windows boot)..."
    for i in $(seq 1 120); do
        if qga_sync; then break; fi
        (( i == 120 )) && die "guest agent did not answer within 20 minutes (is qemu-ga installed in the guest?)"
        sleep 5
    done
    log "guest agent is up"
}

shutdown_guest() {
    qmp '{"execute":"quit"}' >/dev/null 2>&1 || true
    close_channels
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=""
}

# hot_add COUNT: plugs COUNT free CPU slots from query-hotpluggable-cpus and prints the id of each CPU it
# plugged, one a line. Asking for more than the free slots: with --qmp-only it plugs nothing and fails;
# in a round it logs that and plugs the free ones. Fails on a QMP error (the error is logged).
hot_add() {
    local count="$1" slots free total i id cmd
    slots="$(qmp '{"execute":"query-hotpluggable-cpus"}')" || return 1
    jq -e 'type == "array"' <<<"$slots" >/dev/null 2>&1 || { log "query-hotpluggable-cpus: unexpected reply $slots"; return 1; }
    total="$(jq 'length' <<<"$slots")"
    free="$(jq '[.[] | select(has("qom-path") | not)] | length' <<<"$slots")"
    if (( count > free )); then
        log "asked to hot-add $count CPU(s) but only $free of $total CPU slot(s) are free (maxcpus=$total)"
        [[ -z "$QMP_ONLY" ]] || return 1
        count=$free
    fi
    for (( i = 0; i < count; i++ )); do
        id="kcpu$$x$RANDOM$i"
        cmd="$(jq -c --argjson i "$i" --arg id "$id" \
            '[.[] | select(has("qom-path") | not)][$i] | {execute:"device_add", arguments:({driver:.type, id:$id} + .props)}' <<<"$slots")"
        qmp "$cmd" >/dev/null || return 1
        echo "$id"
    done
}

# qmp_only: the --qmp-only mode (see --help).
qmp_only() {
    local greeting spec count at ids id cpus start=$SECONDS
    local -a plugged=() new=()
    open_channel "$QMP_ONLY" QMP
    read -r -t 10 -u "$QMP_OUT" greeting || die "no QMP greeting on $QMP_ONLY"
    jq -e 'has("QMP")' <<<"$greeting" >/dev/null 2>&1 || die "not a QMP greeting: $greeting"
    qmp '{"execute":"qmp_capabilities"}' >/dev/null || die "qmp_capabilities was refused"
    for spec in $(printf '%s\n' "${HOT_ADD[@]}" | sort -t@ -k2 -n); do
        count="${spec%@*}"; at="${spec#*@}"
        if (( start + at > SECONDS )); then sleep $(( start + at - SECONDS )); fi
        ids="$(hot_add "$count")" || die "hot-add of $count CPU(s) failed (see above)"
        new=()
        [[ -z "$ids" ]] || mapfile -t new <<<"$ids"
        plugged+=("${new[@]}")
        log "t=${at}s device_add x${#new[@]}: ${new[*]}"
    done
    cpus="$(qmp '{"execute":"query-cpus-fast"}')" || die "query-cpus-fast failed"
    for id in "${plugged[@]}"; do
        jq -e --arg p "/machine/peripheral/$id" 'any(.[]; ."qom-path" == $p)' <<<"$cpus" >/dev/null ||
            die "device_add $id succeeded but query-cpus-fast does not list /machine/peripheral/$id"
    done
    jq -cn --argjson cpus "$cpus" '{added: $ARGS.positional, vcpus: ($cpus | length)}' --args "${plugged[@]}"
}

if [[ -n "$QMP_ONLY" ]]; then
    qmp_only
    exit 0
fi

ps_quote() { printf "'%s'" "${1//\'/\'\'}"; }

mkdir -p "$RESULTS"
IFS=',' read -r -a STRATEGY_LIST <<<"$STRATEGIES"
MODULE="$GUEST_ROOT\\scripts\\KepochGuest.psm1"
IMPORT="\$ErrorActionPreference='Stop'; Import-Module $(ps_quote "$MODULE") -Force"

# One-time boot (persistent): copy the package and scripts in, install the driver.
log "install boot: copying the package and guest scripts"
boot_guest 0
guest_ps "New-Item -ItemType Directory -Force -Path '$GUEST_ROOT\\package','$GUEST_ROOT\\scripts','$GUEST_ROOT\\results' | Out-Null" >/dev/null
for f in "$PACKAGE"/kepoch.sys "$PACKAGE"/kepoch.inf "$PACKAGE"/kepochctl.exe "$PACKAGE"/kepoch-test.cer; do
    [[ -f "$f" ]] || { log "warning: $f not in the package (build it with test-scripts/package.sh)"; continue; }
    guest_put "$f" "$GUEST_ROOT\\package\\$(basename "$f")"
done
for f in "$GUEST_SCRIPTS"/*.psm1 "$GUEST_SCRIPTS"/*.ps1; do
    guest_put "$f" "$GUEST_ROOT\\scripts\\$(basename "$f")"
done
guest_ps "$IMPORT; Install-KepochDriver -PackagePath '$GUEST_ROOT\\package' -Confirm:\$false | Out-Null" >/dev/null ||
    die "driver install failed (is test signing on? see the message above)"
TOPO="$(guest_ps "$IMPORT; Get-KepochTopology | ConvertTo-Json -Depth 5 -Compress")" || die "cannot read the guest topology"
HOT_ADD_OK="$(jq -r .hot_add_supported <<<"$TOPO")"
log "guest: $(jq -r '"\(.max_processors) max / \(.active_processors) active, hot-add supported: \(.hot_add_supported)"' <<<"$TOPO")"
shutdown_guest

if [[ "$HOT_ADD_OK" != "true" && "$NO_HOT_ADD" -eq 0 ]]; then
    log "REFUSING: the guest does not report processor hot-add support (KUSER_SHARED_DATA SharedDataFlags"
    log "bit 0x20 is clear). Use a Server edition with dynamic partitioning, try another --cpu model, or"
    log "pass --no-hot-add to run load-only rounds (which will not be reported as hot-add)."
    exit 3
fi

TOTAL=$(( ROUNDS * ${#STRATEGY_LIST[@]} ))
for (( round = 1; round <= TOTAL; round++ )); do
    strategy="${STRATEGY_LIST[$(( (round - 1) % ${#STRATEGY_LIST[@]} ))]}"
    log "round $round/$TOTAL: $strategy (fresh boot, $BOOT_CPUS of $MAX_CPUS CPUs)"
    boot_guest 1
    plan="$(printf '%s,' "${HOT_ADD[@]}")"; plan="${plan%,}"
    [[ "$NO_HOT_ADD" -eq 1 ]] && plan="none"
    guest_out="$GUEST_ROOT\\results\\round-$(printf '%02d' "$round")"
    hot_add_file="$GUEST_ROOT\\hotadd.txt"
    file_arg=""
    [[ "$NO_HOT_ADD" -eq 0 ]] && file_arg=" -HotAddFile $(ps_quote "$hot_add_file")"
    # kepochctl ab runs the round (registry, restart, load, stats, restore) while the host hot-adds.
    ab_pid="$(guest_ps_start "$IMPORT; Invoke-KepochAB -OutputPath $(ps_quote "$guest_out") -Rounds 1 -Strategies $(ps_quote "$strategy") -LoadRate $LOAD_RATE -LoadSeconds $LOAD_SECONDS$file_arg -Confirm:\$false | Out-Null")" ||
        die "round $round: starting kepochctl ab in the guest failed"
    requested=0
    elapsed=0
    if [[ "$NO_HOT_ADD" -eq 0 ]]; then
        for spec in $(printf '%s\n' "${HOT_ADD[@]}" | sort -t@ -k2 -n); do
            count="${spec%@*}"; at="${spec#*@}"
            if (( at > elapsed )); then sleep $(( at - elapsed )); elapsed=$at; fi
            ids="$(hot_add "$count")" || log "round $round: hot-add stopped early (see above)"
            added="$(grep -c . <<<"$ids" || true)"
            requested=$(( requested + added ))
            log "round $round: t=${at}s device_add x$added"
        done
        announce="$(mktemp)"
        echo "$requested" >"$announce"
        guest_put "$announce" "$hot_add_file"
        rm -f "$announce"
    fi
    guest_ps_wait "$ab_pid" >/dev/null || die "round $round: kepochctl ab failed in the guest (see above)"
    local_file="$RESULTS/qemu-round-$(printf '%02d' "$round")-$strategy.json"
    guest_get "$guest_out\\round-01-$strategy.json" "$local_file"
    claimed="$(jq -r '.results[0].ab.hot_add.claimed' "$local_file")"
    if [[ "$requested" -gt 0 && "$claimed" != "true" ]]; then
        log "round $round: $requested CPU(s) plugged but the guest's active count did not grow: NOT a hot-add result"
    fi
    log "round $round: wrote $local_file (hot-add claimed: $claimed, plan ${plan})"
    shutdown_guest
done

log "done. Compare with: kepoch-sim report $RESULTS/*.json"
