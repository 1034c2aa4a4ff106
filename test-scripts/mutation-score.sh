#!/usr/bin/env bash
# Mutation score: every bug shape in epoch/src/mutation.rs (logic mutations, and ordering mutations
# that weaken or reorder a step PROTOCOL.md's safety argument relies on) is re-introduced in turn and
# must make a check of safety-check.sh fail. The checks are tried cheapest first until one catches
# the mutation; the table says which did, with the failing tests (or torture seed). None of these
# checks depends on x86 timing: the unit tests and the deterministic torture are single-threaded and
# seeded, shuttle controls the schedule, loom explores the C++/Rust memory model. Exits 1 if a
# mutation survives every check, 3 if a check could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Mutations no check catches yet, each with the reason; printed as MISSED (known) without failing
# the score, so that CI still fails on any other survivor. A known survivor that gets caught fails the
# score too, until it is taken off this list. Empty when every mutation is caught.
declare -A known_survivors=(
)

# The checks of safety-check.sh, cheapest first; each mutation is tried against them in turn until
# one fails.
checks=(unit loom torture shuttle)

# failing_tests LOG: the names of the failing tests (cargo's "failures:" list) or the failing seed
# (torture), comma-separated.
failing_tests() {
    {
        awk '/^failures:$/ { listing = 1; next }
             listing && /^    [A-Za-z0-9_:]+$/ { print $1 }
             /^test result/ { listing = 0 }' "$1"
        grep -o 'VIOLATION with seed [0-9]*' "$1" | sed 's/VIOLATION with //' || true
    } | sort -u | head -n 3 | paste -sd, -
}

mapfile -t rows < <(sed -n 's/^ *[A-Za-z]* = [0-9]*, "\([a-z-]*\)", \(Logic\|Ordering\);$/\1 \2/p' \
    epoch/src/mutation.rs)
if [ "${#rows[@]}" -eq 0 ]; then
    echo "mutation-score: no mutation found in epoch/src/mutation.rs" >&2
    exit 3
fi

mkdir -p target
printf '%-31s %-9s %-8s %s\n' mutation kind "caught" "by (failing tests or seed)"
survivors=0
known_missed=0
for row in "${rows[@]}"; do
    read -r mutation kind <<<"$row"
    caught=""
    detail=""
    log="target/mutation-$mutation.log"
    for check in "${checks[@]}"; do
        rc=0
        bash test-scripts/safety-check.sh --quiet --mutation "$mutation" --only "$check" >"$log" 2>&1 ||
            rc=$?
        case "$rc" in
        0) ;;
        1)
            caught="$check"
            detail=$(failing_tests "$log")
            break
            ;;
        *)
            tail -n 20 "$log"
            echo "mutation-score: check $check could not run for $mutation (exit $rc)" >&2
            exit 3
            ;;
        esac
    done
    known="${known_survivors[$mutation]:-}"
    if [ -z "$caught" ] && [ -n "$known" ]; then
        printf '%-31s %-9s %-8s %s\n' "$mutation" "$kind" "MISSED" "known survivor: $known"
        known_missed=$((known_missed + 1))
        continue
    fi
    printf '%-31s %-9s %-8s %s\n' "$mutation" "$kind" "${caught:-MISSED}" "${detail:-tried: ${checks[*]}}"
    if [ -z "$caught" ]; then
        survivors=$((survivors + 1))
    elif [ -n "$known" ]; then
        echo "mutation-score: $mutation is caught now: take it off known_survivors" >&2
        survivors=$((survivors + 1))
    fi
done
if [ "$survivors" -ne 0 ]; then
    echo "mutation-score: $survivors mutation(s) not caught (logs: target/mutation-*.log)" >&2
    exit 1
fi
if [ "$known_missed" -ne 0 ]; then
    echo "mutation-score: $((${#rows[@]} - known_missed)) of ${#rows[@]} mutations caught; $known_missed KNOWN SURVIVOR(S) listed above"
else
    echo "mutation-score: all ${#rows[@]} mutations caught"
fi
