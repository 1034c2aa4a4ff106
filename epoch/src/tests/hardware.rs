//! The processor keeps the order `LockedRmw::full_fence` relies on: a store, then an atomic
//! read-modify-write, then a load of another location is never seen as store buffering (the load
//! taking effect before the store), against a thread that stores, fences and loads the other way.
//! Rounds without the read-modify-write, interleaved with the others in the same run, show that this
//! machine does reorder a plain store and load, so the check can fail; where they never reorder (one
//! core), the test says SKIPPED.

use crate::sync::{AtomicU8, LockedRmw, Ordering};
use std::eprintln;
use std::sync::atomic::{fence, AtomicU32};
use std::thread;

/// Rounds of the litmus test (half with the read-modify-write, half without): enough to see
/// thousands of store-buffering outcomes on two cores when nothing orders the store and the load.
const ROUNDS: u32 = 100_000;

/// Spins until `done` holds, yielding now and then so that a loaded or single-core machine still
/// gets through (a spin that never yields could take minutes there).
fn spin_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins += 1;
        if spins.is_multiple_of(1024) {
            thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// Store-buffering outcomes `(with the read-modify-write, without)`: rounds in which each thread's
/// load missed the other thread's store of that round. Both threads run the rounds in lock step
/// (they leave a shared arrival counter together, so their store/load windows overlap); odd rounds
/// put the read-modify-write between side 0's store and load, even rounds a compiler fence only.
fn store_buffering_outcomes() -> (u32, u32) {
    let vars = [AtomicU32::new(0), AtomicU32::new(0)];
    let seen = [AtomicU32::new(0), AtomicU32::new(0)];
    let state = AtomicU8::new(0);
    let arrived = AtomicU32::new(0);
    let finished = AtomicU32::new(0);
    let missed = [AtomicU32::new(0), AtomicU32::new(0)];
    let side = |me: usize| {
        for i in 1..=ROUNDS {
            let with_rmw = i % 2 == 1;
            arrived.fetch_add(1, Ordering::AcqRel);
            spin_until(|| arrived.load(Ordering::Acquire) >= 2 * i);
            vars[me].store(i, Ordering::Relaxed);
            if me == 1 {
                // The other side of the pattern: a plain full fence, as the cycle's fence FC.
                fence(Ordering::SeqCst);
            } else if with_rmw {
                let current = state.load(Ordering::Relaxed);
                if let Ok(rmw) =
                    LockedRmw::compare_exchange(&state, current, current ^ 1, Ordering::Relaxed)
                {
                    rmw.full_fence();
                }
            } else {
                core::sync::atomic::compiler_fence(Ordering::SeqCst);
            }
            seen[me].store(vars[1 - me].load(Ordering::Relaxed), Ordering::Relaxed);
            finished.fetch_add(1, Ordering::AcqRel);
            spin_until(|| finished.load(Ordering::Acquire) >= 2 * i);
            // Nobody overwrites `seen` before side 0 has read it: the next round's arrival waits
            // for both sides.
            if me == 0
                && seen[0].load(Ordering::Relaxed) != i
                && seen[1].load(Ordering::Relaxed) != i
            {
                missed[usize::from(!with_rmw)].fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    thread::scope(|s| {
        s.spawn(|| side(1));
        side(0);
    });
    let [with_rmw, without] = missed;
    (with_rmw.into_inner(), without.into_inner())
}

// Miri runs the fence the language defines, not the x86-64 shortcut this checks (and far too slowly).
#[test]
#[cfg_attr(miri, ignore)]
fn a_locked_read_modify_write_orders_a_store_before_a_later_load() {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!(
            "SKIPPED: store-buffering litmus test: {cores} core(s); two threads must run at once"
        );
        return;
    }
    let (with_rmw, without) = store_buffering_outcomes();
    let half = ROUNDS / 2;
    eprintln!(
        "store buffering: {with_rmw} of {half} rounds with the read-modify-write, {without} of {half} without"
    );
    assert_eq!(
        with_rmw, 0,
        "a store moved after a later load across LockedRmw::full_fence: its x86-64 shortcut is wrong here"
    );
    if without == 0 {
        eprintln!(
            "SKIPPED: the interleaved rounds without the read-modify-write saw no store buffering \
             either: this run cannot show that the check can fail"
        );
    }
}
