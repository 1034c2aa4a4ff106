#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, the kernel-target build of the
# core, and the torture runs the README promises. CI (.ci/run) runs exactly this after installing tools.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p kepoch-sim --all-targets --features mutations -- -D warnings
echo "== cargo test"
cargo test --workspace --release
cargo test -p kepoch --release --features mutations
cargo test -p kepoch-sim --release --features mutations
echo "== core builds for the kernel target"
cargo build -p kepoch --target x86_64-pc-windows-msvc
echo "== driver and kepochctl lints (Windows targets)"
cargo clippy --target x86_64-pc-windows-msvc -p kepoch-driver --lib --bins -- -D warnings
cargo clippy --target x86_64-pc-windows-gnu -p kepochctl --all-targets -- -D warnings
echo "== Wine smoke test of kepoch.sys"
bash test-scripts/driver-smoke.sh
echo "== torture"
cargo run --release -p kepoch-sim -- torture --strategy lazy --seeds 0..200 --mode deterministic
cargo run --release -p kepoch-sim -- torture --strategy eager --seeds 0..50 --mode deterministic
cargo run --release -p kepoch-sim -- torture --strategy lazy --mode parallel --seconds 20
echo "== all tests passed"
