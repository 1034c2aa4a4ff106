//! Command-line parsing with clap (host-testable).

use clap::{value_parser, Args, Parser, Subcommand};
use kepoch::config::Strategy;
use kepoch_driver::ioctl::{limits, LoadRequest};

use crate::ab::AbArgs;

/// `kepochctl`: the control tool of kepoch.sys.
#[derive(Debug, Parser, PartialEq, Eq)]
#[command(
    name = "kepochctl",
    version,
    about = "Control tool of kepoch.sys: statistics, the built-in load generator, synchronize, the \
             activation strategy, the service and the guest A/B",
    after_help = "Runs on Windows 10 / Windows Server 2016 or later, x64 (Rust's standard library needs \
                  ProcessPrng from bcryptprimitives.dll); kepoch.sys itself loads on older kernels. Needs \
                  an elevated prompt (the device admits SYSTEM and Administrators; the registry and the \
                  service need administrator rights).\nExit codes: 0 success, 1 the driver, the service, \
                  the registry or the files failed (the message names the cause), 2 bad arguments."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Counters of kepoch.sys since the last reset.
    Stats {
        /// Write the report JSON (the kepoch-report schema) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start counting from zero (a new baseline).
    Reset,
    /// The built-in load generator.
    #[command(subcommand)]
    Load(LoadCommand),
    /// Wait until everything retired so far is freed.
    Sync,
    /// The registry value ActivationStrategy (read at the next load) and the running driver's strategy.
    #[command(subcommand)]
    Strategy(StrategyCommand),
    /// The kepoch service (Service Control Manager).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// The guest A/B: for every round and strategy, write the registry, restart the service, run the
    /// load and write one guest JSON file (`kepoch-sim report DIR/*.json` compares them); restores the
    /// registry values and the service's state afterwards, also after a failure or Ctrl-C.
    Ab(AbArgs),
    /// Send malformed IOCTLs, then check that the driver still answers.
    #[command(hide = true)]
    SelftestGarbage,
}

/// `strategy get` / `strategy set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum StrategyCommand {
    /// Print the registry value and the strategy the running driver reports.
    Get,
    /// Write ActivationStrategy (lazy, callback, eager or 0, 1, 2); it takes effect at the next
    /// load (`kepochctl service restart`).
    Set {
        /// lazy, callback or eager (or 0, 1, 2).
        #[arg(value_name = "STRATEGY", value_parser = parse_strategy)]
        strategy: Strategy,
    },
}

/// `service status` / `service restart`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum ServiceCommand {
    /// Print the service's state and exit codes.
    Status,
    /// Stop the service (if it runs) and start it again, waiting at most --timeout seconds for each;
    /// exit code 1 with the reason when the driver does not run afterwards.
    Restart {
        /// Longest wait for the stop and for the start, 1..=600 seconds.
        #[arg(long, value_name = "S", default_value_t = 60, value_parser = value_parser!(u32).range(1..=600))]
        timeout: u32,
    },
}

/// One strategy name or registry value.
fn parse_strategy(text: &str) -> Result<Strategy, String> {
    match crate::ab::args::parse_strategies(text)?.0.as_slice() {
        [one] => Ok(*one),
        _ => Err("one strategy: lazy, callback or eager".into()),
    }
}

/// `load start` / `load stop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum LoadCommand {
    /// Run the load generator (it stops by itself after --seconds).
    Start(LoadStart),
    /// Stop the load generator.
    Stop,
}

/// `load start` options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Args)]
pub struct LoadStart {
    /// Operations per second over all threads, 1..=10000000.
    #[arg(long, value_name = "N", value_parser = value_parser!(u32).range(i64::from(limits::MIN_RATE)..=i64::from(limits::MAX_RATE)))]
    pub rate: u32,
    /// How long the load runs in seconds, 1..=3600.
    #[arg(long, value_name = "S", value_parser = value_parser!(u32).range(i64::from(limits::MIN_SECONDS)..=i64::from(limits::MAX_SECONDS)))]
    pub seconds: u32,
    /// Load threads, each pinned to a processor, 0..=64; 0 = one per active processor.
    #[arg(long, value_name = "T", default_value_t = 0, value_parser = value_parser!(u32).range(0..=i64::from(limits::MAX_THREADS)))]
    pub threads: u32,
    /// Return only once every load thread has made at least two operations (polls the statistics
    /// every 20 ms; fails after 60 s). Needs a rate and duration giving each thread two operations.
    #[arg(long)]
    pub wait: bool,
}

impl LoadStart {
    /// The IOCTL request.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub fn request(&self) -> LoadRequest {
        LoadRequest {
            rate: self.rate,
            seconds: self.seconds,
            threads: self.threads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("kepochctl").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    fn start(rate: u32, seconds: u32, threads: u32, wait: bool) -> Command {
        Command::Load(LoadCommand::Start(LoadStart {
            rate,
            seconds,
            threads,
            wait,
        }))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(&["stats"]).unwrap(), Command::Stats { json: false });
        assert_eq!(
            parse(&["stats", "--json"]).unwrap(),
            Command::Stats { json: true }
        );
        assert_eq!(parse(&["reset"]).unwrap(), Command::Reset);
        assert_eq!(parse(&["sync"]).unwrap(), Command::Sync);
        assert_eq!(
            parse(&["load", "stop"]).unwrap(),
            Command::Load(LoadCommand::Stop)
        );
        assert_eq!(
            parse(&["selftest-garbage"]).unwrap(),
            Command::SelftestGarbage
        );
        assert_eq!(
            parse(&["load", "start", "--rate", "1000", "--seconds", "10"]).unwrap(),
            start(1000, 10, 0, false)
        );
        assert_eq!(
            parse(&[
                "load",
                "start",
                "--seconds=5",
                "--threads",
                "2",
                "--rate=7",
                "--wait"
            ])
            .unwrap(),
            start(7, 5, 2, true)
        );
        let limits = format!("--rate={}", limits::MAX_RATE);
        assert_eq!(
            parse(&["load", "start", &limits, "--seconds=3600", "--threads=64"]).unwrap(),
            start(
                limits::MAX_RATE,
                limits::MAX_SECONDS,
                limits::MAX_THREADS,
                false
            )
        );
        assert_eq!(
            parse(&["strategy", "set", "eager"]).unwrap(),
            Command::Strategy(StrategyCommand::Set {
                strategy: Strategy::Eager
            })
        );
        assert_eq!(
            parse(&["strategy", "get"]).unwrap(),
            Command::Strategy(StrategyCommand::Get)
        );
        assert_eq!(
            parse(&["service", "restart"]).unwrap(),
            Command::Service(ServiceCommand::Restart { timeout: 60 })
        );
        assert_eq!(
            parse(&["service", "status"]).unwrap(),
            Command::Service(ServiceCommand::Status)
        );
        let Command::Ab(ab) = parse(&["ab", "--out", "x"]).unwrap() else {
            unreachable!()
        };
        assert_eq!((ab.rounds, ab.rate, ab.seconds), (8, 100_000, 30));
        assert_eq!(ab.strategies.0, Strategy::ALL.to_vec());
        let Command::Load(LoadCommand::Start(s)) = start(7, 5, 2, true) else {
            unreachable!()
        };
        assert!(s.request().validate().is_ok());
    }

    #[test]
    fn help_and_version_are_not_errors_of_usage() {
        for args in [
            &["--help"][..],
            &["help"],
            &["-h"],
            &["load", "start", "--help"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(e.exit_code(), 0, "{args:?}");
        }
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "stats",
            "reset",
            "load",
            "sync",
            "strategy",
            "service",
            "ab",
            "Exit codes",
            "Windows 10",
            "ProcessPrng",
        ] {
            assert!(help.contains(needle), "{needle} missing in\n{help}");
        }
        assert!(!help.contains("selftest-garbage"));
        // The ranges the help states are the driver's.
        let mut start = Cli::command();
        let start = start
            .find_subcommand_mut("load")
            .and_then(|l| l.find_subcommand_mut("start"))
            .expect("load start")
            .render_help()
            .to_string();
        for range in [
            format!("{}..={}", limits::MIN_RATE, limits::MAX_RATE),
            format!("{}..={}", limits::MIN_SECONDS, limits::MAX_SECONDS),
            format!("0..={}", limits::MAX_THREADS),
        ] {
            assert!(start.contains(&range), "{range} missing in\n{start}");
        }
    }

    #[test]
    fn rejects_bad_arguments_with_exit_code_2_and_a_message() {
        for (bad, needle) in [
            (&[][..], "Usage: kepochctl"),
            (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
            (&["stats", "--xml"], "unexpected argument '--xml'"),
            (&["reset", "now"], "unexpected argument 'now'"),
            (&["load"], "Usage: kepochctl load"),
            (&["load", "go"], "unrecognized subcommand 'go'"),
            (&["strategy", "set", "fast"], "unknown strategy 'fast'"),
            (&["strategy", "set", "lazy,eager"], "one strategy"),
            (
                &["service", "restart", "--timeout", "0"],
                "0 is not in 1..=600",
            ),
            (&["ab"], "--out <DIR>"),
            (&["load", "start"], "--rate <N>"),
            (&["load", "start", "--rate", "10"], "--seconds <S>"),
            (
                &["load", "start", "--rate", "10", "--seconds"],
                "a value is required",
            ),
            (
                &["load", "start", "--rate", "-1", "--seconds", "1"],
                "--rate",
            ),
            (
                &["load", "start", "--rate", "ten", "--seconds", "1"],
                "invalid digit",
            ),
            (
                &["load", "start", "--rate", "0", "--seconds", "1"],
                "0 is not in 1..=10000000",
            ),
            (
                &["load", "start", "--rate", "10", "--seconds", "0"],
                "0 is not in 1..=3600",
            ),
            (
                &["load", "start", "--rate", "10", "--seconds", "3601"],
                "3601 is not in 1..=3600",
            ),
            (
                &[
                    "load",
                    "start",
                    "--rate",
                    "10",
                    "--seconds",
                    "1",
                    "--threads",
                    "65",
                ],
                "65 is not in 0..=64",
            ),
            (
                &[
                    "load",
                    "start",
                    "--rate",
                    "10",
                    "--rate",
                    "11",
                    "--seconds",
                    "1",
                ],
                "cannot be used multiple times",
            ),
            (
                &[
                    "load",
                    "start",
                    "--rate",
                    "10",
                    "--seconds",
                    "1",
                    "--verbose",
                ],
                "unexpected argument '--verbose'",
            ),
        ] {
            let error = parse(bad).expect_err(&format!("{bad:?} must be refused"));
            assert_eq!(error.exit_code(), 2, "{bad:?}");
            let text = error.render().to_string();
            assert!(text.contains(needle), "{bad:?}: {text}");
        }
    }
}
