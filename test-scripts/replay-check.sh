#!/usr/bin/env bash
# A failing controlled-schedule run must print one command that replays the same schedule and fails
# again the same way. This runs the shuttle torture against a re-introduced bug, takes the replay
# command it prints, runs that command and compares the two failures. Exits 0 when the replay fails
# with the same message, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

mutation=cycle-snapshot-before-publish
test=torture_pct
# The printed command builds with RUSTFLAGS="--cfg shuttle"; its own target directory keeps the
# other builds from being redone.
export CARGO_TARGET_DIR=target/shuttle
# The torture stops at its first failing schedule, so a large budget costs time only when the bug
# goes unfound; at 20,000 schedules PCT missed this mutation (at dc6f3f9).
export KEPOCH_SHUTTLE_ITERATIONS=500000

# first_failure LOG: the message of the first panic inside the model (the line after "panicked at").
first_failure() { sed -n '/panicked at epoch\/tests\/model/{n;p;q}' "$1"; }

first=$(mktemp)
second=$(mktemp)
trap 'rm -f "$first" "$second"' EXIT
rc=0
KEPOCH_MUTATION=$mutation RUSTFLAGS="--cfg shuttle" timeout 300 \
    cargo test -q -p kepoch --release --features mutations --test shuttle "$test" -- --exact \
    >"$first" 2>&1 || rc=$?
if [ "$rc" -eq 0 ]; then
    echo "replay-check: the shuttle torture did not catch $mutation, so there is nothing to replay" >&2
    exit 1
fi
command=$(grep -m1 -o 'KEPOCH_SHUTTLE_REPLAY=.*' "$first" || true)
if [ -z "$command" ]; then
    tail -n 30 "$first"
    echo "replay-check: the failing run printed no replay command" >&2
    exit 1
fi
echo "replay-check: replaying: $command"
rc=0
timeout 300 bash -c "$command" >"$second" 2>&1 || rc=$?
expected=$(first_failure "$first")
replayed=$(first_failure "$second")
if [ "$rc" -eq 0 ] || [ -z "$expected" ] || [ "$expected" != "$replayed" ]; then
    tail -n 30 "$second"
    echo "replay-check: the replay did not fail the same way (exit $rc)" >&2
    echo "  first run: $expected" >&2
    echo "  replay:    $replayed" >&2
    exit 1
fi
echo "replay-check: the replay failed again with: $replayed"
