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

/// A guest round as `kepochctl stats --json` writes it (schema 3, or 2 from an older kepochctl: the
/// same keys): one boot, one strategy.
pub fn guest_round(
    schema: u32,
    strategy: &str,
    round: u32,
    max: u32,
    first_enter: &[u64],
) -> String {
    let hist: Vec<String> = first_enter.iter().map(|v| format!("[{v}, 1]")).collect();
    let mut sorted = first_enter.to_vec();
    sorted.sort_unstable();
    let p50 = sorted[(sorted.len() - 1) / 2];
    let prepared_at_dispatch = if strategy == "lazy" { 4 } else { 0 };
    format!(
        r#"{{"schema_version": {schema}, "scenario": {{"name": "guest", "source": "guest"}},
            "results": [{{"strategy": "{strategy}", "source": "guest", "round": {round}, "loaded": true,
              "load_error": null,
              "guest": {{"os_build": "10.0.20348", "active_processors": 4, "max_processors": {max},
                        "hypervisor": {{"vendor": "KVMKVMKVM", "name": "KVM"}}}},
              "cpus_prepared": 4, "per_cpu_bytes": 2560, "prepare_at_dispatch": {prepared_at_dispatch},
              "prepare_failures": 0, "fallback_uses": 0,
              "first_enter_ns": {{"p50": {p50}, "p99": {}, "max": {}, "count": {}, "hist": [{}]}},
              "enter_exit_ns": {{"p50": 95, "p99": 400, "max": 900, "count": 1, "hist": [[{}, 1]]}},
              "cycles": 100, "cycle_latency_us": {{"p50": 12.0, "p99": 40.5}}, "messages": 400,
              "messages_to_idle_cpus": null, "retired": 10, "freed": 10, "pending_at_end": 0,
              "leaked": null, "use_after_free": null, "stalls_reported": 0,
              "hot_add": {{"start": 0, "complete": 0, "failure": 0, "vetoed": 0}}}}]}}"#,
        sorted[sorted.len() - 1],
        sorted[sorted.len() - 1],
        sorted.len(),
        hist.join(", "),
        90 + round
    )
}
