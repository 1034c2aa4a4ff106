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

/// Evidence that this thread has just completed an atomic read-modify-write on a retire header's
/// state, for the retirement stamp's fence that follows it (PROTOCOL.md, fence FW).
#[must_use]
pub(crate) struct LockedRmw(());

impl LockedRmw {
    /// `compare_exchange` on a byte; the evidence on success, the value found on failure.
    ///
    /// Success is always `AcqRel`: its release half keeps the compiler from sinking earlier stores
    /// (the unlink) below the RMW, its acquire half from hoisting later loads (the stamp) above it,
    /// which is what lets [`LockedRmw::full_fence`] leave the rest to the hardware on x86-64.
    #[inline(always)]
    pub(crate) fn compare_exchange(
        atomic: &AtomicU8,
        current: u8,
        new: u8,
        failure: Ordering,
    ) -> Result<LockedRmw, u8> {
        atomic
            .compare_exchange(current, new, Ordering::AcqRel, failure)
            .map(|_| LockedRmw(()))
    }

    /// A full fence after the read-modify-write: `fence(SeqCst)` in the language's terms, and so
    /// under loom, shuttle and Miri, which check those terms (the `stamp-no-fence` mutation is caught
    /// there). On x86-64 every atomic read-modify-write is a LOCK-prefixed instruction, and loads and
    /// stores are not reordered with locked instructions (Intel SDM vol. 3A, "Memory Ordering in P6
    /// and More Recent Processor Families"; AMD APM vol. 2, "Memory Barrier Interaction with Memory
    /// Types"): everything before the RMW is ordered before everything after it, as `mfence` would
    /// order it, so the `mfence` this replaces (6–8 ns) bought nothing; only the compiler is held
    /// back. The test `tests::hardware` shows this CPU keeps the order. On x86-64, accesses between
    /// the RMW and this call are not ordered by it: the callers have none that need to be.
    #[inline(always)]
    pub(crate) fn full_fence(self) {
        #[cfg(all(target_arch = "x86_64", not(any(loom, shuttle, miri))))]
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        #[cfg(not(all(target_arch = "x86_64", not(any(loom, shuttle, miri)))))]
        fence(Ordering::SeqCst);
    }
}

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
