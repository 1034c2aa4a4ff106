//! `SimPlatform`: the `kepoch::platform::Platform` implementation of the simulated machine.

use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kepoch::platform::{
    CurrentProcessor, Handler, Irql, IrqlRule, LogLevel, Platform, ProcessorChange,
    ProcessorChangeFn, ProcessorNumber, Status,
};
use parking_lot::MutexGuard;
use rand::Rng;

use super::report::{Bugcheck, CpuStatus, ViolationKind};
use super::state::{
    ctx_set, irql_name, Ctx, LockHolder, MsgRec, Reg, Shared, SimPlatform, TimerRec, WorkRec,
    STATUS_UNSUCCESSFUL,
};

/// Steps a deterministic wait may pump before it gives up with a violation.
pub const PUMP_LIMIT: u64 = 2_000_000;
/// Wall-clock time a parallel-mode wait may block before it gives up with a violation.
pub const PARALLEL_WAIT_LIMIT: Duration = Duration::from_secs(20);
/// Deterministic mode: after this many waits in a row that were satisfied at once at the same simulated
/// time, the waiter is spinning; a [`ViolationKind::BusyWait`] is recorded and each further such wait
/// runs one scheduler step first (a real thread would be preempted), so the run can finish.
pub const SPIN_LIMIT: u64 = 100_000;

/// The simulated KDPC: an id naming the machine's record (0 = not initialised).
#[derive(Debug, Default)]
pub struct SimMessage {
    id: AtomicU64,
}

/// The simulated periodic timer (0 = not initialised).
#[derive(Debug, Default)]
pub struct SimTimer {
    id: AtomicU64,
}

/// The simulated passive work item (0 = not initialised).
#[derive(Debug, Default)]
pub struct SimPassiveWork {
    id: AtomicU64,
}

/// The simulated notification event.
#[derive(Debug, Default)]
pub struct SimEvent {
    signalled: AtomicBool,
}

impl SimEvent {
    /// Whether the event is signalled now.
    pub fn is_signalled(&self) -> bool {
        self.signalled.load(Ordering::Acquire)
    }
}

/// The bugcheck of a spin that never ends at `irql`: the DPC watchdog fires at DISPATCH; below it NT
/// just hangs, and breaking in with a debugger is what would stop it.
fn spin_bugcheck_code(irql: Irql) -> (u32, &'static str) {
    if irql >= Irql::DISPATCH {
        Bugcheck::DPC_WATCHDOG_VIOLATION
    } else {
        Bugcheck::MANUALLY_INITIATED_CRASH
    }
}

impl SimPlatform {
    /// The machine this platform belongs to.
    pub fn machine(&self) -> super::Machine {
        super::Machine {
            platform: self.clone(),
        }
    }

    /// For the PASSIVE-only services (they wait): records [`ViolationKind::BlockingAtDispatch`] and
    /// returns false when called at DISPATCH or above (the caller then must not wait).
    fn require_passive(&self, routine: &str) -> bool {
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
    fn lock_callbacks(&self, routine: &str) -> Option<MutexGuard<'_, ()>> {
        let sh = &*self.shared;
        let guard = if sh.is_parallel() {
            let start = Instant::now();
            loop {
                if let Some(g) = sh.callback_lock.try_lock_for(Duration::from_millis(10)) {
                    break Some(g);
                }
                sh.unwind_if_halted();
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
    fn preemption_point(&self) {
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
        super::sched::run_nested_dispatch(self, c.cpu);
    }

    /// What the spin on `lock` by context `c` means, given its recorded holder: `Some((message,
    /// bugcheck code))` if it can never end — the holder is the spinner itself, or was preempted below
    /// DISPATCH on the spinner's CPU by a spinner at DISPATCH, or (deterministic mode, one context at
    /// a time) is any other context, which cannot run while the spinner spins.
    fn hopeless_spin(
        &self,
        c: &Ctx,
        lock: usize,
        holder: Option<&LockHolder>,
    ) -> Option<(String, (u32, &'static str))> {
        let sh = &*self.shared;
        let spinner = sh.describe_ctx(c);
        let code = spin_bugcheck_code(c.irql);
        let consequence = if c.irql >= Irql::DISPATCH {
            "on NT this is bugcheck 0x133 DPC_WATCHDOG_VIOLATION"
        } else {
            "on NT the spinning thread never gets the lock (the machine hangs)"
        };
        let Some(h) = holder else {
            return (!sh.is_parallel()).then(|| {
                (
                    format!(
                        "{spinner} spins on core spin lock {lock:#x}, which no known context holds \
                         (acquired without spin_lock_acquired) and nothing else can run in \
                         deterministic mode: {consequence}"
                    ),
                    code,
                )
            });
        };
        let held_by = sh.describe(h.kind, h.entry, h.cpu, h.irql);
        if h.serial == c.serial {
            return Some((
                format!(
                    "{spinner} spins on core spin lock {lock:#x}, which it already holds (acquired \
                     at IRQL {}): a recursive acquisition never succeeds; {consequence}",
                    irql_name(h.irql)
                ),
                code,
            ));
        }
        if h.cpu == c.cpu && h.irql < Irql::DISPATCH && c.irql >= Irql::DISPATCH {
            return Some((
                format!(
                    "{} on {} spins on core spin lock {lock:#x} held by {} preempted at IRQL {} on \
                     the same CPU: {consequence}",
                    sh.label(c.kind, c.entry),
                    sh.cpu_label(c.cpu),
                    sh.label(h.kind, h.entry),
                    irql_name(h.irql)
                ),
                code,
            ));
        }
        (!sh.is_parallel()).then(|| {
            (
                format!(
                    "{spinner} spins on core spin lock {lock:#x} held by {held_by}, which cannot run \
                     while the spinner spins (deterministic mode runs one context at a time and the \
                     holder is suspended below the spinner): {consequence}"
                ),
                code,
            )
        })
    }

    /// Waits until `done()` holds: pumps the scheduler in deterministic mode, blocks (pumping the caller's
    /// own CPU queue if it is a CPU thread) in parallel mode. Records a violation on giving up.
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
                if !super::sched::det_step(self) {
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
        while !resumable(sh) {
            if sh.is_halted() {
                sh.halted_wait(what);
                return;
            }
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
                progressed |= super::sched::par_drain_dispatch_work(self, c.cpu);
                if !sh.stop_tasks.load(Ordering::Acquire) {
                    if let Some(tid) = super::sched::par_pick_task(self, c.cpu) {
                        super::sched::run_task(self, tid);
                        progressed = true;
                    }
                }
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
        while super::sched::det_step(self) && sh.cpu_locks[me].is_locked() && steps < PUMP_LIMIT {
            steps += 1;
        }
    }
}

// SAFETY: raise_to_dispatch takes the CPU's exclusion lock, and every message/timer handler runs with that
// lock held on its bound CPU; allocations honour the layout (see alloc.rs).
unsafe impl Platform for SimPlatform {
    type Message = SimMessage;
    type Timer = SimTimer;
    type PassiveWork = SimPassiveWork;
    type Event = SimEvent;

    fn current_processor(&self) -> CurrentProcessor {
        self.preemption_point();
        let c = self.shared.ctx();
        self.shared.current(c.cpu)
    }

    fn current_irql(&self) -> Irql {
        self.shared.ctx().irql
    }

    fn raise_to_dispatch(&self) -> Irql {
        self.preemption_point();
        let c = self.shared.ctx();
        if c.irql < Irql::DISPATCH {
            self.shared.lock_cpu(c.cpu, "raise_to_dispatch");
            self.shared.set_irql(Irql::DISPATCH);
        }
        c.irql
    }

    fn lower_irql(&self, previous: Irql) {
        let c = self.shared.ctx();
        if previous > c.irql {
            self.shared.violation(
                ViolationKind::Irql,
                format!(
                    "lower_irql({}) above the current IRQL {}",
                    previous.0, c.irql.0
                ),
            );
            return;
        }
        self.shared.set_irql(previous);
        if c.irql >= Irql::DISPATCH && previous < Irql::DISPATCH {
            self.shared.unlock_cpu(c.cpu);
            // NT runs the DPCs queued meanwhile as soon as the IRQL drops below DISPATCH.
            self.preemption_point();
        }
    }

    fn max_processor_count(&self) -> u32 {
        self.shared.config.max_reported
    }

    fn active_processor_count(&self) -> u32 {
        let st = self.shared.st.lock();
        st.cpus
            .iter()
            .filter(|c| c.status == CpuStatus::Running)
            .count() as u32
    }

    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status> {
        let sh = &*self.shared;
        let Some(slot) = sh.slot_by_index(index) else {
            return Err(Status::INVALID_PARAMETER);
        };
        let st = sh.st.lock();
        match st.cpus[slot].status {
            CpuStatus::Running | CpuStatus::Starting => Ok(sh.slots[slot].number),
            CpuStatus::Absent => Err(Status::INVALID_PARAMETER),
        }
    }

    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        self.preemption_point();
        let c = self.shared.ctx();
        self.shared
            .alloc
            .allocate(layout, self.shared.slots[c.cpu].index, c.irql)
    }

    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        for p in self.shared.alloc.free(ptr, layout) {
            let (kind, msg) = match p {
                super::alloc::AllocProblem::Invalid(m) => (ViolationKind::BadFree, m),
                super::alloc::AllocProblem::Double(m) => (ViolationKind::DoubleFree, m),
                super::alloc::AllocProblem::Overwritten(m) => (ViolationKind::WriteAfterFree, m),
            };
            self.shared.violation(kind, msg);
        }
    }

    unsafe fn message_init(
        &self,
        message: *mut SimMessage,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status> {
        let sh = &*self.shared;
        let Some(slot) = sh.slots.iter().position(|s| s.number == target) else {
            sh.violation(
                ViolationKind::Routing,
                format!("message bound to processor {target}, which does not exist"),
            );
            return Err(Status::INVALID_PARAMETER);
        };
        let id = {
            let mut st = sh.st.lock();
            if st.cpus[slot].status == CpuStatus::Absent {
                drop(st);
                sh.violation(
                    ViolationKind::Routing,
                    format!(
                        "message bound to processor {target} (index {}), which is neither running nor announced by AddStart",
                        sh.slots[slot].index
                    ),
                );
                st = sh.st.lock();
            }
            let id = st.new_id();
            st.msgs.insert(
                id,
                MsgRec {
                    cpu: slot,
                    handler,
                    queued: false,
                },
            );
            id
        };
        // SAFETY: the caller guarantees `message` points to writable storage for a SimMessage.
        unsafe {
            message.write(SimMessage {
                id: AtomicU64::new(id),
            })
        };
        Ok(())
    }

    fn message_send(&self, message: &SimMessage) {
        let sh = &*self.shared;
        let id = message.id.load(Ordering::Relaxed);
        let mut st = sh.st.lock();
        let seq = st.next_msg_seq;
        let Some(&MsgRec { cpu, queued, .. }) = st.msgs.get(&id) else {
            drop(st);
            sh.violation(
                ViolationKind::BadObject,
                "message_send on an uninitialised or released message".into(),
            );
            return;
        };
        if queued {
            st.counters.messages_coalesced += 1;
            return;
        }
        if st.cpus[cpu].status != CpuStatus::Running {
            st.counters.messages_to_not_running += 1;
            let status = st.cpus[cpu].status;
            drop(st);
            sh.violation(
                ViolationKind::Routing,
                format!(
                    "message sent to CPU {} ({}), which is {status:?}; dropped",
                    sh.slots[cpu].index, sh.slots[cpu].number
                ),
            );
            return;
        }
        if let Some(rec) = st.msgs.get_mut(&id) {
            rec.queued = true;
        }
        st.next_msg_seq += 1;
        st.cpus[cpu].dpcs.push_back((id, seq));
        st.counters.messages_sent += 1;
        drop(st);
        if sh.is_parallel() {
            sh.work_cv.notify_all();
        }
        // A DPC queued below DISPATCH (to the caller's own CPU) may run at once.
        self.preemption_point();
    }

    unsafe fn message_release(&self, message: *mut SimMessage) {
        let sh = &*self.shared;
        // SAFETY: the caller guarantees `message` was initialised and is still at this address.
        let id = unsafe { (*message).id.swap(0, Ordering::Relaxed) };
        let mut st = sh.st.lock();
        match st.msgs.remove(&id) {
            None => {
                drop(st);
                sh.violation(
                    ViolationKind::BadObject,
                    "message_release of an uninitialised or released message".into(),
                );
            }
            Some(rec) => {
                if rec.queued {
                    st.cpus[rec.cpu].dpcs.retain(|&(m, _)| m != id);
                    drop(st);
                    sh.violation(
                        ViolationKind::BadObject,
                        "message_release of a queued message".into(),
                    );
                }
            }
        }
    }

    fn flush_messages(&self) {
        if !self.require_passive("flush_messages") {
            return;
        }
        let target = self.shared.st.lock().next_msg_seq;
        self.wait_until("flush_messages", &mut |sh| {
            let st = sh.st.lock();
            st.cpus.iter().all(|c| {
                !matches!(c.in_flight, Some(s) if s < target)
                    && c.dpcs.iter().all(|&(_, s)| s >= target)
            })
        });
    }

    unsafe fn timer_init(&self, timer: *mut SimTimer, handler: Handler) -> Result<(), Status> {
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
        Ok(())
    }

    fn timer_start(&self, timer: &SimTimer, period_us: u32) {
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

    fn timer_stop(&self, timer: &SimTimer) {
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

    unsafe fn timer_release(&self, timer: *mut SimTimer) {
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

    unsafe fn passive_init(
        &self,
        work: *mut SimPassiveWork,
        handler: Handler,
    ) -> Result<(), Status> {
        let id = {
            let mut st = self.shared.st.lock();
            let id = st.new_id();
            st.works.insert(
                id,
                WorkRec {
                    handler,
                    queued: false,
                    running: false,
                },
            );
            id
        };
        // SAFETY: the caller guarantees `work` points to writable storage for a SimPassiveWork.
        unsafe {
            work.write(SimPassiveWork {
                id: AtomicU64::new(id),
            })
        };
        Ok(())
    }

    fn passive_queue(&self, work: &SimPassiveWork) {
        let sh = &*self.shared;
        let id = work.id.load(Ordering::Relaxed);
        let mut st = sh.st.lock();
        let Some(rec) = st.works.get_mut(&id) else {
            drop(st);
            sh.violation(
                ViolationKind::BadObject,
                "passive_queue on an uninitialised or released work item".into(),
            );
            return;
        };
        if rec.queued {
            drop(st);
            sh.violation(
                ViolationKind::BadObject,
                "passive_queue of a work item that is already queued".into(),
            );
            return;
        }
        rec.queued = true;
        st.passive_queue.push_back(id);
        drop(st);
        if sh.is_parallel() {
            sh.work_cv.notify_all();
        }
    }

    unsafe fn passive_release(&self, work: *mut SimPassiveWork) {
        let sh = &*self.shared;
        // SAFETY: the caller guarantees `work` was initialised and is still at this address.
        let id = unsafe { (*work).id.swap(0, Ordering::Relaxed) };
        let mut st = sh.st.lock();
        match st.works.remove(&id) {
            None => {
                drop(st);
                sh.violation(
                    ViolationKind::BadObject,
                    "passive_release of an uninitialised or released work item".into(),
                );
            }
            // Releasing a running item is allowed from its own handler (its last use of the item).
            Some(rec) if rec.queued => {
                st.passive_queue.retain(|&w| w != id);
                drop(st);
                sh.violation(
                    ViolationKind::BadObject,
                    "passive_release of a queued work item".into(),
                );
            }
            Some(_) => {}
        }
    }

    unsafe fn event_init(&self, event: *mut SimEvent) {
        // SAFETY: the caller guarantees `event` points to writable storage for a SimEvent.
        unsafe { event.write(SimEvent::default()) };
    }

    fn event_signal(&self, event: &SimEvent) {
        self.preemption_point();
        // The waiter may free the memory holding `self` and `event` once the store is visible (the
        // platform lives inside the domain): take the machine (which outlives every domain on it)
        // first and touch only it afterwards. Parallel waiters also poll the flag, so waking them
        // needs only the machine's own lock and condition variable.
        let shared = self.shared.clone();
        event.signalled.store(true, Ordering::Release);
        SimPlatform { shared }.wake_waiters();
    }

    fn event_reset(&self, event: &SimEvent) {
        event.signalled.store(false, Ordering::Release);
    }

    fn event_wait(&self, event: &SimEvent) {
        if !self.require_passive("event_wait") {
            return;
        }
        self.wait_until("event_wait", &mut |_| event.is_signalled());
    }

    unsafe fn processor_change_register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status> {
        let sh = &*self.shared;
        if !sh.config.callback_api_present {
            return Ok(None);
        }
        self.require_passive("processor_change_register");
        let Some(_guard) = self.lock_callbacks("processor_change_register") else {
            return Err(STATUS_UNSUCCESSFUL);
        };
        let (running, starting) = {
            let st = sh.st.lock();
            let mut running = st.running_cpus();
            running.sort_by_key(|&c| sh.slots[c].index);
            (running, st.hot_cur.as_ref().map(|h| h.slot))
        };
        let mut replay = running.clone();
        replay.extend(starting);
        let mut started = Vec::new();
        for &slot in &replay {
            let status = self.deliver((callback, context), ProcessorChange::AddStart, slot);
            if !status.is_success() {
                for &done in &started {
                    self.deliver(
                        (callback, context),
                        ProcessorChange::AddFailure(status),
                        done,
                    );
                }
                return Err(status);
            }
            started.push(slot);
        }
        let id = {
            let mut st = sh.st.lock();
            let id = st.new_id();
            st.regs.insert(id, Reg { callback, context });
            if let Some(h) = st.hot_cur.as_mut() {
                h.notified.push(id);
            }
            id
        };
        for &slot in &running {
            self.deliver((callback, context), ProcessorChange::AddComplete, slot);
        }
        Ok(NonNull::new(id as usize as *mut ()))
    }

    unsafe fn processor_change_deregister(&self, handle: NonNull<()>) {
        let sh = &*self.shared;
        self.require_passive("processor_change_deregister");
        let id = handle.as_ptr() as usize as u64;
        let _guard = self.lock_callbacks("processor_change_deregister");
        let mut st = sh.st.lock();
        if st.regs.remove(&id).is_none() {
            drop(st);
            sh.violation(
                ViolationKind::Callback,
                format!("deregistration of unknown handle {id}"),
            );
            return;
        }
        if let Some(h) = st.hot_cur.as_mut() {
            h.notified.retain(|&r| r != id);
        }
    }

    fn now_ns(&self) -> u64 {
        self.preemption_point();
        // Parallel mode: real elapsed time; deterministic mode: simulated time.
        if self.shared.is_parallel() {
            self.shared.wall_origin.elapsed().as_nanos() as u64
        } else {
            self.shared.now().saturating_mul(1_000)
        }
    }

    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        self.preemption_point();
        self.shared.log_line(level, args.to_string());
    }

    fn verify_irql(&self, routine: &'static str, rule: IrqlRule) {
        let sh = &*self.shared;
        let mut c = sh.ctx();
        c.entry = Some(routine);
        ctx_set(Some(c));
        // The routine is named in the message; the context's earlier entry points do not matter here.
        c.entry = None;
        if !rule.allows(c.irql) {
            let required = match rule {
                IrqlRule::Passive => "PASSIVE_LEVEL only",
                IrqlRule::BelowDispatch => "below DISPATCH_LEVEL",
                IrqlRule::Dispatch => "DISPATCH_LEVEL only",
            };
            sh.violation(
                ViolationKind::Irql,
                format!(
                    "{routine} (IRQL rule {rule:?}: {required}) called by {}",
                    sh.describe_ctx(&c)
                ),
            );
        }
    }

    fn spin_lock_acquired(&self, lock: *const ()) {
        let sh = &*self.shared;
        let c = sh.ctx();
        let previous = {
            let mut locks = sh.spin_locks.lock();
            locks.acquisitions += 1;
            let holder = LockHolder {
                cpu: c.cpu,
                irql: c.irql,
                kind: c.kind,
                serial: c.serial,
                entry: c.entry,
                acquisition: locks.acquisitions,
            };
            locks.holders.insert(lock as usize, holder)
        };
        if let Some(h) = previous {
            sh.violation(
                ViolationKind::Exclusion,
                format!(
                    "core spin lock {:#x} acquired by {} while {} holds it",
                    lock as usize,
                    sh.describe_ctx(&c),
                    sh.describe(h.kind, h.entry, h.cpu, h.irql)
                ),
            );
        }
        if c.irql < Irql::DISPATCH {
            sh.violation(
                ViolationKind::SpinLockIrql,
                format!(
                    "core spin lock {:#x} acquired at IRQL {} in {} on {}: spin locks must be held \
                     at DISPATCH",
                    lock as usize,
                    irql_name(c.irql),
                    sh.label(c.kind, c.entry),
                    sh.cpu_label(c.cpu)
                ),
            );
            // The bug shape: a DPC arriving now on this CPU spins on the lock.
            self.preemption_point();
        }
    }

    fn spin_lock_contended(&self, lock: *const ()) {
        let sh = &*self.shared;
        if sh.is_halted() {
            sh.halted_wait("spin_lock_contended");
            return;
        }
        let c = sh.ctx();
        let holder = sh.spin_locks.lock().holders.get(&(lock as usize)).copied();
        if let Some((message, code)) = self.hopeless_spin(&c, lock as usize, holder.as_ref()) {
            sh.bugcheck(ViolationKind::Deadlock, code, message);
        }
        // Parallel mode: the holder runs on another thread. Watch this holding of the lock; if it lasts
        // past the limit, the spin never ends.
        let Some(h) = holder else { return };
        let limit = Duration::from_millis(sh.config.parallel_spin_limit_ms);
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            spins = spins.wrapping_add(1);
            if spins & 63 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let same = sh
                .spin_locks
                .lock()
                .holders
                .get(&(lock as usize))
                .is_some_and(|now| now.acquisition == h.acquisition);
            if !same {
                return;
            }
            if start.elapsed() > limit {
                sh.bugcheck(
                    ViolationKind::Deadlock,
                    spin_bugcheck_code(c.irql),
                    format!(
                        "{} spun on core spin lock {:#x} for {limit:?} while {} held it",
                        sh.describe_ctx(&c),
                        lock as usize,
                        sh.describe(h.kind, h.entry, h.cpu, h.irql)
                    ),
                );
            }
            sh.unwind_if_halted();
            std::thread::yield_now();
        }
    }

    fn spin_lock_released(&self, lock: *const ()) {
        let sh = &*self.shared;
        let c = sh.ctx();
        let holder = sh.spin_locks.lock().holders.remove(&(lock as usize));
        match holder {
            None => sh.violation(
                ViolationKind::Exclusion,
                format!(
                    "core spin lock {:#x} released by {}, but no context holds it",
                    lock as usize,
                    sh.describe_ctx(&c)
                ),
            ),
            Some(h) if h.serial != c.serial => sh.violation(
                ViolationKind::Exclusion,
                format!(
                    "core spin lock {:#x} released by {}, but {} acquired it",
                    lock as usize,
                    sh.describe_ctx(&c),
                    sh.describe(h.kind, h.entry, h.cpu, h.irql)
                ),
            ),
            Some(_) => {}
        }
    }
}
