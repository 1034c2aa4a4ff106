//! Runs one strategy on one scenario and measures the SPEC §6 figures.
//!
//! Everything is measured on the real code paths: first-enter and enter/exit latencies are timed with
//! [`Instant`] around the core's `enter_raw`/`exit_raw` on the simulated CPUs' threads; cycle latency
//! comes from the core's own histogram; memory from the core's `per_cpu_bytes` and the simulated
//! allocator's byte counters; messages from the machine's per-CPU delivery counters; use-after-free
//! from the poisoned-object checks the readers make; leaks from the allocator after unload.

use super::scenario::Scenario;
use crate::machine::{Machine, SimPlatform, StepContext, StepOutcome, Task};
use crate::objects::{self, Check, Object, SimDomain};
use kepoch::stats::LatencyHistogram;
use kepoch::{CallbackState, Config, Domain, DomainBox, RawGuard, Strategy};
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared cells readers read and writers swap.
const CELLS: usize = 8;
/// Timed enter/exit pairs a reader makes per step.
const BURST: u32 = 4;
/// Cycles a reader may hold back reclamation before the core reports it (the lab's runs are short).
pub const LAB_STALL_THRESHOLD_CYCLES: u64 = 200;

/// How the machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// One OS thread per virtual CPU; the duration is wall-clock time (what the A/B test uses).
    Parallel,
    /// One OS thread scheduling every CPU from the seed; the duration is simulated time.
    Deterministic,
}

impl RunMode {
    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            RunMode::Parallel => "parallel",
            RunMode::Deterministic => "deterministic",
        }
    }
}

/// Called with the fraction of the run done (0.0..=1.0) while a strategy runs.
pub type Progress<'a> = &'a (dyn Fn(f64) + Sync);

/// State shared by the tasks of one run.
struct Lab {
    domain: RwLock<Option<DomainBox<SimPlatform>>>,
    cells: [AtomicPtr<Object>; CELLS],
    stop: AtomicBool,
    /// Position of each CPU index in `used`.
    cpu_pos: HashMap<u32, usize>,
    /// Whether the workload ran epoch code on the CPU (its first enter was timed).
    used: Vec<AtomicBool>,
    /// CPUs the workload keeps idle (never run epoch code, never migrated to).
    idle: HashSet<u32>,
    first_samples: Mutex<Vec<u64>>,
    enter_exit: Mutex<LatencyHistogram>,
    next_id: AtomicU64,
    reads: AtomicU64,
    alloc_failures: AtomicU64,
    use_after_free: AtomicU64,
    violations: Mutex<Vec<String>>,
}

impl Lab {
    fn violation(&self, text: String) {
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
    latencies: LatencyHistogram,
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
            lab.enter_exit.lock().merge(&self.latencies);
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
                self.latencies.record(enter_ns + exit_ns);
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
        for _ in 0..self.batch {
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

fn summary_json(h: &LatencyHistogram) -> Value {
    let s = h.summary();
    if s.count == 0 {
        return json!({"p50": null, "p99": null, "max": null, "count": 0});
    }
    json!({"p50": s.p50, "p99": s.p99, "max": s.max, "count": s.count})
}

fn micros(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// The result of a strategy that did not load: every figure null.
fn not_loaded(strategy: Strategy, error: String) -> Value {
    let mut v = json!({
        "strategy": strategy.name(),
        "source": "sim",
        "loaded": false,
        "load_error": error,
    });
    for key in super::FIGURES {
        v[*key] = Value::Null;
    }
    v
}

/// Runs `strategy` on `scenario` and returns its SPEC §6 result (a JSON object).
pub fn run_strategy(
    scenario: &Scenario,
    strategy: Strategy,
    mode: RunMode,
    progress: Progress<'_>,
) -> Result<Value, super::scenario::ScenarioError> {
    let mut machine_config = scenario.machine_config()?;
    machine_config.alloc_fail_every = scenario.workload.alloc_fail_every;
    let machine =
        Machine::new(machine_config).map_err(|e| super::scenario::ScenarioError(e.to_string()))?;
    let running = machine.running_indexes();
    let boot = running[0];
    let config = Config {
        stall_threshold_cycles: LAB_STALL_THRESHOLD_CYCLES,
        ..Config::with_strategy(strategy)
    };
    let started = Instant::now();
    let bytes_before = machine.alloc_stats().live_bytes;
    let domain = match machine.with_cpu(boot, || Domain::create(machine.platform(), config)) {
        Ok(domain) => domain,
        Err(error) => {
            let mut v = not_loaded(strategy, error.to_string());
            v["leaked"] = json!(machine.live_allocations().len());
            progress(1.0);
            return Ok(v);
        }
    };
    let bytes_at_load = machine
        .alloc_stats()
        .live_bytes
        .saturating_sub(bytes_before);
    let callback_state = domain.callback_state();

    let w = &scenario.workload;
    let idle: HashSet<u32> = running
        .iter()
        .rev()
        .take(w.idle_cpus as usize)
        .copied()
        .collect();
    let slots = machine.slots();
    let lab = Arc::new(Lab {
        domain: RwLock::new(Some(domain)),
        cells: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        stop: AtomicBool::new(false),
        cpu_pos: slots
            .iter()
            .enumerate()
            .map(|(p, s)| (s.index, p))
            .collect(),
        used: slots.iter().map(|_| AtomicBool::new(false)).collect(),
        idle: idle.clone(),
        first_samples: Mutex::new(Vec::new()),
        enter_exit: Mutex::new(LatencyHistogram::default()),
        next_id: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        alloc_failures: AtomicU64::new(0),
        use_after_free: AtomicU64::new(0),
        violations: Mutex::new(Vec::new()),
    });
    let busy: Vec<u32> = running
        .iter()
        .copied()
        .filter(|c| !idle.contains(c))
        .collect();
    for &cpu in &busy {
        machine.spawn(
            cpu,
            Writer {
                lab: lab.clone(),
                batch: w.retire_per_ms,
            },
        );
        for _ in 0..w.readers_per_cpu {
            machine.spawn(
                cpu,
                Reader {
                    lab: lab.clone(),
                    held: None,
                    latencies: LatencyHistogram::default(),
                },
            );
        }
    }
    if w.stall_reader_ms > 0 {
        machine.spawn(
            busy[0],
            StalledReader {
                lab: lab.clone(),
                stall_us: w.stall_reader_ms * 1_000,
                until_us: None,
                held: None,
            },
        );
    }
    let now = machine.now_us();
    for h in &scenario.hot_add {
        machine.schedule_hot_add(now + h.at_ms * 1_000, h.count, h.fail);
    }

    let duration_us = w.duration_ms * 1_000;
    let mut problems = Vec::new();
    match mode {
        RunMode::Parallel => {
            let wall = Duration::from_micros(duration_us);
            // Tasks stop (and exit their epochs) a little before the machine stops.
            let margin = (wall / 10).clamp(Duration::from_millis(20), Duration::from_millis(300));
            std::thread::scope(|scope| {
                let stopper = scope.spawn(|| {
                    let begin = Instant::now();
                    let until = wall.saturating_sub(margin);
                    while begin.elapsed() < until {
                        progress(begin.elapsed().as_secs_f64() / wall.as_secs_f64());
                        std::thread::sleep(Duration::from_millis(50).min(until));
                    }
                    lab.stop.store(true, Ordering::Relaxed);
                });
                machine.run_parallel(wall);
                let _ = stopper.join();
            });
        }
        RunMode::Deterministic => {
            let chunk = (duration_us / 50).max(1);
            let mut done = 0;
            while done < duration_us {
                let step = chunk.min(duration_us - done);
                machine.run_for(step);
                done += step;
                progress(done as f64 / duration_us as f64);
            }
            lab.stop.store(true, Ordering::Relaxed);
            if !machine.run_until_idle(5_000_000) {
                problems.push("the workload did not finish after the stop".to_string());
            }
        }
    }
    progress(1.0);
    if machine.tasks_remaining() != 0 {
        problems.push(format!(
            "{} task(s) did not finish",
            machine.tasks_remaining()
        ));
    }

    let end = machine.with_cpu(boot, || {
        let guard = lab.domain.read();
        guard.as_deref().map(|d| d.stats())
    });
    let report = machine.report();
    let alloc = machine.alloc_stats();
    // Teardown: unlink what is still published, synchronize, unload (SPEC S8), then look for leaks.
    machine.with_cpu(boot, || {
        if let Some(domain) = lab.domain.read().as_deref() {
            if objects::retire_cells(domain, &lab.cells) != 0 {
                lab.violation("final retire refused".into());
            }
            domain.synchronize();
        }
    });
    machine.with_cpu(boot, || drop(lab.domain.write().take()));
    let leaked = machine.live_allocations().len();
    let Some(stats) = end else {
        return Ok(not_loaded(strategy, "domain vanished".into()));
    };

    let used: HashSet<u32> = slots
        .iter()
        .enumerate()
        .filter(|(p, _)| lab.used[*p].load(Ordering::Relaxed))
        .map(|(_, s)| s.index)
        .collect();
    let mut idle_indexes = Vec::new();
    let mut messages = 0u64;
    let mut messages_to_idle = 0u64;
    for cpu in &report.cpus {
        messages += cpu.messages_delivered;
        let ever_ran = cpu.status == crate::machine::CpuStatus::Running || cpu.task_steps > 0;
        if idle.contains(&cpu.index) || (ever_ran && !used.contains(&cpu.index)) {
            idle_indexes.push(cpu.index);
            messages_to_idle += cpu.messages_delivered;
        }
    }
    let mut samples = lab.first_samples.lock().clone();
    samples.sort_unstable();
    let mut first = LatencyHistogram::default();
    for &s in &samples {
        first.record(s);
    }
    let enter_exit = *lab.enter_exit.lock();
    let mut violations: Vec<String> = lab.violations.lock().clone();
    violations.extend(problems);
    violations.extend(
        report
            .violations
            .iter()
            .take(20)
            .map(|v| format!("machine: {:?}: {}", v.kind, v.message)),
    );
    let cycle = stats.cycle_latency_ns.summary();
    let cycle_json = if cycle.count == 0 {
        json!({"p50": null, "p99": null})
    } else {
        json!({"p50": micros(cycle.p50), "p99": micros(cycle.p99)})
    };
    Ok(json!({
        "strategy": strategy.name(),
        "source": "sim",
        "loaded": true,
        "load_error": null,
        "callback_state": callback_state_name(callback_state),
        "mode": mode.name(),
        "cpus_prepared": stats.cpus_prepared,
        "per_cpu_bytes": stats.per_cpu_bytes,
        "alloc_bytes_at_load": bytes_at_load,
        "alloc_peak_bytes": alloc.peak_bytes,
        "alloc_failed": alloc.failed,
        "prepare_at_dispatch": stats.prepare_at_dispatch,
        "prepare_passive": stats.prepare_passive,
        "prepare_failures": stats.prepare_failures,
        "fallback_uses": stats.fallback_uses,
        "first_enter_ns": summary_json(&first),
        "first_enter_samples_ns": samples,
        "enter_exit_ns": summary_json(&enter_exit),
        "enters": stats.enters,
        "remote_exits": stats.remote_exits,
        "cycles": stats.cycles,
        "cycle_latency_us": cycle_json,
        "messages": messages,
        "core_messages": stats.messages,
        "messages_to_idle_cpus": messages_to_idle,
        "idle_cpus": idle_indexes,
        "cpus_used": used.len(),
        "joins": stats.joins,
        "leaves": stats.leaves,
        "retired": stats.retired,
        "freed": stats.freed,
        "pending_at_end": stats.pending,
        "leaked": leaked,
        "use_after_free": lab.use_after_free.load(Ordering::Relaxed),
        "reads": lab.reads.load(Ordering::Relaxed),
        "stalls_reported": stats.stalls_reported,
        "hot_add": {
            "start": stats.hot_add_start,
            "complete": stats.hot_add_complete,
            "failure": stats.hot_add_failure,
            "vetoed": stats.hot_add_vetoed,
        },
        "cpus_added": report.counters.hot_add_complete,
        "violations": violations,
        "wall_ms": started.elapsed().as_millis() as u64,
    }))
}

/// The name `kepochctl` uses for a callback state.
pub fn callback_state_name(state: CallbackState) -> &'static str {
    match state {
        CallbackState::NotUsed => "not-used",
        CallbackState::Registered => "registered",
        CallbackState::ApiMissing => "api-missing",
        CallbackState::RegistrationFailed => "registration-failed",
    }
}
