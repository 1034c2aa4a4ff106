#!/usr/bin/env bash
# Checks wine_batch (test-scripts/wine/prefix.sh) without Wine: `wine` and `wineserver` are stand-ins
# that fail to start the way Wine does ("failed to map the shared user data") a given number of times.
# A batch is run again after each such failure, at most three times in all, with a RETRY line each
# time; the PREPARE command runs before every attempt; a batch whose Wine started is not run again;
# a failing PREPARE fails wine_batch with a FAIL line and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=SCRIPTDIR/prefix.sh
source test-scripts/wine/prefix.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

starts_failing=0 attempts=0 prepared=0 failures=0
# The stand-ins: the first $starts_failing runs fail to start, the others print the attempt number.
wine() {
    attempts=$((attempts + 1))
    if [ "$attempts" -le "$starts_failing" ]; then
        echo "wine: failed to map the shared user data: c0000018" >&2
        return 1
    fi
    echo "ran on attempt $attempts"
}
wineserver() { :; }
timeout() { shift; "$@"; }
prepare() { prepared=$((prepared + 1)); }
fail() { echo "FAIL [wine_batch]: $*"; failures=$((failures + 1)); }

# case_of FAILS WANT_ATTEMPTS WANT_OUTPUT: wine_batch with PREPARE when Wine fails to start FAILS
# times; an empty WANT_OUTPUT: every attempt failed, the caller must see it in the log.
case_of() {
    local fails=$1 want_attempts=$2 want_out=$3 retries
    starts_failing=$fails attempts=0 prepared=0
    wine_batch -all 10 'C:\x.bat' "$work/out" "$work/log" prepare >"$work/printed"
    [ "$attempts" -eq "$want_attempts" ] || fail "$fails start failure(s): $attempts attempt(s), expected $want_attempts"
    [ "$prepared" -eq "$want_attempts" ] || fail "$fails start failure(s): PREPARE ran $prepared time(s), expected $want_attempts"
    retries=$(grep -c '^RETRY: ' "$work/printed" || true)
    [ "$retries" -eq "$((fails < 3 ? fails : 3))" ] || fail "$fails start failure(s): $retries RETRY line(s)"
    if [ -n "$want_out" ]; then
        grep -q -x "$want_out" "$work/out" || fail "$fails start failure(s): the batch's output is not '$want_out'"
    else
        grep -q 'failed to map the shared user data' "$work/log" ||
            fail "$fails start failure(s): the last attempt's log does not show the failure to its caller"
    fi
}
case_of 0 1 "ran on attempt 1"
case_of 2 3 "ran on attempt 3"
case_of 5 3 ""

# A PREPARE that fails on the second attempt: wine_batch stops there, saying so.
starts_failing=1 attempts=0 prepared=0
prepare_fails_second() { prepared=$((prepared + 1)); [ "$prepared" -lt 2 ]; }
status=0
wine_batch -all 10 'C:\x.bat' "$work/out" "$work/log" prepare_fails_second >"$work/printed" || status=$?
[ "$status" -eq 1 ] || fail "a failing PREPARE: wine_batch returned $status, expected 1"
[ "$attempts" -eq 1 ] || fail "a failing PREPARE: $attempts attempt(s) of the batch, expected 1"
grep -q '^FAIL: prepare_fails_second (before attempt 2' "$work/printed" ||
    fail "a failing PREPARE: no FAIL line naming it"
echo "wine_batch: $failures failure(s)"
[ "$failures" -eq 0 ]
