//! `SimPlatform`: the `kepoch::platform::Platform` implementation of the simulated machine. Waiting
//! (`wait`), the spin-lock checks (`spin`), the wait-inside-an-epoch check (`epochs`), the slot-owner
//! check (`owner`), timers (`timer`) and processor-change registration (`callbacks`) are in their own
//! modules.

mod callbacks;
mod epochs;
mod owner;
mod spin;
mod timer;
mod wait;

use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kepoch::platform::{
    CurrentProcessor, Handler, Irql, IrqlRule, LogLevel, Platform, ProcessorChangeFn,
    ProcessorNumber, Status, WorkInstant,
};

use super::report::{CpuStatus, ViolationKind};
use super::state::{ctx_set, MsgRec, SimPlatform, WorkRec};

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
impl SimPlatform {
    /// The machine this platform belongs to.
    pub fn machine(&self) -> super::Machine {
        super::Machine {
            platform: self.clone(),
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
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.init_timer(timer, handler) };
        Ok(())
    }

    fn timer_start(&self, timer: &SimTimer, period_us: u32) {
        self.start_timer(timer, period_us);
    }

    fn timer_stop(&self, timer: &SimTimer) {
        self.stop_timer(timer);
    }

    unsafe fn timer_release(&self, timer: *mut SimTimer) {
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.release_timer(timer) }
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
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.register_processor_change(callback, context) }
    }

    unsafe fn processor_change_deregister(&self, handle: NonNull<()>) {
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.deregister_processor_change(handle) }
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

    fn work_clock(&self) -> WorkInstant {
        let wall_ns = self.now_ns();
        // Parallel mode: the simulated CPU's host thread's CPU time too, so that a visit's figure
        // leaves out the time the host gave the core to other threads (busy machines, more CPUs than
        // cores). Deterministic mode: simulated time on both sides.
        let run_ns = if self.shared.is_parallel() {
            thread_cpu_time_ns()
        } else {
            wall_ns
        };
        WorkInstant { wall_ns, run_ns }
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

    fn verify_slot_owner(&self, routine: &'static str, owner: ProcessorNumber) {
        self.check_slot_owner(routine, owner);
    }

    fn spin_lock_acquired(&self, lock: *const ()) {
        self.record_spin_acquired(lock);
    }

    fn spin_lock_contended(&self, lock: *const ()) {
        self.watch_contended_spin(lock);
    }

    fn spin_lock_released(&self, lock: *const ()) {
        self.record_spin_released(lock);
    }

    fn epoch_entered(&self) {
        self.count_epoch_entered();
    }

    fn epoch_exited(&self) {
        self.count_epoch_exited();
    }

    fn synchronize_called(&self, readers_here: &dyn Fn() -> u64) {
        self.check_wait_outside_epoch(readers_here);
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) in nanoseconds.
fn thread_cpu_time_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; the clock id is a constant Linux supports.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    // Only an unknown clock id fails: a visit timed with a made-up value would be worse than a stop.
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}
