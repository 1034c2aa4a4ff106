#!/usr/bin/env bash
# Runs the QEMU host script's own hot-add code path (kepoch-qemu-hotadd.sh --qmp-only) against a real
# QEMU without a guest OS (-machine q35 -smp 1,maxcpus=4 -S -nodefaults, QMP over a UNIX socket, no
# network) and checks, with its own query-cpus-fast, that:
#   - the vCPUs the script says it plugged exist (qom-path /machine/peripheral/<id>), across a schedule;
#   - asking for more CPUs than the free slots (maxcpus) fails with a clear message and plugs nothing;
#   - QEMU's real replies (greeting, nested returns, error objects) are handled: a machine without CPU
#     hot-plug makes the script report QEMU's own error text.
# Prints a loud SKIPPED line and exits 0 when qemu-system-x86_64 (Debian: qemu-system-x86), socat or jq
# is not installed. Every QEMU runs under a deadline; the whole check takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
script=test-scripts/host/qemu/kepoch-qemu-hotadd.sh

for tool in qemu-system-x86_64 socat jq timeout; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "SKIPPED: QEMU hot-add check: $tool is not installed (apt-get install -y qemu-system-x86 socat jq)"
        exit 0
    fi
done

tmp=$(mktemp -d -t kepoch-qemu-check.XXXXXX)
qemu_pid=""
stop_qemu() {
    if [[ -n "$qemu_pid" ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    qemu_pid=""
}
trap 'stop_qemu; rm -rf "$tmp"' EXIT

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok:   $*"; }

# start_qemu NAME MACHINE SMP: a paused QEMU with only a QMP socket, at most 120 s, 128 MiB.
start_qemu() {
    local sock=$tmp/$1.sock _
    rm -f "$sock"
    timeout 120 qemu-system-x86_64 -machine "$2" ${3:+-smp "$3"} -m 128 -S -nodefaults -display none \
        -qmp "unix:$sock,server=on,wait=off" >"$tmp/$1.log" 2>&1 &
    qemu_pid=$!
    for _ in $(seq 1 100); do
        [[ -S "$sock" ]] && break
        kill -0 "$qemu_pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -S "$sock" ]] || { cat "$tmp/$1.log" >&2; echo "qemu-hotadd-check: QEMU did not start ($2)" >&2; exit 1; }
    echo "$sock"
}

# cpus SOCKET: query-cpus-fast's return array, from a connection of our own.
cpus() {
    printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-cpus-fast"}' |
        timeout 20 socat -t 5 - "UNIX-CONNECT:$1" |
        jq -c 'select(has("return") and (.return | type) == "array") | .return'
}

# expect_refusal NAME TEXT WHAT: run NAME failed and its stderr holds TEXT.
expect_refusal() {
    if [[ "$(cat "$tmp/$1.rc")" != 0 ]] && grep -q -F -- "$2" "$tmp/$1.err"; then
        pass "$3"
    else
        fail "$3: exit $(cat "$tmp/$1.rc"), stderr: $(cat "$tmp/$1.err")"
    fi
}

# run NAME ARGS...: the script with a deadline; stdout, stderr and status in $tmp/NAME.{out,err,rc}.
run() {
    local name=$1 rc=0
    shift
    timeout 60 bash "$script" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
    echo "$rc" >"$tmp/$name.rc"
    sed "s/^/   | /" "$tmp/$name.err"
}

echo "== QEMU $(qemu-system-x86_64 --version | head -n 1)"
sock=$(start_qemu q35 q35 1,maxcpus=4)

echo "== hot-add 1 CPU at t=0 s and 1 at t=1 s"
run schedule --qmp-only "$sock" --hot-add 1@0 --hot-add 1@1
if [[ "$(cat "$tmp/schedule.rc")" != 0 ]]; then
    fail "the script failed (exit $(cat "$tmp/schedule.rc"))"
elif ! claimed=$(jq -er '.added | join(" ")' "$tmp/schedule.out" 2>/dev/null); then
    fail "the script's output is not its JSON summary: $(cat "$tmp/schedule.out")"
else
    seen=$(cpus "$sock")
    [[ "$(jq length <<<"$seen")" == 3 ]] || fail "query-cpus-fast lists $(jq length <<<"$seen") vCPUs, expected 3: $seen"
    read -r -a ids <<<"$claimed"
    [[ ${#ids[@]} -eq 2 ]] || fail "the script claims ${#ids[@]} CPUs, expected 2: $claimed"
    for id in "${ids[@]}"; do
        if jq -e --arg p "/machine/peripheral/$id" 'any(.[]; ."qom-path" == $p)' <<<"$seen" >/dev/null; then
            pass "claimed vCPU $id is in query-cpus-fast (cpu-index $(jq --arg p "/machine/peripheral/$id" '.[] | select(."qom-path" == $p) | ."cpu-index"' <<<"$seen"))"
        else
            fail "the script claims $id but query-cpus-fast does not list it: $seen"
        fi
    done
    [[ "$(jq '[.[]."cpu-index"] | unique | length' <<<"$seen")" == 3 ]] || fail "cpu-index values are not distinct: $seen"
    [[ "$(jq .vcpus "$tmp/schedule.out")" == 3 ]] || fail "the script reports $(jq .vcpus "$tmp/schedule.out") vCPUs, expected 3"
fi

echo "== asking for 2 CPUs with 1 free slot (maxcpus=4) fails and plugs nothing"
run beyond --qmp-only "$sock" --hot-add 2@0
expect_refusal beyond "only 1 of 4 CPU slot(s) are free (maxcpus=4)" "a request beyond maxcpus is refused clearly"
[[ "$(cpus "$sock" | jq length)" == 3 ]] || fail "the refused request changed the vCPU count"

echo "== the last free slot, then none"
run last --qmp-only "$sock" --hot-add 1@0
[[ "$(cat "$tmp/last.rc")" == 0 && "$(jq .vcpus "$tmp/last.out")" == 4 ]] || fail "plugging the last slot: $(cat "$tmp/last.out")"
[[ "$(cpus "$sock" | jq length)" == 4 ]] || fail "query-cpus-fast does not list 4 vCPUs at maxcpus"
run full --qmp-only "$sock" --hot-add 1@0
expect_refusal full "only 0 of 4 CPU slot(s) are free" "at maxcpus a further request is refused clearly"
stop_qemu

echo "== a machine without CPU hot-plug: QEMU's error reply reaches the user"
sock=$(start_qemu none none "")
run nohotplug --qmp-only "$sock" --hot-add 1@0
expect_refusal nohotplug 'QMP error for {"execute":"query-hotpluggable-cpus"}: {"class":"GenericError"' \
    "QEMU's error object is reported"
stop_qemu

echo "== QEMU hot-add check: $failures failure(s)"
[[ "$failures" -eq 0 ]]
