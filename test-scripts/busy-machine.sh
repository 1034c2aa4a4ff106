#!/usr/bin/env bash
# The suite's parallel tortures (see test-all.sh) on a busy machine: 2 x nproc busy loops compete for
# the CPUs the whole time, as on a CI runner shared with other jobs or a developer compiling while the
# tests run. The runs must pass: a simulated CPU whose thread the host does not schedule is not a stuck
# protocol, and a parallel run always ends. The soak is shorter here than in test-all.sh.
#
#   bash test-scripts/busy-machine.sh              # 2 x nproc busy loops
#   KEPOCH_BUSY_LOOPS=6 bash test-scripts/busy-machine.sh
set -euo pipefail
cd "$(dirname "$0")/.."

loops="${KEPOCH_BUSY_LOOPS:-$((2 * $(nproc)))}"
if ! [[ "$loops" =~ ^[0-9]+$ ]] || [ "$loops" -eq 0 ]; then
    echo "busy-machine.sh: KEPOCH_BUSY_LOOPS must be a positive whole number, got '$loops'" >&2
    exit 2
fi

# Build first, on a quiet machine: the build is not what this checks.
cargo build --release -q -p kepoch-sim
sim=target/release/kepoch-sim

busy_pids=()
torture_pid=""
# On every way out: the torture in progress (if a signal interrupted the wait for it) and the loops.
stop_all() {
    if [ -n "$torture_pid" ]; then
        kill "$torture_pid" 2>/dev/null || true
        wait "$torture_pid" 2>/dev/null || true
        torture_pid=""
    fi
    if [ "${#busy_pids[@]}" -gt 0 ]; then
        kill "${busy_pids[@]}" 2>/dev/null || true
        wait "${busy_pids[@]}" 2>/dev/null || true
        busy_pids=()
    fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Runs a torture in the background and waits for it, so that a signal is handled at once (bash runs
# traps only between commands, and `wait` is one that a signal interrupts).
torture() {
    "$sim" torture --quiet "$@" &
    torture_pid=$!
    local status=0
    wait "$torture_pid" || status=$?
    torture_pid=""
    return "$status"
}

# Each loop also ends by itself once this script is gone (even after a SIGKILL, which no trap sees).
script_pid=$$
for _ in $(seq "$loops"); do
    (while kill -0 "$script_pid" 2>/dev/null; do :; done) &
    busy_pids+=("$!")
done
echo "== $loops busy loops compete for $(nproc) CPU(s)"

echo "== parallel torture (lazy, 20 s) on the busy machine"
torture --strategy lazy --mode parallel --seconds 20
echo "== parallel soak (callback, hot-adds, guard pages; 30 s) on the busy machine"
torture --strategy callback --mode parallel --seconds 30 --hot-add-rate 20 --guard-pages

stop_all
echo "== busy machine: all parallel tortures passed"
