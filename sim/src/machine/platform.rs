//! `SimPlatform`: the `kepoch::platform::Platform` implementation of the simulated machine.

use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kepoch::platform::{
    CurrentProcessor, Handler, Irql, LogLevel, Platform, ProcessorChange, ProcessorChangeFn,
    ProcessorNumber, Status,
};

use super::report::{CpuStatus, ViolationKind};
use super::state::{MsgRec, Reg, Shared, TimerRec, WorkRec};

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

/// The simulated host. Cheap to clone; every clone talks to the same machine.
#[derive(Clone)]
pub struct SimPlatform {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimPlatform(machine {})", self.shared.id)
    }
}

/// STATUS_UNSUCCESSFUL, the status of a simulated failed hot-add.
pub const STATUS_UNSUCCESSFUL: Status = Status(0xC000_0001u32 as i32);

impl SimPlatform {
    /// The machine this platform belongs to.
    pub fn machine(&self) -> super::Machine {
        super::Machine {
            platform: self.clone(),
        }
    }

    fn require_passive(&self, what: &str) -> bool {
        let c = self.shared.ctx();
        if c.irql >= Irql::DISPATCH {
            self.shared.violation(
                ViolationKind::BlockingAtDispatch,
                format!("{what} called at IRQL {}", c.irql.0),
            );
            false
        } else {
            true
        }
    }

    /// Waits until `done()` holds: pumps the scheduler in deterministic mode, blocks (pumping the caller's
    /// own CPU queue if it is a CPU thread) in parallel mode. Records a violation on giving up.
    pub(crate) fn wait_until(&self, what: &str, done: &mut dyn FnMut(&Shared) -> bool) {
        let sh = &*self.shared;
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

    /// Wakes parallel-mode waiters after a state change they may wait for.
    pub(crate) fn wake_waiters(&self) {
        if self.shared.is_parallel() {
            let _g = self.shared.ev_lock.lock();
            self.shared.ev_cv.notify_all();
        }
    }

    /// Delivers one processor-change notification from the caller's context; returns its status.
    pub(crate) fn deliver(
        &self,
        reg: (ProcessorChangeFn, *const ()),
        change: ProcessorChange,
        slot: usize,
    ) -> Status {
        let sh = &*self.shared;
        let c = sh.ctx();
        let irql = c.irql.min(Irql::APC);
        let processor = sh.current(slot);
        let (status, end) = sh.in_ctx(c.cpu, irql, || {
            // SAFETY: the registrant promised `context` stays valid until deregistration, and we only call
            // registered callbacks while holding the callback lock that deregistration also takes.
            unsafe { (reg.0)(reg.1, change, processor) }
        });
        if end >= Irql::DISPATCH {
            sh.unlock_cpu(c.cpu);
        }
        sh.check_irql("processor-change callback", irql, end, c.cpu);
        status
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
        let c = self.shared.ctx();
        self.shared.current(c.cpu)
    }

    fn current_irql(&self) -> Irql {
        self.shared.ctx().irql
    }

    fn raise_to_dispatch(&self) -> Irql {
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
        if c.irql >= Irql::DISPATCH && previous < Irql::DISPATCH {
            self.shared.unlock_cpu(c.cpu);
        }
        self.shared.set_irql(previous);
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
        // The waiter may free the memory holding `self` and `event` once the store is visible: take
        // the machine (which outlives every domain on it) first and touch only it afterwards.
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
        if sh.ctx().irql > Irql::APC {
            sh.violation(
                ViolationKind::Callback,
                "processor_change_register above APC level".into(),
            );
        }
        let guard = if sh.is_parallel() {
            sh.callback_lock.try_lock_for(Duration::from_secs(30))
        } else {
            sh.callback_lock.try_lock()
        };
        let Some(_guard) = guard else {
            sh.violation(
                ViolationKind::Callback,
                "processor_change_register: callback lock never free".into(),
            );
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
        let _guard = sh.callback_lock.lock();
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
        // Parallel mode: real elapsed time; deterministic mode: simulated time.
        if self.shared.is_parallel() {
            self.shared.wall_origin.elapsed().as_nanos() as u64
        } else {
            self.shared.now().saturating_mul(1_000)
        }
    }

    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        self.shared.log_line(level, args.to_string());
    }
}
