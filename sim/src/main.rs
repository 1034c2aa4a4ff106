//! `kepoch-sim`: the simulator and A/B lab for kepoch.

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kepoch::{Mutations, Strategy};
use kepoch_sim::torture::{self, Mode, RunOptions, RunOutcome, RunSpec};
use std::io::IsTerminal;
use std::ops::Range;
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod lab_cli;

#[derive(Parser)]
#[command(
    name = "kepoch-sim",
    version,
    about = "Simulated machines, torture and A/B lab for kepoch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// rcutorture-style torture: readers, writers and synchronize on simulated machines; exits 1 with
    /// a replay command on any violation.
    Torture(TortureArgs),
    /// A/B test: runs eager, lazy and callback on the same scenario (same seed, hot-add schedule and
    /// workload) and prints the measured figures side by side, then a verdict.
    Ab(lab_cli::AbArgs),
    /// Lists the built-in scenarios, one line each.
    Scenarios,
    /// Merges `ab --json` files and guest stats (`kepochctl stats --json`) into one table (and chart).
    Report(lab_cli::ReportArgs),
}

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
struct TortureArgs {
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
    #[arg(long, default_value_t = 20)]
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
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
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

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of stdout goes away
    // (`kepoch-sim report … | head`) instead of panicking on the failed write.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match cli.command {
        Command::Torture(args) => torture_command(args),
        Command::Ab(args) => lab_cli::ab_command(args),
        Command::Scenarios => lab_cli::scenarios_command(),
        Command::Report(args) => lab_cli::report_command(args),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("kepoch-sim: error: {message}");
    ExitCode::from(2)
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
        Mode::Deterministic => replay.push_str(&format!(" --sim-ms {}", args.sim_ms)),
        Mode::Parallel => replay.push_str(&format!(" --seconds {}", duration_us as f64 / 1e6)),
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

fn torture_command(args: TortureArgs) -> ExitCode {
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
    if args.sim_ms == 0 {
        return usage_error("--sim-ms must be at least 1");
    }
    let duration_us = match mode {
        Mode::Deterministic => args.sim_ms * 1_000,
        Mode::Parallel => (args.seconds.unwrap_or(5.0) * 1e6) as u64,
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

    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let bar = if show_progress {
        let bar = match deadline {
            Some(_) => ProgressBar::new_spinner(),
            None => ProgressBar::new(seeds.end - seeds.start),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} torture [{elapsed_precise}] {bar:30} {pos}/{len} seeds {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    } else {
        None
    };

    let started = Instant::now();
    let mut totals = torture::RunStats::default();
    let mut runs = 0u64;
    let mut failure: Option<(u64, RunOutcome)> = None;
    for seed in seeds.clone() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
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
                replay_command(&args, strategy, mode, seed, duration_us)
            ),
            alloc_fault_hook: None,
        };
        let outcome = torture::run_with(&spec, &options);
        runs += 1;
        for (total, age) in totals.held_age.iter_mut().zip(outcome.stats.held_age) {
            *total += age;
        }
        totals.max_held_age = totals.max_held_age.max(outcome.stats.max_held_age);
        totals.reads += outcome.stats.reads;
        totals.retires += outcome.stats.retires;
        totals.cycles += outcome.stats.cycles;
        totals.syncs += outcome.stats.syncs;
        totals.hot_adds += outcome.stats.hot_adds;
        if let Some(bar) = &bar {
            bar.inc(1);
        }
        if !outcome.violations.is_empty() {
            failure = Some((seed, outcome));
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

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
    match failure {
        None => {
            println!(
                "torture: strategy {strategy}, mode {}{mutation_note}{guard_note}: {runs} run(s), {} reads, {} retires, {} cycles, {} synchronizes, {} hot-adds, 0 violations in {:.1}s",
                mode.name(),
                totals.reads,
                totals.retires,
                totals.cycles,
                totals.syncs,
                totals.hot_adds,
                started.elapsed().as_secs_f64()
            );
            let [a0, a1, a2, a3] = totals.held_age;
            println!(
                "torture: reads of unlinked objects still held, by age in cycles since the unlink: 0: {a0}, 1: {a1}, 2: {a2}, 3+: {a3} (oldest {}); none was released while held",
                totals.max_held_age
            );
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
                "replay: {}",
                replay_command(&args, strategy, mode, seed, duration_us)
            );
            if mode == Mode::Parallel {
                println!("note: parallel runs depend on thread timing; the seed fixes the machine, not the interleaving");
            }
            ExitCode::from(1)
        }
    }
}
