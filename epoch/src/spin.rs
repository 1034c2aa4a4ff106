//! The core's spin lock, for the slow paths (slot registry, overflow slot, cycle statistics). Like
//! `KeAcquireSpinLock`, taking it raises to DISPATCH first and releasing it lowers back, so a caller
//! at PASSIVE cannot be preempted by a DPC on its own processor that wants the same lock (bugcheck
//! 0x133 on NT). The IRQL rule is in the type: the only way to the value is a guard made by `lock`.

use crate::platform::{Irql, Platform};
use crate::sync::{spin_hint, AtomicBool, Ordering};
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

/// Mutual exclusion by spinning at DISPATCH. The protected value is reachable only through
/// [`SpinGuard`].
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one holder at a time; T must be Send to move
// between the processors that take the lock.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: owning the lock owns the value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new, unlocked lock.
    pub(crate) fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Initialises an unlocked lock in place whose value is all zero bytes, without building the
    /// value anywhere else first (for values too large for a kernel stack).
    ///
    /// # Safety
    /// `lock` is valid for writes and suitably aligned, and all-zero bytes are a valid `T`.
    pub(crate) unsafe fn init_zeroed_in_place(lock: *mut Self) {
        // SAFETY: per the caller: writable, aligned, and zero is a valid `T`; the lock word is
        // written as a value (under loom and shuttle an atomic is an object, not zero bytes).
        unsafe {
            core::ptr::addr_of_mut!((*lock).locked).write(AtomicBool::new(false));
            UnsafeCell::raw_get(core::ptr::addr_of!((*lock).value)).write_bytes(0, 1);
        }
    }

    fn id(&self) -> *const () {
        self as *const Self as *const ()
    }

    /// Raises to DISPATCH (no-op if already there), spins until the lock is free and holds it until
    /// the guard drops, which releases it and restores the caller's IRQL. Any IRQL up to DISPATCH.
    pub(crate) fn lock<'a, P: Platform>(&'a self, platform: &'a P) -> SpinGuard<'a, T, P> {
        let previous = platform.raise_to_dispatch();
        self.acquire(platform);
        SpinGuard {
            lock: self,
            platform,
            restore: Some(previous),
        }
    }

    /// The `lock-without-raise` mutation: takes the lock at the caller's IRQL, as the first version
    /// did. Only mutation tests reach it.
    #[cfg(feature = "mutations")]
    pub(crate) fn lock_without_raise<'a, P: Platform>(
        &'a self,
        platform: &'a P,
    ) -> SpinGuard<'a, T, P> {
        self.acquire(platform);
        SpinGuard {
            lock: self,
            platform,
            restore: None,
        }
    }

    fn acquire<P: Platform>(&self, platform: &P) {
        let mut reported = false;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // A weak CAS may fail while the lock is free: only a held lock is contention.
            if self.locked.load(Ordering::Relaxed) && !reported {
                reported = true;
                platform.spin_lock_contended(self.id());
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_hint();
            }
        }
        platform.spin_lock_acquired(self.id());
    }
}

/// Proof of holding a [`SpinLock`] at DISPATCH; releases it and lowers the IRQL on drop.
pub(crate) struct SpinGuard<'a, T, P: Platform> {
    lock: &'a SpinLock<T>,
    platform: &'a P,
    /// IRQL to lower back to after releasing (`None`: the lock did not raise).
    restore: Option<Irql>,
}

impl<T, P: Platform> Deref for SpinGuard<'_, T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this holder owns the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T, P: Platform> DerefMut for SpinGuard<'_, T, P> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this holder owns the lock, and `&mut self` makes the
        // access unique among users of this guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T, P: Platform> Drop for SpinGuard<'_, T, P> {
    fn drop(&mut self) {
        self.platform.spin_lock_released(self.lock.id());
        self.lock.locked.store(false, Ordering::Release);
        if let Some(previous) = self.restore {
            self.platform.lower_irql(previous);
        }
    }
}
