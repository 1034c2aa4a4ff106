//! Hostile and mistaken input to `ab` and `torture`: machines beyond the host's plan, files that are
//! not files or are too large, long free text, output paths that cannot be written, bound flags of 0,
//! a scenario on which nothing loads, and progress when stderr is not a terminal. Every bad input
//! exits with code 2 and a message naming it; no run may hang (each is bounded and killed).

mod common;

use common::{arg, assert_usage_error, sim_within, temp, text, QUICK};
use serde_json::Value;
use std::fmt::Write;
use std::process::Command;

/// Runs `kepoch-sim ARGS`, bounded by [`QUICK`].
fn run(args: &[&str]) -> std::process::Output {
    sim_within(args, QUICK)
}

/// Asserts a usage error whose stderr is one line.
fn refused(args: &[&str], needles: &[&str]) {
    let out = run(args);
    assert_usage_error(&out, needles, &args.join(" "));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    assert!(
        !text(&out.stdout).contains("rounds per strategy"),
        "{args:?}: simulated before refusing"
    );
}

fn write(name: &str, body: &str) -> String {
    let path = temp(name);
    std::fs::write(&path, body).unwrap();
    arg(&path)
}

#[test]
fn machines_beyond_the_host_plan_are_refused_with_the_limit() {
    for n in ["256", "1024", "4096"] {
        refused(
            &["ab", "--quiet", "--max-reported", n, "--active", n],
            &[&format!("{n} simulated processors"), "at most 64"],
        );
    }
    let huge = write(
        "huge-machine.toml",
        "max_reported = 4096\nactive_at_boot = 4096\n[workload]\nreaders_per_cpu = 64\nretire_per_ms = 10000\n",
    );
    refused(
        &["ab", "--quiet", "--scenario", &huge],
        &["4096 simulated processors", "at most 64"],
    );
    let readers = write(
        "many-readers.toml",
        "max_reported = 64\nactive_at_boot = 64\n[workload]\nreaders_per_cpu = 64\n",
    );
    refused(
        &["ab", "--quiet", "--scenario", &readers],
        &["4160 tasks", "at most 1024 tasks"],
    );
    let retire = write(
        "fast-writers.toml",
        "max_reported = 8\nactive_at_boot = 8\n[workload]\nretire_per_ms = 10000\n",
    );
    refused(
        &["ab", "--quiet", "--scenario", &retire],
        &["80000 retirements per ms", "at most 10000 per ms"],
    );
}

#[test]
fn huge_hot_add_schedules_are_refused_with_the_limit() {
    // A generated list of 5000 entries (about 180 KB: under the file size limit).
    let mut list =
        String::from("max_reported = 16\nactive_at_boot = 2\n[workload]\nduration_ms = 100\n");
    for k in 0..5000 {
        let _ = write!(
            list,
            "[[hot_add]]\nat_ms = {}\ncount = 1\nfail = true\n",
            k % 90
        );
    }
    let file = write("long-hot-add-list.toml", &list);
    refused(
        &["ab", "--quiet", "--scenario", &file],
        &["5000 entries", "at most 256"],
    );
    let asks = write(
        "big-hot-adds.toml",
        "max_reported = 16\nactive_at_boot = 2\n[[hot_add]]\nat_ms = 5\ncount = 4000000000\nfail = true\n",
    );
    refused(
        &["ab", "--quiet", "--scenario", &asks],
        &["asks for 4000000000 processors", "at most 1024"],
    );
    let mut flags = vec!["ab", "--quiet"];
    for _ in 0..300 {
        flags.extend(["--hot-add", "1@5:fail"]);
    }
    refused(&flags, &["300 entries", "at most 256"]);
}

#[test]
fn scenario_files_that_are_not_small_regular_files_are_refused() {
    let fifo = temp("scenario-fifo.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    refused(
        &["ab", "--quiet", "--scenario", &arg(&fifo)],
        &["scenario file", "is a FIFO"],
    );
    refused(
        &["ab", "--quiet", "--scenario", "/dev/zero"],
        &["scenario file /dev/zero is a character device"],
    );
    let dir = temp("a-directory.toml");
    std::fs::create_dir_all(&dir).unwrap();
    refused(
        &["ab", "--quiet", "--scenario", &arg(&dir)],
        &["is a directory"],
    );
    // 100 MB, sparse: refused from its size, without reading it.
    let big = temp("big.toml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    refused(
        &["ab", "--quiet", "--scenario", &arg(&big)],
        &["104857600 bytes", "over the limit of 1048576 bytes"],
    );
    let binary = temp("binary.toml");
    std::fs::write(&binary, [b'#', 0xff, 0xfe, b'\n']).unwrap();
    refused(
        &["ab", "--quiet", "--scenario", &arg(&binary)],
        &["is not UTF-8 text"],
    );
}

#[test]
fn long_free_text_is_cut_in_every_output() {
    let name = "n".repeat(10_000);
    let description = "d".repeat(500_000);
    let file = write(
        "long-text.toml",
        &format!(
            "name = \"{name}\"\ndescription = \"{description}\"\nmax_reported = 2\nactive_at_boot = 2\n[workload]\nduration_ms = 60\n"
        ),
    );
    let (json, svg) = (temp("long-text.json"), temp("long-text.svg"));
    let out = sim_within(
        &[
            "ab",
            "--quiet",
            "--scenario",
            &file,
            "--rounds",
            "1",
            "--json",
            &arg(&json),
            "--svg",
            &arg(&svg),
        ],
        common::LONG,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run_of = |c: char| c.to_string().repeat(300);
    assert!(stdout.len() < 50_000, "{} bytes of output", stdout.len());
    assert!(!stdout.contains(&run_of('n')) && !stdout.contains(&run_of('d')));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let chars = |v: &Value| v.as_str().unwrap().chars().count();
    assert!(
        chars(&doc["scenario"]["name"]) <= 64,
        "{}",
        doc["scenario"]["name"]
    );
    assert!(chars(&doc["scenario"]["description"]) <= 240);
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(!chart.contains(&run_of('n')), "the chart repeats the name");
}

#[test]
fn output_paths_are_checked_before_the_run() {
    refused(
        &["ab", "--quiet", "--json", "/dev/full"],
        &["--json /dev/full", "a character device, not a regular file"],
    );
    refused(
        &["ab", "--quiet", "--svg", "/no/such/directory/out.svg"],
        &["--svg /no/such/directory/out.svg", "cannot write"],
    );
    let not_a_dir = write("plain-file", "x");
    let inside = format!("{not_a_dir}/out.json");
    refused(
        &["ab", "--quiet", "--json", &inside],
        &[&format!("--json {inside}"), "cannot write"],
    );
    // One path for two outputs, directly or through a link; a file created for the check is removed.
    let same = temp("same-output");
    let _ = std::fs::remove_file(&same);
    refused(
        &["ab", "--quiet", "--json", &arg(&same), "--svg", &arg(&same)],
        &["are the same file"],
    );
    assert!(!same.exists(), "the refused output was left behind");
    std::fs::write(&same, "old").unwrap();
    let link = temp("same-output-link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&same, &link).unwrap();
    refused(
        &["ab", "--quiet", "--json", &arg(&same), "--svg", &arg(&link)],
        &["are the same file"],
    );
    assert_eq!(std::fs::read_to_string(&same).unwrap(), "old");
    let guest = write(
        "guest-for-outputs.json",
        &common::guest_round(3, "lazy", 0, 64, &[500]),
    );
    refused(
        &["report", &guest, "--json", "/dev/full"],
        &["--json /dev/full", "not a regular file"],
    );
}

#[test]
fn bound_flags_of_zero_are_bad_arguments() {
    for flag in [
        "--pending-per-cpu",
        "--max-rss-mb",
        "--max-live-mb",
        "--progress-cycles",
        "--sim-ms",
        "--reloads",
        "--lifetime-ms",
        "--deadline",
        "--seconds",
    ] {
        let out = run(&["torture", "--quiet", flag, "0"]);
        assert_usage_error(&out, &[flag], flag);
        assert!(!text(&out.stdout).contains("VIOLATION"), "{flag}");
    }
    for flag in [
        "--rounds",
        "--duration-ms",
        "--active",
        "--max-reported",
        "--group-size",
    ] {
        let out = run(&["ab", "--quiet", flag, "0"]);
        let what = flag.trim_start_matches("--").replace('-', "_");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(flag) || err.contains(&what), "{flag}: {err}");
    }
}

#[test]
fn ab_fails_when_no_strategy_loads() {
    // Every allocation fails: no strategy can allocate its domain.
    let file = write(
        "nothing-loads.toml",
        "max_reported = 8\nactive_at_boot = 2\n[workload]\nduration_ms = 50\nalloc_fail_every = 1\n",
    );
    let out = run(&["ab", "--quiet", "--scenario", &file, "--rounds", "1"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("No strategy loaded."), "{stdout}");
    assert!(stdout.contains("FAILED: no strategy loaded"), "{stdout}");
}

#[test]
fn progress_goes_to_stderr_as_lines_when_it_is_not_a_terminal() {
    let args = ["ab", "--rounds", "1", "--duration-ms", "60"];
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "ab: 1 rounds of 3 strategies on hyperv-maxproc; a progress line every 5 s"
        ),
        "{err}"
    );
    let quiet = run(&[&args[..], &["--quiet"]].concat());
    assert!(quiet.status.success());
    assert_eq!(text(&quiet.stderr), "");
    // A run of at least 7 s (new deterministic seeds until the time is up) prints a line after 5 s,
    // while its only seed-by-seed report would come at the end.
    let out = run(&["torture", "--strategy", "lazy", "--seconds", "7"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}{}", text(&out.stdout));
    assert!(
        err.starts_with("torture: strategy lazy, mode deterministic, new seeds for 7 s"),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.contains("s elapsed of about 7 s")),
        "no progress line: {err}"
    );
}
