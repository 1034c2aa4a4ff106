//! The simulated periodic timer: its records and the timer services of the platform.

use std::sync::atomic::{AtomicU64, Ordering};

use kepoch::platform::Handler;

use super::super::report::ViolationKind;
use super::super::state::{SimPlatform, TimerRec};
use super::SimTimer;

impl SimPlatform {
    /// `timer_init`: a new timer record, stopped.
    ///
    /// # Safety
    /// As for the trait method: `timer` points to writable storage for a `SimTimer`.
    pub(super) unsafe fn init_timer(&self, timer: *mut SimTimer, handler: Handler) {
        let id = {
            let mut st = self.shared.st.lock();
            let id = st.new_id();
            st.timers.insert(
                id,
                TimerRec {
                    handler,
                    period_us: 0,
                    next_due: None,
                    pending: false,
                    running: false,
                },
            );
            id
        };
        // SAFETY: the caller guarantees `timer` points to writable storage for a SimTimer.
        unsafe {
            timer.write(SimTimer {
                id: AtomicU64::new(id),
            })
        };
    }

    /// `timer_start`: the first expiry one period from now.
    pub(super) fn start_timer(&self, timer: &SimTimer, period_us: u32) {
        let sh = &*self.shared;
        let id = timer.id.load(Ordering::Relaxed);
        let now = sh.now();
        let mut st = sh.st.lock();
        let Some(rec) = st.timers.get_mut(&id) else {
            drop(st);
            sh.violation(
                ViolationKind::BadObject,
                "timer_start on an uninitialised or released timer".into(),
            );
            return;
        };
        rec.period_us = u64::from(period_us.max(1));
        rec.next_due = Some(now + rec.period_us);
    }

    /// `timer_stop`: no further expiry; at PASSIVE, waits for a handler that is running.
    pub(super) fn stop_timer(&self, timer: &SimTimer) {
        let sh = &*self.shared;
        let id = timer.id.load(Ordering::Relaxed);
        let passive = self.require_passive("timer_stop");
        {
            let mut st = sh.st.lock();
            let Some(rec) = st.timers.get_mut(&id) else {
                drop(st);
                sh.violation(
                    ViolationKind::BadObject,
                    "timer_stop on an uninitialised or released timer".into(),
                );
                return;
            };
            rec.next_due = None;
            if rec.pending {
                rec.pending = false;
                for c in st.cpus.iter_mut() {
                    c.timer_runs.retain(|&t| t != id);
                }
            }
        }
        if passive {
            self.wait_until(
                "timer_stop",
                &mut |sh| !matches!(sh.st.lock().timers.get(&id), Some(t) if t.running),
            );
        }
    }

    /// `timer_release`: forgets the record; releasing a timer that is not stopped is a violation.
    ///
    /// # Safety
    /// As for the trait method: `timer` was initialised and is still at this address.
    pub(super) unsafe fn release_timer(&self, timer: *mut SimTimer) {
        let sh = &*self.shared;
        // SAFETY: the caller guarantees `timer` was initialised and is still at this address.
        let id = unsafe { (*timer).id.swap(0, Ordering::Relaxed) };
        let mut st = sh.st.lock();
        match st.timers.remove(&id) {
            None => {
                drop(st);
                sh.violation(
                    ViolationKind::BadObject,
                    "timer_release of an uninitialised or released timer".into(),
                );
            }
            Some(rec) if rec.next_due.is_some() || rec.running || rec.pending => {
                for c in st.cpus.iter_mut() {
                    c.timer_runs.retain(|&t| t != id);
                }
                drop(st);
                sh.violation(
                    ViolationKind::BadObject,
                    "timer_release of a timer that is not stopped".into(),
                );
            }
            Some(_) => {}
        }
    }
}
