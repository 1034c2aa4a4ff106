//! `kepoch-sim`: the simulator and A/B lab for kepoch.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod lab_cli;
mod output;
mod progress;
mod report_cli;
mod torture_cli;

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
    /// rcutorture-style torture: readers, writers, synchronize, work items, destructor chains, flush
    /// storms, stalled readers, overflow use and busy unloads on simulated machines that are rebuilt and
    /// reloaded during the run; every run is held to liveness, garbage, memory and time bounds; exits 1
    /// with a diagnosis and a replay command on any violation.
    Torture(torture_cli::TortureArgs),
    /// A/B test: runs eager, lazy and callback for several rounds (fresh machines with per-round seeds,
    /// strategies interleaved) on the same scenario and prints the figures side by side with 95 %
    /// intervals (bootstrap over rounds), then a verdict that states only significant differences.
    Ab(lab_cli::AbArgs),
    /// Lists the built-in scenarios, one line each.
    Scenarios,
    /// Reads `ab --json` files and guest stats (`kepochctl stats --json`, one round per file), groups the
    /// rounds by strategy and source and prints the same table, intervals and verdict (and chart).
    Report(report_cli::ReportArgs),
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of stdout goes away
    // (`kepoch-sim report … | head`) instead of panicking on the failed write.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match cli.command {
        Command::Torture(args) => torture_cli::torture_command(args),
        Command::Ab(args) => lab_cli::ab_command(args),
        Command::Scenarios => lab_cli::scenarios_command(),
        Command::Report(args) => report_cli::report_command(args),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("kepoch-sim: error: {message}");
    ExitCode::from(2)
}
