//! Running the `kepoch-sim` binary from the lab's tests: every run is bounded (a run that hangs is
//! killed and fails the test), and temporary files live in one directory per test process.

#![allow(dead_code)] // Each test file uses the helpers it needs.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a run that should end at once (bad input) may take before it counts as a hang.
pub const QUICK: Duration = Duration::from_secs(120);
/// How long an A/B run may take before it counts as a hang (generous: the machine may be busy).
pub const LONG: Duration = Duration::from_secs(900);

/// Waits for `child` at most `limit`; kills it and panics (naming `what`) if it is still running.
pub fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    // Drain the pipes on their own threads so that a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kepoch-sim") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?} (a hang); killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Runs `kepoch-sim ARGS` (stdin empty, output captured) and waits at most `limit`.
pub fn sim_within(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_kepoch-sim"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kepoch-sim");
    wait_bounded(child, limit, &format!("kepoch-sim {}", args.join(" ")))
}

/// Runs `kepoch-sim ARGS`, bounded by [`LONG`].
pub fn sim(args: &[&str]) -> Output {
    sim_within(args, LONG)
}

/// Text of captured output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path in this test process's temporary directory.
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kepoch-lab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A path as a command-line argument.
pub fn arg(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// The row of the table whose label starts with `label`.
pub fn row<'a>(table: &'a str, label: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row {label} in\n{table}"))
}

/// Asserts that `out` is a usage error: exit code 2, one line on stderr containing every needle.
pub fn assert_usage_error(out: &Output, needles: &[&str], what: &str) {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: {err}{}",
        text(&out.stdout)
    );
    for needle in needles {
        assert!(err.contains(needle), "{what}: `{needle}` not in: {err}");
    }
    assert!(!err.contains("panicked"), "{what}: {err}");
}

/// The cells of a table row (label first): columns are separated by at least two spaces.
pub fn cells(row: &str) -> Vec<String> {
    row.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}
