//! The A/B lab through its command line: exit codes, the report JSON, the SVG and `report`.

mod common;

use common::{guest_round, row, sim, temp, text};
use serde_json::Value;

/// The keys every round carries: the schema's figures and what says whether it ran.
fn round_keys() -> impl Iterator<Item = &'static str> {
    ["strategy", "loaded", "load_error"]
        .into_iter()
        .chain(kepoch_report::FIGURES.iter().copied())
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
fn report_refuses_malformed_and_newer_documents() {
    for (name, body, needle) in [
        (
            "newer.json",
            r#"{"schema_version": 4, "results": [{"strategy": "lazy"}]}"#,
            "schema_version 4 is newer than this tool reads",
        ),
        (
            "results-not-array.json",
            r#"{"results": 7}"#,
            "expected a sequence",
        ),
        ("array.json", "[1, 2]", "not a JSON object"),
        ("empty.json", r#"{"results": []}"#, "\"results\" is empty"),
        ("none.json", r#"{"scenario": {}}"#, "no \"results\" array"),
    ] {
        let path = temp(name);
        std::fs::write(&path, body).unwrap();
        let out = sim(&["report", &path.display().to_string()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
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
        "retire-storm",
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
        "--rounds",
        "3",
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
    assert!(stdout.contains("3 rounds per strategy"), "{stdout}");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["schema_version"], 3);
    assert_eq!(doc["scenario"]["name"], "qemu-hotadd");
    assert_eq!(doc["scenario"]["rounds"], 3);
    assert_eq!(doc["rounds"].as_array().unwrap().len(), 9);
    let results = doc["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eager", "lazy", "callback"]);
    for r in results {
        for key in round_keys() {
            assert!(r.get(key).is_some(), "{} lacks {key}", r["strategy"]);
        }
        assert_eq!(r["source"], "sim");
        assert_eq!(r["rounds"], 3);
        for (k, sub) in [
            ("first_enter_ns", &["p50", "p99", "max", "count"][..]),
            ("enter_exit_ns", &["p50", "p99", "max", "count"][..]),
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
            // 2 boot CPUs, 8 hot-added over the round, 4 loads: at least 3 × 20 samples.
            assert!(r["first_enter_ns"]["count"].as_u64().unwrap() >= 60, "{r}");
            let e = &r["estimates"]["first_enter_ns.p50"];
            assert_eq!(e["rounds"], 3);
            assert_eq!(e["pooled"], true);
            let ci = e["ci95"].as_array().unwrap();
            let value = e["value"].as_f64().unwrap();
            assert!(ci[0].as_f64().unwrap() <= value && value <= ci[1].as_f64().unwrap());
            assert_eq!(r["first_enter_ns"]["p50"], e["value"]);
        } else {
            assert!(r["cpus_prepared"].is_null() && r["first_enter_ns"].is_null());
        }
    }
    for round in doc["rounds"].as_array().unwrap() {
        if round["loaded"] == true {
            let fe = &round["first_enter_ns"];
            assert_eq!(
                fe["samples"].as_array().unwrap().len() as u64,
                fe["count"].as_u64().unwrap()
            );
            assert!(!round["enter_exit_ns"]["hist"]
                .as_array()
                .unwrap()
                .is_empty());
            assert_eq!(round["lifetimes"], 4);
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

    // Table and verdict show the same numbers; the verdict states the first-enter comparison.
    let verdict = doc["verdict"].as_str().unwrap();
    assert!(stdout.contains(&verdict[..60]), "{stdout}");
    let first = doc["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["figure"] == "first_enter_ns.p50")
        .expect("a first-enter comparison");
    let fe_row = row(&stdout, "first enter p50 (ns)");
    for r in &results[1..] {
        let v = r["first_enter_ns"]["p50"].as_f64().unwrap();
        assert!(fe_row.contains(&format!("{v:.0} [")), "{v} not in {fe_row}");
    }
    assert!(first["ratio_ci95"].is_array(), "{first}");
    if first["significant"] == true {
        let ratio = format!("{:.2}x", first["ratio"].as_f64().unwrap());
        assert!(verdict.contains(&ratio), "{ratio} not in {verdict}");
    } else {
        assert!(verdict.contains("no significant difference"), "{verdict}");
    }

    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<svg") && svg_text.contains("CDF"));
    well_formed_xml(&svg_text).unwrap();

    // `report` re-reads the file and computes the same summaries from its rounds.
    let out = sim(&["report", &json.display().to_string()]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(
        table.contains("9 round(s) from 1 file(s) in 3 column(s)"),
        "{table}"
    );
    assert_eq!(row(&table, "first enter p50 (ns)"), fe_row);

    // A guest file of schema 1 (no rounds, no histograms) merges only when asked.
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
    let out = sim(&[
        "report",
        &json.display().to_string(),
        &guest.display().to_string(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--allow-mixed") && err.contains("scenario"),
        "{err}"
    );
    let report_svg = temp("report.svg");
    let out = sim(&[
        "report",
        "--allow-mixed",
        &json.display().to_string(),
        &guest.display().to_string(),
        "--svg",
        &report_svg.display().to_string(),
    ]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(
        table.contains("10 round(s) from 2 file(s) in 4 column(s)"),
        "{table}"
    );
    assert!(table.contains("sim qemu-hotadd") && table.contains("guest Hyper-V 10.0.20348"));
    assert!(table.contains("too few rounds"), "{table}");
    well_formed_xml(&std::fs::read_to_string(&report_svg).unwrap()).unwrap();

    // A file that is not a report is refused with exit code 2.
    let junk = temp("junk.json");
    std::fs::write(&junk, "{\"hello\": 1}").unwrap();
    let out = sim(&["report", &junk.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn report_treats_guest_files_as_rounds_with_intervals() {
    let mut files = Vec::new();
    for round in 0..4u32 {
        for (strategy, base) in [("lazy", 6000u64), ("callback", 500)] {
            let samples: Vec<u64> = (0..8u64)
                .map(|k| base + (k * 37 + u64::from(round) * 11) % (base / 5))
                .collect();
            let path = temp(&format!("guest-round-{round}-{strategy}.json"));
            // Rounds from kepochctl before and after the schema crate are pooled alike.
            let schema = if round < 2 { 2 } else { 3 };
            std::fs::write(&path, guest_round(schema, strategy, round, 64, &samples)).unwrap();
            files.push(path.display().to_string());
        }
    }
    let args: Vec<&str> = std::iter::once("report")
        .chain(files.iter().map(String::as_str))
        .collect();
    let out = sim(&args);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(
        table.contains("8 round(s) from 8 file(s) in 2 column(s)"),
        "{table}"
    );
    let rounds = row(&table, "rounds (loaded / run)");
    assert_eq!(rounds.matches("4 / 4").count(), 2, "{rounds}");
    let fe = row(&table, "first enter p50 (ns)");
    assert_eq!(fe.matches(" [").count(), 2, "{fe}");
    assert!(
        row(&table, "first enter samples (count)").contains("32"),
        "{table}"
    );
    assert!(table.contains("First enter p50: lazy"), "{table}");
    assert!(table.contains("95 % CI"), "{table}");
    // The same files give the same report (seeded bootstrap).
    assert_eq!(text(&sim(&args).stdout), table);

    // A round from a guest with another processor maximum is refused, naming the difference.
    let other = temp("guest-other.json");
    std::fs::write(&other, guest_round(3, "lazy", 9, 16, &[7000, 7100])).unwrap();
    let mut mixed = args.clone();
    let other_path = other.display().to_string();
    mixed.push(&other_path);
    let out = sim(&mixed);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("max_processors 64") && err.contains("max_processors 16"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    mixed.insert(1, "--allow-mixed");
    assert!(sim(&mixed).status.success());
}

#[test]
fn xml_checker_rejects_broken_documents() {
    assert!(well_formed_xml("<svg><g></g></svg>").is_ok());
    assert!(well_formed_xml("<svg><g></svg>").is_err());
    assert!(well_formed_xml("<svg></svg><svg></svg>").is_err());
}
