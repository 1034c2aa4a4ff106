//! Bad arguments: a clear message, the usage (or where to find it) and exit code 2; help: exit code 0; on any host.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kepochctl"))
        .args(args)
        .output()
        .expect("run kepochctl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_exit_with_2_and_say_why() {
    for (args, needle) in [
        (&[][..], "Usage: kepochctl <COMMAND>"),
        (&["frob"], "unrecognized subcommand 'frob'"),
        (
            &["load", "start", "--rate", "0", "--seconds", "1"],
            "invalid value '0' for '--rate <N>': 0 is not in 1..=10000000",
        ),
        (
            &["load", "start", "--rate", "5"],
            "the following required arguments were not provided:\n  --seconds <S>",
        ),
        (&["stats", "--yaml"], "unexpected argument '--yaml' found"),
        (
            &["ab", "--out", "x", "--rounds", "0"],
            "invalid value '0' for '--rounds <N>': 0 is not in 1..=1000",
        ),
        (
            &["ab", "--out", "x", "--strategies", "lazy,fast"],
            "unknown strategy 'fast' (expected lazy, callback, eager or 0, 1, 2)",
        ),
        (
            &["ab", "--out", "x", "--seconds", "3601"],
            "3601 is not in 1..=3600",
        ),
        (&["ab", "--rounds", "2"], "--out <DIR>"),
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        // clap's usage line, or its pointer to it for a bad value.
        assert!(
            stderr.contains("Usage: kepochctl") || stderr.contains("try '--help'"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn help_exits_with_0_and_documents_wait() {
    for args in [&["help"][..], &["--help"]] {
        let (code, stdout, _) = run(args);
        assert_eq!(code, Some(0));
        assert!(stdout.contains("Exit codes: 0 success"), "{stdout}");
        assert!(stdout.contains("Windows 10"), "{stdout}");
    }
    let (code, stdout, _) = run(&["load", "start", "--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("--wait"), "{stdout}");
}

#[test]
fn off_windows_valid_commands_exit_with_1() {
    if cfg!(windows) {
        return;
    }
    let (code, _, stderr) = run(&["stats", "--json"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("runs on Windows only"), "{stderr}");
}
