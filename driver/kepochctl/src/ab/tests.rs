//! The A/B against the fake Windows: the plan, the records, and every bad input of issue 27 (message,
//! exit code, registry and service restored, nothing half-written).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

use super::fake::Fake;
use super::output::tests::{listing, scratch};
use super::system::{RegValue, ServiceStatus};
use super::{run, AbArgs, AbError};
use crate::cli::{Cli, Command};

/// `kepochctl ab ARGS --out DIR`, parsed.
fn parse(args: &[&str], out: &Path) -> Result<AbArgs, clap::Error> {
    let out = out.display().to_string();
    let argv = ["kepochctl", "ab", "--out", out.as_str()]
        .into_iter()
        .chain(args.iter().copied());
    match Cli::try_parse_from(argv)?.command {
        Command::Ab(args) => Ok(args),
        other => panic!("parsed as {other:?}"),
    }
}

fn ab(
    fake: &mut Fake,
    args: &[&str],
    out: &Path,
) -> (Result<super::run::Summary, AbError>, String) {
    let args = parse(args, out).expect("valid arguments");
    let mut progress = Vec::new();
    let result = run(fake, &args, &mut progress);
    (result, String::from_utf8_lossy(&progress).into_owned())
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A machine as found: ActivationStrategy is a REG_SZ (restored byte for byte), CyclePeriodMicroseconds
/// is 2000, IdleDeactivation is absent.
fn found() -> Fake {
    let mut fake = Fake::default();
    fake.values.insert(
        "ActivationStrategy".into(),
        RegValue {
            kind: 1,
            data: b"k\0e\0e\0p\0\0\0".to_vec(),
        },
    );
    fake.values
        .insert("CyclePeriodMicroseconds".into(), RegValue::dword(2000));
    fake
}

fn assert_restored(fake: &Fake, was: &Fake) {
    assert_eq!(fake.values, was.values, "registry values");
    assert_eq!(fake.status.state, was.status.state, "service state");
    assert_eq!(
        fake.loaded_with, was.loaded_with,
        "the driver's registry value"
    );
    assert_eq!(fake.key_exists, was.key_exists, "Parameters key");
}

fn out_dir(name: &str) -> PathBuf {
    scratch(name).join("out")
}

#[test]
fn two_rounds_of_three_strategies_rotate_and_record_what_the_driver_ran() {
    let out = out_dir("happy");
    let mut fake = found();
    fake.refuse = vec![2];
    let was = found();
    let (result, progress) = ab(
        &mut fake,
        &[
            "--rounds",
            "2",
            "--seconds",
            "2",
            "--rate",
            "500",
            "--idle-deactivation",
            "1",
            "--cycle-period-us",
            "700",
        ],
        &out,
    );
    let summary = result.expect("the A/B runs");
    assert_eq!(summary.files.len(), 6);
    assert_eq!(summary.refused, 2);
    assert!(summary.mismatches.is_empty());
    assert_restored(&fake, &was);
    // Round 1: lazy, callback, eager; round 2: callback, eager, lazy.
    let starts: Vec<&String> = fake
        .log
        .iter()
        .filter(|l| l.starts_with("set ActivationStrategy"))
        .collect();
    let values: Vec<&str> = starts.iter().filter_map(|l| l.rsplit('=').next()).collect();
    assert_eq!(
        values[..6],
        ["Some(0)", "Some(1)", "Some(2)", "Some(1)", "Some(2)", "Some(0)"]
    );
    assert_eq!(
        listing(&out),
        vec![
            "round-01-callback.json",
            "round-01-eager.json",
            "round-01-lazy.json",
            "round-02-callback.json",
            "round-02-eager.json",
            "round-02-lazy.json"
        ]
    );
    let lazy = read(&out.join("round-02-lazy.json"));
    let result = &lazy["results"][0];
    assert_eq!(result["strategy"], "lazy");
    assert_eq!(result["source"], "guest");
    assert_eq!(result["round"], 2);
    assert_eq!(result["ab"]["position"], 2);
    assert_eq!(result["ab"]["strategy_matches"], true);
    assert_eq!(result["ab"]["registry"]["IdleDeactivation"], 1);
    assert_eq!(result["ab"]["registry"]["CyclePeriodMicroseconds"], 700);
    assert_eq!(result["ab"]["load"]["rate"], 500);
    let eager = read(&out.join("round-01-eager.json"));
    let result = &eager["results"][0];
    assert_eq!(result["loaded"], false);
    assert_eq!(result["ab"]["start_error"], 87);
    assert!(result["load_error"]
        .as_str()
        .unwrap()
        .contains("87 (ERROR_INVALID_PARAMETER)"));
    // One progress line per round and strategy, plus the first and the last.
    assert_eq!(progress.lines().count(), 8, "{progress}");
    assert!(
        progress.contains("round 1/2 eager (3/3): NOT LOADED"),
        "{progress}"
    );
    assert!(
        progress.contains("ActivationStrategy restored, IdleDeactivation removed (was absent)"),
        "{progress}"
    );
}

#[test]
fn a_running_service_runs_again_with_the_values_it_had() {
    let out = out_dir("running");
    let mut fake = Fake::default();
    fake.values
        .insert("ActivationStrategy".into(), RegValue::dword(0));
    fake.status.state = ServiceStatus::RUNNING;
    fake.loaded_with = Some(0);
    let was = Fake {
        values: fake.values.clone(),
        status: fake.status,
        loaded_with: Some(0),
        ..Fake::default()
    };
    let (result, _) = ab(
        &mut fake,
        &[
            "--rounds",
            "1",
            "--strategies",
            "eager,callback",
            "--seconds",
            "1",
        ],
        &out,
    );
    result.unwrap();
    assert_restored(&fake, &was);
    assert_eq!(fake.log.last().map(String::as_str), Some("start"));
}

#[test]
fn a_missing_parameters_key_is_created_and_removed_again() {
    let out = out_dir("nokey");
    let mut fake = Fake {
        key_exists: false,
        ..Fake::default()
    };
    let was = Fake {
        key_exists: false,
        ..Fake::default()
    };
    let (result, _) = ab(
        &mut fake,
        &["--rounds", "1", "--strategies", "lazy", "--seconds", "1"],
        &out,
    );
    result.unwrap();
    assert_restored(&fake, &was);
}

#[test]
fn a_driver_reporting_another_strategy_fails_the_ab_and_is_flagged() {
    let out = out_dir("mismatch");
    let mut fake = found();
    fake.reports = Some(1);
    let (result, progress) = ab(&mut fake, &["--rounds", "1", "--seconds", "1"], &out);
    let e = result.unwrap_err();
    assert_eq!(e.exit, 1);
    assert!(
        e.message.contains("2 round(s) ran with another strategy"),
        "{}",
        e.message
    );
    assert!(
        progress.contains("MISMATCH: the registry asked for lazy"),
        "{progress}"
    );
    assert_restored(&fake, &found());
    let lazy = read(&out.join("round-01-lazy.json"));
    assert_eq!(lazy["results"][0]["strategy"], "callback");
    assert_eq!(lazy["results"][0]["ab"]["strategy_requested"], "lazy");
    assert_eq!(lazy["results"][0]["ab"]["strategy_matches"], false);
}

#[test]
fn bad_arguments_exit_with_2_before_anything_is_touched() {
    let out = out_dir("badargs");
    for (args, needle) in [
        (
            &["--strategies", "lazy,fast"][..],
            "unknown strategy 'fast'",
        ),
        (&["--strategies", "lazy,lazy"], "listed twice"),
        (&["--rounds", "0"], "0 is not in 1..=1000"),
        (&["--rounds", "-1"], "unexpected argument '-1'"),
        (&["--rate", "0"], "0 is not in 1..=10000000"),
        (&["--rate", "10000001"], "10000001 is not in 1..=10000000"),
        (&["--seconds", "0"], "0 is not in 1..=3600"),
        (&["--seconds", "3601"], "3601 is not in 1..=3600"),
        (&["--idle-deactivation", "2"], "2 is not in 0..=1"),
        (&["--cycle-period-us", "0"], "--cycle-period-us"),
    ] {
        let e = parse(args, &out).expect_err(&format!("{args:?}"));
        assert_eq!(e.exit_code(), 2, "{args:?}");
        let text = e.render().to_string();
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    assert!(!out.exists(), "nothing may be created for bad arguments");
}

#[test]
fn an_output_directory_that_cannot_be_written_exits_with_2_and_touches_nothing() {
    let dir = scratch("unwritable");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    for out in [file.clone(), file.join("below")] {
        let mut fake = found();
        let (result, _) = ab(&mut fake, &["--rounds", "1"], &out);
        let e = result.unwrap_err();
        assert_eq!(e.exit, 2);
        assert!(
            e.message.starts_with(&format!("--out {}", out.display())),
            "{}",
            e.message
        );
        assert!(!fake.touched(), "{:?}", fake.log);
    }
    assert_eq!(listing(&dir), vec!["a-file"]);
}

#[test]
fn a_service_that_is_not_installed_exits_with_1_and_writes_nothing() {
    let out = out_dir("notinstalled");
    let mut fake = found();
    fake.installed = false;
    let (result, _) = ab(&mut fake, &["--rounds", "1"], &out);
    let e = result.unwrap_err();
    assert_eq!(e.exit, 1);
    assert!(
        e.message.contains("1060 (ERROR_SERVICE_DOES_NOT_EXIST)"),
        "{}",
        e.message
    );
    assert!(e.message.contains("not installed"), "{}", e.message);
    assert!(!fake.touched());
    assert!(listing(&out).is_empty());
}

#[test]
fn a_registry_key_without_access_exits_with_1_and_writes_nothing() {
    let out = out_dir("denied");
    let mut fake = found();
    fake.key_denied = true;
    let (result, _) = ab(&mut fake, &["--rounds", "1"], &out);
    let e = result.unwrap_err();
    assert_eq!(e.exit, 1);
    assert!(
        e.message.contains("5 (ERROR_ACCESS_DENIED)"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains(r"Services\kepoch\Parameters"),
        "{}",
        e.message
    );
    assert!(!fake.touched());
    assert!(listing(&out).is_empty());
}

#[test]
fn a_driver_the_machine_cannot_start_exits_with_1_and_restores_the_registry() {
    let out = out_dir("nostart");
    let mut fake = found();
    fake.start_error = Some(577);
    let (result, progress) = ab(&mut fake, &["--rounds", "2"], &out);
    let e = result.unwrap_err();
    assert_eq!(e.exit, 1);
    assert!(
        e.message.contains("577 (ERROR_INVALID_IMAGE_HASH)"),
        "{}",
        e.message
    );
    assert!(e.message.contains("signature"), "{}", e.message);
    assert_restored(&fake, &found());
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    assert!(
        progress.contains("ActivationStrategy restored"),
        "{progress}"
    );
}

#[test]
fn a_start_that_never_completes_is_bounded() {
    let out = out_dir("hang");
    let mut fake = found();
    fake.start_hangs = true;
    let (result, _) = ab(
        &mut fake,
        &["--rounds", "1", "--service-timeout", "5"],
        &out,
    );
    let e = result.unwrap_err();
    assert_eq!(e.exit, 1);
    assert!(
        e.message
            .contains("did not reach RUNNING within 5 s (state START_PENDING)"),
        "{}",
        e.message
    );
    assert_eq!(fake.values, found().values);
    assert!(listing(&out).is_empty());
}

#[test]
fn ctrl_c_stops_the_ab_restores_everything_and_leaves_only_whole_files() {
    let out = out_dir("ctrlc");
    let mut fake = found();
    // During the second strategy's load (each load runs 3 s on the virtual clock).
    fake.interrupt_at = Some(Duration::from_millis(4500));
    let (result, _) = ab(&mut fake, &["--rounds", "3", "--seconds", "3"], &out);
    let e = result.unwrap_err();
    assert_eq!(e.exit, 1);
    assert!(e.message.contains("interrupted (Ctrl-C)"), "{}", e.message);
    assert_restored(&fake, &found());
    assert_eq!(listing(&out), vec!["round-01-lazy.json"]);
}

#[test]
fn a_failure_in_the_middle_restores_and_keeps_the_finished_rounds() {
    let out = out_dir("midway");
    let mut fake = found();
    // The first round's three loads are read; the second round's first is not.
    fake.read_stats_fails_after = Some(3);
    let (result, _) = ab(&mut fake, &["--rounds", "2", "--seconds", "1"], &out);
    let e = result.unwrap_err();
    assert_eq!(e.exit, 1);
    assert!(
        e.message.contains("reading the statistics"),
        "{}",
        e.message
    );
    assert_restored(&fake, &found());
    let kept = listing(&out);
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.iter().all(|f| f.starts_with("round-01-")), "{kept:?}");
}

#[test]
fn announced_hot_adds_are_waited_for_and_claimed_only_when_seen() {
    let out = out_dir("hotadd");
    let mut fake = found();
    fake.hot_add_at = Some((Duration::from_secs(3), 2));
    let (result, progress) = ab(
        &mut fake,
        &[
            "--rounds",
            "1",
            "--strategies",
            "callback",
            "--seconds",
            "1",
            "--wait-hot-add",
            "2",
            "--hot-add-timeout",
            "10",
        ],
        &out,
    );
    result.unwrap();
    assert!(
        progress.contains("hot-add 2 requested, active 2 -> 4"),
        "{progress}"
    );
    let doc = read(&out.join("round-01-callback.json"));
    assert_eq!(doc["results"][0]["ab"]["hot_add"]["claimed"], true);

    // Announced by a file the host writes; the processors never come: not claimed, bounded wait.
    let file = out.parent().unwrap().join("hot-add.txt");
    std::fs::write(&file, "3\n").unwrap();
    let mut fake = found();
    let file_arg = file.display().to_string();
    let (result, _) = ab(
        &mut fake,
        &[
            "--rounds",
            "1",
            "--strategies",
            "lazy",
            "--seconds",
            "1",
            "--hot-add-file",
            &file_arg,
            "--hot-add-timeout",
            "5",
        ],
        &out,
    );
    result.unwrap();
    let doc = read(&out.join("round-01-lazy.json"));
    assert_eq!(doc["results"][0]["ab"]["hot_add"]["requested"], 3);
    assert_eq!(doc["results"][0]["ab"]["hot_add"]["claimed"], false);
    assert!(
        !file.exists(),
        "the hot-add file is consumed after the round"
    );
}
