//! rcutorture-style torture of the core on a simulated machine.
//!
//! Readers on every busy CPU enter epochs (some nested, some holding DISPATCH, some migrating between
//! steps) and read objects through shared cells; writers swap new objects into the cells and retire the
//! old ones; a synchronizer calls `synchronize`. Every read checks the object:
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
//! With guard pages ([`RunOptions::guard_pages`]) every block of the machine lives on its own page,
//! which becomes `PROT_NONE` when freed: a late read faults, and a SIGSEGV handler names the object, its
//! retirement epoch, the reader's epoch, the seed and the replay command, then exits 1.
//!
//! At the end every object is retired, the domain is synchronized and unloaded, and the allocator must
//! hold no live block (leak check). Idle CPUs must have received no message (S4) under `lazy` and
//! `callback`, and the machine's own checks (routing, IRQL, exclusion, double free) must be clean.

use crate::machine::{FaultHook, Firmware, Machine, MachineConfig, StepContext, StepOutcome, Task};
use crate::objects::{self, Object, SimDomain};
use kepoch::platform::{Irql, Platform};
use kepoch::{Config, Domain, DomainBox, Mutations, RawGuard, Strategy};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// Simulated time (deterministic) or wall time (parallel), in microseconds.
    pub duration_us: u64,
    /// Hot-adds per simulated second (some of them fail).
    pub hot_add_rate: u32,
    /// Re-introduced bugs.
    pub mutations: Mutations,
}

/// Extra switches of a run (kept apart from [`RunSpec`] so that existing specs stay valid).
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Put every block of at most one page on its own page, `PROT_NONE` once freed; a late read
    /// faults and the fault handler reports it and exits the process with status 1.
    pub guard_pages: bool,
    /// What the fault handler prints after the fault line (seed, replay command).
    pub fault_context: String,
    /// Allocation fault hook installed on the machine before load (fault-injection sweep).
    pub alloc_fault_hook: Option<FaultHook>,
}

/// Figures of one run.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Object reads checked by readers.
    pub reads: u64,
    /// Objects retired by writers.
    pub retires: u64,
    /// Completed reclamation cycles.
    pub cycles: u64,
    /// `synchronize` calls.
    pub syncs: u64,
    /// Hot-adds that completed.
    pub hot_adds: u64,
    /// Simulated CPUs at the end.
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
}

/// Outcome of one run: its figures and every violation found.
#[derive(Clone, Debug, Default)]
pub struct RunOutcome {
    /// Figures.
    pub stats: RunStats,
    /// Human-readable violations; empty means the run passed.
    pub violations: Vec<String>,
    /// One line describing the simulated machine.
    pub machine: String,
}

/// State shared by the tasks of one run.
struct Shared {
    domain: RwLock<Option<DomainBox<crate::machine::SimPlatform>>>,
    cells: [AtomicPtr<Object>; CELLS],
    stop: AtomicBool,
    violations: Mutex<Vec<String>>,
    next_id: AtomicU64,
    reads: AtomicU64,
    retires: AtomicU64,
    syncs: AtomicU64,
    held_age: [AtomicU64; 4],
    max_held_age: AtomicU64,
    /// A CPU that must never run epoch code (the S4 check); migrations avoid it.
    idle_cpu: Option<u32>,
}

impl Shared {
    fn domain(&self) -> RwLockReadGuard<'_, Option<DomainBox<crate::machine::SimPlatform>>> {
        self.domain.read()
    }

    fn violation(&self, text: String) {
        let mut violations = self.violations.lock();
        if violations.len() < 20 {
            violations.push(text);
        }
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
}

/// A reader: enters (sometimes nested, sometimes at DISPATCH), reads and re-checks objects across
/// several steps, migrates between steps when at PASSIVE, exits.
struct Reader {
    shared: Arc<Shared>,
    tokens: Vec<RawGuard>,
    held: Vec<(NonNull<Object>, u64)>,
    steps_left: u32,
    dispatch_irql: Option<Irql>,
    /// Global epoch right after the outermost enter (an upper bound of the reader's epoch).
    entered_at: u64,
}

// SAFETY: the held pointers are only dereferenced under the epoch the reader's tokens keep open.
unsafe impl Send for Reader {}

impl Reader {
    fn new(shared: Arc<Shared>) -> Self {
        Reader {
            shared,
            tokens: Vec::new(),
            held: Vec::new(),
            steps_left: 0,
            dispatch_irql: None,
            entered_at: 0,
        }
    }

    fn read_cell(&mut self, domain: &SimDomain, ctx: &mut StepContext<'_>) {
        let cell = ctx.rng().gen_range(0..CELLS);
        let object = self.shared.cells[cell].load(Ordering::Acquire);
        if let Some(object) = NonNull::new(object) {
            // SAFETY: loaded inside the epoch; see `Shared::check` for why reading is sound.
            let id = unsafe { object.as_ref().id };
            self.shared.check(domain, object, id, ctx.cpu().index);
            self.held.push((object, id));
        }
    }

    fn exit_all(&mut self, domain: &SimDomain, ctx: &mut StepContext<'_>) {
        self.held.clear();
        while let Some(token) = self.tokens.pop() {
            // SAFETY: tokens come from this domain's `enter_raw` and are exited once.
            unsafe { domain.exit_raw(token) };
        }
        if let Some(previous) = self.dispatch_irql.take() {
            domain.platform().lower_irql(previous);
            ctx.hold_dispatch(false);
        }
    }
}

impl Task for Reader {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        let guard = shared.domain();
        let Some(domain) = guard.as_deref() else {
            return StepOutcome::Done;
        };
        if self.tokens.is_empty() {
            if shared.stop.load(Ordering::Relaxed) {
                return StepOutcome::Done;
            }
            if ctx.rng().gen_ratio(1, 4) {
                self.dispatch_irql = Some(domain.platform().raise_to_dispatch());
                ctx.hold_dispatch(true);
            }
            // SAFETY: exited in `exit_all` before the domain is unloaded (the run waits for every task).
            self.tokens.push(unsafe { domain.enter_raw() });
            // The reader's epoch is at most the global epoch after the enter.
            self.entered_at = domain.global_epoch();
            fault::set_reader(self.entered_at, ctx.cpu().index);
            if ctx.rng().gen_ratio(1, 4) {
                // SAFETY: as above.
                self.tokens.push(unsafe { domain.enter_raw() });
            }
            self.read_cell(domain, ctx);
            fault::clear_reader();
            self.steps_left = ctx.rng().gen_range(1..8);
            return StepOutcome::Continue;
        }
        fault::set_reader(self.entered_at, ctx.cpu().index);
        for &(object, id) in &self.held {
            shared.check(domain, object, id, ctx.cpu().index);
        }
        if ctx.rng().gen_ratio(1, 3) {
            self.read_cell(domain, ctx);
        }
        fault::clear_reader();
        self.steps_left -= 1;
        if self.steps_left == 0 || shared.stop.load(Ordering::Relaxed) {
            self.exit_all(domain, ctx);
            let pause = ctx.rng().gen_range(0..20);
            return StepOutcome::Sleep(pause);
        }
        if self.dispatch_irql.is_none() && ctx.rng().gen_ratio(1, 4) {
            return shared.migrate(ctx);
        }
        StepOutcome::Continue
    }
}

/// A writer: publishes a new object in a random cell and retires the one it replaced; moves between
/// CPUs.
struct Writer {
    shared: Arc<Shared>,
}

impl Task for Writer {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        shared.step_unless_stopped(|domain| Self::publish_and_retire(&shared, domain, ctx))
    }
}

impl Writer {
    fn publish_and_retire(
        shared: &Shared,
        domain: &SimDomain,
        ctx: &mut StepContext<'_>,
    ) -> StepOutcome {
        // The writer's own epoch keeps the old object alive while it records the retirement epoch.
        let epoch = domain.enter();
        if let Some((object, _)) = shared.new_object(domain) {
            let cell = ctx.rng().gen_range(0..CELLS);
            // SAFETY: every object in the cells came from `new_object` of this domain.
            match unsafe { objects::replace(domain, &shared.cells[cell], object) } {
                Ok(true) => {
                    shared.retires.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(error) => {
                    shared.violation(format!("retire of an unlinked object failed: {error:?}"))
                }
            }
        }
        drop(epoch);
        if ctx.rng().gen_ratio(1, 3) {
            return shared.migrate(ctx);
        }
        StepOutcome::Sleep(ctx.rng().gen_range(1..10))
    }
}

/// Calls `synchronize` now and then, from PASSIVE, outside any epoch.
struct Synchronizer {
    shared: Arc<Shared>,
}

impl Task for Synchronizer {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        shared.step_unless_stopped(|domain| {
            domain.synchronize();
            shared.syncs.fetch_add(1, Ordering::Relaxed);
            StepOutcome::Sleep(ctx.rng().gen_range(200..2_000))
        })
    }
}

/// The machine a seed describes. `eager` gets an accurate machine with max == active (it cannot load
/// elsewhere); the other strategies get max > active, under-reporting firmware or sparse groups.
pub fn machine_for(
    strategy: Strategy,
    seed: u64,
    hot_add_rate: u32,
    duration_us: u64,
) -> MachineConfig {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x746F_7274_7572_6521);
    let hot_add_slots = if hot_add_rate == 0 || strategy == Strategy::Eager {
        0
    } else {
        let expected = (hot_add_rate as u64 * duration_us).div_ceil(1_000_000);
        expected.clamp(1, 8) as u32
    };
    let mut config = MachineConfig {
        seed,
        hot_add_slots,
        callback_api_present: true,
        ..MachineConfig::default()
    };
    let active = rng.gen_range(2..=5);
    config.active_at_boot = active;
    if strategy == Strategy::Eager {
        config.max_reported = active;
        config.firmware = Firmware::Accurate;
        return config;
    }
    match rng.gen_range(0..3) {
        0 => {
            config.firmware = Firmware::Accurate;
            config.max_reported = active + hot_add_slots + rng.gen_range(0..60);
        }
        1 => {
            config.firmware = Firmware::UnderReport;
            config.max_reported = rng.gen_range(1..active);
        }
        _ => {
            config.firmware = Firmware::Sparse;
            config.group_size = [2u8, 4, 8][rng.gen_range(0..3)];
            config.max_reported = active + hot_add_slots + rng.gen_range(0..8);
        }
    }
    config
}

/// Runs one torture run and returns its outcome (never panics on a violation).
pub fn run(spec: &RunSpec) -> RunOutcome {
    run_with(spec, &RunOptions::default())
}

/// [`run`] with extra switches. With guard pages, a late read does not return: the fault handler
/// reports it and exits the process with status 1.
pub fn run_with(spec: &RunSpec, options: &RunOptions) -> RunOutcome {
    let machine_config = machine_for(
        spec.strategy,
        spec.seed,
        spec.hot_add_rate,
        spec.duration_us,
    );
    let machine = match Machine::new(machine_config.clone()) {
        Ok(machine) => machine,
        Err(error) => {
            return RunOutcome {
                violations: vec![format!("bad machine: {error:?}")],
                ..Default::default()
            }
        }
    };
    let describe = format!(
        "{} firmware, max {} active {} group size {} hot-add slots {}",
        machine_config.firmware.name(),
        machine_config.max_reported,
        machine_config.active_at_boot,
        machine_config.group_size,
        machine_config.hot_add_slots
    );
    if options.guard_pages {
        fault::install(&options.fault_context);
        objects::set_fault_registry(true);
        machine.set_guard_pages(true);
    }
    if let Some(hook) = &options.alloc_fault_hook {
        machine.set_alloc_fault_hook(Some(hook.clone()));
    }
    let running = machine.running_indexes();
    let boot = running[0];
    let config = Config {
        cycle_period_us: TORTURE_CYCLE_US,
        mutations: spec.mutations,
        ..Config::with_strategy(spec.strategy)
    };
    let domain = match machine.with_cpu(boot, || Domain::create(machine.platform(), config)) {
        Ok(domain) => domain,
        Err(error) => {
            // A failed load must leave nothing behind either.
            let mut violations = vec![format!("load failed: {error}")];
            violations.extend(machine_checks(&machine));
            return RunOutcome {
                violations,
                machine: describe,
                ..Default::default()
            };
        }
    };
    if options.guard_pages {
        fault::set_domain(&domain);
    }
    // The last running CPU stays idle (never runs epoch code) when there are three or more.
    let idle_cpu = (running.len() >= 3).then(|| running[running.len() - 1]);
    let shared = Arc::new(Shared {
        domain: RwLock::new(Some(domain)),
        cells: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        stop: AtomicBool::new(false),
        violations: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        retires: AtomicU64::new(0),
        syncs: AtomicU64::new(0),
        held_age: Default::default(),
        max_held_age: AtomicU64::new(0),
        idle_cpu,
    });

    let busy: Vec<u32> = running
        .iter()
        .copied()
        .filter(|&c| Some(c) != idle_cpu)
        .collect();
    for &cpu in &busy {
        machine.spawn(cpu, Reader::new(shared.clone()));
        machine.spawn(cpu, Reader::new(shared.clone()));
    }
    for &cpu in busy.iter().step_by(2) {
        machine.spawn(
            cpu,
            Writer {
                shared: shared.clone(),
            },
        );
    }
    machine.spawn(
        busy[0],
        Synchronizer {
            shared: shared.clone(),
        },
    );

    if spec.hot_add_rate > 0 && machine_config.hot_add_slots > 0 {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x686F_7461_6464);
        let count = (spec.hot_add_rate as u64 * spec.duration_us)
            .div_ceil(1_000_000)
            .max(1);
        for _ in 0..count {
            let at = rng.gen_range(0..spec.duration_us.max(1));
            machine.schedule_hot_add(at, 1, rng.gen_ratio(1, 4));
        }
    }

    let mut violations = Vec::new();
    match spec.mode {
        Mode::Deterministic => {
            machine.run_for(spec.duration_us);
            shared.stop.store(true, Ordering::Relaxed);
            if !machine.run_until_idle(5_000_000) {
                violations.push(format!(
                    "tasks did not finish: {} left",
                    machine.tasks_remaining()
                ));
            }
        }
        Mode::Parallel => {
            let wall = Duration::from_micros(spec.duration_us);
            let stopper = {
                let shared = shared.clone();
                let margin = (wall / 10).min(Duration::from_millis(500));
                std::thread::spawn(move || {
                    std::thread::sleep(wall.saturating_sub(margin));
                    shared.stop.store(true, Ordering::Relaxed);
                })
            };
            machine.run_parallel(wall);
            let _ = stopper.join();
            if machine.tasks_remaining() != 0 {
                violations.push(format!(
                    "tasks did not finish: {} left",
                    machine.tasks_remaining()
                ));
            }
        }
    }

    // Tear down: retire what is still published, synchronize, unload, then look for leaks.
    let stats_before_unload = machine.with_cpu(boot, || {
        let guard = shared.domain();
        let domain = guard.as_deref().expect("domain present until unload");
        if objects::retire_cells(domain, &shared.cells) != 0 {
            shared.violation("final retire refused".into());
        }
        domain.synchronize();
        domain.stats()
    });
    fault::clear_domain();
    machine.with_cpu(boot, || drop(shared.domain.write().take()));

    violations.extend(shared.violations.lock().iter().cloned());
    violations.extend(machine_checks(&machine));
    if stats_before_unload.freed + stats_before_unload.pending != stats_before_unload.retired {
        violations.push(format!(
            "accounting: retired {} != freed {} + pending {}",
            stats_before_unload.retired, stats_before_unload.freed, stats_before_unload.pending
        ));
    }
    let report = machine.report();
    if let Some(idle) = idle_cpu {
        let messages = report
            .cpus
            .iter()
            .find(|c| c.index == idle)
            .map_or(0, |c| c.messages_delivered);
        if spec.strategy != Strategy::Eager && messages != 0 {
            violations.push(format!(
                "energy: idle CPU {idle} received {messages} message(s) (S4)"
            ));
        }
    }
    RunOutcome {
        stats: RunStats {
            reads: shared.reads.load(Ordering::Relaxed),
            retires: shared.retires.load(Ordering::Relaxed),
            cycles: stats_before_unload.cycles,
            syncs: shared.syncs.load(Ordering::Relaxed),
            hot_adds: report.counters.hot_add_complete,
            cpus: report
                .cpus
                .iter()
                .filter(|c| c.status == crate::machine::CpuStatus::Running)
                .count() as u32,
            held_age: std::array::from_fn(|k| shared.held_age[k].load(Ordering::Relaxed)),
            max_held_age: shared.max_held_age.load(Ordering::Relaxed),
            prepare_failures: stats_before_unload.prepare_failures,
            fallback_uses: stats_before_unload.fallback_uses,
        },
        violations,
        machine: describe,
    }
}

/// The machine's own findings after unload: its violations and any block still allocated (leak).
fn machine_checks(machine: &Machine) -> Vec<String> {
    let mut found: Vec<String> = machine
        .violations()
        .into_iter()
        .map(|v| format!("machine: {:?}: {}", v.kind, v.message))
        .collect();
    let live = machine.live_allocations();
    if !live.is_empty() {
        found.push(format!(
            "leak: {} block(s) still allocated after unload",
            live.len()
        ));
    }
    found
}

/// The guard-page fault handler: SIGSEGV/SIGBUS on a freed object's page is reported and ends the
/// process with status 1. Everything the handler touches is an atomic, a thread-local atomic with a
/// constant initialiser, or a stack buffer, and it only calls `write` and `_exit`.
pub mod fault {
    use super::SimDomain;
    use crate::objects;
    use std::ptr;
    use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Once, OnceLock};

    /// Address of the last fault the handler saw (0 = none).
    pub static FAULT_ADDR: AtomicUsize = AtomicUsize::new(0);
    static DOMAIN: AtomicPtr<SimDomain> = AtomicPtr::new(ptr::null_mut());
    static CONTEXT: AtomicPtr<Box<str>> = AtomicPtr::new(ptr::null_mut());
    static OLD_SEGV: OnceLock<libc::sigaction> = OnceLock::new();
    static OLD_BUS: OnceLock<libc::sigaction> = OnceLock::new();

    type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

    thread_local! {
        /// Epoch bound of the reader running on this thread (`u64::MAX` = none) and its CPU.
        static READER_EPOCH: AtomicU64 = const { AtomicU64::new(u64::MAX) };
        static READER_CPU: AtomicU64 = const { AtomicU64::new(u64::MAX) };
    }

    pub(super) fn set_reader(epoch: u64, cpu: u32) {
        READER_EPOCH.with(|e| e.store(epoch, Ordering::Relaxed));
        READER_CPU.with(|c| c.store(u64::from(cpu), Ordering::Relaxed));
    }

    pub(super) fn clear_reader() {
        READER_EPOCH.with(|e| e.store(u64::MAX, Ordering::Relaxed));
    }

    pub(super) fn set_domain(domain: &SimDomain) {
        DOMAIN.store(ptr::from_ref(domain).cast_mut(), Ordering::Release);
    }

    pub(super) fn clear_domain() {
        DOMAIN.store(ptr::null_mut(), Ordering::Release);
    }

    /// Installs the handlers (once per process) and sets the text printed after a fault.
    pub(super) fn install(context: &str) {
        // The previous text (one short line per run) is leaked rather than freed: a handler on another
        // thread might be printing it right now.
        let new = Box::into_raw(Box::new(Box::<str>::from(context)));
        CONTEXT.swap(new, Ordering::AcqRel);
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            for (signal, old) in [(libc::SIGSEGV, &OLD_SEGV), (libc::SIGBUS, &OLD_BUS)] {
                // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler has the
                // SA_SIGINFO signature; `previous` receives the action we replace.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    let handler: Handler = on_fault;
                    action.sa_sigaction = handler as usize;
                    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                    libc::sigemptyset(&mut action.sa_mask);
                    let mut previous: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(signal, &action, &mut previous) == 0 {
                        let _ = old.set(previous);
                    }
                }
            }
        });
    }

    /// A fixed buffer for formatting without allocation.
    struct Buf {
        bytes: [u8; 1024],
        len: usize,
    }

    impl std::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let n = s.len().min(self.bytes.len() - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }

    fn write_stderr(bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            // SAFETY: `rest` is a valid buffer of `rest.len()` bytes; write(2) is async-signal-safe.
            let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                return;
            }
            rest = &rest[n as usize..];
        }
    }

    extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        use std::fmt::Write;
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers of SIGSEGV/SIGBUS.
        let addr = unsafe { (*info).si_addr() } as usize;
        FAULT_ADDR.store(addr, Ordering::SeqCst);
        let name = if signal == libc::SIGBUS {
            "SIGBUS"
        } else {
            "SIGSEGV"
        };
        let mut out = Buf {
            bytes: [0; 1024],
            len: 0,
        };
        let Some(object) = objects::lookup_fault(addr) else {
            let _ = writeln!(
                out,
                "kepoch-sim torture: {name} at {addr:#x}, not on a torture object's page (a core structure's guard page or a crash)"
            );
            write_stderr(&out.bytes[..out.len]);
            // Hand the fault back to the previous handler (Rust's stack-overflow handler or the
            // default action): restore it and return, so the access faults again.
            let old = if signal == libc::SIGBUS {
                &OLD_BUS
            } else {
                &OLD_SEGV
            };
            // SAFETY: restoring an action the kernel gave us (or the default when there was none).
            unsafe {
                match old.get() {
                    Some(previous) => {
                        libc::sigaction(signal, previous, ptr::null_mut());
                    }
                    None => {
                        libc::signal(signal, libc::SIG_DFL);
                    }
                }
            }
            return;
        };
        let _ = write!(
            out,
            "kepoch-sim torture: GUARD-PAGE FAULT ({name}): late read at {addr:#x} of freed object #{}",
            object.id
        );
        if object.retired_at == objects::NOT_RETIRED {
            let _ = write!(out, " (retirement epoch not recorded yet)");
        } else {
            let _ = write!(out, " retired at epoch {}", object.retired_at);
        }
        let reader = READER_EPOCH.with(|e| e.load(Ordering::Relaxed));
        let cpu = READER_CPU.with(|c| c.load(Ordering::Relaxed));
        if reader != u64::MAX {
            let _ = write!(
                out,
                "; the reader on CPU {cpu} entered at epoch <= {reader}"
            );
        }
        let domain = DOMAIN.load(Ordering::Acquire);
        if !domain.is_null() {
            // SAFETY: set while the domain is loaded and cleared before it is unloaded; the two loads
            // are atomic.
            let (global, released) =
                unsafe { ((*domain).global_epoch(), (*domain).released_epoch()) };
            let _ = write!(
                out,
                "; domain global epoch {global}, released epoch {released}"
            );
        }
        let _ = writeln!(out);
        write_stderr(&out.bytes[..out.len]);
        let context = CONTEXT.load(Ordering::Acquire);
        if !context.is_null() {
            // SAFETY: contexts are never freed (see `install`).
            write_stderr(unsafe { (*context).as_bytes() });
        }
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(1) };
    }
}
