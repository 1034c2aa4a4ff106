//! Tests of scenario parsing, overrides and validation.

use super::*;

const GOOD: &str = r#"
name = "t"
description = "test"
max_reported = 8
active_at_boot = 2
firmware = "accurate"
[[hot_add]]
at_ms = 10
count = 2
[workload]
duration_ms = 100
"#;

#[test]
fn every_builtin_parses_and_validates() {
    let all = builtins().unwrap();
    assert_eq!(all.len(), builtin_names().len());
    for s in &all {
        s.validate().unwrap_or_else(|e| panic!("{}: {e}", s.name));
        assert!(!s.description.is_empty(), "{} has no description", s.name);
        assert!(!s.description.contains('\n'));
    }
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
        assert!(builtin(name).is_some(), "missing {name}");
    }
    let hv = builtin(DEFAULT_SCENARIO).unwrap().unwrap();
    assert!(hv.max_reported > hv.active_at_boot && hv.hot_add.is_empty());
}

#[test]
fn every_spec_key_is_accepted() {
    let text = r#"
name = "example"
description = "..."
max_reported = 64
active_at_boot = 4
group_size = 64
firmware = "accurate"
seed = 1
[[hot_add]]
at_ms = 100
count = 2
fail = false
[workload]
duration_ms = 1000
readers_per_cpu = 2
retire_per_ms = 50
idle_cpus = 0
stall_reader_ms = 0
alloc_fail_every = 0
reloads = 2
"#;
    let s = parse(text, "spec").unwrap();
    s.validate().unwrap();
    assert_eq!((s.workload.retire_per_ms, s.workload.reloads), (50, 2));
    assert_eq!(
        s.hot_add,
        vec![HotAdd {
            at_ms: 100,
            count: 2,
            fail: false
        }]
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = GOOD.replace("[workload]\n", "[workload]\nreaders_per_core = 3\n");
    let e = parse(&text, "f.toml").unwrap_err().0;
    assert!(e.contains("readers_per_core"), "{e}");
    assert!(e.contains("line 11"), "{e}");
    assert!(!e.contains('\n'));
    let e = parse(&format!("colour = 1\n{GOOD}"), "f.toml")
        .unwrap_err()
        .0;
    assert!(e.contains("colour") && e.contains("line 1"), "{e}");
}

#[test]
fn malformed_and_incomplete_toml_name_line_and_key() {
    let e = parse(
        "name = \"x\"\nmax_reported = \nactive_at_boot = 2\n",
        "f.toml",
    )
    .unwrap_err()
    .0;
    assert!(e.contains("line 2"), "{e}");
    let e = parse("name = \"x\"\nactive_at_boot = 2\n", "f.toml")
        .unwrap_err()
        .0;
    assert!(e.contains("max_reported"), "{e}");
    let e = parse(
        &GOOD.replace("active_at_boot = 2", "active_at_boot = \"two\""),
        "f",
    )
    .unwrap_err()
    .0;
    assert!(e.contains("line 5"), "{e}");
}

#[test]
fn flags_override_file_values() {
    let mut s = parse(GOOD, "f").unwrap();
    s.apply(&Overrides {
        max_reported: Some(32),
        active: Some(4),
        group_size: Some(8),
        hot_add: vec![
            parse_hot_add("3@50").unwrap(),
            parse_hot_add("1@60:fail").unwrap(),
        ],
        firmware: Some("sparse".into()),
        duration_ms: Some(500),
        seed: Some(9),
    });
    assert_eq!(
        (s.max_reported, s.active_at_boot, s.group_size, s.seed),
        (32, 4, 8, 9)
    );
    assert_eq!(s.firmware, "sparse");
    assert_eq!(s.workload.duration_ms, 500);
    assert_eq!(s.hot_add.len(), 2);
    assert!(s.hot_add[1].fail);
    assert_eq!(s.hot_add_slots(), 4);
    s.validate().unwrap();
    // Without overrides nothing changes.
    let mut t = parse(GOOD, "f").unwrap();
    t.apply(&Overrides::default());
    assert_eq!(t, parse(GOOD, "f").unwrap());
}

#[test]
fn contradictions_are_rejected() {
    let base = parse(GOOD, "f").unwrap();
    let check = |o: Overrides, needle: &str| {
        let mut s = base.clone();
        s.apply(&o);
        let e = s.validate().unwrap_err().0;
        assert!(e.contains(needle), "{e}");
    };
    check(
        Overrides {
            active: Some(16),
            ..Default::default()
        },
        "above max_reported",
    );
    check(
        Overrides {
            firmware: Some("under-report".into()),
            ..Default::default()
        },
        "under-report",
    );
    check(
        Overrides {
            hot_add: vec![parse_hot_add("7@5").unwrap()],
            ..Default::default()
        },
        "exceed max_reported",
    );
    check(
        Overrides {
            hot_add: vec![parse_hot_add("1@500").unwrap()],
            ..Default::default()
        },
        "before the end",
    );
    check(
        Overrides {
            firmware: Some("lying".into()),
            ..Default::default()
        },
        "unknown firmware",
    );
    check(
        Overrides {
            group_size: Some(65),
            ..Default::default()
        },
        "group_size",
    );
    assert!(parse_hot_add("2").is_err());
    assert!(parse_hot_add("x@1").is_err());
}

#[test]
fn unknown_scenario_lists_the_builtins() {
    let e = load("no-such-thing").unwrap_err().0;
    for name in builtin_names() {
        assert!(e.contains(name), "{e}");
    }
}
