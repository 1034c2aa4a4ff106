//! The `ab` and `scenarios` subcommands.

use clap::ValueEnum;
use kepoch::Strategy;
use kepoch_sim::lab::run::RunMode;
use kepoch_sim::lab::scenario::{self, HotAdd, Overrides, Scenario};
use kepoch_sim::lab::{self, chart, table};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::output::open_outputs;
use crate::progress::{self, Progress};
use crate::usage_error;

#[derive(Clone, Copy, ValueEnum)]
pub enum LabMode {
    /// One thread per virtual CPU; durations are wall-clock time (the A/B test).
    Parallel,
    /// One thread schedules every CPU from the seed; durations are simulated time.
    Deterministic,
}

#[derive(clap::Args)]
pub struct AbArgs {
    /// Built-in scenario name (see `kepoch-sim scenarios`) or a scenario TOML file.
    #[arg(long, default_value = scenario::DEFAULT_SCENARIO)]
    scenario: String,
    /// Override: what KeQueryMaximumProcessorCountEx returns.
    #[arg(long)]
    max_reported: Option<u32>,
    /// Override: processors running at load.
    #[arg(long)]
    active: Option<u32>,
    /// Override: processors per group (1..=64).
    #[arg(long)]
    group_size: Option<u32>,
    /// Override (repeatable, replaces the scenario's schedule): add COUNT processors at MS
    /// milliseconds, `COUNT@MS`; `COUNT@MS:fail` makes AddStart end in AddFailure.
    #[arg(long = "hot-add", value_name = "COUNT@MS", value_parser = scenario::parse_hot_add)]
    hot_add: Vec<HotAdd>,
    /// Override: accurate, under-report or sparse.
    #[arg(long, value_parser = ["accurate", "under-report", "sparse"])]
    firmware: Option<String>,
    /// Override: run time of one round of one strategy in milliseconds.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Rounds per strategy: each a fresh simulated machine with its own seed; strategies are
    /// interleaved round by round. Intervals need at least 3.
    #[arg(long, default_value_t = lab::DEFAULT_ROUNDS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Override: seed of the machine and the workload.
    #[arg(long)]
    seed: Option<u64>,
    /// Execution mode (the A/B test runs in parallel mode; deterministic is for debugging).
    #[arg(long, value_enum, default_value = "parallel")]
    mode: LabMode,
    /// Write the report JSON (the `kepoch-report` schema) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG chart (first-enter latency distributions, per-CPU memory against the reported
    /// maximum, messages to idle CPUs per second) here.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// No progress (a bar on a terminal, else a line on stderr every few seconds).
    #[arg(long)]
    quiet: bool,
}

fn describe(s: &Scenario, mode: RunMode) -> String {
    let adds: Vec<String> = s
        .hot_add
        .iter()
        .map(|h| {
            format!(
                "{}@{}ms{}",
                h.count,
                h.at_ms,
                if h.fail { " (fails)" } else { "" }
            )
        })
        .collect();
    let w = &s.workload;
    format!(
        "scenario {}: {}\nmachine: max reported {}, active {}, group size {}, firmware {}, hot-add {}; workload: {} ms per round and strategy in {} load(s) ({} mode), {} reader(s)/CPU, {} retire/ms/CPU, {} idle CPU(s){}{}; seed {}",
        s.name,
        s.description,
        s.max_reported,
        s.active_at_boot,
        s.group_size,
        s.firmware,
        if adds.is_empty() { "none".into() } else { adds.join(", ") },
        w.duration_ms,
        w.reloads,
        mode.name(),
        w.readers_per_cpu,
        w.retire_per_ms,
        w.idle_cpus,
        if w.stall_reader_ms > 0 { format!(", one reader stalled {} ms", w.stall_reader_ms) } else { String::new() },
        if w.alloc_fail_every > 0 { format!(", every {}th allocation fails", w.alloc_fail_every) } else { String::new() },
        s.seed
    )
}

/// `kepoch-sim ab`.
pub fn ab_command(args: AbArgs) -> ExitCode {
    let mut scenario = match scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => return usage_error(&e.0),
    };
    scenario.apply(&Overrides {
        max_reported: args.max_reported,
        active: args.active,
        group_size: args.group_size,
        hot_add: args.hot_add.clone(),
        firmware: args.firmware.clone(),
        duration_ms: args.duration_ms,
        seed: args.seed,
    });
    if let Err(e) = scenario.validate() {
        return usage_error(&e.0);
    }
    let mode = match args.mode {
        LabMode::Parallel => RunMode::Parallel,
        LabMode::Deterministic => RunMode::Deterministic,
    };
    let [json_out, svg_out] =
        match open_outputs([("--json", args.json.as_ref()), ("--svg", args.svg.as_ref())]) {
            Ok(outputs) => outputs,
            Err(e) => return usage_error(&e),
        };
    println!("{}", describe(&scenario, mode));
    println!(
        "{} rounds per strategy, interleaved; 95 % intervals from a bootstrap over rounds ({} resamples, seed {})",
        args.rounds,
        lab::bootstrap::RESAMPLES,
        scenario.seed
    );

    let steps = u64::from(args.rounds) * lab::ORDER.len() as u64;
    let started = Instant::now();
    let show = Progress::new(
        args.quiet,
        Some(steps * 1000),
        "{spinner} ab [{elapsed_precise}] {bar:30} {msg}",
        &format!(
            "ab: {} rounds of {} strategies on {}; a progress line every {} s",
            args.rounds,
            lab::ORDER.len(),
            scenario.name,
            progress::LINE_PERIOD.as_secs()
        ),
    );
    let progress = |round: u32, strategy: Strategy, done: f64| {
        let k = lab::ORDER.iter().position(|s| *s == strategy).unwrap_or(0) as u64;
        let step = u64::from(round) * lab::ORDER.len() as u64 + k;
        let position = step * 1000 + (done.clamp(0.0, 1.0) * 1000.0) as u64;
        let what = || {
            format!(
                "round {}/{}: {} on {}",
                round + 1,
                args.rounds,
                strategy.name(),
                scenario.name
            )
        };
        show.update(position, what, || {
            format!(
                "ab: {}, {:.0} % of the run done, {:.0} s elapsed",
                what(),
                position as f64 / (steps * 10) as f64,
                started.elapsed().as_secs_f64()
            )
        });
    };
    let document = lab::run_ab(&scenario, mode, args.rounds, &progress);
    show.finish();
    let document = match document {
        Ok(d) => d,
        Err(e) => return usage_error(&e.0),
    };
    let results = document["results"].as_array().cloned().unwrap_or_default();
    println!();
    print!("{}", table::render(&results));
    println!();
    println!("{}", document["verdict"].as_str().unwrap_or(""));
    println!();
    println!(
        "ran {} rounds of {} strategies in {:.1} s",
        args.rounds,
        lab::ORDER.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(out) = json_out {
        let path = out.path().display().to_string();
        let text = serde_json::to_string_pretty(&document).unwrap_or_default();
        if let Err(e) = out.write(&(text + "\n")) {
            return usage_error(&e);
        }
        println!("wrote {path}");
    }
    if let Some(out) = svg_out {
        let path = out.path().display().to_string();
        let title = format!(
            "kepoch A/B: {} ({} rounds, {} mode, source sim)",
            scenario.name,
            args.rounds,
            mode.name()
        );
        match chart::render(&document, &title).and_then(|svg| out.write(&svg)) {
            Ok(()) => println!("wrote {path}"),
            Err(e) => return usage_error(&e),
        }
    }
    if !results.iter().any(table::loaded) {
        println!("FAILED: no strategy loaded on this scenario (see the notes above)");
        return ExitCode::from(1);
    }
    if failed(&results) {
        println!(
            "FAILED: a loaded strategy had a use-after-free, a leak or a violation (see above)"
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// True if a loaded column shows a correctness failure.
fn failed(results: &[Value]) -> bool {
    results.iter().any(|c| {
        let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        let violations = c
            .get("violations")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty());
        n("use_after_free") > 0 || n("leaked") > 0 || violations
    })
}

/// `kepoch-sim scenarios`.
pub fn scenarios_command() -> ExitCode {
    match scenario::builtins() {
        Ok(all) => {
            let width = all.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in all {
                println!("{:<width$}  {}", s.name, s.description);
            }
            println!(
                "\nrun one with `kepoch-sim ab --scenario NAME` (default {}), or give a TOML file",
                scenario::DEFAULT_SCENARIO
            );
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(&e.0),
    }
}
