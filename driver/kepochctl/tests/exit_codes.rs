//! Bad arguments: a clear message and exit code 2, on any host.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kepochctl"))
        .args(args)
        .output()
        .expect("run kepochctl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_exit_with_2_and_say_why() {
    for (args, needle) in [
        (&[][..], "missing command"),
        (&["frob"], "unknown command 'frob'"),
        (
            &["load", "start", "--rate", "0", "--seconds", "1"],
            "--rate must be in",
        ),
        (&["load", "start", "--rate", "5"], "--seconds is required"),
        (&["stats", "--yaml"], "unexpected argument"),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: kepochctl"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_exits_with_0() {
    let (code, _) = run(&["help"]);
    assert_eq!(code, Some(0));
}
