//! `report` against files that must not be taken as measurements: the same document twice,
//! impossible values, unknown strategies, schema 0, and files that are not small regular files; and
//! rounds that did not run as planned, which the table and the verdict must show.

mod common;

use common::{arg, assert_usage_error, cells, guest_round, row, sim_within, temp, text, QUICK};
use serde_json::{json, Value};

fn report(args: &[&str]) -> std::process::Output {
    let all: Vec<&str> = std::iter::once("report")
        .chain(args.iter().copied())
        .collect();
    sim_within(&all, QUICK)
}

/// Writes four guest rounds (2 per strategy) and returns their paths.
fn guest_files(prefix: &str) -> Vec<String> {
    let mut files = Vec::new();
    for round in 0..2u32 {
        for (strategy, base) in [("lazy", 6000u64), ("callback", 500)] {
            let samples: Vec<u64> = (0..4u64)
                .map(|k| base + k * 13 + u64::from(round))
                .collect();
            let path = temp(&format!("{prefix}-{round}-{strategy}.json"));
            std::fs::write(&path, guest_round(3, strategy, round, 64, &samples)).unwrap();
            files.push(arg(&path));
        }
    }
    files
}

#[test]
fn the_same_document_twice_is_refused_unless_allowed() {
    let files = guest_files("dup");
    let mut twice: Vec<&str> = files.iter().map(String::as_str).collect();
    twice.push(&files[0]);
    let out = report(&twice);
    assert_usage_error(
        &out,
        &[
            &format!("{} has the same content as {}", files[0], files[0]),
            "--allow-duplicates",
        ],
        "same path twice",
    );
    // A copy written differently (other whitespace, keys in another order) is the same document.
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&files[1]).unwrap()).unwrap();
    let copy = temp("dup-copy.json");
    std::fs::write(&copy, serde_json::to_string(&doc).unwrap()).unwrap();
    let copy = arg(&copy);
    let mut with_copy: Vec<&str> = files.iter().map(String::as_str).collect();
    with_copy.push(&copy);
    let out = report(&with_copy);
    assert_usage_error(
        &out,
        &[&format!("{copy} has the same content as {}", files[1])],
        "reformatted copy",
    );
    with_copy.push("--allow-duplicates");
    let out = report(&with_copy);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("5 round(s) from 5 file(s)"), "{stdout}");
    let out = report(&files.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text(&out.stdout).contains("4 round(s) from 4 file(s)"));
}

#[test]
fn impossible_values_are_refused_naming_file_and_field() {
    let base: Value = serde_json::from_str(&guest_round(3, "lazy", 0, 64, &[500, 600])).unwrap();
    // (file name, JSON pointer of the value, the impossible value, what the message says)
    let cases = [
        (
            "negative-latency",
            "/results/0/first_enter_ns/p50",
            json!(-5),
            "first_enter_ns.p50 is -5",
        ),
        (
            "negative-count",
            "/results/0/cpus_prepared",
            json!(-3),
            "cpus_prepared is -3",
        ),
        (
            "wrapped-counter",
            "/results/0/retired",
            json!(u64::MAX - 2),
            "retired is 18446744073709551613: at or above 2^63",
        ),
        (
            "negative-bucket",
            "/results/0/first_enter_ns/hist/1",
            json!([-7, 1]),
            "first_enter_ns.hist[1][0] is -7",
        ),
        (
            "unknown-strategy",
            "/results/0/strategy",
            json!("unknown-9"),
            "unknown strategy `unknown-9`",
        ),
        (
            "schema-zero",
            "/schema_version",
            json!(0),
            "schema_version 0 is not a schema version",
        ),
    ];
    for (name, pointer, value, needle) in cases {
        let mut doc = base.clone();
        *doc.pointer_mut(pointer).expect(pointer) = value;
        let path = temp(&format!("{name}.json"));
        std::fs::write(&path, doc.to_string()).unwrap();
        let path = arg(&path);
        let out = report(&[&path]);
        assert_usage_error(&out, &[&path, needle], name);
        assert_eq!(text(&out.stderr).trim().lines().count(), 1, "{name}");
    }
}

#[test]
fn report_inputs_that_are_not_small_regular_files_are_refused() {
    let fifo = temp("report-fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    assert_usage_error(&report(&[&arg(&fifo)]), &["is a FIFO"], "fifo");
    assert_usage_error(
        &report(&["/dev/zero"]),
        &["report input /dev/zero is a character device"],
        "/dev/zero",
    );
    let big = temp("big-report.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    assert_usage_error(
        &report(&[&arg(&big)]),
        &["314572800 bytes", "over the limit of 268435456 bytes"],
        "sparse 300 MB",
    );
}

/// A simulated round as `ab --json` writes it, with what says whether it ran as planned.
fn sim_round(strategy: &str, round: u32, shortened: bool, overran: bool) -> Value {
    let samples: Vec<u64> = (0..30).map(|k| 400 + k * 7 + u64::from(round)).collect();
    json!({
        "strategy": strategy, "source": "sim", "round": round, "seed": round, "loaded": true,
        "load_error": null, "cpus_prepared": 4, "per_cpu_bytes": 2048, "messages_to_idle_cpus": 0,
        "first_enter_ns": {"p50": 400, "p99": 603, "max": 603, "count": 30, "samples": samples},
        "planned_ms": 1000, "ran_ms": if shortened { 250 } else { 1000 },
        "shortened": if shortened { json!("load 2 of 4 failed 3 times (out of memory): ran 1 of 4 loads") } else { Value::Null },
        "failed_loads": if shortened { 3 } else { 0 },
        "wall_ms": if overran { 9000 } else { 1100 }, "time_plan_ms": 2000, "overran": overran,
    })
}

#[test]
fn rounds_that_did_not_run_as_planned_are_in_the_table_and_the_verdict() {
    let mut rounds = Vec::new();
    for r in 0..3 {
        rounds.push(sim_round("lazy", r, r == 1, false));
        rounds.push(sim_round("callback", r, false, r == 2));
    }
    let doc = json!({
        "schema_version": 3,
        "scenario": {"name": "planned", "source": "sim"},
        "results": [],
        "rounds": rounds,
    });
    let path = temp("not-as-planned.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = report(&[&arg(&path)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let plan = cells(row(&stdout, "rounds shortened / over time plan"));
    assert_eq!(plan[1..], ["1 / 0", "0 / 1"], "{stdout}");
    let failed = cells(row(&stdout, "failed load attempts (all rounds)"));
    assert_eq!(failed[1..], ["3", "0"], "{stdout}");
    let words = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("SHORTENED: rounds that ran fewer loads than planned")
            && words.contains("lazy 1 of 3 rounds (e.g. round 1: load 2 of 4 failed 3 times"),
        "{stdout}"
    );
    assert!(
        words.contains("OVER TIME PLAN")
            && words.contains("round 2: 9000 ms of wall time for a plan of 2000 ms"),
        "{stdout}"
    );
    // 90 samples each: fewer than the 100 the built-in scenarios promise, and lazy's says why.
    assert!(
        words.contains("Fewer than 100 first-enter samples")
            && words.contains("lazy 90 (rounds were shortened) and callback 90"),
        "{stdout}"
    );
}
