//! Command-line parsing (host-testable).

use kepoch_driver::ioctl::{limits, LoadRequest};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `stats [--json]`.
    Stats {
        /// SPEC §6 JSON instead of a table.
        json: bool,
    },
    /// `reset`.
    Reset,
    /// `load start --rate N --seconds S [--threads T]`.
    LoadStart(LoadRequest),
    /// `load stop`.
    LoadStop,
    /// `sync`.
    Sync,
    /// `selftest-garbage` (hidden): malformed IOCTLs, then checks the driver still answers.
    SelftestGarbage,
    /// `help`, `--help`, `-h`.
    Help,
}

/// Usage text.
pub const USAGE: &str = "\
usage: kepochctl <command>

commands:
  stats [--json]                                   counters of kepoch.sys (--json: SPEC section 6 schema)
  reset                                            start counting from zero (a new baseline)
  load start --rate N --seconds S [--threads T]    run the built-in load generator
                                                   (N operations/s in total, 1..=10000000; S in 1..=3600;
                                                   T threads, 0 or omitted = one per active processor, max 64)
  load stop                                        stop the load generator
  sync                                             wait until everything retired so far is freed
  help                                             this text

Requires kepoch.sys to be running and an elevated prompt (the device admits SYSTEM and Administrators).
Exit codes: 0 success, 1 the driver could not be reached or refused the request, 2 bad arguments.";

/// Parses the arguments after the program name.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Command, String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    match args.as_slice() {
        [] => Err("missing command".into()),
        ["help" | "--help" | "-h"] => Ok(Command::Help),
        ["stats"] => Ok(Command::Stats { json: false }),
        ["stats", "--json"] => Ok(Command::Stats { json: true }),
        ["stats", other, ..] => Err(format!("stats: unexpected argument '{other}'")),
        ["reset"] => Ok(Command::Reset),
        ["sync"] => Ok(Command::Sync),
        ["selftest-garbage"] => Ok(Command::SelftestGarbage),
        ["load", "stop"] => Ok(Command::LoadStop),
        ["load", "start", rest @ ..] => parse_load_start(rest).map(Command::LoadStart),
        ["load", ..] => Err("load: expected 'start' or 'stop'".into()),
        [command @ ("reset" | "sync" | "selftest-garbage"), other, ..] => {
            Err(format!("{command}: unexpected argument '{other}'"))
        }
        [other, ..] => Err(format!("unknown command '{other}'")),
    }
}

fn parse_load_start(args: &[&str]) -> Result<LoadRequest, String> {
    let mut rate = None;
    let mut seconds = None;
    let mut threads = None;
    let mut rest = args.iter();
    while let Some(&flag) = rest.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        let target = match name {
            "--rate" => &mut rate,
            "--seconds" => &mut seconds,
            "--threads" => &mut threads,
            _ => return Err(format!("load start: unknown option '{flag}'")),
        };
        let value = match inline {
            Some(value) => value,
            None => rest
                .next()
                .copied()
                .ok_or_else(|| format!("load start: {name} needs a value"))?,
        };
        if target.is_some() {
            return Err(format!("load start: {name} given twice"));
        }
        let number: u32 = value
            .parse()
            .map_err(|_| format!("load start: {name} '{value}' is not a non-negative integer"))?;
        *target = Some(number);
    }
    let request = LoadRequest {
        rate: rate.ok_or("load start: --rate is required")?,
        seconds: seconds.ok_or("load start: --seconds is required")?,
        threads: threads.unwrap_or(0),
    };
    if !(limits::MIN_RATE..=limits::MAX_RATE).contains(&request.rate) {
        return Err(format!(
            "load start: --rate must be in {}..={}",
            limits::MIN_RATE,
            limits::MAX_RATE
        ));
    }
    if !(limits::MIN_SECONDS..=limits::MAX_SECONDS).contains(&request.seconds) {
        return Err(format!(
            "load start: --seconds must be in {}..={}",
            limits::MIN_SECONDS,
            limits::MAX_SECONDS
        ));
    }
    if request.threads > limits::MAX_THREADS {
        return Err(format!(
            "load start: --threads must be in 0..={}",
            limits::MAX_THREADS
        ));
    }
    debug_assert!(request.validate().is_ok());
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(&["stats"]), Ok(Command::Stats { json: false }));
        assert_eq!(
            parse(&["stats", "--json"]),
            Ok(Command::Stats { json: true })
        );
        assert_eq!(parse(&["reset"]), Ok(Command::Reset));
        assert_eq!(parse(&["sync"]), Ok(Command::Sync));
        assert_eq!(parse(&["load", "stop"]), Ok(Command::LoadStop));
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["selftest-garbage"]), Ok(Command::SelftestGarbage));
        assert_eq!(
            parse(&["load", "start", "--rate", "1000", "--seconds", "10"]),
            Ok(Command::LoadStart(LoadRequest {
                rate: 1000,
                seconds: 10,
                threads: 0
            }))
        );
        assert_eq!(
            parse(&["load", "start", "--seconds=5", "--threads", "2", "--rate=7"]),
            Ok(Command::LoadStart(LoadRequest {
                rate: 7,
                seconds: 5,
                threads: 2
            }))
        );
    }

    #[test]
    fn rejects_bad_arguments_with_a_message() {
        for bad in [
            &[][..],
            &["frobnicate"],
            &["stats", "--xml"],
            &["reset", "now"],
            &["load"],
            &["load", "go"],
            &["load", "start"],
            &["load", "start", "--rate", "10"],
            &["load", "start", "--rate", "10", "--seconds"],
            &["load", "start", "--rate", "-1", "--seconds", "1"],
            &["load", "start", "--rate", "ten", "--seconds", "1"],
            &["load", "start", "--rate", "0", "--seconds", "1"],
            &["load", "start", "--rate", "10", "--seconds", "0"],
            &["load", "start", "--rate", "10", "--seconds", "3601"],
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
            &[
                "load",
                "start",
                "--rate",
                "10",
                "--seconds",
                "1",
                "--verbose",
            ],
        ] {
            let error = parse(bad).expect_err(&format!("{bad:?} must be refused"));
            assert!(!error.is_empty());
        }
    }
}
