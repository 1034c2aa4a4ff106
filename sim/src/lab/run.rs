//! Runs one round of one strategy on a scenario and measures the SPEC §6 figures.
//!
//! A round is a fresh simulated machine with the round's seed, on which the domain is loaded, driven
//! and unloaded `workload.reloads` times (each load gives every busy CPU a new first enter). Everything
//! is measured on the real code paths: first-enter latencies are timed with [`Instant`] around the
//! core's `enter_raw` on the simulated CPUs' threads and kept as exact samples; enter/exit pairs go
//! into an HDR histogram (2 significant digits: at most 0.4 % error); cycle latency comes from the
//! core's own log-linear histogram; memory from the core's `per_cpu_bytes` and the simulated
//! allocator's byte counters; messages from the machine's per-CPU delivery counters; use-after-free
//! from the poisoned-object checks the readers make; leaks from the allocator after unload.

use super::bootstrap::Dist;
use super::scenario::{Scenario, ScenarioError};
use crate::machine::{Machine, SimPlatform, StepContext, StepOutcome, Task};
use crate::objects::{self, Check, Object, SimDomain};
use hdrhistogram::Histogram;
use kepoch::stats::LatencyHistogram;
use kepoch::{CallbackState, Config, Domain, DomainBox, RawGuard, Strategy};
use kepoch_report::{callback_state_name, CycleLatency, HotAdd, Latency, Samples};
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
    enter_exit: Mutex<Histogram<u64>>,
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

/// An HDR histogram for enter/exit pairs: 1 ns to 60 s (longer pairs are counted at 60 s), 2
/// significant digits (at most 0.4 % error).
fn new_hdr() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).unwrap_or_else(|e| {
        unreachable!("1 ns..60 s at 2 significant digits are valid bounds: {e}")
    })
}

/// The seed of round `round` of a scenario whose seed is `seed` (splitmix64, so that neighbouring
/// rounds get unrelated machines and workloads).
pub fn round_seed(seed: u64, round: u32) -> u64 {
    let mut z = seed ^ (u64::from(round) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the lifetimes of a round add up to.
#[derive(Default)]
struct Round {
    /// Simulated time at which the round began.
    origin_us: u64,
    lifetimes: u32,
    first: Vec<u64>,
    enter_exit: Option<Histogram<u64>>,
    cycle: Box<LatencyHistogram>,
    sums: HashMap<&'static str, u64>,
    cpus_prepared: u64,
    per_cpu_bytes: u64,
    bytes_at_load: u64,
    pending_at_end: u64,
    leaked: usize,
    used: HashSet<u32>,
    violations: Vec<String>,
    reload_errors: Vec<String>,
    /// `[ms since the round began, messages delivered so far to the CPUs the workload keeps idle]`.
    idle_series: Vec<(u64, u64)>,
    callback_state: Option<CallbackState>,
}

impl Round {
    fn add(&mut self, key: &'static str, n: u64) {
        *self.sums.entry(key).or_default() += n;
    }
}

/// Messages delivered so far to the CPUs in `idle`.
fn idle_messages(machine: &Machine, idle: &HashSet<u32>) -> u64 {
    machine
        .report()
        .cpus
        .iter()
        .filter(|c| idle.contains(&c.index))
        .map(|c| c.messages_delivered)
        .sum()
}

/// Loads the domain on `machine`, runs the workload for `duration_us`, unloads it and adds what it
/// measured to `round`. `Err` is the load error.
fn run_lifetime(
    machine: &Machine,
    scenario: &Scenario,
    strategy: Strategy,
    mode: RunMode,
    duration_us: u64,
    round: &mut Round,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<(), String> {
    let origin_us = round.origin_us;
    let running = machine.running_indexes();
    let boot = running[0];
    let config = Config {
        stall_threshold_cycles: LAB_STALL_THRESHOLD_CYCLES,
        ..Config::with_strategy(strategy)
    };
    let bytes_before = machine.alloc_stats().live_bytes;
    let live_before = machine.live_allocations().len();
    let domain = machine
        .with_cpu(boot, || Domain::create(machine.platform(), config))
        .map_err(|e| e.to_string())?;
    round.bytes_at_load = round.bytes_at_load.max(
        machine
            .alloc_stats()
            .live_bytes
            .saturating_sub(bytes_before),
    );
    round.callback_state = Some(domain.callback_state());
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
        enter_exit: Mutex::new(new_hdr()),
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
        let batch = w.retire_per_ms;
        machine.spawn(
            cpu,
            Writer {
                lab: lab.clone(),
                batch,
            },
        );
        for _ in 0..w.readers_per_cpu {
            let latencies = new_hdr();
            machine.spawn(
                cpu,
                Reader {
                    lab: lab.clone(),
                    held: None,
                    latencies,
                },
            );
        }
    }
    if w.stall_reader_ms > 0 {
        let stall_us = w.stall_reader_ms * 1_000;
        let lab = lab.clone();
        machine.spawn(
            busy[0],
            StalledReader {
                lab,
                stall_us,
                until_us: None,
                held: None,
            },
        );
    }
    let sample = |series: &mut Vec<(u64, u64)>| {
        let t = machine.now_us().saturating_sub(origin_us) / 1_000;
        series.push((t, idle_messages(machine, &idle)));
    };
    let mut series = Vec::new();
    match mode {
        RunMode::Parallel => {
            let wall = Duration::from_micros(duration_us);
            // Tasks stop (and exit their epochs) a little before the machine stops.
            let margin = (wall / 10).clamp(Duration::from_millis(20), Duration::from_millis(300));
            std::thread::scope(|scope| {
                let stopper = scope.spawn(|| {
                    let mut series = Vec::new();
                    let begin = Instant::now();
                    let until = wall.saturating_sub(margin);
                    while begin.elapsed() < until {
                        progress(begin.elapsed().as_secs_f64() / wall.as_secs_f64());
                        sample(&mut series);
                        std::thread::sleep(Duration::from_millis(50).min(until));
                    }
                    lab.stop.store(true, Ordering::Relaxed);
                    series
                });
                machine.run_parallel(wall);
                series = stopper.join().unwrap_or_default();
            });
            // A task whose next step did not come before the machine stopped ends at that step (the
            // stop flag is set); let the machine run until every task has ended, within 10 s.
            let until = Instant::now() + Duration::from_secs(10);
            while machine.tasks_remaining() != 0 && Instant::now() < until {
                machine.run_parallel(Duration::from_millis(20));
            }
        }
        RunMode::Deterministic => {
            let chunk = (duration_us / 50).max(1);
            let mut done = 0;
            while done < duration_us {
                let step = chunk.min(duration_us - done);
                machine.run_for(step);
                done += step;
                sample(&mut series);
                progress(done as f64 / duration_us as f64);
            }
            lab.stop.store(true, Ordering::Relaxed);
            if !machine.run_until_idle(5_000_000) {
                round
                    .violations
                    .push("the workload did not finish after the stop".into());
            }
        }
    }
    sample(&mut series);
    round.idle_series.extend(series);
    if machine.tasks_remaining() != 0 {
        let n = machine.tasks_remaining();
        round.violations.push(format!("{n} task(s) did not finish"));
    }
    let end = machine.with_cpu(boot, || lab.domain.read().as_deref().map(|d| d.stats()));
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
    round.leaked += machine.live_allocations().len().saturating_sub(live_before);
    let Some(stats) = end else {
        round.violations.push("domain vanished".into());
        return Ok(());
    };
    round.lifetimes += 1;
    for (p, s) in slots.iter().enumerate() {
        if lab.used[p].load(Ordering::Relaxed) {
            round.used.insert(s.index);
        }
    }
    round.first.extend(lab.first_samples.lock().iter().copied());
    let hdr = std::mem::replace(&mut *lab.enter_exit.lock(), new_hdr());
    match &mut round.enter_exit {
        Some(h) => drop(h.add(&hdr)),
        None => round.enter_exit = Some(hdr),
    }
    round.cycle.merge(&stats.cycle_latency_ns);
    round.cpus_prepared = round.cpus_prepared.max(stats.cpus_prepared);
    round.per_cpu_bytes = round.per_cpu_bytes.max(stats.per_cpu_bytes);
    round.pending_at_end = stats.pending;
    for (key, n) in [
        ("prepare_at_dispatch", stats.prepare_at_dispatch),
        ("prepare_passive", stats.prepare_passive),
        ("prepare_failures", stats.prepare_failures),
        ("fallback_uses", stats.fallback_uses),
        ("enters", stats.enters),
        ("remote_exits", stats.remote_exits),
        ("cycles", stats.cycles),
        ("core_messages", stats.messages),
        ("joins", stats.joins),
        ("leaves", stats.leaves),
        ("retired", stats.retired),
        ("freed", stats.freed),
        ("stalls_reported", stats.stalls_reported),
        ("hot_add_start", stats.hot_add_start),
        ("hot_add_complete", stats.hot_add_complete),
        ("hot_add_failure", stats.hot_add_failure),
        ("hot_add_vetoed", stats.hot_add_vetoed),
        ("use_after_free", lab.use_after_free.load(Ordering::Relaxed)),
        ("reads", lab.reads.load(Ordering::Relaxed)),
    ] {
        round.add(key, n);
    }
    round
        .violations
        .extend(lab.violations.lock().iter().cloned());
    Ok(())
}

/// Exact quantiles of samples (nearest rank), with the samples.
fn samples_json(samples: &[u64]) -> Value {
    let d = Dist::from_samples(&samples.iter().map(|&v| v as f64).collect::<Vec<_>>());
    to_json(Samples {
        p50: d.quantile(0.5),
        p99: d.quantile(0.99),
        max: d.max(),
        count: samples.len() as u64,
        samples: samples.to_vec(),
    })
}

/// Quantiles of an HDR histogram, with its non-empty buckets as `[value, count]`.
fn hdr_json(h: Option<&Histogram<u64>>) -> Value {
    let latency = match h.filter(|h| !h.is_empty()) {
        None => Latency::default(),
        Some(h) => Latency {
            p50: Some(h.value_at_quantile(0.5)),
            p99: Some(h.value_at_quantile(0.99)),
            max: Some(h.max()),
            count: h.len(),
            hist: h
                .iter_recorded()
                .map(|v| {
                    (
                        h.median_equivalent(v.value_iterated_to()),
                        v.count_at_value(),
                    )
                })
                .collect(),
        },
    };
    to_json(latency)
}

/// A schema value as JSON (the lab's results are JSON objects; see the module documentation).
fn to_json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The result of a strategy that did not load: every figure null.
fn not_loaded(strategy: Strategy, round: u32, seed: u64, error: String) -> Value {
    let mut v = json!({
        "strategy": strategy.name(),
        "source": "sim",
        "round": round,
        "seed": seed,
        "loaded": false,
        "load_error": error,
    });
    for key in super::FIGURES {
        v[*key] = Value::Null;
    }
    v
}

/// Runs round `round` of `strategy` on `scenario` (a fresh machine with [`round_seed`]) and returns its
/// SPEC §6 result (a JSON object).
pub fn run_round(
    scenario: &Scenario,
    strategy: Strategy,
    mode: RunMode,
    round_no: u32,
    progress: Progress<'_>,
) -> Result<Value, ScenarioError> {
    let seed = round_seed(scenario.seed, round_no);
    let mut machine_config = scenario.machine_config()?;
    machine_config.seed = seed;
    machine_config.alloc_fail_every = scenario.workload.alloc_fail_every;
    let machine = Machine::new(machine_config).map_err(|e| ScenarioError(e.to_string()))?;
    let started = Instant::now();
    let origin = machine.now_us();
    for h in &scenario.hot_add {
        machine.schedule_hot_add(origin + h.at_ms * 1_000, h.count, h.fail);
    }
    let reloads = scenario.workload.reloads.max(1);
    let lifetime_us = scenario.workload.duration_ms * 1_000 / u64::from(reloads);
    let mut round = Round {
        origin_us: origin,
        ..Round::default()
    };
    for k in 0..reloads {
        let p = |f: f64| progress((f64::from(k) + f) / f64::from(reloads));
        let run = run_lifetime(
            &machine,
            scenario,
            strategy,
            mode,
            lifetime_us,
            &mut round,
            &p,
        );
        if let Err(error) = run {
            if k == 0 {
                let mut v = not_loaded(strategy, round_no, seed, error);
                v["leaked"] = json!(machine.live_allocations().len());
                progress(1.0);
                return Ok(v);
            }
            // Not a fault of the strategy (e.g. injected allocation failures): the round ends here.
            round
                .reload_errors
                .push(format!("load {} of {reloads}: {error}", k + 1));
            break;
        }
    }
    progress(1.0);
    let report = machine.report();
    let w = &scenario.workload;
    let running = machine.running_indexes();
    let idle: HashSet<u32> = running
        .iter()
        .rev()
        .take(w.idle_cpus as usize)
        .copied()
        .collect();
    let mut idle_indexes = Vec::new();
    let (mut messages, mut messages_to_idle) = (0u64, 0u64);
    for cpu in &report.cpus {
        messages += cpu.messages_delivered;
        let ever_ran = cpu.status == crate::machine::CpuStatus::Running || cpu.task_steps > 0;
        if idle.contains(&cpu.index) || (ever_ran && !round.used.contains(&cpu.index)) {
            idle_indexes.push(cpu.index);
            messages_to_idle += cpu.messages_delivered;
        }
    }
    round.violations.extend(
        report
            .violations
            .iter()
            .take(20)
            .map(|v| format!("machine: {:?}: {}", v.kind, v.message)),
    );
    round.violations.truncate(20);
    let alloc = machine.alloc_stats();
    let n = |key: &str| round.sums.get(key).copied().unwrap_or(0);
    let mut v = json!({
        "strategy": strategy.name(),
        "source": "sim",
        "round": round_no,
        "seed": seed,
        "loaded": true,
        "load_error": null,
        "lifetimes": round.lifetimes,
        "callback_state": round.callback_state.map(|s| callback_state_name(s as u32)),
        "mode": mode.name(),
        "max_reported": scenario.max_reported,
        "active": scenario.active_at_boot,
        "cpus_prepared": round.cpus_prepared,
        "per_cpu_bytes": round.per_cpu_bytes,
        "alloc_bytes_at_load": round.bytes_at_load,
        "alloc_peak_bytes": alloc.peak_bytes,
        "alloc_failed": alloc.failed,
        "prepare_at_dispatch": n("prepare_at_dispatch"),
        "prepare_passive": n("prepare_passive"),
        "prepare_failures": n("prepare_failures"),
        "fallback_uses": n("fallback_uses"),
        "first_enter_ns": samples_json(&round.first),
        "enter_exit_ns": hdr_json(round.enter_exit.as_ref()),
    });
    let more = json!({
        "enters": n("enters"),
        "remote_exits": n("remote_exits"),
        "cycles": n("cycles"),
        "cycle_latency_us": to_json(CycleLatency::from_ns_histogram(&round.cycle)),
        "messages": messages,
        "core_messages": n("core_messages"),
        "messages_to_idle_cpus": messages_to_idle,
        "idle_cpus": idle_indexes,
        "idle_messages": round.idle_series,
        "cpus_used": round.used.len(),
        "joins": n("joins"),
        "leaves": n("leaves"),
        "retired": n("retired"),
        "freed": n("freed"),
        "pending_at_end": round.pending_at_end,
        "leaked": round.leaked,
        "use_after_free": n("use_after_free"),
        "reads": n("reads"),
        "stalls_reported": n("stalls_reported"),
        "hot_add": to_json(HotAdd {
            start: n("hot_add_start"),
            complete: n("hot_add_complete"),
            failure: n("hot_add_failure"),
            vetoed: n("hot_add_vetoed"),
        }),
        "cpus_added": report.counters.hot_add_complete,
        "violations": round.violations,
        "reload_errors": round.reload_errors,
        "wall_ms": started.elapsed().as_millis() as u64,
    });
    if let (Some(v), Value::Object(more)) = (v.as_object_mut(), more) {
        v.extend(more);
    }
    Ok(v)
}
