//! The A/B lab through its command line: exit codes, the SPEC §6 JSON, the SVG and `report`.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

const FIGURES: &[&str] = &[
    "strategy",
    "loaded",
    "load_error",
    "cpus_prepared",
    "per_cpu_bytes",
    "prepare_at_dispatch",
    "prepare_failures",
    "fallback_uses",
    "first_enter_ns",
    "enter_exit_ns",
    "cycles",
    "cycle_latency_us",
    "messages",
    "messages_to_idle_cpus",
    "retired",
    "freed",
    "pending_at_end",
    "leaked",
    "use_after_free",
    "stalls_reported",
    "hot_add",
];

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kepoch-sim"))
        .args(args)
        .output()
        .expect("run kepoch-sim")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kepoch-lab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A minimal XML well-formedness check: every element closes in order, the document has one root.
fn well_formed_xml(doc: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = doc;
    while let Some(open) = rest.find('<') {
        let tail = &rest[open..];
        if let Some(body) = tail.strip_prefix("<!--") {
            let end = body.find("-->").ok_or("unterminated comment")?;
            rest = &body[end + 3..];
            continue;
        }
        let close = tail.find('>').ok_or("unterminated tag")?;
        let tag = &tail[1..close];
        rest = &tail[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().ok_or(format!("stray </{name}>"))?;
            if top != name.trim() {
                return Err(format!("</{name}> closes <{top}>"));
            }
        } else {
            let name = tag
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or("")
                .to_string();
            if name.is_empty() {
                return Err("empty tag".into());
            }
            if stack.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed <{}>", stack.join("> <")));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(())
}

#[test]
fn unknown_scenario_exits_2_and_lists_scenarios() {
    let out = sim(&["ab", "--scenario", "no-such-thing"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    for name in [
        "hyperv-maxproc",
        "qemu-hotadd",
        "idle-fleet",
        "alloc-failure",
    ] {
        assert!(err.contains(name), "{err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let bad = temp("bad.toml");
    std::fs::write(&bad, "max_reported = 8\nactive_at_boot = 2\nspeed = 3\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--scenario".into(), bad.display().to_string()],
            "line 3",
        ),
        (vec!["--active".into(), "80".into()], "above max_reported"),
        (
            vec!["--scenario".into(), "/no/such/file.toml".into()],
            "cannot read",
        ),
        (vec!["--hot-add".into(), "2@99999".into()], "before the end"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["ab".to_string(), "--quiet".into()];
        all.extend(args.clone());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = sim(&all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let err = text(&sim(&["ab", "--scenario", &bad.display().to_string()]).stderr);
    assert!(err.contains("speed"), "{err}");
}

#[test]
fn scenarios_lists_every_builtin() {
    let out = sim(&["scenarios"]);
    assert!(out.status.success());
    let listing = text(&out.stdout);
    for name in [
        "hyperv-maxproc",
        "qemu-hotadd",
        "vmware-hotadd",
        "firmware-underreport",
        "multi-group",
        "idle-fleet",
        "stalled-reader",
        "alloc-failure",
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(name) && l.len() > name.len() + 10),
            "{listing}"
        );
    }
}

#[test]
fn qemu_hotadd_ab_json_svg_and_report() {
    let json = temp("qemu.json");
    let svg = temp("qemu.svg");
    let out = sim(&[
        "ab",
        "--scenario",
        "qemu-hotadd",
        "--duration-ms",
        "1200",
        "--quiet",
        "--json",
        &json.display().to_string(),
        "--svg",
        &svg.display().to_string(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("first enter p50 (ns)"), "{stdout}");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["scenario"]["name"], "qemu-hotadd");
    let results = doc["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eager", "lazy", "callback"]);
    for r in results {
        for key in FIGURES {
            assert!(r.get(*key).is_some(), "{} lacks {key}", r["strategy"]);
        }
        assert_eq!(r["source"], "sim");
        for (k, sub) in [
            ("first_enter_ns", &["p50", "p99", "max"][..]),
            ("enter_exit_ns", &["p50", "p99", "max"][..]),
            ("cycle_latency_us", &["p50", "p99"][..]),
            ("hot_add", &["start", "complete", "failure", "vetoed"][..]),
        ] {
            if r["loaded"] == true {
                for s in sub {
                    assert!(r[k].get(*s).is_some(), "{} lacks {k}.{s}", r["strategy"]);
                }
            }
        }
        if r["loaded"] == true {
            assert_eq!(r["use_after_free"], 0, "{r}");
            assert_eq!(r["leaked"], 0, "{r}");
            assert!(r["load_error"].is_null());
            assert!(r["cycles"].as_u64().unwrap() > 0);
            assert!(r["retired"].as_u64().unwrap() > 0);
        } else {
            assert!(r["cpus_prepared"].is_null() && r["first_enter_ns"].is_null());
        }
    }
    let eager = &results[0];
    assert_eq!(eager["loaded"], false);
    assert!(eager["load_error"]
        .as_str()
        .unwrap()
        .contains("STATUS_INVALID_PARAMETER"));
    for r in &results[1..] {
        assert_eq!(r["loaded"], true, "{r}");
        assert_eq!(r["messages_to_idle_cpus"], 0, "{r}");
    }
    let callback = &results[2];
    if callback["prepare_failures"] == 0 {
        assert_eq!(callback["prepare_at_dispatch"], 0, "{callback}");
    }
    assert!(results[1]["prepare_at_dispatch"].as_u64().unwrap() > 0);

    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<svg"));
    well_formed_xml(&svg_text).unwrap();

    // `report` merges this file with a guest's stats (one loaded guest, one that failed to load).
    let guest = temp("guest.json");
    std::fs::write(
        &guest,
        r#"{"scenario": {"name": "guest", "source": "guest"},
            "results": [{"strategy": "callback", "source": "guest", "loaded": true, "load_error": null,
              "guest": {"os_build": "10.0.20348", "active_processors": 4, "max_processors": 64,
                        "hypervisor": {"vendor": "Microsoft Hv", "name": "Hyper-V"}},
              "cpus_prepared": 4, "per_cpu_bytes": 2560, "prepare_at_dispatch": 0, "prepare_failures": 0,
              "fallback_uses": 0, "first_enter_ns": {"p50": null, "p99": null, "max": null, "count": 0},
              "enter_exit_ns": {"p50": 95, "p99": 400, "max": 900, "count": 10}, "cycles": 100,
              "cycle_latency_us": {"p50": 12.0, "p99": 40.5}, "messages": 400, "messages_to_idle_cpus": null,
              "retired": 10, "freed": 10, "pending_at_end": 0, "leaked": null, "use_after_free": null,
              "stalls_reported": 0, "hot_add": {"start": 4, "complete": 4, "failure": 0, "vetoed": 0}}]}"#,
    )
    .unwrap();
    let failed = temp("guest-eager.json");
    std::fs::write(
        &failed,
        r#"{"scenario": {"name": "guest", "source": "guest"},
            "results": [{"strategy": "eager", "loaded": false, "load_error": "STATUS_INVALID_PARAMETER"}]}"#,
    )
    .unwrap();
    let report_svg = temp("report.svg");
    let out = sim(&[
        "report",
        &json.display().to_string(),
        &guest.display().to_string(),
        &failed.display().to_string(),
        "--svg",
        &report_svg.display().to_string(),
    ]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(table.contains("5 column(s) from 3 file(s)"), "{table}");
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("per-CPU memory"))
            .count(),
        1,
        "{table}"
    );
    assert!(table.contains("sim qemu-hotadd") && table.contains("guest Hyper-V 10.0.20348"));
    well_formed_xml(&std::fs::read_to_string(&report_svg).unwrap()).unwrap();

    // A file that is not a report is refused with exit code 2.
    let junk = temp("junk.json");
    std::fs::write(&junk, "{\"hello\": 1}").unwrap();
    let out = sim(&["report", &junk.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn xml_checker_rejects_broken_documents() {
    assert!(well_formed_xml("<svg><g></g></svg>").is_ok());
    assert!(well_formed_xml("<svg><g></svg>").is_err());
    assert!(well_formed_xml("<svg></svg><svg></svg>").is_err());
}
