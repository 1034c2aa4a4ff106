//! Machine state shared by the platform, the deterministic scheduler and the parallel threads.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kepoch::platform::{CurrentProcessor, Handler, Irql, LogLevel, ProcessorChangeFn};
use parking_lot::{Condvar, Mutex};
use rand_chacha::ChaCha8Rng;

use super::alloc::SimAllocator;
use super::config::{CpuSlot, MachineConfig};
use super::report::{Counters, CpuStatus, LogLine, Violation, ViolationKind};
use super::sched::Task;

static NEXT_MACHINE_ID: AtomicUsize = AtomicUsize::new(1);

/// Execution context of the calling thread: which machine, which CPU, which IRQL.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub machine: usize,
    pub cpu: usize,
    pub irql: Irql,
    /// The thread is the parallel-mode thread of `cpu` (it must pump its own queue while waiting).
    pub cpu_thread: bool,
}

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
    pub fn lock_spin(&self) {
        let mut spins = 0u32;
        while !self.try_lock() {
            spins = spins.wrapping_add(1);
            if spins & 63 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
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
    /// CPU context both phases are delivered from.
    pub ctx_cpu: usize,
    pub fail: bool,
    /// Registrations that received AddStart.
    pub notified: Vec<u64>,
    pub veto: Option<kepoch::platform::Status>,
}

pub(crate) struct TaskSlot {
    pub body: Option<(Box<dyn Task>, ChaCha8Rng)>,
    pub cpu: usize,
    pub wake_at: u64,
    /// IRQL saved between steps (DISPATCH while holding).
    pub irql: Irql,
    pub hold: bool,
    pub done: bool,
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
            parallel: AtomicBool::new(false),
            stop_tasks: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            now_us: AtomicU64::new(0),
            wall_origin: Instant::now(),
            wall_offset: AtomicU64::new(0),
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

    /// The calling thread's context on this machine (the boot CPU at PASSIVE if it has none).
    pub fn ctx(&self) -> Ctx {
        match ctx_get() {
            Some(c) if c.machine == self.id => c,
            _ => {
                let c = Ctx {
                    machine: self.id,
                    cpu: 0,
                    irql: Irql::PASSIVE,
                    cpu_thread: false,
                };
                ctx_set(Some(c));
                c
            }
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

    /// Takes the DISPATCH exclusion of `cpu` (spins in parallel mode; in deterministic mode a held lock
    /// is an exclusion violation, recorded, and the caller proceeds).
    pub fn lock_cpu(&self, cpu: usize, what: &str) {
        if self.is_parallel() {
            self.cpu_locks[cpu].lock_spin();
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

    /// Runs `f` in context (`cpu`, `irql`) on this thread, restoring the previous context afterwards.
    /// Records an IRQL violation if `f` does not return at `irql`; returns the IRQL `f` ended at.
    pub fn in_ctx<R>(&self, cpu: usize, irql: Irql, f: impl FnOnce() -> R) -> (R, Irql) {
        let saved = ctx_get();
        let cpu_thread =
            matches!(saved, Some(c) if c.machine == self.id && c.cpu_thread && c.cpu == cpu);
        ctx_set(Some(Ctx {
            machine: self.id,
            cpu,
            irql,
            cpu_thread,
        }));
        let r = f();
        let end = self.ctx().irql;
        ctx_set(saved);
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
