#!/usr/bin/env bash
# Mutation score: every known bug shape (epoch/src/mutation.rs) is re-introduced in turn and must be
# caught by at least one check: the deterministic torture (with hot-adds) or the loom models. Prints the
# table of which check catches which mutation; exits 1 if a mutation survives.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t mutations < <(sed -n 's/^ *Mutation::[A-Za-z]* => "\([a-z-]*\)",$/\1/p' epoch/src/mutation.rs)
if [ "${#mutations[@]}" -eq 0 ]; then
    echo "mutation-score: no mutation names found in epoch/src/mutation.rs" >&2
    exit 1
fi

cargo build --release -q -p kepoch-sim --features mutations
# Build the loom models first, so that a compile error cannot pass for a caught mutation below.
RUSTFLAGS="--cfg loom" cargo test -q -p kepoch --features mutations --release --test loom --no-run
sim=target/release/kepoch-sim

# torture exits 1 on a violation (2 is a usage error); a failing loom test makes cargo exit 101.
verdict() { if [ "$1" -eq "$2" ]; then echo "caught"; else echo "missed"; fi; }

printf '%-24s %-12s %-12s\n' mutation torture loom
survivors=0
for mutation in "${mutations[@]}"; do
    torture_rc=0
    "$sim" torture --quiet --strategy callback --seeds 0..200 --mode deterministic --hot-add-rate 50 \
        --mutation "$mutation" >/dev/null 2>&1 || torture_rc=$?
    loom_rc=0
    KEPOCH_LOOM_MUTATION=$mutation RUSTFLAGS="--cfg loom" \
        cargo test -q -p kepoch --features mutations --release --test loom >/dev/null 2>&1 || loom_rc=$?
    torture=$(verdict "$torture_rc" 1)
    loom=$(verdict "$loom_rc" 101)
    printf '%-24s %-12s %-12s\n' "$mutation" "$torture" "$loom"
    if [ "$torture" = missed ] && [ "$loom" = missed ]; then
        survivors=$((survivors + 1))
    fi
done
if [ "$survivors" -ne 0 ]; then
    echo "mutation-score: $survivors mutation(s) not caught by any check" >&2
    exit 1
fi
echo "mutation-score: all ${#mutations[@]} mutations caught"
