//! The one place where the core picks its atomics: `core::sync::atomic` normally, loom's under
//! `--cfg loom` and shuttle's under `--cfg shuttle`, so that the model checkers see (and, for
//! shuttle, preempt at) every shared access.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
};

#[cfg(all(shuttle, not(loom)))]
pub(crate) use shuttle::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
};

#[cfg(not(any(loom, shuttle)))]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
};

/// Tells the processor (or the model checker's scheduler) that the caller is spinning.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(all(shuttle, not(loom)))]
    shuttle::thread::yield_now();
    #[cfg(not(any(loom, shuttle)))]
    core::hint::spin_loop();
}

/// Adds `delta` to a counter that only one processor writes, without a locked read-modify-write:
/// a relaxed load and a relaxed store (two plain `mov`s on x86). Readers on other processors may see
/// a slightly stale value, which is fine for statistics and for the owner-only reader counts.
#[inline]
pub(crate) fn owner_add(counter: &AtomicU64, delta: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(delta),
        Ordering::Relaxed,
    );
}
