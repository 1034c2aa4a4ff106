//! Runs one round of one strategy on a scenario and measures the figures of the report.
//!
//! A round is a fresh simulated machine with the round's seed, on which the domain is loaded, driven
//! and unloaded `workload.reloads` times (each load gives every busy CPU a new first enter). Everything
//! is measured on the real code paths (`lab/tasks.rs`): first-enter latencies are exact samples;
//! enter/exit pairs go into an HDR histogram (2 significant digits: at most 0.4 % error); cycle latency
//! comes from the core's own log-linear histogram; memory from the core's `per_cpu_bytes` and the
//! simulated allocator's byte counters; messages from the machine's per-CPU delivery counters, per load
//! (`lab/round.rs`); use-after-free from the poisoned-object checks the readers make; leaks from the
//! allocator after unload.
//!
//! A reload that fails (e.g. an injected allocation failure hits the domain's own allocation) is
//! retried up to [`LOAD_ATTEMPTS`] times and counted; a round whose reload keeps failing ends early
//! and says so (`shortened`). In parallel mode a round that takes longer than its time plan
//! ([`time_plan_ms`]) says so too (`overran`).

use super::round::{delivered, LoadRecord, Round};
use super::scenario::{Scenario, ScenarioError};
use super::tasks::{new_hdr, spawn_workload, Lab};
use crate::machine::{CpuStatus, Machine};
use crate::objects;
use kepoch::{Config, Domain, Strategy};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cycles a reader may hold back reclamation before the core reports it (the lab's runs are short).
pub const LAB_STALL_THRESHOLD_CYCLES: u64 = 200;

/// Attempts at each reload after the first load before the round gives up and ends early.
pub const LOAD_ATTEMPTS: u32 = 3;

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

/// Wall-clock milliseconds a parallel-mode round of `duration_ms` may take before it is reported as
/// over its time plan: the run itself, plus as much again (at least 1 s) for loads, unloads and the
/// end of the tasks.
pub fn time_plan_ms(duration_ms: u64) -> u64 {
    duration_ms.saturating_add(duration_ms.max(1_000))
}

/// The seed of round `round` of a scenario whose seed is `seed` (splitmix64, so that neighbouring
/// rounds get unrelated machines and workloads).
pub fn round_seed(seed: u64, round: u32) -> u64 {
    let mut z = seed ^ (u64::from(round) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Messages delivered per slot, sampled while the workload runs, as `(ms since the round began,
/// counts)`.
type MessageSamples = Vec<(u64, Vec<u64>)>;

/// Runs the loaded workload for `duration_us`, then stops it and lets its tasks end.
fn drive(
    machine: &Machine,
    lab: &Lab,
    mode: RunMode,
    duration_us: u64,
    round: &mut Round,
    progress: Progress<'_>,
) -> MessageSamples {
    let origin_us = round.origin_us;
    let sample = || {
        let t = machine.now_us().saturating_sub(origin_us) / 1_000;
        (t, delivered(machine))
    };
    let mut samples = Vec::new();
    match mode {
        RunMode::Parallel => {
            let wall = Duration::from_micros(duration_us);
            // Tasks stop (and exit their epochs) a little before the machine stops.
            let margin = (wall / 10).clamp(Duration::from_millis(20), Duration::from_millis(300));
            std::thread::scope(|scope| {
                let stopper = scope.spawn(|| {
                    let mut samples = Vec::new();
                    let begin = Instant::now();
                    let until = wall.saturating_sub(margin);
                    while begin.elapsed() < until {
                        progress(begin.elapsed().as_secs_f64() / wall.as_secs_f64());
                        samples.push(sample());
                        std::thread::sleep(Duration::from_millis(50).min(until));
                    }
                    lab.stop.store(true, Ordering::Relaxed);
                    samples
                });
                machine.run_parallel(wall);
                samples = stopper.join().unwrap_or_default();
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
                samples.push(sample());
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
    samples
}

/// Loads the domain on `machine` (load number `load_no`, from 1), runs the workload for
/// `duration_us` keeping the CPUs in `idle` free of epoch code, unloads it and adds what it measured
/// to `round`. `Err` is the load error.
#[allow(clippy::too_many_arguments)] // One load of one round: each argument is a different fact.
fn run_lifetime(
    machine: &Machine,
    scenario: &Scenario,
    strategy: Strategy,
    mode: RunMode,
    duration_us: u64,
    idle: &HashSet<u32>,
    load_no: u32,
    round: &mut Round,
    progress: Progress<'_>,
) -> Result<(), String> {
    let running = machine.running_indexes();
    let boot = running[0];
    let defaults = Config::with_strategy(strategy);
    let max_frees_per_visit = scenario
        .workload
        .max_frees_per_visit
        .unwrap_or(defaults.max_frees_per_visit);
    let config = Config {
        stall_threshold_cycles: LAB_STALL_THRESHOLD_CYCLES,
        max_frees_per_visit,
        visit_budget_us: kepoch::config::visit_budget_for(max_frees_per_visit),
        ..defaults
    };
    let bytes_before = machine.alloc_stats().live_bytes;
    let live_before = machine.live_allocations().len();
    let before = delivered(machine);
    let domain = machine
        .with_cpu(boot, || Domain::create(machine.platform(), config))
        .map_err(|e| e.to_string())?;
    let at_registration = machine.counters();
    let bytes_at_load = machine.alloc_stats().live_bytes;
    round.bytes_at_load = round
        .bytes_at_load
        .max(bytes_at_load.saturating_sub(bytes_before));
    let callback_state = domain.callback_state();
    round.callback_state = Some(callback_state);
    let slots: Vec<u32> = machine.slots().iter().map(|s| s.index).collect();
    let lab = Arc::new(Lab::new(domain, &slots, idle.clone()));
    let busy: Vec<u32> = running
        .iter()
        .copied()
        .filter(|c| !idle.contains(c))
        .collect();
    spawn_workload(machine, &lab, &busy, &scenario.workload);
    let started_us = machine.now_us();
    let samples = drive(machine, &lab, mode, duration_us, round, progress);
    let ran_ms = machine.now_us().saturating_sub(started_us) / 1_000;
    if machine.tasks_remaining() != 0 {
        let n = machine.tasks_remaining();
        round.violations.push(format!("{n} task(s) did not finish"));
    }
    let end = machine.with_cpu(boot, || lab.domain.read().as_deref().map(|d| d.stats()));
    let at_end = machine.counters();
    // Teardown: unlink what is still published, synchronize, unload, then look for leaks.
    machine.with_cpu(boot, || {
        if let Some(domain) = lab.domain.read().as_deref() {
            if objects::retire_cells(domain, &lab.cells) != 0 {
                lab.violation("final retire refused".into());
            }
            domain.synchronize();
        }
    });
    // Taken out of the lock before it unloads: unload steps the machine, and what the machine runs
    // may read the domain (a read under this thread's own write lock never returns).
    machine.with_cpu(boot, || {
        let domain = lab.domain.write().take();
        drop(domain);
    });
    round.leaked += machine.live_allocations().len().saturating_sub(live_before);
    let Some(stats) = end else {
        round.violations.push("domain vanished".into());
        return Ok(());
    };
    round.lifetimes += 1;
    round.ran_ms += ran_ms;
    let used: Vec<bool> = lab.used.iter().map(|u| u.load(Ordering::Relaxed)).collect();
    for (p, _) in used.iter().enumerate().filter(|(_, &u)| u) {
        round.used.insert(slots[p]);
    }
    round.first.extend(lab.first_samples.lock().iter().copied());
    let hdr = std::mem::replace(&mut *lab.enter_exit.lock(), new_hdr());
    match &mut round.enter_exit {
        Some(h) => drop(h.add(&hdr)),
        None => round.enter_exit = Some(hdr),
    }
    round.add("use_after_free", lab.use_after_free.load(Ordering::Relaxed));
    round.add("reads", lab.reads.load(Ordering::Relaxed));
    let report = machine.report();
    let record = LoadRecord {
        before,
        samples,
        after: report.cpus.iter().map(|c| c.messages_delivered).collect(),
        used,
        running: report
            .cpus
            .iter()
            .map(|c| c.status == CpuStatus::Running)
            .collect(),
        end_ms: machine.now_us().saturating_sub(round.origin_us) / 1_000,
        ran_ms,
        callback_state,
        at_registration,
        at_end,
    };
    let hot_add = round.add_stats(&stats, &record);
    round.close_load(load_no, &slots, &record, hot_add);
    round
        .violations
        .extend(lab.violations.lock().iter().cloned());
    Ok(())
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
/// result (a JSON object).
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
    let w = &scenario.workload;
    let reloads = w.reloads.max(1);
    let lifetime_us = w.duration_ms * 1_000 / u64::from(reloads);
    // The CPUs the workload keeps idle: the last boot CPUs, for the whole round (hot-added CPUs are
    // busy: readers migrate to them).
    let idle: HashSet<u32> = machine
        .running_indexes()
        .iter()
        .rev()
        .take(w.idle_cpus as usize)
        .copied()
        .collect();
    let mut round = Round::new(origin);
    'loads: for k in 0..reloads {
        let p = |f: f64| progress((f64::from(k) + f) / f64::from(reloads));
        for attempt in 1..=LOAD_ATTEMPTS {
            let run = run_lifetime(
                &machine,
                scenario,
                strategy,
                mode,
                lifetime_us,
                &idle,
                k + 1,
                &mut round,
                &p,
            );
            let Err(error) = run else {
                break;
            };
            if k == 0 {
                let mut v = not_loaded(strategy, round_no, seed, error);
                v["leaked"] = json!(machine.live_allocations().len());
                progress(1.0);
                return Ok(v);
            }
            // Not a fault of the strategy (e.g. an injected allocation failure hit the domain's own
            // allocation): the load is tried again, and the round ends early if it keeps failing.
            round.reload_errors.push(format!(
                "load {} of {reloads}, attempt {attempt}: {error}",
                k + 1
            ));
            if attempt == LOAD_ATTEMPTS {
                round.shortened = Some(format!(
                    "load {} of {reloads} failed {LOAD_ATTEMPTS} times ({error}): ran {k} of {reloads} loads",
                    k + 1
                ));
                break 'loads;
            }
        }
    }
    progress(1.0);
    let report = machine.report();
    round.violations.extend(
        report
            .violations
            .iter()
            .take(20)
            .map(|v| format!("machine: {:?}: {}", v.kind, v.message)),
    );
    round.violations.truncate(20);
    let head = json!({
        "strategy": strategy.name(),
        "source": "sim",
        "round": round_no,
        "seed": seed,
        "loaded": true,
        "load_error": null,
        "mode": mode.name(),
        "max_reported": scenario.max_reported,
        "active": scenario.active_at_boot,
    });
    let mut v = round.result(&machine, head, w.duration_ms);
    let wall_ms = started.elapsed().as_millis() as u64;
    v["wall_ms"] = json!(wall_ms);
    match mode {
        RunMode::Parallel => {
            let plan = time_plan_ms(w.duration_ms);
            v["time_plan_ms"] = json!(plan);
            v["overran"] = json!(wall_ms > plan);
        }
        RunMode::Deterministic => {
            v["time_plan_ms"] = Value::Null;
            v["overran"] = json!(false);
        }
    }
    Ok(v)
}
