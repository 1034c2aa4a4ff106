//! The reclamation timer: a periodic KTIMER whose DPC runs the core's handler.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use kepoch::platform::Handler;

use crate::sys;

/// The reclamation timer: a periodic KTIMER whose DPC runs the handler. A run that finds the previous
/// one still in progress (a periodic DPC can run on two processors at once when a run outlasts the
/// period) skips the tick, so the handler never runs concurrently with itself.
///
/// The DPC never re-arms its own timer: calling `KeSetTimerEx` from the timer's DPC is legal on NT, but
/// Wine 8 then waits for its own thread-pool callback while holding its kernel-sync lock, which hangs
/// every later wait of the driver.
pub struct NtTimer {
    timer: UnsafeCell<MaybeUninit<sys::KTIMER>>,
    dpc: UnsafeCell<MaybeUninit<sys::KDPC>>,
    handler: UnsafeCell<MaybeUninit<Handler>>,
    armed: AtomicBool,
    running: AtomicBool,
}

// SAFETY: KTIMER/KDPC are used only through Ke* routines; the handler is written once before the timer
// can fire; the remaining state is atomic.
unsafe impl Send for NtTimer {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtTimer {}

unsafe extern "system" fn timer_dpc(
    _dpc: *mut sys::KDPC,
    context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    // SAFETY: `context` is the NtTimer owning this DPC (`init`); it lives until timer_release, which
    // the core calls only after `stop` has cancelled the timer and flushed every run of this DPC.
    let timer = unsafe { &*context.cast::<NtTimer>() };
    if !timer.armed.load(Ordering::SeqCst) || timer.running.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the handler was written by `init` before the timer could fire; its object is alive.
    unsafe { (*timer.handler.get()).assume_init_ref().invoke() };
    timer.running.store(false, Ordering::Release);
}

impl NtTimer {
    /// `timer_init`.
    ///
    /// # Safety
    /// `timer` is writable storage that stays in place until the timer is released; not armed.
    pub(super) unsafe fn init(timer: *mut NtTimer, handler: Handler) {
        // SAFETY: per the caller; nothing else reads it while we initialise it.
        unsafe {
            timer.write(NtTimer {
                timer: UnsafeCell::new(MaybeUninit::uninit()),
                dpc: UnsafeCell::new(MaybeUninit::uninit()),
                handler: UnsafeCell::new(MaybeUninit::new(handler)),
                armed: AtomicBool::new(false),
                running: AtomicBool::new(false),
            });
            let timer = &*timer;
            sys::KeInitializeTimerEx(timer.timer.get().cast(), sys::NOTIFICATION_TIMER);
            sys::KeInitializeDpc(
                timer.dpc.get().cast(),
                sys::deferred_routine(timer_dpc),
                ptr::from_ref(timer).cast(),
            );
        }
    }

    /// `timer_start`: periodic, every `period_us` rounded up to whole milliseconds.
    pub(super) fn start(&self, period_us: u32) {
        self.armed.store(true, Ordering::SeqCst);
        let due = relative_due_time(period_us);
        // SAFETY: timer and DPC were initialised by `init` and stay in place until timer_release;
        // KeSetTimerEx is callable at IRQL <= DISPATCH.
        unsafe {
            sys::KeSetTimerEx(
                self.timer.get().cast(),
                due,
                timer_period_ms(period_us),
                self.dpc.get().cast(),
            );
        }
    }

    /// `timer_stop`. PASSIVE_LEVEL.
    pub(super) fn stop(&self) {
        // After the cancel no new expiry is queued; the flush waits for a DPC already queued or running
        // (one that starts after the store of `armed` returns at once).
        self.armed.store(false, Ordering::SeqCst);
        // SAFETY: PASSIVE_LEVEL is the caller's contract; the timer was initialised.
        unsafe {
            sys::KeCancelTimer(self.timer.get().cast());
            sys::KeFlushQueuedDpcs();
        }
    }
}

/// The due time of the next tick of a timer with period `period_us`, in the relative 100 ns units of
/// `KeSetTimerEx` (negative = relative). A period of 0 is treated as 1 µs; NT rounds up to its clock
/// interval anyway.
pub(crate) fn relative_due_time(period_us: u32) -> i64 {
    -(i64::from(period_us.max(1)) * 10)
}

/// The period of a periodic `KeSetTimerEx` (milliseconds, at least 1) for a cycle period in
/// microseconds, rounded up. NT timers expire on clock ticks (1 to 15.6 ms), so sub-millisecond periods
/// are not available from a KTIMER anyway.
pub(crate) fn timer_period_ms(period_us: u32) -> i32 {
    i32::try_from(period_us.div_ceil(1000).max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_period_rounds_up_to_milliseconds() {
        assert_eq!(timer_period_ms(0), 1);
        assert_eq!(timer_period_ms(100), 1);
        assert_eq!(timer_period_ms(1000), 1);
        assert_eq!(timer_period_ms(1001), 2);
        assert_eq!(timer_period_ms(1_000_000), 1000);
        assert_eq!(timer_period_ms(u32::MAX), 4_294_968);
    }

    #[test]
    fn timer_due_time_is_relative_100ns() {
        assert_eq!(relative_due_time(1000), -10_000);
        assert_eq!(relative_due_time(0), -10);
        assert_eq!(relative_due_time(u32::MAX), -(u32::MAX as i64) * 10);
    }
}
