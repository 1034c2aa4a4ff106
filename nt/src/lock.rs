//! [`PassiveLock`]: a lock for PASSIVE_LEVEL callers (a synchronization event), held only inside a
//! critical region, so normal kernel APCs, among them thread suspension, cannot stop its holder.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;

use crate::sys;

/// A lock for PASSIVE_LEVEL callers: a synchronization event, signalled when free, held only inside a
/// critical region (see [`with_passive_lock`]). All-zero bytes are a valid uninitialised lock.
pub struct PassiveLock {
    event: UnsafeCell<MaybeUninit<sys::KEVENT>>,
}

// SAFETY: the KEVENT is a dispatcher object used only through Ke* routines, which synchronise.
unsafe impl Sync for PassiveLock {}
// SAFETY: see the Sync impl.
unsafe impl Send for PassiveLock {}

impl PassiveLock {
    /// Initialises the lock (unlocked) at its final address.
    ///
    /// # Safety
    /// `this` is the lock's final address, writable; it is initialised once, before any use, and
    /// not moved afterwards.
    pub unsafe fn init(this: *mut PassiveLock) {
        // SAFETY: per the caller; a synchronization event created signalled = an unlocked lock.
        unsafe {
            let event = UnsafeCell::raw_get(ptr::addr_of!((*this).event)).cast::<sys::KEVENT>();
            sys::KeInitializeEvent(event, sys::SYNCHRONIZATION_EVENT, true);
        }
    }

    fn event(&self) -> *mut sys::KEVENT {
        self.event.get().cast()
    }

    /// Runs `f` with the lock held. PASSIVE_LEVEL only, after [`PassiveLock::init`].
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        with_passive_lock(self, f)
    }
}

impl CriticalRegionLock for PassiveLock {
    fn enter_critical_region(&self) {
        // SAFETY: no arguments; PASSIVE_LEVEL callers only (PassiveLock::with's contract); paired with
        // leave_critical_region by with_passive_lock.
        unsafe { sys::KeEnterCriticalRegion() }
    }

    fn leave_critical_region(&self) {
        // SAFETY: pairs the enter_critical_region of the same with_passive_lock call.
        unsafe { sys::KeLeaveCriticalRegion() }
    }

    fn acquire(&self) {
        // SAFETY: initialised (PassiveLock::with's contract); an untimed kernel-mode wait at PASSIVE
        // returns once the auto-reset event is ours.
        unsafe {
            sys::KeWaitForSingleObject(
                self.event().cast(),
                sys::EXECUTIVE,
                sys::KERNEL_MODE,
                false,
                ptr::null(),
            );
        }
    }

    fn release(&self) {
        // SAFETY: initialised; signalling the event hands the lock to one waiter.
        unsafe { sys::KeSetEvent(self.event(), 0, false) };
    }
}

/// The kernel calls behind the `PassiveLock`.
pub trait CriticalRegionLock {
    /// `KeEnterCriticalRegion`: disables normal kernel APCs for the current thread.
    fn enter_critical_region(&self);
    /// `KeLeaveCriticalRegion`.
    fn leave_critical_region(&self);
    /// Waits until the lock is ours (`KeWaitForSingleObject` on the synchronization event).
    fn acquire(&self);
    /// Releases the lock (`KeSetEvent`).
    fn release(&self);
}

/// Runs `f` holding the lock, inside a critical region from before the wait to after the release.
pub fn with_passive_lock<L: CriticalRegionLock, R>(lock: &L, f: impl FnOnce() -> R) -> R {
    lock.enter_critical_region();
    lock.acquire();
    let result = f();
    lock.release();
    lock.leave_critical_region();
    result
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::cell::RefCell;
    use std::string::{String, ToString};
    use std::vec;
    use std::vec::Vec;

    /// Models the thread holding the lock: a suspend request (a normal kernel APC) is delivered at once
    /// unless the thread is in a critical region; a suspended lock holder keeps the lock forever.
    #[derive(Default)]
    struct LockModel {
        events: RefCell<Vec<String>>,
        critical: RefCell<u32>,
        held: RefCell<bool>,
    }

    impl LockModel {
        /// Another thread suspends the current one (`SuspendThread` → a kernel APC).
        fn suspend_request(&self) {
            let delivered = *self.critical.borrow() == 0;
            let held = *self.held.borrow();
            self.events.borrow_mut().push(if delivered && held {
                "suspended while holding the lock".to_string()
            } else if delivered {
                "suspended".to_string()
            } else {
                "suspend deferred".to_string()
            });
        }
    }

    impl CriticalRegionLock for LockModel {
        fn enter_critical_region(&self) {
            *self.critical.borrow_mut() += 1;
            self.events
                .borrow_mut()
                .push("enter_critical_region".into());
        }
        fn leave_critical_region(&self) {
            *self.critical.borrow_mut() -= 1;
            self.events
                .borrow_mut()
                .push("leave_critical_region".into());
        }
        fn acquire(&self) {
            *self.held.borrow_mut() = true;
            self.events.borrow_mut().push("acquire".into());
        }
        fn release(&self) {
            *self.held.borrow_mut() = false;
            self.events.borrow_mut().push("release".into());
        }
    }

    #[test]
    fn the_passive_lock_is_held_only_inside_a_critical_region() {
        let lock = LockModel::default();
        let value = with_passive_lock(&lock, || {
            lock.suspend_request();
            7
        });
        assert_eq!(value, 7);
        assert_eq!(
            *lock.events.borrow(),
            vec![
                "enter_critical_region",
                "acquire",
                "suspend deferred",
                "release",
                "leave_critical_region",
            ]
        );
        assert_eq!(*lock.critical.borrow(), 0);
        assert!(!*lock.held.borrow());
    }
}
