//! rcutorture-style torture of the core on a simulated machine, running what users run.
//!
//! Readers on every busy CPU enter epochs (some nested, some holding DISPATCH, some migrating between
//! steps) and read objects and chains through shared cells; writers swap new objects into the cells and
//! retire the old ones, and now and then replace a chain whose links' destructors retire each other; a
//! synchronizer calls `synchronize`. Optional workloads ([`Workloads`], all on by default): work items
//! (create, schedule, cancel, reschedule after cancel, callbacks that retire and schedule more), stats
//! and holdback pollers, flush/synchronize storms from several CPUs, stallers that stay inside across
//! many cycles in distinct epochs (more than the reader table's entries on one CPU), allocation
//! failures that put a CPU on the overflow slot, an unload while work items run and a cycle is in
//! flight (the work callbacks that run during unload retire, flush from several CPUs and call
//! `synchronize`; destructors retire too), and a read-mostly hash map written with the core's safe pointer layer (`kepoch::atomic`;
//! see `map.rs`: readers look keys up, writers replace buckets by compare-and-exchange and retire
//! what they unlinked). Every read checks the object:
//! - its magic is intact (freed memory is poisoned by the simulated allocator, so a use-after-free
//!   reads poison and is caught, never silently passed);
//! - its retirement epoch has not been released while the reader still holds it (the object is "older
//!   than allowed": the domain already considers it unreachable).
//!
//! Readers also record the age of every unlinked object they still legitimately hold, in cycles started
//! since its unlink (rcutorture's "pipe" histogram). In kepoch a cycle completes with readers inside
//! (it releases only up to the oldest reader), so that age is unbounded for a stalled reader and is not
//! in itself a failure; the failure is an object whose epoch was released while held ("read at least one
//! releasing cycle after its unlink"), and the age is printed with it.
//!
//! A run is one or more machine lifetimes ([`RunOptions::lifetimes`]): each builds a new machine from
//! the seed, loads a domain, runs the workload with its own hot-adds, and unloads — so the hot-add
//! protocol runs again on every lifetime instead of stopping once the machine's slots are used up.
//!
//! Every run is held to the bounds of [`bounds`] (pending garbage, progress, cycles, memory, deadline);
//! breaking one ends the run at once with a diagnosis naming what holds reclamation back. A panic in the
//! run (the machine's bugcheck, an assertion) is caught and reported the same way; the machine and the
//! domain of a failed lifetime are leaked, never unloaded.
//!
//! With guard pages ([`RunOptions::guard_pages`]) every block of the machine lives on its own page,
//! which becomes `PROT_NONE` when freed: a late read faults, and a SIGSEGV handler names the object, its
//! retirement epoch, the reader's epoch, the seed and the replay command, then exits 1.
//!
//! At the end of a lifetime every object is retired, the domain is unloaded, and the allocator must
//! hold no live block (leak check); every scheduled work item must have run. Idle CPUs must have
//! received no message (S4) under `lazy` and `callback`, and the machine's own checks (routing, IRQL,
//! exclusion, double free) must be clean.

pub mod bounds;
pub mod fault;
mod lifetime;
mod linked;
mod map;
mod monitor;
mod setup;
mod tasks;
mod window;
mod work;

use crate::machine::{FaultHook, Machine, StepContext, StepOutcome};
use crate::objects::{self, ChainLink, ChainStats, Object, SimDomain};
use bounds::{Bounds, Watchdog};
use kepoch::{DomainBox, Holdback, Mutations, Strategy};
pub use lifetime::{run, run_with};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use rand::Rng;
pub use setup::machine_for;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared cells readers read and writers swap.
const CELLS: usize = 4;
/// Cycle period used by the torture: the shortest the configuration accepts, for many cycles per run.
const TORTURE_CYCLE_US: u32 = kepoch::config::MIN_CYCLE_PERIOD_US;

/// Which execution mode runs the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One OS thread, every choice from the seed; replayable.
    Deterministic,
    /// One OS thread per virtual CPU, for real memory-ordering effects.
    Parallel,
}

impl Mode {
    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Deterministic => "deterministic",
            Mode::Parallel => "parallel",
        }
    }
}

/// One torture run's parameters.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Strategy under test.
    pub strategy: Strategy,
    /// Seed of the topology, the schedule and every task's choices.
    pub seed: u64,
    /// Execution mode.
    pub mode: Mode,
    /// Simulated time (deterministic) or wall time (parallel) of each machine lifetime, in
    /// microseconds.
    pub duration_us: u64,
    /// Hot-adds per simulated second (some of them fail).
    pub hot_add_rate: u32,
    /// Re-introduced bugs.
    pub mutations: Mutations,
}

/// Which workloads run besides readers, writers (with chains) and the synchronizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workloads {
    /// Work items: create, schedule, cancel, reschedule, drop; callbacks that retire and schedule.
    pub work_items: bool,
    /// `stats()` and `holdback()` callers at PASSIVE.
    pub stats: bool,
    /// Chains: objects whose destructor retires the next one.
    pub chains: bool,
    /// Flush and synchronize storms from several CPUs.
    pub storms: bool,
    /// Readers that stay inside across many cycles in distinct epochs (fill reader tables).
    pub stalls: bool,
    /// Allocation failures at DISPATCH on one CPU, so it runs on the overflow slot.
    pub overflow: bool,
    /// Unload while work items run and a cycle is in flight (else: synchronize, then unload).
    pub busy_unload: bool,
    /// A read-mostly hash map through the safe pointer layer: readers look keys up, writers
    /// replace buckets by compare-and-exchange and retire what they unlinked; and a
    /// `kepoch::map::Map` whose permanent keys readers must always find.
    pub map: bool,
    /// A `kepoch::list::List`: readers walk it under a guard, writers push and remove items.
    pub list: bool,
}

impl Workloads {
    /// Every workload.
    pub const ALL: Workloads = Workloads {
        work_items: true,
        stats: true,
        chains: true,
        storms: true,
        stalls: true,
        overflow: true,
        busy_unload: true,
        map: true,
        list: true,
    };
    /// None: readers, writers and the synchronizer only.
    pub const NONE: Workloads = Workloads {
        work_items: false,
        stats: false,
        chains: false,
        storms: false,
        stalls: false,
        overflow: false,
        busy_unload: false,
        map: false,
        list: false,
    };
    /// Command-line names, in order.
    pub const NAMES: &'static [&'static str] = &[
        "work",
        "stats",
        "chains",
        "storms",
        "stalls",
        "overflow",
        "busy-unload",
        "map",
        "list",
    ];

    /// The switch of a command-line name.
    pub fn switch(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "work" => &mut self.work_items,
            "stats" => &mut self.stats,
            "chains" => &mut self.chains,
            "storms" => &mut self.storms,
            "stalls" => &mut self.stalls,
            "overflow" => &mut self.overflow,
            "busy-unload" => &mut self.busy_unload,
            "map" => &mut self.map,
            "list" => &mut self.list,
            _ => return None,
        })
    }
}

impl Default for Workloads {
    fn default() -> Self {
        Workloads::ALL
    }
}

/// Extra switches of a run (kept apart from [`RunSpec`] so that existing specs stay valid).
#[derive(Clone)]
pub struct RunOptions {
    /// Put every block of at most one page on its own page, `PROT_NONE` once freed; a late read
    /// faults and the fault handler reports it and exits the process with status 1.
    pub guard_pages: bool,
    /// What the fault handler and the watchdog print after their diagnosis (seed, replay command).
    pub fault_context: String,
    /// Allocation fault hook installed on the machine before load (fault-injection sweep).
    pub alloc_fault_hook: Option<FaultHook>,
    /// Workloads besides the basic ones.
    pub workloads: Workloads,
    /// Liveness and resource bounds.
    pub bounds: Bounds,
    /// Machine lifetimes in the run (each a new machine and domain from the seed); at least 1.
    pub lifetimes: u32,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            guard_pages: false,
            fault_context: String::new(),
            alloc_fault_hook: None,
            workloads: Workloads::ALL,
            bounds: Bounds::default(),
            lifetimes: 1,
        }
    }
}

/// Figures of one run.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Object reads checked by readers.
    pub reads: u64,
    /// Objects and chains retired by writers.
    pub retires: u64,
    /// Completed reclamation cycles.
    pub cycles: u64,
    /// `synchronize` calls.
    pub syncs: u64,
    /// `flush` calls by the storms.
    pub flushes: u64,
    /// Hot-adds that completed.
    pub hot_adds: u64,
    /// Hot-adds that failed (AddFailure).
    pub hot_add_failures: u64,
    /// Machine lifetimes (loads and unloads).
    pub lifetimes: u64,
    /// Simulated CPUs at the end of the last lifetime.
    pub cpus: u32,
    /// Reads of objects that were already unlinked (still legitimately held), by age in cycles started
    /// since the unlink: 0, 1, 2, 3 or more.
    pub held_age: [u64; 4],
    /// Oldest such age seen.
    pub max_held_age: u64,
    /// Processor preparations that failed (allocation faults): those CPUs used the fallback.
    pub prepare_failures: u64,
    /// Enters/retires that went to the shared overflow participant.
    pub fallback_uses: u64,
    /// Work item callbacks run.
    pub work_run: u64,
    /// Work items cancelled.
    pub work_cancelled: u64,
    /// Work items scheduled by work callbacks.
    pub work_chained: u64,
    /// Callback barriers that returned (each checked against the schedules pending before it).
    pub work_barriers: u64,
    /// Chain links retired by a destructor.
    pub destructor_retires: u64,
    /// `stats()`/`holdback()` polls.
    pub polls: u64,
    /// Most distinct epochs (global epoch after each enter) held by one staller on one CPU.
    pub max_depth: u64,
    /// Highest pending count the monitor saw.
    pub peak_pending: u64,
    /// Longest the released epoch stayed put, in cycles.
    pub max_no_release: u64,
    /// Map buckets checked (safe-API workload).
    pub map_lookups: u64,
    /// Map updates published by compare-and-exchange.
    pub map_updates: u64,
    /// Map compare-and-exchanges that lost a race and retried.
    pub map_conflicts: u64,
    /// Items of the list and `kepoch::map` checked by readers.
    pub linked_reads: u64,
    /// Removals, insertions and replacements in the list and `kepoch::map`.
    pub linked_updates: u64,
    /// Flushes by work callbacks while the domain unloaded (at PASSIVE and at DISPATCH).
    pub unload_flushes: u64,
    /// `synchronize` calls by work callbacks while the domain unloaded (each returned).
    pub unload_synchronizes: u64,
    /// Objects retired by work callbacks and destructors while the domain unloaded.
    pub unload_retires: u64,
}

impl RunStats {
    /// Adds another run's (or lifetime's) figures.
    pub fn add(&mut self, other: &RunStats) {
        for (total, age) in self.held_age.iter_mut().zip(other.held_age) {
            *total += age;
        }
        self.reads += other.reads;
        self.retires += other.retires;
        self.cycles += other.cycles;
        self.syncs += other.syncs;
        self.flushes += other.flushes;
        self.hot_adds += other.hot_adds;
        self.hot_add_failures += other.hot_add_failures;
        self.lifetimes += other.lifetimes;
        self.cpus = other.cpus;
        self.prepare_failures += other.prepare_failures;
        self.fallback_uses += other.fallback_uses;
        self.work_run += other.work_run;
        self.work_cancelled += other.work_cancelled;
        self.work_chained += other.work_chained;
        self.work_barriers += other.work_barriers;
        self.destructor_retires += other.destructor_retires;
        self.polls += other.polls;
        self.map_lookups += other.map_lookups;
        self.map_updates += other.map_updates;
        self.map_conflicts += other.map_conflicts;
        self.linked_reads += other.linked_reads;
        self.linked_updates += other.linked_updates;
        self.unload_flushes += other.unload_flushes;
        self.unload_synchronizes += other.unload_synchronizes;
        self.unload_retires += other.unload_retires;
        self.max_held_age = self.max_held_age.max(other.max_held_age);
        self.max_depth = self.max_depth.max(other.max_depth);
        self.peak_pending = self.peak_pending.max(other.peak_pending);
        self.max_no_release = self.max_no_release.max(other.max_no_release);
    }
}

/// Outcome of one run: its figures and every violation found.
#[derive(Clone, Debug, Default)]
pub struct RunOutcome {
    /// Figures.
    pub stats: RunStats,
    /// Human-readable violations; empty means the run passed.
    pub violations: Vec<String>,
    /// One line describing the simulated machine (of the failing lifetime, else the last one).
    pub machine: String,
}

/// State shared by the tasks of one machine lifetime.
struct Shared {
    /// The read-mostly map of the safe-API workload. Declared before `domain` so that it drops
    /// first: its atomics must not outlive the domain. Taken out before unload.
    map: RwLock<Option<map::ObjectMap>>,
    /// The list and map of the linked workloads; like `map`, declared before `domain`.
    linked: RwLock<Option<linked::Linked>>,
    domain: RwLock<Option<DomainBox<crate::machine::SimPlatform>>>,
    machine: Machine,
    mode: Mode,
    bounds: Bounds,
    workloads: Workloads,
    watchdog: Watchdog,
    started: Instant,
    deadline: Duration,
    cells: [AtomicPtr<Object>; CELLS],
    chain_cell: AtomicPtr<ChainLink>,
    chain_stats: ChainStats,
    /// Readers, writers and the other tasks finish.
    stop: AtomicBool,
    /// The monitor finishes (just before unload).
    monitor_stop: AtomicBool,
    violations: Mutex<Vec<(String, u64)>>,
    /// The bound the monitor found broken, if any.
    failure: Mutex<Option<String>>,
    next_id: AtomicU64,
    reads: AtomicU64,
    retires: AtomicU64,
    syncs: AtomicU64,
    flushes: AtomicU64,
    polls: AtomicU64,
    max_depth: AtomicU64,
    peak_pending: AtomicU64,
    max_no_release: AtomicU64,
    /// Map buckets checked by map readers and writers.
    map_lookups: AtomicU64,
    /// Map updates published by compare-and-exchange.
    map_updates: AtomicU64,
    /// Compare-and-exchanges of map writers that lost a race and retried.
    map_conflicts: AtomicU64,
    /// Items of the linked structures checked by readers.
    linked_reads: AtomicU64,
    /// Updates of the linked structures.
    linked_updates: AtomicU64,
    /// Cycles completed, as the monitor last saw them (the figure of a lifetime that failed).
    cycles_seen: AtomicU64,
    held_age: [AtomicU64; 4],
    max_held_age: AtomicU64,
    /// A CPU that must never run epoch code (the S4 check); migrations avoid it.
    idle_cpu: Option<u32>,
}

impl Shared {
    fn domain(&self) -> RwLockReadGuard<'_, Option<DomainBox<crate::machine::SimPlatform>>> {
        self.domain.read()
    }

    /// Records a violation; repeats of the same text are counted, not listed again.
    fn violation(&self, text: String) {
        let mut violations = self.violations.lock();
        if let Some(seen) = violations.iter_mut().find(|(t, _)| *t == text) {
            seen.1 += 1;
        } else if violations.len() < 20 {
            violations.push((text, 1));
        }
    }

    /// The violations recorded, repeats counted.
    fn violations(&self) -> Vec<String> {
        lifetime::counted(self.violations.lock().iter().map(|(t, n)| (t.clone(), *n)))
    }

    /// A bound broke: the first one is the run's failure.
    fn fail(&self, text: String) {
        self.watchdog.failed(&text);
        self.failure.lock().get_or_insert(text);
    }

    /// Checks an object a reader holds. `cpu` is where the reader runs now.
    fn check(&self, domain: &SimDomain, object: NonNull<Object>, id: u64, cpu: u32) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        // SAFETY: held inside the reader's epoch; see `objects::check`.
        if let Some(text) = unsafe { objects::check(domain, object) }.describe(id, cpu) {
            self.violation(text);
        // SAFETY: as above.
        } else if let Some(age) = unsafe { objects::age_cycles(domain, object) } {
            self.held_age[age.min(3) as usize].fetch_add(1, Ordering::Relaxed);
            self.max_held_age.fetch_max(age, Ordering::Relaxed);
        }
    }

    /// Checks a chain a reader holds.
    fn check_chain(&self, head: NonNull<ChainLink>, cpu: u32) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        // SAFETY: held inside the reader's epoch; see `objects::check_chain`.
        if let Some((id, magic)) = unsafe { objects::check_chain(head) } {
            self.violation(format!(
                "use-after-free: a reader on CPU {cpu} reached chain link #{id} after it was freed (magic {magic:#018x})"
            ));
        }
    }

    /// Reads and checks a random cell inside the caller's epoch; returns the object to hold.
    fn read_cell(
        &self,
        domain: &SimDomain,
        ctx: &mut StepContext<'_>,
    ) -> Option<(NonNull<Object>, u64)> {
        // SAFETY: called inside the reader's epoch; every object in the cells came from
        // `new_object` of this domain.
        let (object, id) = unsafe { objects::load_random(&self.cells, ctx.rng()) }?;
        self.check(domain, object, id, ctx.cpu().index);
        Some((object, id))
    }

    /// Runs one step of a task with the domain, unless the run is stopping or the domain is gone:
    /// then the task is done.
    fn step_unless_stopped(&self, work: impl FnOnce(&SimDomain) -> StepOutcome) -> StepOutcome {
        let guard = self.domain();
        match guard.as_deref() {
            Some(domain) if !self.stop.load(Ordering::Relaxed) => work(domain),
            _ => StepOutcome::Done,
        }
    }

    /// Where a migrating task goes: any running CPU but the idle one (hot-added CPUs included).
    fn migrate(&self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let mut targets = ctx.platform().machine().running_indexes();
        targets.retain(|&c| Some(c) != self.idle_cpu);
        match targets.len() {
            0 => StepOutcome::Continue,
            n => StepOutcome::MigrateTo(targets[ctx.rng().gen_range(0..n)]),
        }
    }

    fn new_object(&self, domain: &SimDomain) -> Option<(NonNull<Object>, u64)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        objects::new_object(domain, id).map(|p| (p, id))
    }

    /// What holds reclamation back, in words: epochs, the oldest reader and the pending garbage.
    fn describe_holdback(&self, hold: &Holdback) -> String {
        let reader = match hold.oldest_reader {
            Some((holder, epoch)) => format!(
                "{holder} holds epoch {epoch} for {} cycles",
                hold.global_epoch.saturating_sub(epoch)
            ),
            None => "no reader is inside".into(),
        };
        let alloc = self.machine.alloc_stats();
        format!(
            "global epoch {}, released epoch {}; {reader}; pending garbage: {} items (the simulated allocator holds {} bytes in {} live blocks)",
            hold.global_epoch, hold.released_epoch, hold.pending, alloc.live_bytes, alloc.live_objects
        )
    }
}
