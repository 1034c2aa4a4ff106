//! Machine state shared by the platform, the deterministic scheduler and the parallel threads. It knows
//! nothing of the scheduler or of the platform module: both build on it.

mod handle;
mod task;

pub use handle::{SimPlatform, STATUS_UNSUCCESSFUL};
pub(crate) use task::TaskSlot;
pub use task::{StepContext, StepOutcome, Task, TaskId};

use std::any::Any;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kepoch::platform::{CurrentProcessor, Handler, Irql, LogLevel, ProcessorChangeFn};
use parking_lot::{Condvar, Mutex};
use rand_chacha::ChaCha8Rng;

use super::alloc::SimAllocator;
use super::config::{CpuSlot, MachineConfig};
use super::report::{Bugcheck, Counters, CpuStatus, LogLine, Violation, ViolationKind};

static NEXT_MACHINE_ID: AtomicUsize = AtomicUsize::new(1);

/// What kind of code a context runs (for the messages of violations and bugchecks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContextKind {
    /// Code on the calling thread outside any task or handler: load, unload, a test's `with_cpu`.
    Caller,
    /// A parallel-mode CPU thread between the things it runs.
    Idle,
    /// A step of a task.
    Task(usize),
    /// A passive work item (by id).
    PassiveWork(u64),
    /// A message handler, i.e. a DPC (by message id).
    Message(u64),
    /// A timer handler, i.e. the timer's DPC (by timer id).
    Timer(u64),
    /// Processor-change notifications (registration replay, hot-add phases).
    ProcessorChange,
    /// Code at DISPATCH on a hot-added CPU between AddStart and AddComplete/AddFailure: a DPC another
    /// driver targeted at it, or an interrupt ([`AddWindowHook`]).
    AddWindow,
}

/// Code run at DISPATCH on a hot-added CPU inside its add window, given the CPU's system index; the
/// workload's stand-in for another driver's DPC there (`Machine::set_add_window_hook`).
pub type AddWindowHook = Arc<dyn Fn(u32) + Send + Sync>;

impl ContextKind {
    /// Handlers that run at DISPATCH by definition.
    pub fn is_dpc(self) -> bool {
        matches!(
            self,
            ContextKind::Message(_) | ContextKind::Timer(_) | ContextKind::AddWindow
        )
    }
}

impl fmt::Display for ContextKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextKind::Caller => write!(f, "the calling thread"),
            ContextKind::Idle => write!(f, "the idle loop"),
            ContextKind::Task(tid) => write!(f, "task {tid}"),
            ContextKind::PassiveWork(id) => write!(f, "passive work item #{id}"),
            ContextKind::Message(id) => write!(f, "DPC (message #{id})"),
            ContextKind::Timer(id) => write!(f, "timer DPC (timer #{id})"),
            ContextKind::ProcessorChange => write!(f, "a processor-change callback"),
            ContextKind::AddWindow => write!(f, "a DPC in a hot-add window"),
        }
    }
}

/// Execution context of the calling thread: which machine, which CPU, which IRQL, which code.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub machine: usize,
    pub cpu: usize,
    pub irql: Irql,
    /// The thread is the parallel-mode thread of `cpu` (it must pump its own queue while waiting).
    pub cpu_thread: bool,
    pub kind: ContextKind,
    /// Unique per context instance on its machine (tells a recursive acquisition from a nested one).
    pub serial: u64,
    /// The last core routine that announced itself through `verify_irql` in this context.
    pub entry: Option<&'static str>,
}

/// Who holds a core spin lock, as recorded by `spin_lock_acquired`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockHolder {
    pub cpu: usize,
    /// IRQL at the acquisition.
    pub irql: Irql,
    pub kind: ContextKind,
    pub serial: u64,
    pub entry: Option<&'static str>,
    /// Acquisition number: tells one holding of the lock from the next.
    pub acquisition: u64,
}

/// The core spin locks currently held, by address.
#[derive(Default)]
pub(crate) struct SpinLocks {
    pub holders: HashMap<usize, LockHolder>,
    pub acquisitions: u64,
}

/// Unwinding payload of machine threads that stop because another one bugchecked.
pub(crate) struct MachineHalted;

/// A halted machine that keeps being asked to wait (or to spin) while its caller unwinds aborts the
/// process after this many such calls instead of letting the caller loop for ever.
pub const HALTED_WAIT_LIMIT: u64 = 100_000;

thread_local! {
    static CTX: Cell<Option<Ctx>> = const { Cell::new(None) };
}

pub(crate) fn ctx_get() -> Option<Ctx> {
    CTX.with(|c| c.get())
}

pub(crate) fn ctx_set(ctx: Option<Ctx>) {
    CTX.with(|c| c.set(ctx));
}

/// Exclusion for "at DISPATCH on this CPU".
#[derive(Default)]
pub(crate) struct CpuLock(AtomicBool);

impl CpuLock {
    pub fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
    pub fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
    pub fn is_locked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) struct Cpu {
    pub status: CpuStatus,
    /// Queued messages: (message id, send sequence number).
    pub dpcs: VecDeque<(u64, u64)>,
    /// Parallel mode: timer expiries handed to this CPU.
    pub timer_runs: VecDeque<u64>,
    /// Sequence number of the message running now.
    pub in_flight: Option<u64>,
    /// Task holding DISPATCH across steps.
    pub held_by: Option<usize>,
    /// Round-robin cursor over tasks (parallel mode).
    pub rr: usize,
    pub delivered: u64,
    pub timer_fires: u64,
    pub task_steps: u64,
}

pub(crate) struct MsgRec {
    pub cpu: usize,
    pub handler: Handler,
    pub queued: bool,
}

pub(crate) struct TimerRec {
    pub handler: Handler,
    pub period_us: u64,
    pub next_due: Option<u64>,
    /// Parallel mode: handed to a CPU, not run yet.
    pub pending: bool,
    pub running: bool,
}

pub(crate) struct WorkRec {
    pub handler: Handler,
    pub queued: bool,
    pub running: bool,
}

pub(crate) struct Reg {
    pub callback: ProcessorChangeFn,
    pub context: *const (),
}

// SAFETY: the registration context is an opaque pointer the registrant promised stays valid (and usable
// from the callback's thread) until deregistration, as in the kernel.
unsafe impl Send for Reg {}

pub(crate) struct PendingAdd {
    pub due_us: u64,
    pub fail: bool,
}

/// A hot-add between its AddStart and its AddComplete/AddFailure.
pub(crate) struct HotCur {
    pub slot: usize,
    pub fail: bool,
    /// Registrations that received AddStart.
    pub notified: Vec<u64>,
    pub veto: Option<kepoch::platform::Status>,
    /// The add window's code ran (or there is none to run).
    pub window_ran: bool,
}

pub(crate) struct State {
    pub cpus: Vec<Cpu>,
    pub rng: ChaCha8Rng,
    pub msgs: BTreeMap<u64, MsgRec>,
    pub timers: BTreeMap<u64, TimerRec>,
    pub works: BTreeMap<u64, WorkRec>,
    pub passive_queue: VecDeque<u64>,
    pub next_obj_id: u64,
    pub next_msg_seq: u64,
    pub regs: BTreeMap<u64, Reg>,
    pub pending_adds: VecDeque<PendingAdd>,
    pub hot_cur: Option<HotCur>,
    pub tasks: Vec<TaskSlot>,
    pub counters: Counters,
    pub trace_hash: u64,
    /// Parallel mode: task steps in progress.
    pub running_tasks: usize,
    pub cpu_threads: Vec<JoinHandle<()>>,
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

impl State {
    pub fn new_id(&mut self) -> u64 {
        self.next_obj_id += 1;
        self.next_obj_id
    }

    /// Mixes `values` into the trace hash (FNV-1a over the little-endian bytes).
    pub fn trace(&mut self, values: &[u64]) {
        for v in values {
            for b in v.to_le_bytes() {
                self.trace_hash ^= u64::from(b);
                self.trace_hash = self.trace_hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    pub fn running_cpus(&self) -> Vec<usize> {
        (0..self.cpus.len())
            .filter(|&c| self.cpus[c].status == CpuStatus::Running)
            .collect()
    }

    /// Deterministic mode: the first timer that is due at `now` and not running.
    pub fn due_timer(&self, now: u64) -> Option<u64> {
        self.timers
            .iter()
            .find(|(_, t)| !t.running && t.next_due.is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
    }

    /// Deterministic mode: timer `id` expires at `now`; its next expiry is one period later (skipping
    /// expiries that are already past).
    pub fn expire_timer(&mut self, id: u64, now: u64) {
        if let Some(t) = self.timers.get_mut(&id) {
            let due = t.next_due.unwrap_or(now) + t.period_us;
            t.next_due = Some(if due <= now { now + t.period_us } else { due });
        }
    }

    /// Marks timer `id`'s handler running on `cpu` and returns it; `None` if the timer is gone or its
    /// handler already runs. Called in the same critical section that chose the expiry, so a
    /// `timer_stop` either prevents the run or waits for it.
    pub fn begin_timer(&mut self, cpu: usize, id: u64, nested: bool) -> Option<Handler> {
        let rec = self.timers.get_mut(&id)?;
        if rec.running {
            return None;
        }
        rec.running = true;
        rec.pending = false;
        let handler = rec.handler;
        self.counters.timer_fires += 1;
        if nested {
            self.counters.nested_timer_fires += 1;
        }
        self.cpus[cpu].timer_fires += 1;
        self.trace(&[2, cpu as u64, id]);
        Some(handler)
    }
}

pub(crate) struct Shared {
    pub id: usize,
    pub config: MachineConfig,
    pub slots: Vec<CpuSlot>,
    pub st: Mutex<State>,
    /// Wakes parallel CPU / service threads when work arrives.
    pub work_cv: Condvar,
    pub ev_lock: Mutex<()>,
    pub ev_cv: Condvar,
    pub cpu_locks: Vec<CpuLock>,
    pub alloc: SimAllocator,
    pub violations: Mutex<Vec<Violation>>,
    pub logs: Mutex<Vec<LogLine>>,
    pub log_echo: AtomicBool,
    /// Busy-wait detection (deterministic mode): waits satisfied at once in a row, and the simulated
    /// time of the first of them.
    pub spin_count: std::sync::atomic::AtomicU64,
    pub spin_since: std::sync::atomic::AtomicU64,
    /// Serialises processor-change callbacks (registration replay, hot-add phases, deregistration).
    pub callback_lock: Mutex<()>,
    /// Code to run in every hot-add window.
    pub add_window: Mutex<Option<AddWindowHook>>,
    /// True while parallel threads run: waits block instead of pumping.
    pub parallel: AtomicBool,
    /// Parallel mode: no new task steps.
    pub stop_tasks: AtomicBool,
    /// Parallel mode: threads exit.
    pub stop: AtomicBool,
    /// Deterministic simulated time (µs); in parallel mode the time at the start of the run.
    pub now_us: AtomicU64,
    pub wall_origin: Instant,
    /// Parallel mode: sim time = wall µs since `wall_origin` + this (wrapping).
    pub wall_offset: AtomicU64,
    /// Core spin locks held now and by whom.
    pub spin_locks: Mutex<SpinLocks>,
    /// Serial number of the next context.
    pub next_serial: AtomicU64,
    /// Set once the machine bugchecked: nothing runs on it any more.
    pub halted: AtomicBool,
    /// The bugcheck that halted the machine.
    pub bugcheck: Mutex<Option<Bugcheck>>,
    /// Parallel mode: the first panic of a machine thread that was not a bugcheck (it halted the
    /// machine too); `run_parallel` re-raises it.
    pub thread_panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Waits asked of the halted machine while their caller unwinds (see [`HALTED_WAIT_LIMIT`]).
    pub halted_waits: AtomicU64,
}

impl Shared {
    pub fn new(config: MachineConfig, slots: Vec<CpuSlot>, rng: ChaCha8Rng) -> Arc<Shared> {
        let cpus = slots
            .iter()
            .enumerate()
            .map(|(k, _)| Cpu {
                status: if (k as u32) < config.active_at_boot {
                    CpuStatus::Running
                } else {
                    CpuStatus::Absent
                },
                dpcs: VecDeque::new(),
                timer_runs: VecDeque::new(),
                in_flight: None,
                held_by: None,
                rr: 0,
                delivered: 0,
                timer_fires: 0,
                task_steps: 0,
            })
            .collect();
        let cpu_locks = slots.iter().map(|_| CpuLock::default()).collect();
        Arc::new(Shared {
            id: NEXT_MACHINE_ID.fetch_add(1, Ordering::Relaxed),
            alloc: SimAllocator::new(config.alloc_fail_every),
            log_echo: AtomicBool::new(config.log_echo),
            spin_count: std::sync::atomic::AtomicU64::new(0),
            spin_since: std::sync::atomic::AtomicU64::new(0),
            config,
            slots,
            st: Mutex::new(State {
                cpus,
                rng,
                msgs: BTreeMap::new(),
                timers: BTreeMap::new(),
                works: BTreeMap::new(),
                passive_queue: VecDeque::new(),
                next_obj_id: 0,
                next_msg_seq: 0,
                regs: BTreeMap::new(),
                pending_adds: VecDeque::new(),
                hot_cur: None,
                tasks: Vec::new(),
                counters: Counters::default(),
                trace_hash: FNV_OFFSET,
                running_tasks: 0,
                cpu_threads: Vec::new(),
            }),
            work_cv: Condvar::new(),
            ev_lock: Mutex::new(()),
            ev_cv: Condvar::new(),
            cpu_locks,
            violations: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            callback_lock: Mutex::new(()),
            add_window: Mutex::new(None),
            parallel: AtomicBool::new(false),
            stop_tasks: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            now_us: AtomicU64::new(0),
            wall_origin: Instant::now(),
            wall_offset: AtomicU64::new(0),
            spin_locks: Mutex::new(SpinLocks::default()),
            next_serial: AtomicU64::new(1),
            halted: AtomicBool::new(false),
            bugcheck: Mutex::new(None),
            thread_panic: Mutex::new(None),
            halted_waits: AtomicU64::new(0),
        })
    }

    pub fn is_parallel(&self) -> bool {
        self.parallel.load(Ordering::Acquire)
    }

    /// Simulated time in microseconds.
    pub fn now(&self) -> u64 {
        if self.is_parallel() {
            (self.wall_origin.elapsed().as_micros() as u64)
                .wrapping_add(self.wall_offset.load(Ordering::Relaxed))
        } else {
            self.now_us.load(Ordering::Relaxed)
        }
    }

    /// A new context of `kind` on `cpu` at `irql`.
    pub fn new_ctx(&self, cpu: usize, irql: Irql, kind: ContextKind, cpu_thread: bool) -> Ctx {
        Ctx {
            machine: self.id,
            cpu,
            irql,
            cpu_thread,
            kind,
            serial: self.next_serial.fetch_add(1, Ordering::Relaxed),
            entry: None,
        }
    }

    /// The calling thread's context on this machine (the boot CPU at PASSIVE if it has none).
    pub fn ctx(&self) -> Ctx {
        match ctx_get() {
            Some(c) if c.machine == self.id => c,
            _ => {
                let c = self.new_ctx(0, Irql::PASSIVE, ContextKind::Caller, false);
                ctx_set(Some(c));
                c
            }
        }
    }

    /// "CPU 1 (0:1)": the index and the group-relative number of `cpu`.
    pub fn cpu_label(&self, cpu: usize) -> String {
        format!("CPU {} ({})", self.slots[cpu].index, self.slots[cpu].number)
    }

    /// "task 3"; for the calling thread, which runs many unrelated things, also the last core entry
    /// point it announced ("the calling thread (last core entry point: unload)").
    pub fn label(&self, kind: ContextKind, entry: Option<&'static str>) -> String {
        match (kind, entry) {
            (ContextKind::Caller, Some(routine)) => {
                format!("{kind} (last core entry point: {routine})")
            }
            _ => kind.to_string(),
        }
    }

    /// "task 3 on CPU 1 (0:1) at IRQL 0 (PASSIVE)".
    pub fn describe(
        &self,
        kind: ContextKind,
        entry: Option<&'static str>,
        cpu: usize,
        irql: Irql,
    ) -> String {
        format!(
            "{} on {} at IRQL {}",
            self.label(kind, entry),
            self.cpu_label(cpu),
            irql_name(irql)
        )
    }

    /// [`Shared::describe`] of the calling context.
    pub fn describe_ctx(&self, c: &Ctx) -> String {
        self.describe(c.kind, c.entry, c.cpu, c.irql)
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// Parallel mode: a machine thread that finds the machine halted unwinds (its guards release
    /// what it holds) instead of waiting for something that will never happen.
    pub fn unwind_if_halted(&self) {
        if self.is_halted() && !std::thread::panicking() {
            std::panic::resume_unwind(Box::new(MachineHalted));
        }
    }

    /// Records `kind` with `message`, halts the machine and unwinds the calling thread with a
    /// [`Bugcheck`] payload (the first bugcheck is the one kept).
    pub fn bugcheck(&self, kind: ViolationKind, code: (u32, &'static str), message: String) -> ! {
        self.violation(kind, message.clone());
        let cpu = match ctx_get() {
            Some(c) if c.machine == self.id => Some(self.slots[c.cpu].index),
            _ => None,
        };
        let bugcheck = Bugcheck {
            code: code.0,
            name: code.1,
            kind,
            message,
            time_us: self.now(),
            cpu,
        };
        // The default panic hook cannot show a non-string payload: say what happened first.
        eprintln!("kepoch-sim: {bugcheck}");
        self.bugcheck.lock().get_or_insert_with(|| bugcheck.clone());
        self.halt();
        std::panic::panic_any(bugcheck)
    }

    /// Nothing runs on the machine any more; parallel threads that wait are woken to notice.
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Release);
        self.work_cv.notify_all();
        let _g = self.ev_lock.lock();
        self.ev_cv.notify_all();
    }

    /// A wait, or a spin, asked of the halted machine. Outside unwinding the machine stays down: a
    /// parallel-mode machine thread unwinds quietly, any other caller gets the bugcheck again (also
    /// quietly: the panic hook reported it once), or a `String` if a thread panic halted it. While the caller unwinds (a domain dropped by the
    /// unwinding) it returns at once — nothing will ever satisfy it — and past [`HALTED_WAIT_LIMIT`]
    /// such calls it aborts the process rather than let a caller loop for ever.
    pub fn halted_wait(&self, what: &str) {
        let bugcheck = self.bugcheck.lock().clone();
        if !std::thread::panicking() {
            if self.is_parallel() {
                std::panic::resume_unwind(Box::new(MachineHalted));
            }
            match bugcheck {
                Some(bugcheck) => std::panic::resume_unwind(Box::new(bugcheck)),
                None => std::panic::resume_unwind(Box::new(String::from(
                    "the machine halted: a machine thread panicked",
                ))),
            }
        }
        let reason = bugcheck.map_or_else(
            || "a machine thread panicked".to_string(),
            |b| b.to_string(),
        );
        if self.halted_waits.fetch_add(1, Ordering::Relaxed) + 1 >= HALTED_WAIT_LIMIT {
            eprintln!(
                "kepoch-sim: {what} asked of a halted machine {HALTED_WAIT_LIMIT} times while unwinding \
                 (a domain unloaded after the bugcheck waits for handlers that will never run); aborting. \
                 {reason}"
            );
            std::process::abort();
        }
    }

    pub fn set_irql(&self, irql: Irql) {
        let mut c = self.ctx();
        c.irql = irql;
        ctx_set(Some(c));
    }

    pub fn current(&self, cpu: usize) -> CurrentProcessor {
        let s = self.slots[cpu];
        CurrentProcessor {
            number: s.number,
            index: s.index,
        }
    }

    pub fn slot_by_index(&self, index: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.index == index)
    }

    pub fn violation(&self, kind: ViolationKind, message: String) {
        let cpu = match ctx_get() {
            Some(c) if c.machine == self.id => Some(self.slots[c.cpu].index),
            _ => None,
        };
        let v = Violation {
            kind,
            message,
            time_us: self.now(),
            cpu,
        };
        if self.log_echo.load(Ordering::Relaxed) {
            eprintln!("[{} us] VIOLATION {:?}: {}", v.time_us, v.kind, v.message);
        }
        self.violations.lock().push(v);
    }

    pub fn log_line(&self, level: LogLevel, text: String) {
        let time_us = self.now();
        if self.log_echo.load(Ordering::Relaxed) {
            eprintln!("[{time_us} us] {level:?}: {text}");
        }
        self.logs.lock().push(LogLine {
            level,
            text,
            time_us,
        });
    }

    /// Takes the DISPATCH exclusion of `cpu` (spins in parallel mode, unwinding if the machine halts;
    /// in deterministic mode a held lock is an exclusion violation, recorded, and the caller proceeds).
    pub fn lock_cpu(&self, cpu: usize, what: &str) {
        if self.is_parallel() {
            let mut spins = 0u32;
            while !self.cpu_locks[cpu].try_lock() {
                spins = spins.wrapping_add(1);
                if spins & 63 == 0 {
                    self.unwind_if_halted();
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        } else if !self.cpu_locks[cpu].try_lock() {
            self.violation(
                ViolationKind::Exclusion,
                format!(
                    "{what} at DISPATCH on CPU {} while something else is at DISPATCH there",
                    self.slots[cpu].index
                ),
            );
        }
    }

    pub fn unlock_cpu(&self, cpu: usize) {
        self.cpu_locks[cpu].unlock();
    }

    /// Runs `f` in a new context of `kind` (`cpu`, `irql`) on this thread, restoring the previous
    /// context afterwards, also when `f` unwinds (a bugcheck). Returns the IRQL `f` ended at.
    pub fn in_ctx<R>(
        &self,
        cpu: usize,
        irql: Irql,
        kind: ContextKind,
        f: impl FnOnce() -> R,
    ) -> (R, Irql) {
        let saved = ctx_get();
        let cpu_thread =
            matches!(saved, Some(c) if c.machine == self.id && c.cpu_thread && c.cpu == cpu);
        ctx_set(Some(self.new_ctx(cpu, irql, kind, cpu_thread)));
        let restore = CtxRestore { sh: self, saved };
        let r = f();
        let end = self.ctx().irql;
        drop(restore);
        (r, end)
    }

    /// Records an IRQL violation if `end != expected`.
    pub fn check_irql(&self, what: &str, expected: Irql, end: Irql, cpu: usize) {
        if end != expected {
            self.violation(
                ViolationKind::Irql,
                format!(
                    "{what} on CPU {} returned at IRQL {} instead of {}",
                    self.slots[cpu].index, end.0, expected.0
                ),
            );
        }
    }
}

/// Restores the thread's previous context when a context ends. When it ends by unwinding, it also gives
/// back the DISPATCH exclusion the unwound context held (its CPU lock), so no machine lock stays held.
struct CtxRestore<'a> {
    sh: &'a Shared,
    saved: Option<Ctx>,
}

impl Drop for CtxRestore<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(inner) = ctx_get().filter(|c| c.machine == self.sh.id) {
                let outer_holds = matches!(self.saved, Some(o) if o.machine == self.sh.id
                    && o.cpu == inner.cpu && o.irql >= Irql::DISPATCH);
                if inner.irql >= Irql::DISPATCH && !outer_holds {
                    self.sh.unlock_cpu(inner.cpu);
                }
            }
        }
        ctx_set(self.saved);
    }
}

/// "0 (PASSIVE)", "2 (DISPATCH)".
pub(crate) fn irql_name(irql: Irql) -> String {
    let name = match irql {
        Irql::PASSIVE => "PASSIVE",
        Irql::APC => "APC",
        Irql::DISPATCH => "DISPATCH",
        _ => "above DISPATCH",
    };
    format!("{} ({name})", irql.0)
}
