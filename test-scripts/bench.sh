#!/usr/bin/env bash
# Runs the kepoch benchmark suite in quick mode (about 30 s of measurement after the build) and
# regenerates this CPU vendor's section of BENCHMARKS.md at the repository root, keeping the other
# vendors' sections: machine, command, every figure with its peers (crossbeam-epoch, seize, liburcu,
# the floor) measured in the same rounds, the ratio's median and spread, and pass/miss per target.
# liburcu comes from liburcu-dev (test-scripts/setup.sh); without it the liburcu rows say SKIPPED.
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
if [[ ! -e /usr/include/urcu/urcu-memb.h && ! -e /usr/include/x86_64-linux-gnu/urcu/urcu-memb.h ]]; then
    echo "SKIPPED: liburcu peers: liburcu-dev is not installed (run test-scripts/setup.sh)"
fi
# Deadlines: the build (the first one on a fresh clone compiles criterion and the peers; debug info is
# left out, the report does not need it), then the measurement; either fails instead of hanging.
export CARGO_PROFILE_BENCH_DEBUG=0
timeout 1200 cargo bench -p kepoch-sim --bench report --no-run
KEPOCH_BENCH_COMMAND="$command" timeout 300 \
    cargo bench -p kepoch-sim --bench report -- $mode --out "$root/BENCHMARKS.md"
