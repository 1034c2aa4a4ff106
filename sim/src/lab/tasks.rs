//! The lab's workload: readers (timed enter/read/exit pairs, migrating now and then), writers
//! (publish and retire objects every millisecond) and a stalled reader, all sharing one [`Lab`] per
//! driver load. First-enter latencies are timed with [`Instant`] around the core's `enter_raw` on the
//! simulated CPUs' threads and kept as exact samples; enter/exit pairs go into HDR histograms.

use super::scenario::Workload;
use crate::machine::{Machine, SimPlatform, StepContext, StepOutcome, Task};
use crate::objects::{self, Check, Object, SimDomain};
use hdrhistogram::Histogram;
use kepoch::{DomainBox, RawGuard};
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Shared cells readers read and writers swap.
const CELLS: usize = 8;
/// Timed enter/exit pairs a reader makes per step.
const BURST: u32 = 4;

/// State shared by the tasks of one driver load.
pub(super) struct Lab {
    /// The loaded domain (`None` once unloaded: tasks then end).
    pub(super) domain: RwLock<Option<DomainBox<SimPlatform>>>,
    /// The published objects.
    pub(super) cells: [AtomicPtr<Object>; CELLS],
    /// Set when the load's run time is up: tasks exit their epochs and end.
    pub(super) stop: AtomicBool,
    /// Position of each CPU index in `used`.
    cpu_pos: HashMap<u32, usize>,
    /// Per processor slot: whether the workload ran epoch code on it in this load (its first enter
    /// was timed).
    pub(super) used: Vec<AtomicBool>,
    /// CPUs the workload keeps idle (never run epoch code, never migrated to).
    idle: HashSet<u32>,
    /// First-enter latencies of this load, exact.
    pub(super) first_samples: Mutex<Vec<u64>>,
    /// Enter+exit latencies of the readers that have ended.
    pub(super) enter_exit: Mutex<Histogram<u64>>,
    next_id: AtomicU64,
    /// Objects read.
    pub(super) reads: AtomicU64,
    alloc_failures: AtomicU64,
    /// Reads that found a freed (poisoned) object.
    pub(super) use_after_free: AtomicU64,
    /// The first violations seen (at most 20).
    pub(super) violations: Mutex<Vec<String>>,
}

impl Lab {
    /// The state of one load of `domain` on a machine with processor slots `slots` (system indexes, in
    /// slot order), keeping the CPUs in `idle` free of epoch code.
    pub(super) fn new(domain: DomainBox<SimPlatform>, slots: &[u32], idle: HashSet<u32>) -> Lab {
        Lab {
            domain: RwLock::new(Some(domain)),
            cells: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            stop: AtomicBool::new(false),
            cpu_pos: slots.iter().enumerate().map(|(p, &s)| (s, p)).collect(),
            used: slots.iter().map(|_| AtomicBool::new(false)).collect(),
            idle,
            first_samples: Mutex::new(Vec::new()),
            enter_exit: Mutex::new(new_hdr()),
            next_id: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            alloc_failures: AtomicU64::new(0),
            use_after_free: AtomicU64::new(0),
            violations: Mutex::new(Vec::new()),
        }
    }

    /// Records a violation (the first 20 are kept).
    pub(super) fn violation(&self, text: String) {
        let mut v = self.violations.lock();
        if v.len() < 20 {
            v.push(text);
        }
    }

    /// Enters an epoch on `cpu`, timing it. Returns the token, the enter time and whether this was the
    /// first epoch use on that CPU (then recorded as a first-enter sample).
    fn enter(&self, domain: &SimDomain, cpu: u32) -> (RawGuard, u64, bool) {
        let first = self
            .cpu_pos
            .get(&cpu)
            .is_some_and(|&p| !self.used[p].swap(true, Ordering::Relaxed));
        let start = Instant::now();
        // SAFETY: every token is exited with `exit_raw` before the domain is unloaded (tasks finish
        // before teardown).
        let token = unsafe { domain.enter_raw() };
        let ns = start.elapsed().as_nanos() as u64;
        if first {
            self.first_samples.lock().push(ns);
        }
        (token, ns, first)
    }

    /// Reads a random cell and checks the object; returns it for holding.
    fn read(
        &self,
        domain: &SimDomain,
        ctx: &mut StepContext<'_>,
    ) -> Option<(NonNull<Object>, u64)> {
        // SAFETY: called inside the caller's epoch; every object in the cells came from
        // `new_object` of this domain.
        let (object, id) = unsafe { objects::load_random(&self.cells, ctx.rng()) }?;
        self.check(domain, object, id, ctx.cpu().index);
        Some((object, id))
    }

    fn check(&self, domain: &SimDomain, object: NonNull<Object>, id: u64, cpu: u32) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        // SAFETY: held inside the reader's epoch; see `objects::check`.
        let result = unsafe { objects::check(domain, object) };
        if let Check::UseAfterFree(_) = result {
            self.use_after_free.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(text) = result.describe(id, cpu) {
            self.violation(text);
        }
    }

    /// A running CPU the workload uses (hot-added ones included), for migrations.
    fn migrate(&self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let mut targets = ctx.platform().machine().running_indexes();
        targets.retain(|c| !self.idle.contains(c));
        match targets.len() {
            0 => StepOutcome::Continue,
            n => StepOutcome::MigrateTo(targets[ctx.rng().gen_range(0..n)]),
        }
    }
}

/// An epoch held across steps: its token and the object read inside it (with its serial number).
type Held = (RawGuard, Option<(NonNull<Object>, u64)>);

/// A reader: timed enter/read/exit pairs, now and then holding an epoch across a migration (the exit
/// then happens on another CPU).
struct Reader {
    lab: Arc<Lab>,
    held: Option<Held>,
    latencies: Histogram<u64>,
}

// SAFETY: the held object is only dereferenced under the epoch the held token keeps open.
unsafe impl Send for Reader {}

impl Task for Reader {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let lab = self.lab.clone();
        let guard = lab.domain.read();
        let Some(domain) = guard.as_deref() else {
            return StepOutcome::Done;
        };
        let cpu = ctx.cpu().index;
        if let Some((token, object)) = self.held.take() {
            if let Some((object, id)) = object {
                lab.check(domain, object, id, cpu);
            }
            // SAFETY: from `enter_raw` of this domain, exited once.
            unsafe { domain.exit_raw(token) };
        }
        if lab.stop.load(Ordering::Relaxed) {
            // Both histograms auto-resize, so adding cannot fail for want of range.
            let _ = lab.enter_exit.lock().add(&self.latencies);
            return StepOutcome::Done;
        }
        for _ in 0..BURST {
            let (token, enter_ns, first) = lab.enter(domain, cpu);
            lab.read(domain, ctx);
            let start = Instant::now();
            // SAFETY: from `enter_raw` of this domain, exited once.
            unsafe { domain.exit_raw(token) };
            let exit_ns = start.elapsed().as_nanos() as u64;
            if !first {
                self.latencies.saturating_record(enter_ns + exit_ns);
            }
        }
        if ctx.rng().gen_ratio(1, 4) {
            let (token, _, _) = lab.enter(domain, cpu);
            let object = lab.read(domain, ctx);
            self.held = Some((token, object));
            return lab.migrate(ctx);
        }
        StepOutcome::Sleep(ctx.rng().gen_range(100..400))
    }
}

/// A writer: every millisecond publishes `batch` new objects and retires the ones they replace.
struct Writer {
    lab: Arc<Lab>,
    batch: u32,
    /// Steps (milliseconds) between bursts (0: none), objects per burst, steps so far.
    burst_every: u64,
    burst_size: u32,
    steps: u64,
}

impl Task for Writer {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let lab = self.lab.clone();
        let guard = lab.domain.read();
        let Some(domain) = guard.as_deref() else {
            return StepOutcome::Done;
        };
        if lab.stop.load(Ordering::Relaxed) {
            return StepOutcome::Done;
        }
        // The writer's epoch keeps each replaced object alive while its retirement epoch is recorded.
        let (token, _, _) = lab.enter(domain, ctx.cpu().index);
        self.steps += 1;
        let burst = self.burst_every > 0 && self.steps.is_multiple_of(self.burst_every);
        let count = self.batch + if burst { self.burst_size } else { 0 };
        for _ in 0..count {
            let id = lab.next_id.fetch_add(1, Ordering::Relaxed);
            let Some(object) = objects::new_object(domain, id) else {
                lab.alloc_failures.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let cell = ctx.rng().gen_range(0..CELLS);
            // SAFETY: every object in the cells came from `new_object` of this domain.
            if let Err(e) = unsafe { objects::replace(domain, &lab.cells[cell], object) } {
                lab.violation(format!("retire of an unlinked object failed: {e:?}"));
            }
        }
        // SAFETY: from `enter_raw` of this domain, exited once.
        unsafe { domain.exit_raw(token) };
        StepOutcome::Sleep(1_000)
    }
}

/// One reader that stays inside its epoch for `stall_us` (checking its object now and then).
struct StalledReader {
    lab: Arc<Lab>,
    stall_us: u64,
    until_us: Option<u64>,
    held: Option<Held>,
}

// SAFETY: as for `Reader`.
unsafe impl Send for StalledReader {}

impl Task for StalledReader {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let lab = self.lab.clone();
        let guard = lab.domain.read();
        let Some(domain) = guard.as_deref() else {
            return StepOutcome::Done;
        };
        let cpu = ctx.cpu().index;
        match self.held.take() {
            None => {
                if lab.stop.load(Ordering::Relaxed) {
                    return StepOutcome::Done;
                }
                let (token, _, _) = lab.enter(domain, cpu);
                let object = lab.read(domain, ctx);
                self.held = Some((token, object));
                self.until_us = Some(ctx.now_us() + self.stall_us);
                StepOutcome::Sleep(10_000.min(self.stall_us))
            }
            Some((token, object)) => {
                if let Some((object, id)) = object {
                    lab.check(domain, object, id, cpu);
                }
                let due = self.until_us.is_some_and(|t| ctx.now_us() >= t);
                if due || lab.stop.load(Ordering::Relaxed) {
                    // SAFETY: from `enter_raw` of this domain, exited once.
                    unsafe { domain.exit_raw(token) };
                    return StepOutcome::Done;
                }
                self.held = Some((token, object));
                StepOutcome::Sleep(10_000)
            }
        }
    }
}

/// An HDR histogram for enter/exit pairs: 1 ns to 60 s (longer pairs are counted at 60 s), 2
/// significant digits (at most 0.4 % error).
pub(super) fn new_hdr() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).unwrap_or_else(|e| {
        unreachable!("1 ns..60 s at 2 significant digits are valid bounds: {e}")
    })
}

/// Spawns the workload of one load: on every CPU of `busy`, a writer and `readers_per_cpu` readers;
/// with `stall_reader_ms`, one stalled reader on the first busy CPU.
pub(super) fn spawn_workload(machine: &Machine, lab: &Arc<Lab>, busy: &[u32], w: &Workload) {
    for &cpu in busy {
        let writer = Writer {
            lab: lab.clone(),
            batch: w.retire_per_ms,
            burst_every: w.burst_every_ms,
            burst_size: w.burst_size,
            steps: 0,
        };
        machine.spawn(cpu, writer);
        for _ in 0..w.readers_per_cpu {
            let reader = Reader {
                lab: lab.clone(),
                held: None,
                latencies: new_hdr(),
            };
            machine.spawn(cpu, reader);
        }
    }
    if let (true, Some(&first)) = (w.stall_reader_ms > 0, busy.first()) {
        let stalled = StalledReader {
            lab: lab.clone(),
            stall_us: w.stall_reader_ms * 1_000,
            until_us: None,
            held: None,
        };
        machine.spawn(first, stalled);
    }
}
