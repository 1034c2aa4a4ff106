//! The A/B loop: per round and strategy, write the registry, restart the service, reset the counters,
//! run the load, wait for announced hot-adds, read the statistics back and write the guest file; then
//! restore what was found, also after a failure or Ctrl-C.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use kepoch::config::Strategy;
use kepoch_report::{AbHotAdd, AbLoad, AbRecord, AbRegistry};

use super::args::{AbArgs, CYCLE_PERIOD, IDLE_DEACTIVATION};
use super::output;
use super::record::{loaded_document, refused_document, to_text};
use super::restore::Saved;
use super::service::{restart, start_hint, ServiceWait, StartOutcome};
use super::system::{code, GuestSystem, RegValue, SysError};

/// Where the driver's parameters live (for messages).
pub const PARAMETERS_KEY: &str = r"HKLM\SYSTEM\CurrentControlSet\Services\kepoch\Parameters";

/// Longest sleep between two looks at Ctrl-C.
const SLICE: Duration = Duration::from_millis(100);

/// Why `ab` failed, and its exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbError {
    /// 2: bad arguments; 1: the environment (service, registry, driver, files) or Ctrl-C.
    pub exit: u8,
    /// What went wrong, naming the cause.
    pub message: String,
}

impl AbError {
    fn usage(message: String) -> AbError {
        AbError { exit: 2, message }
    }

    fn environment(message: String) -> AbError {
        AbError { exit: 1, message }
    }
}

impl From<SysError> for AbError {
    fn from(e: SysError) -> AbError {
        AbError::environment(e.to_string())
    }
}

/// What a finished A/B wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
    /// Rounds in which the driver did not load.
    pub refused: u32,
    /// Rounds whose driver reported another strategy than the one asked for.
    pub mismatches: Vec<String>,
}

/// Runs the A/B and restores the registry and the service whatever happens. One progress line per
/// round and strategy goes to `progress`.
pub fn run(
    sys: &mut dyn GuestSystem,
    args: &AbArgs,
    progress: &mut dyn Write,
) -> Result<Summary, AbError> {
    output::prepare(&args.out).map_err(AbError::usage)?;
    let wait = ServiceWait {
        timeout: Duration::from_secs(args.service_timeout.into()),
        poll: Duration::from_millis(250),
    };
    let saved = Saved::capture(sys, &args.touched_values()).map_err(|e| {
        AbError::environment(match e.code {
            code::SERVICE_DOES_NOT_EXIST => format!("{e}: {}", start_hint(e.code)),
            code::ACCESS_DENIED => format!(
                "{e}: no access to the service or to {PARAMETERS_KEY} (run from an elevated prompt)"
            ),
            _ => format!("{e} ({PARAMETERS_KEY})"),
        })
    })?;
    let _ = writeln!(
        progress,
        "ab: {} round(s) of {} with {} op/s for {} s each; the service was {}",
        args.rounds,
        names(&args.strategies.0),
        args.rate,
        args.seconds,
        if saved.was_running {
            "running"
        } else {
            "stopped"
        }
    );
    let result = rounds(sys, args, wait, progress);
    let problems = saved.restore(sys, wait);
    let restored: Vec<String> = saved
        .values
        .iter()
        .map(|(name, value)| match value {
            Some(_) => format!("{name} restored"),
            None => format!("{name} removed (was absent)"),
        })
        .collect();
    let _ = writeln!(
        progress,
        "ab: registry: {}; service left {}{}",
        restored.join(", "),
        if saved.was_running {
            "running"
        } else {
            "stopped"
        },
        if problems.is_empty() {
            String::new()
        } else {
            format!("; NOT RESTORED: {}", problems.join("; "))
        }
    );
    let summary = match result {
        Err(mut e) => {
            if !problems.is_empty() {
                e.message += &format!("; restoring failed too: {}", problems.join("; "));
            }
            return Err(e);
        }
        Ok(summary) => summary,
    };
    if !problems.is_empty() {
        return Err(AbError::environment(format!(
            "the A/B ran, but the state before it was not restored: {}",
            problems.join("; ")
        )));
    }
    if !summary.mismatches.is_empty() {
        return Err(AbError::environment(format!(
            "{} round(s) ran with another strategy than the registry asked for: {}",
            summary.mismatches.len(),
            summary.mismatches.join("; ")
        )));
    }
    Ok(summary)
}

fn names(strategies: &[Strategy]) -> String {
    strategies
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_interrupt(sys: &mut dyn GuestSystem) -> Result<(), AbError> {
    if sys.interrupted() {
        let _ = sys.stop_load();
        return Err(AbError::environment(
            "interrupted (Ctrl-C): the A/B stopped before its end".into(),
        ));
    }
    Ok(())
}

/// Sleeps until `until` (on the system's clock), looking at Ctrl-C every [`SLICE`].
fn sleep_until(sys: &mut dyn GuestSystem, until: Duration) -> Result<(), AbError> {
    loop {
        check_interrupt(sys)?;
        let now = sys.now();
        if now >= until {
            return Ok(());
        }
        sys.sleep((until - now).min(SLICE));
    }
}

fn rounds(
    sys: &mut dyn GuestSystem,
    args: &AbArgs,
    wait: ServiceWait,
    progress: &mut dyn Write,
) -> Result<Summary, AbError> {
    let mut summary = Summary::default();
    for round in 1..=args.rounds {
        let order = args.order(round);
        for (position, strategy) in order.iter().copied().enumerate() {
            check_interrupt(sys)?;
            let (text, line, matched) = one(sys, args, wait, round, position as u32, strategy)?;
            let name = output::file_name(round, strategy.name());
            let path =
                output::write_whole(&args.out, &name, &text).map_err(AbError::environment)?;
            let _ = writeln!(
                progress,
                "ab: round {round}/{} {} ({}/{}): {line}; wrote {}",
                args.rounds,
                strategy.name(),
                position + 1,
                order.len(),
                path.display()
            );
            match matched {
                None => summary.refused += 1,
                Some(false) => summary
                    .mismatches
                    .push(format!("round {round} {}: {line}", strategy.name())),
                Some(true) => {}
            }
            summary.files.push(path);
        }
    }
    Ok(summary)
}

/// One round of one strategy: the document's text, the progress text and whether the driver ran
/// the strategy asked for (`None`: it did not load).
fn one(
    sys: &mut dyn GuestSystem,
    args: &AbArgs,
    wait: ServiceWait,
    round: u32,
    position: u32,
    strategy: Strategy,
) -> Result<(String, String, Option<bool>), AbError> {
    let values = args.values(strategy);
    for (name, value) in &values {
        sys.write_value(name, &RegValue::dword(*value))?;
    }
    let find = |wanted: &str| values.iter().find(|(n, _)| *n == wanted).map(|(_, v)| *v);
    let mut record = AbRecord {
        round,
        position,
        strategy_requested: strategy.name().into(),
        registry: AbRegistry {
            ActivationStrategy: strategy.registry_value(),
            IdleDeactivation: find(IDLE_DEACTIVATION),
            CyclePeriodMicroseconds: find(CYCLE_PERIOD),
        },
        load: AbLoad {
            rate: args.rate,
            seconds: args.seconds,
            threads: args.threads,
        },
        ..AbRecord::default()
    };
    let outcome = restart(sys, wait).map_err(AbError::environment)?;
    if let StartOutcome::Refused {
        start_error,
        status,
    } = outcome
    {
        record.start_error = start_error;
        record.service_exit_code = Some(status.win32_exit_code);
        record.service_specific_exit_code = Some(status.service_specific_exit_code);
        let why = outcome.describe();
        let doc = refused_document(sys.guest(), record, why.clone());
        return Ok((to_text(&doc), format!("NOT LOADED: {why}"), None));
    }
    sys.reset_stats()?;
    let before = sys.active_processors();
    let began = sys.now();
    sys.start_load(args.load())?;
    let load_end = began + Duration::from_secs(args.seconds.into());
    sleep_until(sys, load_end)?;
    let requested = wait_hot_add(sys, args, before, load_end)?;
    sys.stop_load()?;
    sys.sync()?;
    let stats = sys
        .read_stats()
        .map_err(|e| AbError::environment(format!("reading the statistics: {e}")))?;
    let after = sys.active_processors();
    record.hot_add = AbHotAdd {
        requested,
        active_before: before,
        active_after: after,
        claimed: requested > 0 && after >= before.saturating_add(requested),
    };
    let doc = loaded_document(&stats, sys.guest(), record);
    let result = &doc["results"][0];
    let reported = result["strategy"].as_str().unwrap_or("?").to_string();
    let matches = reported == strategy.name();
    let mut line = format!(
        "loaded, driver reports {reported}; enters {}, first enter p50 {} ns, cycles {}",
        stats.enters,
        stats.first_enter_ns.summary().p50,
        stats.cycles
    );
    if !matches {
        line += &format!(" -- MISMATCH: the registry asked for {}", strategy.name());
    }
    if requested > 0 {
        line += &format!(", hot-add {requested} requested, active {before} -> {after}");
    }
    Ok((to_text(&doc), line, Some(matches)))
}

/// Waits (after the load) for the processors the host announced; returns how many it announced.
fn wait_hot_add(
    sys: &mut dyn GuestSystem,
    args: &AbArgs,
    before: u32,
    load_end: Duration,
) -> Result<u32, AbError> {
    let announced = |args: &AbArgs| -> Option<u32> {
        let path = args.hot_add_file.as_ref()?;
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    };
    if args.wait_hot_add == 0 && args.hot_add_file.is_none() {
        return Ok(0);
    }
    let deadline = load_end + Duration::from_secs(args.hot_add_timeout.into());
    let mut requested = args.wait_hot_add;
    loop {
        check_interrupt(sys)?;
        let from_file = announced(args);
        if let Some(n) = from_file {
            requested = n;
        }
        let file_pending = args.hot_add_file.is_some() && from_file.is_none();
        if !file_pending && sys.active_processors() >= before.saturating_add(requested) {
            break;
        }
        if sys.now() >= deadline {
            break;
        }
        sys.sleep(SLICE);
    }
    if let Some(path) = &args.hot_add_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(requested)
}
