//! Waiting on the simulated machine: PASSIVE-only checks, the processor-change callback lock, the
//! deterministic preemption points, and `wait_until` (pumps in deterministic mode, blocks in parallel
//! mode).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kepoch::platform::Irql;
use parking_lot::MutexGuard;
use rand::Rng;

use super::super::report::{CpuStatus, ViolationKind};
use super::super::state::{Shared, SimPlatform};
use super::{PARALLEL_WAIT_LIMIT, PUMP_LIMIT, SPIN_LIMIT};

impl SimPlatform {
    /// For the PASSIVE-only services (they wait): records [`ViolationKind::BlockingAtDispatch`] and
    /// returns false when called at DISPATCH or above (the caller then must not wait).
    pub(super) fn require_passive(&self, routine: &str) -> bool {
        let sh = &*self.shared;
        let c = sh.ctx();
        if c.irql >= Irql::DISPATCH {
            sh.violation(
                ViolationKind::BlockingAtDispatch,
                format!(
                    "{routine} called by {}: it is PASSIVE only (it waits)",
                    sh.describe_ctx(&c)
                ),
            );
            false
        } else {
            true
        }
    }

    /// Takes the lock that serialises processor-change callbacks: in deterministic mode only if it is
    /// free (its holder is suspended below the caller on the only thread and cannot finish), in
    /// parallel mode waiting up to 30 s. Records a [`ViolationKind::Callback`] when it cannot.
    pub(super) fn lock_callbacks(&self, routine: &str) -> Option<MutexGuard<'_, ()>> {
        let sh = &*self.shared;
        let guard = if sh.is_parallel() {
            let start = Instant::now();
            loop {
                if let Some(g) = sh.callback_lock.try_lock_for(Duration::from_millis(10)) {
                    break Some(g);
                }
                sh.unwind_if_halted();
                sh.unwind_if_stopped(routine);
                if start.elapsed() > Duration::from_secs(30) {
                    break None;
                }
            }
        } else {
            sh.callback_lock.try_lock()
        };
        if guard.is_none() {
            sh.violation(
                ViolationKind::Callback,
                format!("{routine}: a processor-change callback in progress never finished"),
            );
        }
        guard
    }

    /// Deterministic mode, at a platform call made below DISPATCH: with the configured chance (drawn
    /// only when something is queued or due) runs the caller's CPU's queued DPCs and a due timer
    /// *nested*, at DISPATCH on that CPU, as NT does when an interrupt arrives or the IRQL drops below
    /// DISPATCH. DPCs never preempt DPCs, and a CPU held at DISPATCH by another context runs nothing.
    pub(super) fn preemption_point(&self) {
        let sh = &*self.shared;
        let percent = sh.config.nested_dpc_percent;
        if percent == 0 || sh.is_parallel() || sh.is_halted() || std::thread::panicking() {
            return;
        }
        let c = sh.ctx();
        if c.irql >= Irql::DISPATCH || c.kind.is_dpc() || sh.cpu_locks[c.cpu].is_locked() {
            return;
        }
        {
            let mut st = sh.st.lock();
            if st.cpus[c.cpu].status != CpuStatus::Running
                || (st.cpus[c.cpu].dpcs.is_empty() && st.due_timer(sh.now()).is_none())
                || st.rng.gen_range(0..100u8) >= percent
            {
                return;
            }
            st.counters.preemptions += 1;
            st.trace(&[7, c.cpu as u64]);
        }
        super::super::sched::run_nested_dispatch(self, c.cpu);
    }

    /// Waits until `done()` holds: pumps the scheduler in deterministic mode, blocks (pumping the caller's
    /// own CPU queue if it is a CPU thread) in parallel mode. Records a violation on giving up. In a
    /// machine thread, a wait still blocked when the parallel run stops unwinds
    /// ([`Shared::unwind_if_stopped`]).
    pub(crate) fn wait_until(&self, what: &str, done: &mut dyn FnMut(&Shared) -> bool) {
        let sh = &*self.shared;
        if sh.is_halted() {
            sh.halted_wait(what);
            return;
        }
        if done(sh) {
            if !sh.is_parallel() {
                self.note_immediate_wait(what);
            }
            return;
        }
        sh.spin_count.store(0, Ordering::Relaxed);
        if !sh.is_parallel() {
            // A waiter is a thread at PASSIVE on its CPU: it cannot resume while a pumped task holds
            // that CPU at DISPATCH, so the wait also lasts until the CPU is free again.
            let me = sh.ctx().cpu;
            let mut resumable = |sh: &Shared| done(sh) && !sh.cpu_locks[me].is_locked();
            for _ in 0..PUMP_LIMIT {
                if resumable(sh) {
                    return;
                }
                if !super::super::sched::det_step(self) {
                    if resumable(sh) {
                        return;
                    }
                    self.shared.violation(
                        ViolationKind::WaitNeverSatisfied,
                        format!("{what}: wait never satisfied (machine idle)"),
                    );
                    return;
                }
            }
            self.shared.violation(
                ViolationKind::WaitNeverSatisfied,
                format!("{what}: wait never satisfied after {PUMP_LIMIT} steps"),
            );
            return;
        }
        let start = Instant::now();
        let c = sh.ctx();
        // As in deterministic mode, a waiter resumes only when its CPU is not held at DISPATCH.
        let mut resumable =
            |sh: &Shared| done(sh) && !(c.cpu_thread && sh.cpu_locks[c.cpu].is_locked());
        // While a machine thread is blocked here, a winding-down run lets tasks go on stepping.
        let _counted = sh.count_wait();
        while !resumable(sh) {
            if sh.is_halted() {
                sh.halted_wait(what);
                return;
            }
            sh.tick();
            sh.unwind_if_stopped(what);
            if start.elapsed() > PARALLEL_WAIT_LIMIT {
                sh.violation(
                    ViolationKind::WaitNeverSatisfied,
                    format!("{what}: wait never satisfied after {PARALLEL_WAIT_LIMIT:?}"),
                );
                return;
            }
            // The waiting thread runs its CPU's messages and also gives the CPU to the other tasks
            // there, as a blocked thread would be switched out: a reader stalled behind the waiter
            // could otherwise hold the wait forever. Both every round, so neither starves the other.
            let mut progressed = false;
            if c.cpu_thread {
                progressed |= super::super::sched::par_drain_dispatch_work(self, c.cpu);
                progressed |= super::super::sched::par_pick_task(self, c.cpu)
                    .is_some_and(|tid| super::super::sched::run_task(self, tid));
            }
            if progressed {
                continue;
            }
            let mut g = sh.ev_lock.lock();
            if resumable(sh) {
                return;
            }
            sh.ev_cv.wait_for(&mut g, Duration::from_micros(200));
        }
    }

    /// Deterministic mode: counts waits satisfied at once without simulated time advancing; past
    /// [`SPIN_LIMIT`] reports the spin once and lets the machine run a step per such wait.
    fn note_immediate_wait(&self, what: &str) {
        let sh = &*self.shared;
        let now = sh.now();
        if sh.spin_since.swap(now, Ordering::Relaxed) != now {
            sh.spin_count.store(1, Ordering::Relaxed);
            return;
        }
        let count = sh.spin_count.fetch_add(1, Ordering::Relaxed) + 1;
        if count < SPIN_LIMIT {
            return;
        }
        if count == SPIN_LIMIT {
            sh.violation(
                ViolationKind::BusyWait,
                format!(
                    "{what}: satisfied at once {SPIN_LIMIT} times in a row at simulated time {now} us: the waiter spins instead of blocking"
                ),
            );
        }
        // As in `wait_until`: the waiter resumes only once no pumped task holds its CPU at DISPATCH.
        let me = sh.ctx().cpu;
        let mut steps = 0;
        while super::super::sched::det_step(self)
            && sh.cpu_locks[me].is_locked()
            && steps < PUMP_LIMIT
        {
            steps += 1;
        }
    }
}
