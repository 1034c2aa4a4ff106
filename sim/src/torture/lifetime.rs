//! One torture run: its machine lifetimes, each built from the seed, loaded, driven, unloaded and
//! checked; panics and broken bounds end a lifetime with a diagnosis.

use super::bounds::{self, Watchdog};
use super::setup::{fault_hook, machine_for, spawn_tasks};
use super::window;
use super::work::{self, WorkEnv};
use super::{fault, Mode, RunOptions, RunOutcome, RunSpec, RunStats, Shared, TORTURE_CYCLE_US};
use super::{linked, map};
use crate::machine::Machine;
use crate::objects::{self, ChainStats, SimDomain};
use kepoch::{Config, Domain, Strategy};
use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs one torture run and returns its outcome (never panics on a violation).
pub fn run(spec: &RunSpec) -> RunOutcome {
    run_with(spec, &RunOptions::default())
}

/// [`run`] with extra switches. With guard pages, a late read does not return: the fault handler
/// reports it and exits the process with status 1; a run that hangs past its deadline (or does not wind
/// down after breaking a bound in parallel mode) ends the process with status 1 as well.
pub fn run_with(spec: &RunSpec, options: &RunOptions) -> RunOutcome {
    bounds::quiet_reported_panics();
    let lifetimes = options.lifetimes.max(1);
    let deadline = options.bounds.deadline_for(
        spec.mode == Mode::Parallel,
        spec.duration_us * u64::from(lifetimes),
    );
    let watchdog = Watchdog::start(deadline, options.fault_context.clone());
    let started = Instant::now();
    let mut outcome = RunOutcome::default();
    for lifetime in 0..lifetimes {
        let seed = if lifetime == 0 {
            spec.seed
        } else {
            spec.seed ^ u64::from(lifetime).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        };
        let one = run_lifetime(spec, options, seed, &watchdog, started, deadline);
        outcome.stats.add(&one.stats);
        outcome.machine = one.machine;
        if !one.violations.is_empty() {
            outcome.violations = one.violations;
            if lifetimes > 1 {
                outcome
                    .violations
                    .push(format!("(in machine lifetime {lifetime} of {lifetimes})"));
            }
            break;
        }
    }
    watchdog.finish();
    outcome
}

/// The machine and the shared state of a lifetime, leaked if the lifetime panics.
struct Lifetime {
    machine: Machine,
    shared: Arc<Shared>,
    env: Arc<WorkEnv>,
    describe: String,
}

/// One machine lifetime: build, load, run the workload, unload, check.
fn run_lifetime(
    spec: &RunSpec,
    options: &RunOptions,
    seed: u64,
    watchdog: &Watchdog,
    started: Instant,
    deadline: Duration,
) -> RunOutcome {
    let mut held: Option<ManuallyDrop<Lifetime>> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        drive_lifetime(spec, options, seed, watchdog, started, deadline, &mut held)
    }));
    match result {
        Ok(outcome) => {
            if let Some(lifetime) = held.take() {
                drop(ManuallyDrop::into_inner(lifetime));
            }
            outcome
        }
        Err(payload) => {
            fault::clear_domain();
            // The machine and the domain are in an unknown state: leak them (`held` stays
            // ManuallyDrop), never unload a domain that broke.
            let mut text = bounds::panic_message(&*payload);
            if let Some(bugcheck) = held.as_deref().and_then(|l| l.machine.bugcheck()) {
                // The machine halted: its bugcheck is the cause, whatever payload reached us.
                text = bugcheck.to_string();
            }
            let (stats, describe) = match held.as_deref() {
                Some(l) => (collect_stats(l, None), l.describe.clone()),
                None => (RunStats::default(), String::new()),
            };
            let mut violations = vec![text];
            if let Some(l) = held.as_deref() {
                violations.extend(l.shared.violations());
            }
            RunOutcome {
                stats,
                violations,
                machine: describe,
            }
        }
    }
}

fn drive_lifetime(
    spec: &RunSpec,
    options: &RunOptions,
    seed: u64,
    watchdog: &Watchdog,
    started: Instant,
    deadline: Duration,
    held: &mut Option<ManuallyDrop<Lifetime>>,
) -> RunOutcome {
    let workloads = options.workloads;
    let machine_config = machine_for(spec.strategy, seed, spec.hot_add_rate, spec.duration_us);
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
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x776F_726B_6C6F_6164);
    let running = machine.running_indexes();
    let boot = running[0];
    // The last running CPU stays idle (never runs epoch code) when there are three or more.
    let idle_cpu = (running.len() >= 3).then(|| running[running.len() - 1]);
    let busy: Vec<u32> = running
        .iter()
        .copied()
        .filter(|&c| Some(c) != idle_cpu)
        .collect();
    let overflow_cpu = (workloads.overflow && busy.len() >= 2 && rng.gen_ratio(1, 2))
        .then(|| busy[rng.gen_range(1..busy.len())]);
    // The handler also names the run (seed, replay) when the process crashes, e.g. on a stack
    // overflow (L3), with or without guard pages.
    fault::install(&options.fault_context);
    if options.guard_pages {
        objects::set_fault_registry(true);
        machine.set_guard_pages(true);
    }
    if let Some(hook) = fault_hook(options, overflow_cpu) {
        machine.set_alloc_fault_hook(Some(hook));
    }
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
    let env = WorkEnv::new(seed);
    env.domain.store(
        ptr::from_ref::<SimDomain>(&domain).cast_mut(),
        Ordering::Release,
    );
    // SAFETY: the map drops before the domain: it is taken out before unload, and declared before
    // the domain in `Shared` for the paths that drop the shared state with the domain in it.
    let map = workloads
        .map
        .then(|| unsafe { map::ObjectMap::new(&domain) });
    let linked = (workloads.list || workloads.map).then(|| {
        machine.with_cpu(boot, || {
            // SAFETY: as for the map: taken out before unload, declared before the domain.
            unsafe { linked::Linked::new(&domain, workloads.list, workloads.map) }
        })
    });
    let shared = Arc::new(Shared {
        map: RwLock::new(map),
        linked: RwLock::new(linked),
        domain: RwLock::new(Some(domain)),
        machine: machine.clone(),
        mode: spec.mode,
        bounds: options.bounds.clone(),
        workloads,
        watchdog: watchdog.clone(),
        started,
        deadline,
        cells: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        chain_cell: AtomicPtr::new(ptr::null_mut()),
        chain_stats: ChainStats::new(idle_cpu),
        stop: AtomicBool::new(false),
        monitor_stop: AtomicBool::new(false),
        violations: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        next_id: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        retires: AtomicU64::new(0),
        syncs: AtomicU64::new(0),
        flushes: AtomicU64::new(0),
        polls: AtomicU64::new(0),
        max_depth: AtomicU64::new(0),
        peak_pending: AtomicU64::new(0),
        max_no_release: AtomicU64::new(0),
        map_lookups: AtomicU64::new(0),
        map_updates: AtomicU64::new(0),
        map_conflicts: AtomicU64::new(0),
        linked_reads: AtomicU64::new(0),
        linked_updates: AtomicU64::new(0),
        cycles_seen: AtomicU64::new(0),
        held_age: Default::default(),
        max_held_age: AtomicU64::new(0),
        idle_cpu,
    });
    *env.shared.lock() = Arc::downgrade(&shared);
    *held = Some(ManuallyDrop::new(Lifetime {
        machine: machine.clone(),
        shared: shared.clone(),
        env: env.clone(),
        describe: describe.clone(),
    }));

    window::install(&machine, &shared, seed);
    spawn_tasks(&machine, &shared, &env, &busy, &mut rng);
    if spec.hot_add_rate > 0 && machine_config.hot_add_slots > 0 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x686F_7461_6464);
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
        }
    }
    // Every task but the monitor finishes (the machine goes on: cycles, work items, hot-adds), then
    // the monitor.
    if !run_until_tasks_left(&machine, 1) {
        violations.push(format!(
            "tasks did not finish: {} left",
            machine.tasks_remaining()
        ));
    }
    shared.monitor_stop.store(true, Ordering::Release);
    run_until_tasks_left(&machine, 0);
    if let Some(failure) = shared.failure.lock().clone() {
        // A bound broke (parallel mode): report it without unloading the domain, which is leaked.
        fault::clear_domain();
        let mut all = vec![failure];
        all.extend(shared.violations());
        return RunOutcome {
            stats: collect_stats(held.as_deref().expect("set above"), None),
            violations: all,
            machine: describe,
        };
    }

    // Tear down: retire what is still published; then either synchronize and unload, or (busy
    // unload) schedule work items whose callbacks retire and schedule more, start a cycle and unload
    // at once. Then look for leaks.
    let stats_before_unload = machine.with_cpu(boot, || {
        let guard = shared.domain();
        let domain = guard.as_deref().expect("domain present until unload");
        if objects::retire_cells(domain, &shared.cells) != 0 {
            shared.violation("final retire refused".into());
        }
        // The map's last buckets: retired, or (the other half of the runs) freed at once by
        // dropping the map, which no reader can reach any more.
        if let Some(map) = shared.map.write().take() {
            if rng.gen_ratio(1, 2) {
                map.clear();
            }
        }
        // The list and map free what they still hold when dropped: no reader can reach them.
        drop(shared.linked.write().take());
        let chain = shared.chain_cell.swap(ptr::null_mut(), Ordering::AcqRel);
        if let Some(chain) = NonNull::new(chain) {
            // SAFETY: unlinked just now; allocated by this domain.
            if unsafe { domain.retire(chain) }.is_err() {
                shared.violation("final retire of the chain refused".into());
            }
        }
        if workloads.busy_unload && rng.gen_ratio(3, 4) {
            if workloads.work_items {
                work::schedule_for_unload(&env, domain, rng.gen_range(1..=4));
            }
            domain.flush();
        } else {
            domain.synchronize();
        }
        domain.stats()
    });
    fault::clear_domain();
    // Callbacks that run from here on also flush and synchronize (`work.rs`); what they and the
    // destructors retire during unload is counted.
    let retired_before_unload = retired_by_callbacks(&env, &shared);
    env.unloading.store(true, Ordering::Release);
    // Taken out of the lock before it unloads: unload steps the machine, whose add-window hook
    // reads the domain (a read under this thread's own write lock never returns).
    machine.with_cpu(boot, || {
        let domain = shared.domain.write().take();
        drop(domain);
    });
    env.domain.store(ptr::null_mut(), Ordering::Release);
    let unload_retires = retired_by_callbacks(&env, &shared) - retired_before_unload;

    violations.extend(shared.violations());
    let never_ran = env.never_ran();
    if never_ran != 0 {
        violations.push(format!(
            "shutdown (S8): {never_ran} scheduled work item(s) never ran"
        ));
    }
    let refused = shared.chain_stats.refused.load(Ordering::Relaxed);
    if refused != 0 {
        violations.push(format!(
            "{refused} retirement(s) by a chain link's destructor refused"
        ));
    }
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
        // A destructor that retired there made it run epoch code: then messages are expected.
        let touched = shared.chain_stats.retired_on_idle.load(Ordering::Relaxed) != 0;
        if spec.strategy != Strategy::Eager && messages != 0 && !touched {
            violations.push(format!(
                "energy: idle CPU {idle} received {messages} message(s) (S4)"
            ));
        }
    }
    let mut stats = collect_stats(
        held.as_deref().expect("set above"),
        Some(&stats_before_unload),
    );
    stats.unload_retires = unload_retires;
    RunOutcome {
        stats,
        violations,
        machine: describe,
    }
}

/// Objects retired so far by work callbacks and chain links' destructors.
fn retired_by_callbacks(env: &WorkEnv, shared: &Shared) -> u64 {
    env.retired.load(Ordering::Relaxed)
        + shared
            .chain_stats
            .retired_by_destructor
            .load(Ordering::Relaxed)
}

/// Steps the machine (deterministic scheduling) until at most `left` tasks remain; false if that did
/// not happen within the step budget.
fn run_until_tasks_left(machine: &Machine, left: usize) -> bool {
    for _ in 0..5_000_000u32 {
        if machine.tasks_remaining() <= left {
            return true;
        }
        if !machine.step() {
            break;
        }
    }
    machine.tasks_remaining() <= left
}

/// The figures of a lifetime; `before_unload` are the domain's counters just before unload (none if
/// the lifetime failed before).
fn collect_stats(lifetime: &Lifetime, before_unload: Option<&kepoch::Stats>) -> RunStats {
    let shared = &*lifetime.shared;
    let env = &*lifetime.env;
    let report = lifetime.machine.report();
    let domain_stats = before_unload.copied().unwrap_or_default();
    RunStats {
        reads: shared.reads.load(Ordering::Relaxed),
        retires: shared.retires.load(Ordering::Relaxed),
        cycles: match before_unload {
            Some(stats) => stats.cycles,
            None => shared.cycles_seen.load(Ordering::Relaxed),
        },
        syncs: shared.syncs.load(Ordering::Relaxed),
        flushes: shared.flushes.load(Ordering::Relaxed),
        hot_adds: report.counters.hot_add_complete,
        hot_add_failures: report.counters.hot_add_failure,
        lifetimes: 1,
        cpus: report
            .cpus
            .iter()
            .filter(|c| c.status == crate::machine::CpuStatus::Running)
            .count() as u32,
        held_age: std::array::from_fn(|k| shared.held_age[k].load(Ordering::Relaxed)),
        max_held_age: shared.max_held_age.load(Ordering::Relaxed),
        prepare_failures: domain_stats.prepare_failures,
        fallback_uses: domain_stats.fallback_uses,
        work_run: env.run.load(Ordering::Relaxed),
        work_cancelled: env.cancelled.load(Ordering::Relaxed),
        work_chained: env.chained.load(Ordering::Relaxed),
        work_barriers: env.barriers.load(Ordering::Relaxed),
        destructor_retires: shared
            .chain_stats
            .retired_by_destructor
            .load(Ordering::Relaxed),
        polls: shared.polls.load(Ordering::Relaxed),
        max_depth: shared.max_depth.load(Ordering::Relaxed),
        peak_pending: shared.peak_pending.load(Ordering::Relaxed),
        max_no_release: shared.max_no_release.load(Ordering::Relaxed),
        map_lookups: shared.map_lookups.load(Ordering::Relaxed),
        map_updates: shared.map_updates.load(Ordering::Relaxed),
        map_conflicts: shared.map_conflicts.load(Ordering::Relaxed),
        linked_reads: shared.linked_reads.load(Ordering::Relaxed),
        linked_updates: shared.linked_updates.load(Ordering::Relaxed),
        unload_flushes: env.unload_flushes.load(Ordering::Relaxed),
        unload_synchronizes: env.unload_synchronizes.load(Ordering::Relaxed),
        unload_retires: 0,
    }
}

/// Texts with their repeat counts, as lines: `text` or `text (N times)`.
pub(super) fn counted(texts: impl Iterator<Item = (String, u64)>) -> Vec<String> {
    texts
        .map(|(text, n)| match n {
            1 => text,
            n => format!("{text} ({n} times)"),
        })
        .collect()
}

/// The machine's own findings after unload: its violations and any block still allocated (leak).
fn machine_checks(machine: &Machine) -> Vec<String> {
    let mut seen: Vec<(String, u64)> = Vec::new();
    for v in machine.violations() {
        let text = format!("machine: {:?}: {}", v.kind, v.message);
        match seen.iter_mut().find(|(t, _)| *t == text) {
            Some(entry) => entry.1 += 1,
            None => seen.push((text, 1)),
        }
    }
    let mut found = counted(seen.into_iter());
    let live = machine.live_allocations();
    if !live.is_empty() {
        found.push(format!(
            "leak: {} block(s) still allocated after unload",
            live.len()
        ));
    }
    found
}
