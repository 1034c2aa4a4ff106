//! Machine state shared by the platform, the deterministic scheduler and the parallel threads. It knows
//! nothing of the scheduler or of the platform module: both build on it.

mod ctx;
mod halt;
mod handle;
mod task;
mod threads;

pub(crate) use ctx::{ctx_get, ctx_set, irql_name, ContextKind, Ctx};
pub(crate) use halt::MachineHalted;
pub use halt::HALTED_WAIT_LIMIT;
pub use handle::{SimPlatform, STATUS_UNSUCCESSFUL};
pub(crate) use task::TaskSlot;
pub use task::{StepContext, StepOutcome, Task, TaskId};
pub(crate) use threads::{MachineStopped, ThreadRole, ThreadTicks, SERVICE_ROLES};

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// Code run at DISPATCH on a hot-added CPU inside its add window, given the CPU's system index; the
/// workload's stand-in for another driver's DPC there (`Machine::set_add_window_hook`).
pub type AddWindowHook = Arc<dyn Fn(u32) + Send + Sync>;

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
    /// Parallel mode: the run winds down; task steps start only to finish what is in progress
    /// ([`Shared::may_start_step`]).
    pub winding_down: AtomicBool,
    /// Parallel mode: the run stopped; no task step or work item starts, threads exit, and waits of
    /// machine threads unwind ([`Shared::unwind_if_stopped`]).
    pub stop: AtomicBool,
    /// Parallel mode: waits of machine threads blocked now.
    pub machine_waits: AtomicUsize,
    /// Parallel mode: how many times each machine thread passed through its loop.
    pub ticks: ThreadTicks,
    /// Deterministic simulated time (µs); in parallel mode the time at the start of the run.
    pub now_us: AtomicU64,
    pub wall_origin: Instant,
    /// Parallel mode: sim time = wall µs since `wall_origin` + this (wrapping).
    pub wall_offset: AtomicU64,
    /// Core spin locks held now and by whom.
    pub spin_locks: Mutex<SpinLocks>,
    /// Guards (epochs entered and not exited) each context holds, for the wait-inside-an-epoch check.
    pub guards_held: Mutex<HashMap<ContextKind, u64>>,
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
        let ticks = ThreadTicks::new(slots.len());
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
            winding_down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            machine_waits: AtomicUsize::new(0),
            ticks,
            now_us: AtomicU64::new(0),
            wall_origin: Instant::now(),
            wall_offset: AtomicU64::new(0),
            spin_locks: Mutex::new(SpinLocks::default()),
            guards_held: Mutex::new(HashMap::new()),
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

    /// Takes the DISPATCH exclusion of `cpu`: spins in parallel mode, unwinding if the machine halts
    /// or if the run stopped while a task holds the CPU; in deterministic mode a held lock is an
    /// exclusion violation, recorded, and the caller proceeds.
    pub fn lock_cpu(&self, cpu: usize, what: &str) {
        if self.is_parallel() {
            let mut spins = 0u32;
            while !self.cpu_locks[cpu].try_lock() {
                spins = spins.wrapping_add(1);
                if spins & 63 == 0 {
                    self.unwind_if_halted();
                    // After the stop, a task that holds the CPU at DISPATCH never runs again.
                    if self.is_stopping() && self.st.lock().cpus[cpu].held_by.is_some() {
                        self.unwind_if_stopped(&format!(
                            "{what}: {} is held at DISPATCH by a task",
                            self.cpu_label(cpu)
                        ));
                    }
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
}
