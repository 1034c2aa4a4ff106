#!/usr/bin/env bash
# Mutation score: every bug shape in epoch/src/mutation.rs (logic mutations and ordering mutations,
# which weaken or reorder a step PROTOCOL.md's safety argument relies on) is re-introduced in turn
# and must make a check of `safety-check.sh` fail. The checks named for a mutation below are tried in
# order until one catches it (the cheap ones first); the table says which did. None of these checks
# depends on x86 timing: the unit tests and the deterministic torture are single-threaded and seeded,
# shuttle controls the schedule, loom explores the C++/Rust memory model. Exits 1 if a mutation
# survives every check named for it, 3 if a check could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

# mutation -> checks to try (CHECK or CHECK:TEST-FILTER, see safety-check.sh --only). A mutation
# missing here is tried against every check.
declare -A catchers=(
    [skip-reader-scan]="unit torture"
    [local-epoch-stamp]="torture loom"
    [route-before-complete]="unit torture"
    [release-while-joining]="unit torture"
    [change-ring-in-flight]="unit torture"
    [activate-remote]="torture loom"
    [lock-without-raise]="unit torture"
    [lost-exit]="unit torture"
    [recursive-chaining]="unit"
    [unload-drain-once]="unit torture"
)

mapfile -t rows < <(sed -n 's/^ *[A-Za-z]* = [0-9]*, "\([a-z-]*\)", \(Logic\|Ordering\);$/\1 \2/p' \
    epoch/src/mutation.rs)
if [ "${#rows[@]}" -eq 0 ]; then
    echo "mutation-score: no mutation found in epoch/src/mutation.rs" >&2
    exit 3
fi

mkdir -p target
printf '%-32s %-9s %-28s %s\n' mutation kind "caught by" "checks tried"
survivors=0
for row in "${rows[@]}"; do
    read -r mutation kind <<<"$row"
    checks="${catchers[$mutation]:-unit torture shuttle loom}"
    caught=""
    tried=()
    for check in $checks; do
        tried+=("$check")
        rc=0
        bash test-scripts/safety-check.sh --quiet --mutation "$mutation" --only "$check" \
            >"target/mutation-$mutation.log" 2>&1 || rc=$?
        case "$rc" in
        0) ;;
        1) caught="$check"; break ;;
        *)
            tail -n 20 "target/mutation-$mutation.log"
            echo "mutation-score: check $check could not run for $mutation (exit $rc)" >&2
            exit 3
            ;;
        esac
    done
    printf '%-32s %-9s %-28s %s\n' "$mutation" "$kind" "${caught:-MISSED}" "${tried[*]}"
    if [ -z "$caught" ]; then
        survivors=$((survivors + 1))
    fi
done
if [ "$survivors" -ne 0 ]; then
    echo "mutation-score: $survivors mutation(s) not caught (logs: target/mutation-*.log)" >&2
    exit 1
fi
echo "mutation-score: all ${#rows[@]} mutations caught"
