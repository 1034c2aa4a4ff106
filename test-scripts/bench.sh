#!/usr/bin/env bash
# Runs the kepoch benchmark suite in quick mode (well under 3 minutes including the build on a 2-core
# machine) and regenerates BENCHMARKS.md at the repository root: machine, command, every figure with its
# peer (crossbeam-epoch, seize) measured in the same run, the ratio and pass/miss against the targets.
#
#   test-scripts/bench.sh          quick mode (what BENCHMARKS.md is generated with)
#   test-scripts/bench.sh --full   more rounds and longer batches
#
# The criterion benchmarks of the per-operation figures: cargo bench -p kepoch-sim --bench epoch
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode=--quick
command="test-scripts/bench.sh"
if [[ "${1:-}" == "--full" ]]; then
    mode=
    command="test-scripts/bench.sh --full"
fi
KEPOCH_BENCH_COMMAND="$command" cargo bench -p kepoch-sim --bench report -- $mode --out "$root/BENCHMARKS.md"
