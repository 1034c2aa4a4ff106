#!/usr/bin/env bash
# The fast safety checks in one command (under 5 minutes on 2 cores): the core's unit tests, the
# deterministic torture (seeded, DPCs preempting PASSIVE code), the controlled-schedule torture
# (shuttle: every atomic of the core is a preemption point) and the loom models at the CI bound.
#
#   bash test-scripts/safety-check.sh                      # every check on the correct core
#   bash test-scripts/safety-check.sh --mutation NAME      # the same against a re-introduced bug
#   bash test-scripts/safety-check.sh --only loom:overflow # one check (and a test-name filter)
#
# Exit status: 0 every check passed; 1 a check found a violation (its output says which, with a
# replay command); 2 usage error; 3 a build failed or a check passed its deadline without a verdict.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

mutation=""
only=""
quiet=0
while [ $# -gt 0 ]; do
    case "$1" in
    --mutation) mutation="${2:?--mutation needs a name}"; shift 2 ;;
    --only) only="${2:?--only needs a check}"; shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h | --help) usage ;;
    *) echo "safety-check: unknown argument '$1'" >&2; usage ;;
    esac
done

features=()
torture_mutation=()
if [ -n "$mutation" ]; then
    if ! grep -q "\"$mutation\", \(Logic\|Ordering\);" epoch/src/mutation.rs; then
        echo "safety-check: no mutation named '$mutation' in epoch/src/mutation.rs" >&2
        exit 2
    fi
    features=(--features mutations)
    torture_mutation=(--mutation "$mutation")
fi
export KEPOCH_MUTATION="$mutation"
[ -n "$mutation" ] || unset KEPOCH_MUTATION

# loom and shuttle builds use their own target directories, so switching RUSTFLAGS never rebuilds
# the others from scratch.
loom_env=(env RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom)
shuttle_env=(env RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR=target/shuttle)

# run NAME DEADLINE_SECONDS COMMAND...: runs one check with a deadline; its output is shown on
# failure (always without --quiet).
failed=0
run() {
    local name="$1" deadline="$2"
    shift 2
    local log start rc=0
    log=$(mktemp)
    start=$(date +%s)
    timeout --kill-after=10 "$deadline" "$@" >"$log" 2>&1 || rc=$?
    local took=$(($(date +%s) - start))
    if [ "$rc" -eq 0 ]; then
        [ "$quiet" -eq 1 ] || cat "$log"
        echo "safety-check: $name passed in ${took}s"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        tail -n 40 "$log"
        echo "safety-check: $name passed its ${deadline}s deadline without a verdict (replay: $*)"
        rm -f "$log"
        exit 3
    else
        tail -n 60 "$log"
        echo "safety-check: $name FAILED (exit $rc) in ${took}s; rerun: ${KEPOCH_MUTATION:+KEPOCH_MUTATION=$mutation }$*"
        failed=1
    fi
    rm -f "$log"
}

# build NAME COMMAND...: a build that must succeed before its check can give a verdict.
build() {
    local name="$1"
    shift
    if ! "$@" >/dev/null 2>&1; then
        "$@" 2>&1 | tail -n 30 || true
        echo "safety-check: building $name failed"
        exit 3
    fi
}

wants() { [ -z "$only" ] || [ "${only%%:*}" = "$1" ]; }
filter="${only#*:}"
[ "$filter" != "$only" ] || filter=""

if wants unit; then
    build unit cargo test -p kepoch --release "${features[@]}" --lib --no-run
    run unit 120 cargo test -q -p kepoch --release "${features[@]}" --lib -- ${filter:+"$filter"}
fi
if wants torture; then
    build torture cargo build --release -q -p kepoch-sim "${features[@]}"
    sim=target/release/kepoch-sim
    run "deterministic torture (callback, hot-add)" 240 "$sim" torture --quiet --strategy callback \
        --seeds 0..200 --mode deterministic --hot-add-rate 50 "${torture_mutation[@]}"
    run "deterministic torture (lazy)" 240 "$sim" torture --quiet --strategy lazy \
        --seeds 0..150 --mode deterministic --hot-add-rate 50 "${torture_mutation[@]}"
fi
if wants shuttle; then
    build shuttle "${shuttle_env[@]}" cargo test -p kepoch --release "${features[@]}" --test shuttle --no-run
    run "controlled-schedule torture (shuttle)" 240 "${shuttle_env[@]}" \
        cargo test -q -p kepoch --release "${features[@]}" --test shuttle -- ${filter:+"$filter"}
fi
if wants loom; then
    build loom "${loom_env[@]}" cargo test -p kepoch --release "${features[@]}" --test loom --no-run
    run "loom models (preemption bound 2)" 420 "${loom_env[@]}" \
        cargo test -q -p kepoch --release "${features[@]}" --test loom -- ${filter:+"$filter"}
fi

if [ "$failed" -ne 0 ]; then
    echo "safety-check: FAILED${mutation:+ (mutation $mutation)}"
    exit 1
fi
echo "safety-check: all checks passed${mutation:+ (mutation $mutation)}"
