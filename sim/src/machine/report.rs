//! Violations, counters, log lines, the bugcheck payload and the report snapshot.

use std::fmt;

use kepoch::platform::{LogLevel, ProcessorNumber};

use super::alloc::AllocStats;

/// What rule a violation broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// IRQL not restored at the end of a step/handler, or `lower_irql` above the current level.
    Irql,
    /// Two things at DISPATCH on one CPU at once.
    Exclusion,
    /// A message bound, sent or delivered to a CPU that is not running (S3).
    Routing,
    /// `free` of a pointer/layout that was never allocated.
    BadFree,
    /// `free` of a block that is already freed (in quarantine).
    DoubleFree,
    /// A freed block's poison was overwritten (write after free).
    WriteAfterFree,
    /// `event_wait`/`flush_messages`/`timer_stop` never returned within the bound.
    WaitNeverSatisfied,
    /// Use of a platform object that is not initialised, already released, or in the wrong state.
    BadObject,
    /// A PASSIVE-only service called at DISPATCH.
    BlockingAtDispatch,
    /// Illegal task migration (at DISPATCH, or to a CPU that is not running).
    Migration,
    /// Processor-change registration misuse.
    Callback,
    /// A waiter spun: its waits were satisfied at once [`super::SPIN_LIMIT`] times in a row without
    /// simulated time advancing (deterministic mode, where threads are not preempted: the machine then gives
    /// the other tasks a step per wait so the run can end).
    BusyWait,
    /// A core spin lock acquired below DISPATCH (S9: every core spin lock is held at DISPATCH).
    SpinLockIrql,
    /// A spin on a core spin lock that can never end: its holder was preempted on the spinner's own
    /// CPU, is the spinner itself, cannot run in deterministic mode, or held the lock for longer than
    /// [`super::MachineConfig::parallel_spin_limit_ms`] in parallel mode. The machine then halts with a
    /// [`Bugcheck`].
    Deadlock,
    /// A wait for a grace period (`synchronize`, `wait_for_grace_period`, `callback_barrier`) by a
    /// context that holds a guard: it would wait for itself. The machine then halts with a
    /// [`Bugcheck`] instead of hanging.
    WaitInsideEpoch,
    /// The core used a processor's per-CPU slot as that processor's own (an enter, an exit, a join,
    /// a retirement, a visit) from another processor (S1: the owner's plain stores race it).
    SlotOwner,
}

/// One recorded violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Rule broken.
    pub kind: ViolationKind,
    /// Human-readable detail.
    pub message: String,
    /// Simulated time in microseconds.
    pub time_us: u64,
    /// Index of the CPU whose context recorded it, if any.
    pub cpu: Option<u32>,
}

/// One log line written through `Platform::log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// Text.
    pub text: String,
    /// Simulated time in microseconds.
    pub time_us: u64,
}

/// Machine-wide event counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `message_send` calls that queued a message.
    pub messages_sent: u64,
    /// `message_send` calls on an already queued message (no-ops).
    pub messages_coalesced: u64,
    /// Message handlers run.
    pub messages_delivered: u64,
    /// Messages sent to (and dropped for) CPUs that were not running.
    pub messages_to_not_running: u64,
    /// Timer handler runs.
    pub timer_fires: u64,
    /// Passive work items run.
    pub passive_run: u64,
    /// AddStart notifications for live hot-adds (per CPU, not per registration).
    pub hot_add_start: u64,
    /// Hot-adds that completed (CPU now running).
    pub hot_add_complete: u64,
    /// Hot-adds that failed (AddFailure, or vetoed).
    pub hot_add_failure: u64,
    /// Hot-adds requested when no slot was left.
    pub hot_add_no_slot: u64,
    /// Task steps run.
    pub task_steps: u64,
    /// Task migrations performed.
    pub migrations: u64,
    /// Scheduler actions (deterministic mode) — the step count.
    pub scheduler_steps: u64,
    /// Deterministic mode: platform calls below DISPATCH at which queued DPCs or a due timer ran
    /// nested, preempting the caller (see [`super::MachineConfig::nested_dpc_percent`]).
    pub preemptions: u64,
    /// Message handlers run nested in a preempted context (also counted in `messages_delivered`).
    pub nested_messages: u64,
    /// Timer handlers run nested in a preempted context (also counted in `timer_fires`).
    pub nested_timer_fires: u64,
}

/// Why the simulated machine stopped, as NT stops with a bugcheck: the panic payload that aborts a
/// run when the machine detects a state it can never leave (a [`ViolationKind::Deadlock`]).
///
/// The machine records the matching [`Violation`] first, marks itself halted (nothing runs on it any
/// more; [`super::Machine::bugcheck`] returns this value) and then calls
/// `std::panic::panic_any(bugcheck)` on the detecting thread. In parallel mode every other machine
/// thread unwinds too and [`super::Machine::run_parallel`] re-raises the payload on its caller. Catch
/// it around the run:
///
/// ```
/// # use kepoch_sim::machine::Bugcheck;
/// let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
///     // machine.run_for(..), machine.run_parallel(..), driver unload, ...
/// }));
/// if let Err(payload) = outcome {
///     match payload.downcast_ref::<Bugcheck>() {
///         Some(bugcheck) => eprintln!("{bugcheck}"),
///         None => std::panic::resume_unwind(payload),
///     }
/// }
/// ```
///
/// Unwinding releases every lock of the machine and leaves no machine thread blocked. Do not unload
/// a domain on a halted machine: its handlers no longer run, so unload could wait for a cycle that
/// died with the bugchecked DPC (a wait asked of a halted machine while unwinding returns at once, and
/// the process aborts after [`HALTED_WAIT_LIMIT`](super::HALTED_WAIT_LIMIT) of them). The machine
/// leaks the body of a task whose step unwound, so references held by tasks keep a domain alive; a
/// reference the caller holds itself must be leaked by the caller (`std::mem::forget`) if the
/// unwinding would drop the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bugcheck {
    /// The NT bugcheck code the situation leads to (0x133 for a processor spinning at DISPATCH).
    pub code: u32,
    /// The symbolic name of `code`.
    pub name: &'static str,
    /// The violation that caused it (also in [`super::Machine::violations`]).
    pub kind: ViolationKind,
    /// Human-readable detail: who spins, on what, and who holds it.
    pub message: String,
    /// Simulated time in microseconds.
    pub time_us: u64,
    /// Index of the CPU that detected it.
    pub cpu: Option<u32>,
}

impl Bugcheck {
    /// DPC_WATCHDOG_VIOLATION: a processor stayed at DISPATCH too long (spinning on a spin lock).
    pub const DPC_WATCHDOG_VIOLATION: (u32, &'static str) = (0x133, "DPC_WATCHDOG_VIOLATION");
    /// MANUALLY_INITIATED_CRASH: NT does not bugcheck by itself (the machine hangs below DISPATCH);
    /// this is the code of breaking into the hung machine with a debugger.
    pub const MANUALLY_INITIATED_CRASH: (u32, &'static str) = (0xE2, "MANUALLY_INITIATED_CRASH");
}

impl fmt::Display for Bugcheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulated bugcheck 0x{:X} {} at {} us: {:?}: {}",
            self.code, self.name, self.time_us, self.kind, self.message
        )
    }
}

impl std::error::Error for Bugcheck {}

/// State of a processor slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuStatus {
    /// Exists but not started (hot-add slot).
    Absent,
    /// AddStart announced; not running yet.
    Starting,
    /// Running.
    Running,
}

/// Per-CPU part of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuReport {
    /// System-wide index.
    pub index: u32,
    /// Group and number.
    pub number: ProcessorNumber,
    /// Current state.
    pub status: CpuStatus,
    /// Message handlers run on this CPU.
    pub messages_delivered: u64,
    /// Timer handlers run on this CPU.
    pub timer_fires: u64,
    /// Task steps run on this CPU.
    pub task_steps: u64,
}

/// Snapshot of a machine.
#[derive(Clone, Debug)]
pub struct MachineReport {
    /// Simulated time in microseconds.
    pub now_us: u64,
    /// Every processor slot.
    pub cpus: Vec<CpuReport>,
    /// Event counters.
    pub counters: Counters,
    /// Allocator statistics.
    pub alloc: AllocStats,
    /// Violations so far.
    pub violations: Vec<Violation>,
    /// Hash of the deterministic schedule so far (equal seeds ⇒ equal hashes).
    pub trace_hash: u64,
}
