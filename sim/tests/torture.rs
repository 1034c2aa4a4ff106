//! The torture finds nothing in the correct protocol, runs every workload, finds every re-introduced
//! bug it can see, ends a run that breaks a bound at once with a diagnosis, and every failure replays.

use kepoch::{Mutations, Strategy};
use kepoch_sim::torture::{machine_for, run, run_with, Mode, RunOptions, RunSpec, RunStats};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn spec(strategy: Strategy, seed: u64, mutations: Mutations) -> RunSpec {
    RunSpec {
        strategy,
        seed,
        mode: Mode::Deterministic,
        duration_us: 20_000,
        hot_add_rate: 50,
        mutations,
    }
}

#[test]
fn correct_protocol_has_no_violation_on_any_strategy() {
    for strategy in [Strategy::Lazy, Strategy::Eager, Strategy::Callback] {
        for seed in 0..20 {
            let outcome = run(&spec(strategy, seed, Mutations::NONE));
            assert!(
                outcome.violations.is_empty(),
                "{strategy} seed {seed}: {:?}",
                outcome.violations
            );
            assert!(
                outcome.stats.reads > 0 && outcome.stats.retires > 0 && outcome.stats.cycles > 0
            );
        }
    }
}

/// The deterministic torture runs every strategy on machines of several processor groups, among
/// the seeds the safety check runs (a (group, number) confusion needs one to show).
#[test]
fn every_strategy_gets_machines_of_several_groups() {
    for strategy in [Strategy::Lazy, Strategy::Eager, Strategy::Callback] {
        let multi_group = (0..20)
            .filter(|&seed| {
                let config = machine_for(strategy, seed, 50, 20_000);
                let topology = config.topology().expect("valid machine");
                topology.iter().any(|slot| slot.number.group != 0)
            })
            .count();
        assert!(
            multi_group >= 5,
            "{strategy}: only {multi_group} of 20 seeds span several groups"
        );
    }
}

#[test]
fn every_workload_runs() {
    let mut totals = RunStats::default();
    for seed in 0..6 {
        let outcome = run(&spec(Strategy::Lazy, seed, Mutations::NONE));
        totals.add(&outcome.stats);
    }
    let t = &totals;
    assert!(
        t.work_run > 0 && t.work_cancelled > 0 && t.work_chained > 0,
        "{t:?}"
    );
    assert!(
        t.destructor_retires > 0 && t.polls > 0 && t.flushes > 0,
        "{t:?}"
    );
    assert!(
        t.max_depth > kepoch::READER_ENTRIES as u64,
        "stallers did not hold more distinct epochs than the reader table has entries: {t:?}"
    );
    assert!(
        t.fallback_uses > 0,
        "no CPU ran on the overflow slot: {t:?}"
    );
    assert!(
        t.map_lookups > 0 && t.map_updates > 0 && t.map_conflicts > 0,
        "the map workload did not look up, update and retry: {t:?}"
    );
    assert!(
        t.linked_reads > 0 && t.linked_updates > 0,
        "the list and kepoch::map workloads did not read and update: {t:?}"
    );
    assert!(
        t.unload_flushes > 0 && t.unload_synchronizes > 0 && t.unload_retires > 0,
        "no work callback flushed, synchronized or retired during unload: {t:?}"
    );
}

#[test]
fn lifetimes_repeat_the_hot_add_protocol() {
    let spec = RunSpec {
        hot_add_rate: 1_000,
        ..spec(Strategy::Callback, 3, Mutations::NONE)
    };
    let one = run(&spec);
    let four = run_with(
        &spec,
        &RunOptions {
            lifetimes: 4,
            ..RunOptions::default()
        },
    );
    assert!(one.violations.is_empty() && four.violations.is_empty());
    let protocol_runs = |s: &RunStats| s.hot_adds + s.hot_add_failures;
    assert_eq!(four.stats.lifetimes, 4);
    assert!(
        protocol_runs(&four.stats) > 3 * protocol_runs(&one.stats),
        "one lifetime {:?}, four {:?}",
        one.stats,
        four.stats
    );
}

#[test]
fn same_seed_same_run() {
    let a = run(&spec(Strategy::Lazy, 7, Mutations::NONE));
    let b = run(&spec(Strategy::Lazy, 7, Mutations::NONE));
    let figures = |s: &RunStats| {
        (
            s.reads,
            s.retires,
            s.cycles,
            s.work_run,
            s.work_cancelled,
            s.destructor_retires,
            s.peak_pending,
        )
    };
    assert_eq!(figures(&a.stats), figures(&b.stats));
}

fn torture(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_kepoch-sim"))
        .arg("torture")
        .args(args)
        .output()
        .expect("run kepoch-sim");
    (output, start.elapsed())
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[cfg(feature = "mutations")]
/// The violation lines of a failed run, with addresses (which differ between processes) masked.
fn violations(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with("  - "))
        .map(mask_addresses)
        .collect()
}

#[cfg(feature = "mutations")]
/// `0x` followed by 9 to 15 hex digits (a user-space address, not a 64-bit magic) becomes `0x…`.
fn mask_addresses(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let digits = rest[at + 2..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .count();
        if (9..16).contains(&digits) {
            out.push_str("0x…");
        } else {
            out.push_str(&rest[at..at + 2 + digits]);
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    out
}

/// The arguments after `torture` of the printed replay command.
fn replay_args(all: &str) -> Vec<String> {
    let line = all
        .lines()
        .find_map(|l| l.strip_prefix("replay: "))
        .unwrap_or_else(|| panic!("no replay command in:\n{all}"));
    let (_, args) = line
        .split_once(" -- torture ")
        .unwrap_or_else(|| panic!("replay command without `-- torture`: {line}"));
    args.split_whitespace().map(str::to_string).collect()
}

#[test]
fn a_broken_bound_ends_the_run_with_a_diagnosis() {
    // The pending-garbage bound, set below what the workload keeps pending.
    let (out, _) = torture(&["--seed", "1", "--pending-per-cpu", "2", "--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("bounded garbage (L2)") && all.contains("pending garbage:"),
        "{all}"
    );
    assert!(replay_args(&all).contains(&"--pending-per-cpu".to_string()));
    // The deadline: a long run with a short deadline.
    let (out, took) = torture(&[
        "--seed",
        "1",
        "--sim-ms",
        "1000000",
        "--deadline",
        "1",
        "--quiet",
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("deadline:"), "{all}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[cfg(feature = "mutations")]
/// Peak RSS printed in a summary, in MiB.
fn peak_rss_mib(all: &str) -> u64 {
    let at = all
        .find("peak RSS ")
        .unwrap_or_else(|| panic!("no peak RSS in:\n{all}"));
    all[at + "peak RSS ".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad peak RSS in:\n{all}"))
}

#[cfg(feature = "mutations")]
#[test]
fn lost_exit_fails_fast_naming_the_stuck_participant() {
    for mode in ["deterministic", "parallel"] {
        let (out, took) = torture(&[
            "--mutation",
            "lost-exit",
            "--mode",
            mode,
            "--seed",
            "0",
            "--seconds",
            "10",
            "--quiet",
        ]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{mode}: {all}");
        assert!(
            all.contains("no progress (L1)")
                && all.contains(" holds epoch ")
                && all.contains("pending garbage: "),
            "{mode}: {all}"
        );
        // In parallel mode the bound stayed broken while the host ran every machine thread.
        if mode == "parallel" {
            assert!(
                all.contains("rounds in which the host ran every machine thread"),
                "{all}"
            );
        }
        assert!(all.contains("replay: "), "{mode}: {all}");
        assert!(peak_rss_mib(&all) < 2048, "{mode}: {all}");
        // Well within the deadline (30 s + twice the run) and the bound's own timescale.
        assert!(took < Duration::from_secs(15), "{mode}: took {took:?}");
    }
}

/// Mutations the torture is expected to catch (every logic one not in `NOT_CAUGHT`, and ordering
/// ones it shows without a weak-memory schedule), with the strategy that shows them.
#[cfg(feature = "mutations")]
const CAUGHT: &[(&str, &str)] = &[
    ("skip-reader-scan", "callback"),
    ("local-epoch-stamp", "callback"),
    ("route-before-complete", "callback"),
    ("release-while-joining", "callback"),
    ("change-ring-in-flight", "callback"),
    ("activate-remote", "callback"),
    ("lost-exit", "lazy"),
    ("unload-drain-once", "callback"),
    ("lock-without-raise", "callback"),
    ("prepare-in-add-window", "lazy"),
    ("table-ignores-group", "eager"),
    ("start-ignores-unload", "callback"),
    ("unload-skip-cycle-wait", "callback"),
    ("barrier-without-grace-period", "callback"),
];

/// Logic mutations the torture does not catch yet, and why.
#[cfg(feature = "mutations")]
const NOT_CAUGHT: &[(&str, &str)] = &[
    (
        "recursive-chaining",
        "L3 (stack growth): the torture has no stack-depth bound yet",
    ),
    (
        "foreign-work-item",
        "one domain per machine: no work item of another domain exists (tests::second_review)",
    ),
    (
        "reschedule-keeps-stamp",
        "work callbacks read no object a reader holds, so an early run harms nothing visible (tests::second_review)",
    ),
    (
        "timer-never-restarts",
        "the workload keeps processors taking part until unload, so the timer never stops (tests::second_review)",
    ),
    (
        "veto-on-prepare-failure",
        "the torture injects no allocation failure at AddStart and counts no veto (tests::callback, tests::hot_add_window)",
    ),
    (
        "barrier-joins-round-in-progress",
        "the work-item tasks' barriers rarely overlap with a round still draining their own callbacks; the unit test tests::barrier_rounds forces it",
    ),
    (
        "queue-phase-no-recheck",
        "no torture check reaches the window between a visit's read of the barrier generation and its count; the unit test tests::barrier_rounds::a_round_run_while_a_callback_is_counted_still_leaves_it_to_the_next_barrier runs a round inside it",
    ),
    (
        "freed-through-ignores-leftovers",
        "no torture check compares a grace period or a barrier with the items a visit left at its bound; the unit tests tests::visits catch it",
    ),
    (
        "poll-on-released-epoch",
        "the torture polls no grace period; the core's unit tests (tests::callbacks) catch it",
    ),
    (
        "unlink-before-mark",
        "the list's and map's writers are serialised, so no unlink fails in the torture; the unit test a_frozen_link_refuses_writers_and_a_failed_unlink_is_completed_later catches it",
    ),
    (
        "map-replace-unlinks-first",
        "the key is missing for a few instructions inside one writer step; the loom model map_replace_never_hides_the_key catches it",
    ),
];

#[cfg(feature = "mutations")]
#[test]
fn every_mutation_is_caught_and_its_seed_replays() {
    use kepoch::{Mutation, MutationKind};
    for &mutation in Mutation::ALL {
        let listed = CAUGHT.iter().any(|(m, _)| *m == mutation.name())
            || NOT_CAUGHT.iter().any(|(m, _)| *m == mutation.name());
        assert!(
            mutation.kind() == MutationKind::Ordering || listed,
            "logic mutation {mutation} is in neither CAUGHT nor NOT_CAUGHT"
        );
    }
    for &(mutation, strategy) in CAUGHT {
        let (out, _) = torture(&[
            "--mutation",
            mutation,
            "--strategy",
            strategy,
            "--seeds",
            "0..200",
            "--hot-add-rate",
            "50",
            "--quiet",
        ]);
        let all = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{mutation} was not caught in 200 seeds:\n{all}"
        );
        let first = violations(&out);
        assert!(!first.is_empty(), "{mutation}: no violation listed:\n{all}");
        let args = replay_args(&all);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (again, _) = torture(&args);
        assert_eq!(
            again.status.code(),
            Some(1),
            "{mutation}: the replay passed:\n{}",
            text(&again)
        );
        assert_eq!(
            first,
            violations(&again),
            "{mutation}: the replay failed differently"
        );
        // The same seed without the mutation passes: the failure is the mutation's.
        let mut clean: Vec<&str> = Vec::new();
        let mut skip = false;
        for &arg in &args {
            if skip {
                skip = false;
            } else if arg == "--mutation" {
                skip = true;
            } else {
                clean.push(arg);
            }
        }
        let (correct, _) = torture(&clean);
        assert!(
            correct.status.success(),
            "{mutation}: the seed also fails without the mutation:\n{}",
            text(&correct)
        );
    }
}
