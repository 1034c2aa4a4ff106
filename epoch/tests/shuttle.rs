//! Controlled-schedule torture on shuttle: the shared model machine (`tests/model`) under shuttle's
//! random and PCT schedulers, where every atomic operation of the core is a preemption point on
//! sequentially consistent memory. It catches statement-order bugs (two steps swapped, a missing
//! re-check, a signal after the count) and logic bugs over far longer runs than loom can explore;
//! weakened orderings are loom's job (`tests/loom.rs`).
//!
//! - `torture_random`, `torture_pct`: seeded random scenarios — hot-add (AddStart → AddComplete or
//!   AddFailure) during cycles, joins and idle leaves, migrating readers, allocation failures (the
//!   overflow slot), work items (schedule, cancel, reschedule, retire from the callback), and unload
//!   while a work item runs and a cycle is in flight;
//! - one PCT test per directed scenario (`directed_<scenario>`), the same functions loom explores,
//!   and `directed_overlapping_barriers` (shuttle only).
//!
//! The checks are the machine's: S1, S3, S4, S8 (leaks, use after free of platform objects), S9, L1.
//!
//! Run: `RUSTFLAGS="--cfg shuttle" cargo test -p kepoch --release --test shuttle`.
//! Iterations: `KEPOCH_SHUTTLE_ITERATIONS` (torture, default 20000; whether the seeded run finds
//! `cycle-snapshot-before-publish` depends on the seed; loom's `a_reader_joins_while_a_cycle_publishes`
//! finds it every time), `KEPOCH_SHUTTLE_DIRECTED` (each
//! directed scenario and scheduler, default 2000), PCT depth `KEPOCH_SHUTTLE_PCT_DEPTH` (default 3).
//! With a re-introduced bug: `KEPOCH_MUTATION=cycle-snapshot-before-publish RUSTFLAGS="--cfg shuttle"
//! cargo test -p kepoch --release --features mutations --test shuttle`.
//! A failure persists its schedule under `target/tmp/shuttle-failures/` and prints the one command
//! line that replays it (`KEPOCH_SHUTTLE_REPLAY=<file> … <test> -- --exact`).
#![cfg(shuttle)]

mod model;

use kepoch::{Domain, Strategy, WorkItem};
use model::{check_unloaded, on_cpu, retire_fresh_object, rt, scenarios, ModelPlatform, World};
use shuttle::rand::{thread_rng, Rng};
use shuttle::scheduler::{PctScheduler, RandomScheduler, ReplayScheduler, Scheduler};
use shuttle::{Config, FailurePersistence, Runner};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;

/// A count from the environment, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value}: not a count")),
        Err(_) => default,
    }
}

/// The command line that runs `test` again on the schedule persisted in `schedule`.
fn replay_command(test: &str, schedule: &std::path::Path) -> String {
    let mutation = std::env::var("KEPOCH_MUTATION")
        .or_else(|_| std::env::var("KEPOCH_LOOM_MUTATION"))
        .map(|m| format!("KEPOCH_MUTATION={m} "))
        .unwrap_or_default();
    let features = if cfg!(feature = "mutations") {
        " --features mutations"
    } else {
        ""
    };
    format!(
        "KEPOCH_SHUTTLE_REPLAY={} {mutation}RUSTFLAGS=\"--cfg shuttle\" cargo test -p kepoch --release{features} --test shuttle {test} -- --exact",
        schedule.display()
    )
}

/// Runs `scenario` under `scheduler`, or replays the schedule in `KEPOCH_SHUTTLE_REPLAY`. A failing
/// schedule is persisted under the target directory and the command that replays it is printed.
fn check(test: &str, scheduler: impl Scheduler + 'static, scenario: fn()) {
    let mut config = Config::new();
    config.silence_warnings = true;
    if let Ok(schedule) = std::env::var("KEPOCH_SHUTTLE_REPLAY") {
        eprintln!("replaying {schedule}");
        let replay = ReplayScheduler::new_from_file(&schedule)
            .unwrap_or_else(|e| panic!("KEPOCH_SHUTTLE_REPLAY={schedule}: {e}"));
        Runner::new(replay, config).run(scenario);
        return;
    }
    // shuttle's panic hook keeps the configuration of the first run in the process, so every test
    // persists into the same directory; this run's schedule is the newest file it adds there.
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shuttle-failures");
    std::fs::create_dir_all(&directory).expect("create the schedule directory");
    let listing = || -> Vec<PathBuf> {
        std::fs::read_dir(&directory)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let before = listing();
    config.failure_persistence = FailurePersistence::File(Some(directory.clone()));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        Runner::new(scheduler, config).run(scenario);
    }));
    if let Err(failure) = outcome {
        let schedule = listing()
            .into_iter()
            .filter(|path| !before.contains(path))
            .max_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok());
        match schedule {
            Some(schedule) => eprintln!(
                "\nshuttle found a failing schedule; replay it with:\n    {}\n",
                replay_command(test, &schedule)
            ),
            None => eprintln!("shuttle failed without persisting a schedule"),
        }
        panic::resume_unwind(failure);
    }
}

/// PCT depth for every PCT run.
fn pct_depth() -> usize {
    env_count("KEPOCH_SHUTTLE_PCT_DEPTH", 3)
}

#[test]
fn torture_random() {
    let iterations = env_count("KEPOCH_SHUTTLE_ITERATIONS", 20_000);
    check(
        "torture_random",
        RandomScheduler::new_from_seed(0x6b65_706f_6368, iterations),
        torture,
    );
}

#[test]
fn torture_pct() {
    let iterations = env_count("KEPOCH_SHUTTLE_ITERATIONS", 20_000);
    check(
        "torture_pct",
        PctScheduler::new_from_seed(0x7063_7421, pct_depth(), iterations),
        torture,
    );
}

/// Declares one `#[test]` per directed scenario: PCT, then the random scheduler.
macro_rules! shuttle_directed {
    ($($name:ident,)*) => {
        mod directed {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let test = concat!("directed::", stringify!($name));
                    let iterations = env_count("KEPOCH_SHUTTLE_DIRECTED", 2_000);
                    check(test, PctScheduler::new_from_seed(7, pct_depth(), iterations), scenarios::$name);
                    check(test, RandomScheduler::new_from_seed(11, iterations), scenarios::$name);
                }
            )*
        }
    };
}

scenarios::every_scenario!(shuttle_directed);

/// Callback barriers that overlap (shuttle only: see `model::barrier`), under PCT and the random
/// scheduler.
#[test]
fn directed_overlapping_barriers() {
    let test = "directed_overlapping_barriers";
    let iterations = env_count("KEPOCH_SHUTTLE_DIRECTED", 2_000);
    let scenarios: [fn(); 2] = [
        model::barrier::overlapping_barriers_each_wait_for_their_own_callbacks,
        model::barrier::a_barrier_flips_while_another_threads_callback_is_queued,
    ];
    for scenario in scenarios {
        check(
            test,
            PctScheduler::new_from_seed(7, pct_depth(), iterations),
            scenario,
        );
        check(
            test,
            RandomScheduler::new_from_seed(11, iterations),
            scenario,
        );
    }
}

/// One step of a torture thread.
#[derive(Clone, Copy, Debug)]
enum Step {
    Read,
    ReadMigrating,
    Replace,
    Flush,
    Schedule,
    Cancel,
    RunPassiveWork,
    ToggleAllocationFailure,
}

const STEPS: [Step; 8] = [
    Step::Read,
    Step::ReadMigrating,
    Step::Replace,
    Step::Flush,
    Step::Schedule,
    Step::Cancel,
    Step::RunPassiveWork,
    Step::ToggleAllocationFailure,
];

/// The work item context: the domain's address (see [`retire_fresh_object`]).
fn context(domain: &Domain<ModelPlatform>) -> usize {
    domain as *const Domain<ModelPlatform> as usize
}

/// A CPU thread of the torture: `steps` random steps on random processors, with one work item of
/// its own that it schedules, cancels and schedules again.
fn torture_thread(w: &World, running: usize, steps: usize) {
    let mut rng = thread_rng();
    let item: Option<WorkItem<'_, ModelPlatform>> = on_cpu(0, || {
        w.domain
            .new_work_item(retire_fresh_object, context(&w.domain))
    });
    for _ in 0..steps {
        let cpu = rng.gen_range(0..running);
        match STEPS[rng.gen_range(0..STEPS.len())] {
            Step::Read => w.read(cpu),
            Step::ReadMigrating => w.read_migrating(cpu, rng.gen_range(0..running)),
            Step::Replace => w.replace(cpu),
            Step::Flush => on_cpu(cpu, || w.domain.flush()),
            Step::Schedule => {
                if let Some(item) = &item {
                    // Refused while scheduled: that is the double-retire check, not a failure.
                    let _ = on_cpu(cpu, || w.domain.schedule_work(item));
                }
            }
            Step::Cancel => {
                if let Some(item) = &item {
                    w.domain.cancel_work(item);
                }
            }
            Step::RunPassiveWork => on_cpu(cpu, || w.platform.run_passive_work()),
            Step::ToggleAllocationFailure => {
                w.platform.fail_allocations_on(cpu, rng.gen_bool(0.5));
            }
        }
    }
}

/// One random torture iteration (the shuttle scheduler's data source makes it replayable).
fn torture() {
    let mut rng = thread_rng();
    let strategy = if rng.gen_bool(0.5) {
        Strategy::Callback
    } else {
        Strategy::Lazy
    };
    // `callback` keeps CPU 2 for a hot-add during the run; `lazy` runs every CPU from the start.
    let running = match strategy {
        Strategy::Callback => 2,
        _ => model::CPUS,
    };
    let w = World::new(strategy, running);
    if rng.gen_bool(0.3) {
        w.platform.fail_allocations_on(1, true);
    }
    let mut threads = Vec::new();
    for _ in 0..2 {
        let steps = rng.gen_range(2..6);
        threads.push(w.spawn(move |w| torture_thread(w, running, steps)));
    }
    if strategy == Strategy::Callback {
        let fail_first = rng.gen_bool(0.5);
        threads.push(w.spawn(move |w| {
            if fail_first {
                w.platform.hot_add(2, true);
            }
            w.platform.hot_add(2, false);
            w.read(2);
        }));
    }
    for _ in 0..rng.gen_range(1..3) {
        on_cpu(0, || w.cycle());
    }
    for thread in threads {
        thread.join().unwrap();
    }
    for cpu in 0..model::CPUS {
        w.platform.fail_allocations_on(cpu, false);
    }
    quiesce_and_check(&w);
    unload_during_work_and_cycle(w);
}

/// With no reader inside, a few rounds of passive work and cycles dispose of everything retired,
/// including what work callbacks retire (L1).
fn quiesce_and_check(w: &World) {
    on_cpu(0, || {
        for _ in 0..6 {
            w.platform.run_passive_work();
            w.cycle();
        }
    });
    let pending = w.stats().pending;
    assert_eq!(
        pending, 0,
        "L1: {pending} retired item(s) still pending with no reader inside"
    );
}

/// Unload (S8) while a cycle is in flight with another requested, visits run on a "DPC" thread and
/// a work item that retires from its callback runs on a worker thread.
fn unload_during_work_and_cycle(w: Arc<World>) {
    let last = w
        .cell
        .swap(std::ptr::null_mut(), rt::atomic::Ordering::AcqRel);
    on_cpu(0, || {
        if let Some(last) = NonNull::new(last) {
            // SAFETY: unlinked; allocated by this domain.
            unsafe { w.domain.retire(last) }.expect("retire");
        }
        let item = w
            .domain
            .new_work_item(retire_fresh_object, context(&w.domain))
            .expect("work item");
        w.domain.schedule_work(&item).expect("schedule");
        w.domain.flush();
        w.domain.flush();
    });
    let (platform, domain) = Arc::try_unwrap(w)
        .ok()
        .expect("threads joined")
        .into_parts();
    let dpc = {
        let platform = platform.clone();
        rt::thread::spawn(move || on_cpu(1, || platform.deliver_all()))
    };
    let worker = {
        let platform = platform.clone();
        rt::thread::spawn(move || on_cpu(2, || platform.run_passive_work()))
    };
    on_cpu(0, || drop(domain));
    dpc.join().unwrap();
    worker.join().unwrap();
    check_unloaded(&platform);
}
