//! The `torture` subcommand: its arguments, the replay command of a run, and the run loop with its
//! progress and summary.

use clap::ValueEnum;
use kepoch::{Mutations, Strategy};
use kepoch_sim::torture::bounds::{self, Bounds};
use kepoch_sim::torture::{self, Mode, RunOptions, RunOutcome, RunSpec, Workloads};
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::progress::{self, Heartbeat, Progress};
use crate::usage_error;

#[derive(Clone, Copy, ValueEnum)]
enum StrategyArg {
    Lazy,
    Callback,
    Eager,
}

impl From<StrategyArg> for Strategy {
    fn from(value: StrategyArg) -> Strategy {
        match value {
            StrategyArg::Lazy => Strategy::Lazy,
            StrategyArg::Callback => Strategy::Callback,
            StrategyArg::Eager => Strategy::Eager,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Deterministic,
    Parallel,
}

#[derive(clap::Args)]
pub struct TortureArgs {
    /// Strategy under test.
    #[arg(long, value_enum, default_value = "callback")]
    strategy: StrategyArg,
    /// Execution mode: one thread scheduling every CPU from the seed, or one thread per CPU.
    #[arg(long, value_enum, default_value = "deterministic")]
    mode: ModeArg,
    /// One seed (replays a run exactly in deterministic mode).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long, value_parser = parse_seeds)]
    seeds: Option<Range<u64>>,
    /// Parallel: wall-clock seconds per run. Deterministic without seeds: keep running new seeds for
    /// this long.
    #[arg(long)]
    seconds: Option<f64>,
    /// Simulated milliseconds per deterministic run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    sim_ms: u64,
    /// Hot-adds per simulated second (about a quarter of them fail).
    #[arg(long, default_value_t = 0)]
    hot_add_rate: u32,
    /// Re-introduce a known bug (needs `--features mutations`).
    #[arg(long)]
    mutation: Option<String>,
    /// Put every simulated allocation (of at most one page) on its own page and make it no-access when
    /// freed: a late read faults, is reported (object, epochs, seed, replay) and exits 1.
    #[arg(long)]
    guard_pages: bool,
    /// Workloads to run besides readers, writers and the synchronizer: `all` (default), `none`, or a
    /// comma-separated list of work (work items: schedule, cancel, reschedule, callbacks that retire
    /// and schedule), stats (stats()/holdback() callers), chains (destructors that retire), storms
    /// (flush/synchronize storms), stalls (readers inside across many cycles in distinct epochs),
    /// overflow (allocation failures put a CPU on the overflow slot), busy-unload (unload while work
    /// items run and a cycle is in flight; callbacks then also flush and synchronize), map (a read-mostly hash map through the safe pointer
    /// layer: lookups, compare-and-exchange updates, safe retirement; and a `kepoch::map::Map` whose
    /// permanent keys must always be found), list (a `kepoch::list::List`: walks, pushes, removals).
    #[arg(long, default_value = "all", value_parser = parse_workloads)]
    workloads: Workloads,
    /// Deterministic: machine lifetimes per seed (each a new machine, load, hot-adds, unload), each
    /// `--sim-ms` long.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    reloads: u32,
    /// Parallel: wall-clock milliseconds of one machine lifetime; `--seconds` is split into
    /// lifetimes, so loads, unloads and the hot-add protocol repeat for the whole run.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    lifetime_ms: u64,
    /// Wall-clock seconds one run (one seed, all its lifetimes) may take; past it the run fails with a
    /// diagnosis and the process exits 1. Default: 30 s + 1 s per simulated ms (deterministic), 30 s +
    /// twice the run (parallel).
    #[arg(long)]
    deadline: Option<f64>,
    /// Bound on pending garbage: items retired and not yet freed, per running CPU [default: 2048].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pending_per_cpu: Option<u64>,
    /// Bound on progress: cycles the released epoch may stay put while garbage is pending (beyond the
    /// torture's own bounded stalls of 16 cycles); also the cycle periods without a new cycle while
    /// garbage is pending (at least 2 s in parallel mode) [default: 128].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    progress_cycles: Option<u64>,
    /// Bound on the process's resident set, in MiB [default: 2048].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_rss_mb: Option<u64>,
    /// Bound on the simulated allocator's live bytes, in MiB [default: 256].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_live_mb: Option<u64>,
    /// No progress (a bar on a terminal, else a line on stderr every few seconds).
    #[arg(long)]
    quiet: bool,
}

fn parse_workloads(text: &str) -> Result<Workloads, String> {
    match text {
        "all" => return Ok(Workloads::ALL),
        "none" => return Ok(Workloads::NONE),
        _ => {}
    }
    let mut workloads = Workloads::NONE;
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        *workloads.switch(name).ok_or_else(|| {
            format!(
                "unknown workload `{name}`; known: all, none, {}",
                Workloads::NAMES.join(", ")
            )
        })? = true;
    }
    Ok(workloads)
}

/// The command-line value of a set of workloads.
fn workloads_arg(workloads: Workloads) -> String {
    if workloads == Workloads::ALL {
        return "all".into();
    }
    let mut copy = workloads;
    let names: Vec<&str> = Workloads::NAMES
        .iter()
        .copied()
        .filter(|name| copy.switch(name).is_some_and(|on| *on))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

impl TortureArgs {
    fn bounds(&self) -> Bounds {
        let mut bounds = Bounds {
            deadline: self.deadline.map(Duration::from_secs_f64),
            ..Bounds::default()
        };
        if let Some(n) = self.pending_per_cpu {
            bounds.pending_per_cpu = n;
        }
        if let Some(n) = self.progress_cycles {
            bounds.progress_cycles = n;
        }
        if let Some(n) = self.max_rss_mb {
            bounds.max_rss_bytes = n.saturating_mul(1 << 20);
        }
        if let Some(n) = self.max_live_mb {
            bounds.max_live_bytes = n.saturating_mul(1 << 20);
        }
        bounds
    }
}

fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got `{text}`"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("bad seed `{a}` in `{text}`"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("bad seed `{b}` in `{text}`"))?;
    if b <= a {
        return Err(format!(
            "empty seed range `{text}`: B must be greater than A"
        ));
    }
    Ok(a..b)
}

fn mutations_from(name: Option<&str>) -> Result<Mutations, String> {
    let Some(name) = name else {
        return Ok(Mutations::NONE);
    };
    let mutation = kepoch::Mutation::from_name(name).ok_or_else(|| {
        let names: Vec<_> = kepoch::Mutation::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mutation `{name}`; known: {}", names.join(", "))
    })?;
    if !cfg!(feature = "mutations") {
        return Err(format!(
            "--mutation {name} needs a build with the mutations feature: cargo run --release -p kepoch-sim --features mutations -- torture ..."
        ));
    }
    Ok(Mutations::NONE.with(mutation))
}

/// The command that replays one torture run.
fn replay_command(
    args: &TortureArgs,
    strategy: Strategy,
    mode: Mode,
    seed: u64,
    duration_us: u64,
) -> String {
    let features = if args.mutation.is_some() {
        " --features mutations"
    } else {
        ""
    };
    let mut replay = format!(
        "cargo run --release -p kepoch-sim{features} -- torture --strategy {strategy} --mode {} --seed {seed}",
        mode.name()
    );
    match mode {
        Mode::Deterministic => {
            replay.push_str(&format!(" --sim-ms {}", args.sim_ms));
            if args.reloads != 1 {
                replay.push_str(&format!(" --reloads {}", args.reloads));
            }
        }
        Mode::Parallel => replay.push_str(&format!(
            " --seconds {} --lifetime-ms {}",
            duration_us as f64 / 1e6,
            args.lifetime_ms
        )),
    }
    if args.workloads != Workloads::ALL {
        replay.push_str(&format!(" --workloads {}", workloads_arg(args.workloads)));
    }
    for (flag, value) in [
        ("--deadline", args.deadline.map(|d| d.to_string())),
        (
            "--pending-per-cpu",
            args.pending_per_cpu.map(|n| n.to_string()),
        ),
        (
            "--progress-cycles",
            args.progress_cycles.map(|n| n.to_string()),
        ),
        ("--max-rss-mb", args.max_rss_mb.map(|n| n.to_string())),
        ("--max-live-mb", args.max_live_mb.map(|n| n.to_string())),
    ] {
        if let Some(value) = value {
            replay.push_str(&format!(" {flag} {value}"));
        }
    }
    if args.hot_add_rate > 0 {
        replay.push_str(&format!(" --hot-add-rate {}", args.hot_add_rate));
    }
    if let Some(m) = &args.mutation {
        replay.push_str(&format!(" --mutation {m}"));
    }
    if args.guard_pages {
        replay.push_str(" --guard-pages");
    }
    replay
}

/// `kepoch-sim torture`.
pub fn torture_command(args: TortureArgs) -> ExitCode {
    let mutations = match mutations_from(args.mutation.as_deref()) {
        Ok(m) => m,
        Err(message) => return usage_error(&message),
    };
    let strategy: Strategy = args.strategy.into();
    let mode = match args.mode {
        ModeArg::Deterministic => Mode::Deterministic,
        ModeArg::Parallel => Mode::Parallel,
    };
    if let Some(seconds) = args.seconds {
        if !(seconds > 0.0 && seconds.is_finite()) {
            return usage_error("--seconds must be a positive number");
        }
    }
    if let Some(deadline) = args.deadline {
        if !(deadline > 0.0 && deadline.is_finite()) {
            return usage_error("--deadline must be a positive number of seconds");
        }
    }
    // Per machine lifetime: simulated time (deterministic) or wall time (parallel).
    let (duration_us, lifetimes) = match mode {
        Mode::Deterministic => (args.sim_ms * 1_000, args.reloads),
        Mode::Parallel => {
            let total_ms = (args.seconds.unwrap_or(5.0) * 1e3) as u64;
            let lifetime_ms = args.lifetime_ms.min(total_ms.max(1));
            (
                lifetime_ms * 1_000,
                total_ms.div_ceil(lifetime_ms).max(1) as u32,
            )
        }
    };
    let replay_us = match mode {
        Mode::Deterministic => duration_us,
        Mode::Parallel => duration_us * u64::from(lifetimes),
    };
    // Which seeds: explicit range or seed; else deterministic runs new seeds until the time is up,
    // and parallel runs seed 0.
    let explicit: Option<Range<u64>> = args.seeds.clone().or(args.seed.map(|s| s..s + 1));
    let deadline = match (mode, &explicit, args.seconds) {
        (Mode::Deterministic, None, Some(seconds)) => {
            Some(Instant::now() + Duration::from_secs_f64(seconds))
        }
        _ => None,
    };
    let seeds = explicit.unwrap_or(match deadline {
        Some(_) => 0..u64::MAX,
        None => 0..1,
    });

    // How long the whole command runs, when it is known.
    let plan = match (deadline, mode) {
        (Some(_), _) | (None, Mode::Parallel) => args
            .seconds
            .map(|seconds| format!(" of about {seconds} s"))
            .unwrap_or_default(),
        (None, Mode::Deterministic) => String::new(),
    };
    let seed_count = seeds.end - seeds.start;
    let which = match (deadline, args.seconds) {
        (Some(_), Some(seconds)) => format!("new seeds for {seconds} s"),
        _ => format!("{seed_count} seed(s) from {}", seeds.start),
    };
    let show = Progress::new(
        args.quiet,
        deadline.is_none().then_some(seed_count),
        "{spinner} torture [{elapsed_precise}] {bar:30} {pos}/{len} seeds {msg}",
        &format!(
            "torture: strategy {strategy}, mode {}, {}; a progress line every {} s",
            mode.name(),
            which,
            progress::LINE_PERIOD.as_secs()
        ),
    );
    let status = Arc::new((AtomicU64::new(0), AtomicU64::new(seeds.start)));
    let heartbeat = matches!(show, Progress::Lines(_)).then(|| {
        let status = status.clone();
        let started = Instant::now();
        Heartbeat::start(move || {
            format!(
                "torture: {:.0} s elapsed{plan}, {} run(s) done, running seed {}",
                started.elapsed().as_secs_f64(),
                status.0.load(Ordering::Relaxed),
                status.1.load(Ordering::Relaxed)
            )
        })
    });

    let bounds = args.bounds();
    let started = Instant::now();
    let mut totals = torture::RunStats::default();
    let mut runs = 0u64;
    let mut failure: Option<(u64, RunOutcome)> = None;
    for seed in seeds.clone() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        status.1.store(seed, Ordering::Relaxed);
        let spec = RunSpec {
            strategy,
            seed,
            mode,
            duration_us,
            hot_add_rate: args.hot_add_rate,
            mutations,
        };
        let options = RunOptions {
            guard_pages: args.guard_pages,
            fault_context: format!(
                "torture: strategy {strategy}, mode {}, seed {seed}\nreplay: {}\n",
                mode.name(),
                replay_command(&args, strategy, mode, seed, replay_us)
            ),
            alloc_fault_hook: None,
            workloads: args.workloads,
            bounds: bounds.clone(),
            lifetimes,
        };
        let outcome = torture::run_with(&spec, &options);
        runs += 1;
        status.0.store(runs, Ordering::Relaxed);
        totals.add(&outcome.stats);
        if let Progress::Bar(bar) = &show {
            bar.inc(1);
        }
        if !outcome.violations.is_empty() {
            failure = Some((seed, outcome));
            break;
        }
    }
    show.finish();
    drop(heartbeat);

    let mutation_note = args
        .mutation
        .as_deref()
        .map(|m| format!(", mutation {m}"))
        .unwrap_or_default();
    let guard_note = if args.guard_pages {
        ", guard pages"
    } else {
        ""
    };
    let t = &totals;
    let figures = format!(
        "{runs} run(s), {} lifetimes, {} reads, {} retires, {} cycles, {} synchronizes, {} flushes, {} hot-adds ({} completed, {} failed), work items {} run / {} cancelled / {} chained / {} barriers, {} destructor retires, unload {} callback flushes / {} synchronizes / {} retires, {} polls, map {} bucket reads / {} updates / {} lost races, list and kepoch::map {} item reads / {} updates, {} overflow uses, max reader-table depth {}, peak pending {}, longest hold-back {} cycles, peak RSS {} MiB",
        t.lifetimes,
        t.reads,
        t.retires,
        t.cycles,
        t.syncs,
        t.flushes,
        t.hot_adds + t.hot_add_failures,
        t.hot_adds,
        t.hot_add_failures,
        t.work_run,
        t.work_cancelled,
        t.work_chained,
        t.work_barriers,
        t.destructor_retires,
        t.unload_flushes,
        t.unload_synchronizes,
        t.unload_retires,
        t.polls,
        t.map_lookups,
        t.map_updates,
        t.map_conflicts,
        t.linked_reads,
        t.linked_updates,
        t.fallback_uses,
        t.max_depth,
        t.peak_pending,
        t.max_no_release,
        bounds::peak_rss() >> 20
    );
    let deadline_used =
        bounds.deadline_for(mode == Mode::Parallel, duration_us * u64::from(lifetimes));
    match failure {
        None => {
            println!(
                "torture: strategy {strategy}, mode {}{mutation_note}{guard_note}: {figures}, 0 violations in {:.1}s",
                mode.name(),
                started.elapsed().as_secs_f64()
            );
            let [a0, a1, a2, a3] = totals.held_age;
            println!(
                "torture: reads of unlinked objects still held, by age in cycles since the unlink: 0: {a0}, 1: {a1}, 2: {a2}, 3+: {a3} (oldest {}); none was released while held",
                totals.max_held_age
            );
            println!("torture: bounds: {}", bounds.describe(deadline_used));
            ExitCode::SUCCESS
        }
        Some((seed, outcome)) => {
            println!(
                "torture: strategy {strategy}, mode {}{mutation_note}: VIOLATION with seed {seed} ({}) after {runs} run(s):",
                mode.name(),
                outcome.machine
            );
            for violation in &outcome.violations {
                println!("  - {violation}");
            }
            println!(
                "torture: {figures}, {} violation(s) in {:.1}s",
                outcome.violations.len(),
                started.elapsed().as_secs_f64()
            );
            println!("torture: bounds: {}", bounds.describe(deadline_used));
            println!(
                "replay: {}",
                replay_command(&args, strategy, mode, seed, replay_us)
            );
            if mode == Mode::Parallel {
                println!("note: parallel runs depend on thread timing; the seed fixes the machine, not the interleaving");
            }
            ExitCode::from(1)
        }
    }
}
