//! loom models of the protocol: two or three model threads on the shared model machine
//! (`tests/model`), every interleaving of their atomic operations up to a preemption bound, with
//! loom's weak-memory model (stale loads, `fence(SeqCst)`, causality checking of the objects'
//! payload cells). Every model asserts on every path: S1 (no object freed while a reader that
//! could see it is inside: a payload read not ordered before the destructor's write is a loom
//! causality violation, a read after it panics), S3 (no message before AddComplete), S4 (no message
//! to a processor that never ran epoch code), S8 (nothing leaked or touched after unload: a platform
//! object used inside freed memory panics with "use after free"), S9 (IRQL rules).
//!
//! Run (CI, preemption bound 2):
//! `RUSTFLAGS="--cfg loom" cargo test -p kepoch --release --test loom`
//! Deeper: `LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test -p kepoch --release --test loom`.
//! With a re-introduced bug (see `epoch/src/mutation.rs`):
//! `KEPOCH_MUTATION=stamp-no-fence RUSTFLAGS="--cfg loom" cargo test -p kepoch --release --features mutations --test loom`.
#![cfg(loom)]

mod model;

use model::scenarios;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Explores `scenario` with loom: preemption bound 2 unless `LOOM_MAX_PREEMPTIONS` says otherwise.
/// Prints how many executions it explored and how long that took (`--nocapture` shows it).
fn explore(scenario: fn()) {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|set| set.parse().ok())
        .unwrap_or(2);
    explore_to(scenario, bound);
}

/// [`explore`] with preemption bound `bound`, or `LOOM_MAX_PREEMPTIONS` if that is lower.
fn explore_to(scenario: fn(), bound: usize) {
    static EXECUTIONS: AtomicUsize = AtomicUsize::new(0);
    let mut builder = loom::model::Builder::new();
    // A domain's life (load, prepare, cycles, unload) is thousands of atomic operations.
    builder.max_branches = 1_000_000;
    builder.preemption_bound = Some(builder.preemption_bound.map_or(bound, |set| set.min(bound)));
    let start = Instant::now();
    EXECUTIONS.store(0, Ordering::Relaxed);
    builder.check(move || {
        // A plain std counter: loom does not see it, so it orders nothing.
        EXECUTIONS.fetch_add(1, Ordering::Relaxed);
        scenario()
    });
    eprintln!(
        "loom explored {} executions in {:.1?}",
        EXECUTIONS.load(Ordering::Relaxed),
        start.elapsed()
    );
}

/// Declares one `#[test]` per scenario, each explored by loom.
macro_rules! loom_models {
    ($($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                explore(scenarios::$name);
            }
        )*
    };
}

scenarios::every_scenario!(loom_models);

/// Review 2026-12-06: see `scenarios::released_epoch_never_goes_back_while_a_cpu_joins`.
#[test]
fn released_epoch_never_goes_back_while_a_cpu_joins() {
    explore(scenarios::released_epoch_never_goes_back_while_a_cpu_joins);
}

/// See `scenarios::a_reader_joins_while_a_cycle_publishes`: its window is one preemption deep, and
/// its three threads at bound 2 take more than ten minutes, so a deeper `LOOM_MAX_PREEMPTIONS` does
/// not apply to it.
#[test]
fn a_reader_joins_while_a_cycle_publishes() {
    explore_to(scenarios::a_reader_joins_while_a_cycle_publishes, 1);
}

/// See `model::barrier::a_callback_queued_across_a_barrier_flip_is_found_by_the_next_barrier`.
#[test]
fn a_callback_queued_across_a_barrier_flip_is_found_by_the_next_barrier() {
    explore(model::barrier::a_callback_queued_across_a_barrier_flip_is_found_by_the_next_barrier);
}
