//! The report document of a guest (the `kepoch-report` schema) and the plain-text table
//! (host-testable).

use std::fmt::Write;

use kepoch::Stats;
use kepoch_report::{
    callback_state_name, strategy_name, CycleLatency, DurationUs, Guest, GuestDocument,
    GuestResult, HotAdd, HotAddReplayed, Latency,
};

/// Keys of a guest result that are new with driver `Stats` version 5 (a refused round has none of
/// them; documents of older drivers lack them).
pub const STATS_V5_KEYS: [&str; 4] = [
    "hot_add_replayed",
    "dpc_us",
    "frees_per_visit",
    "visits_cut_short",
];

/// The report result of the running strategy from the driver's counters, read on `guest`.
pub fn guest_result(stats: &Stats, guest: Guest) -> GuestResult {
    GuestResult {
        strategy: strategy_name(stats.strategy),
        source: "guest".into(),
        round: 0,
        guest,
        loaded: true,
        load_error: None,
        callback_state: callback_state_name(stats.callback_state).into(),
        config_warnings: stats.config_warnings,
        max_reported: stats.max_reported,
        active: stats.active,
        cpus_prepared: stats.cpus_prepared,
        per_cpu_bytes: stats.per_cpu_bytes,
        prepare_at_dispatch: stats.prepare_at_dispatch,
        prepare_passive: stats.prepare_passive,
        prepare_failures: stats.prepare_failures,
        fallback_uses: stats.fallback_uses,
        first_enter_ns: Latency::from_histogram(&stats.first_enter_ns),
        enter_exit_ns: Latency::from_histogram(&stats.enter_exit_ns),
        enters: stats.enters,
        exits: stats.exits,
        remote_exits: stats.remote_exits,
        cycles: stats.cycles,
        cycle_latency_us: CycleLatency::from_ns_histogram(&stats.cycle_latency_ns),
        messages: stats.messages,
        messages_to_idle_cpus: None,
        joins: stats.joins,
        leaves: stats.leaves,
        retired: stats.retired,
        freed: stats.freed,
        pending_at_end: stats.pending,
        leaked: None,
        leaked_readers: stats.leaked_readers,
        use_after_free: None,
        double_retires: stats.double_retires,
        stalls_reported: stats.stalls_reported,
        hot_add: HotAdd {
            start: stats.hot_add_start,
            complete: stats.hot_add_complete,
            failure: stats.hot_add_failure,
            vetoed: stats.hot_add_vetoed,
        },
        hot_add_replayed: Some(HotAddReplayed {
            start: stats.replayed_add_start,
            complete: stats.replayed_add_complete,
        }),
        work_items_run: stats.work_items_run,
        dpc_us: Some(DurationUs::from_ns_histogram(&stats.visit_ns)),
        frees_per_visit: Some(Latency::from_histogram(&stats.frees_per_visit)),
        visits_cut_short: Some(stats.visits_cut_short),
        global_epoch: stats.global_epoch,
        released_epoch: stats.released_epoch,
        stats_version: stats.version,
        ab: None,
    }
}

/// `kepochctl stats --json`: the guest document (one result) as pretty-printed JSON with a final
/// newline.
pub fn stats_json(stats: &Stats, guest: Guest) -> Result<String, serde_json::Error> {
    let document = GuestDocument::new(guest_result(stats, guest));
    Ok(serde_json::to_string_pretty(&document)? + "\n")
}

/// `kepochctl stats`: the main figures as text.
pub fn stats_table(stats: &Stats) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<22} {value}");
    };
    line("strategy", strategy_name(stats.strategy));
    line("callback", callback_state_name(stats.callback_state).into());
    line("config warnings", stats.config_warnings.to_string());
    line(
        "processors",
        format!("max {} active {}", stats.max_reported, stats.active),
    );
    line(
        "cpus prepared",
        format!("{} ({} bytes)", stats.cpus_prepared, stats.per_cpu_bytes),
    );
    line(
        "prepared",
        format!(
            "{} at DISPATCH, {} at PASSIVE, {} failed",
            stats.prepare_at_dispatch, stats.prepare_passive, stats.prepare_failures
        ),
    );
    line("fallback uses", stats.fallback_uses.to_string());
    line(
        "enters / exits",
        format!(
            "{} / {} ({} remote)",
            stats.enters, stats.exits, stats.remote_exits
        ),
    );
    line(
        "retired / freed",
        format!(
            "{} / {} ({} pending)",
            stats.retired, stats.freed, stats.pending
        ),
    );
    line(
        "cycles / messages",
        format!("{} / {}", stats.cycles, stats.messages),
    );
    line(
        "joins / leaves",
        format!("{} / {}", stats.joins, stats.leaves),
    );
    line("stalls reported", stats.stalls_reported.to_string());
    line(
        "hot-add",
        format!(
            "start {} complete {} failure {}",
            stats.hot_add_start, stats.hot_add_complete, stats.hot_add_failure
        ),
    );
    let visits = stats.visit_ns.summary();
    let frees = stats.frees_per_visit.summary();
    line(
        "visits (DPCs)",
        format!(
            "{} visits: {} / {} / {} us (p50 / p99 / max), frees per visit {} / {} / {}, {} cut short at MaxFreesPerVisit",
            visits.count,
            visits.p50 as f64 / 1e3,
            visits.p99 as f64 / 1e3,
            visits.max as f64 / 1e3,
            frees.p50,
            frees.p99,
            frees.max,
            stats.visits_cut_short
        ),
    );
    line(
        "replayed at registration",
        format!(
            "start {} complete {} failure {}",
            stats.replayed_add_start, stats.replayed_add_complete, stats.replayed_add_failure
        ),
    );
    for (name, h) in [
        ("first enter ns", &stats.first_enter_ns),
        ("enter/exit ns", &stats.enter_exit_ns),
    ] {
        let s = h.summary();
        line(
            name,
            format!("p50 {} p99 {} max {} (n={})", s.p50, s.p99, s.max, s.count),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kepoch::{CallbackState, STATS_VERSION};
    use kepoch_report::{Hypervisor, SCHEMA_VERSION};
    use serde_json::Value;

    fn guest(os_build: &str, active: u32, max: u32, vendor: Option<&str>) -> Guest {
        Guest {
            os_build: os_build.into(),
            active_processors: active,
            max_processors: max,
            hypervisor: vendor.map(Hypervisor::from_vendor),
        }
    }

    /// Every counter distinct, every histogram filled.
    fn full_stats() -> Stats {
        let mut stats = Stats {
            version: STATS_VERSION,
            size: 1,
            strategy: 1,
            callback_state: 2,
            max_reported: 64,
            active: 4,
            ..Stats::default()
        };
        let counters = [
            &mut stats.cpus_prepared,
            &mut stats.per_cpu_bytes,
            &mut stats.prepare_at_dispatch,
            &mut stats.prepare_passive,
            &mut stats.prepare_failures,
            &mut stats.fallback_uses,
            &mut stats.enters,
            &mut stats.exits,
            &mut stats.remote_exits,
            &mut stats.retired,
            &mut stats.freed,
            &mut stats.pending,
            &mut stats.double_retires,
            &mut stats.cycles,
            &mut stats.messages,
            &mut stats.stalls_reported,
            &mut stats.joins,
            &mut stats.leaves,
            &mut stats.hot_add_start,
            &mut stats.hot_add_complete,
            &mut stats.hot_add_failure,
            &mut stats.hot_add_vetoed,
            &mut stats.work_items_run,
            &mut stats.global_epoch,
            &mut stats.released_epoch,
            &mut stats.leaked_readers,
            &mut stats.config_warnings,
            &mut stats.replayed_add_start,
            &mut stats.replayed_add_complete,
            &mut stats.replayed_add_failure,
        ];
        for (value, counter) in (3..).zip(counters) {
            *counter = value;
        }
        stats.per_cpu_bytes = 192;
        for v in [250, 251, 9000, 123456] {
            stats.enter_exit_ns.record(v);
        }
        for v in [700, 800] {
            stats.first_enter_ns.record(v);
        }
        for v in [2500, 1_234_567] {
            stats.cycle_latency_ns.record(v);
        }
        stats
    }

    /// The JSON without its `schema_version` and without the results' keys new with driver `Stats`
    /// version 5 (after those documents: `hot_add_replayed`, `dpc_us`, `frees_per_visit`,
    /// `visits_cut_short`) and `stats_version` (it follows the driver's version), as a compact
    /// string: equal for two texts iff they hold the same keys with the same values.
    fn canonical(text: &str) -> (Value, String) {
        let mut value: Value = serde_json::from_str(text).expect(text);
        let version = value["schema_version"].take();
        value.as_object_mut().unwrap().remove("schema_version");
        if let Some(results) = value["results"].as_array_mut() {
            for result in results {
                if let Some(result) = result.as_object_mut() {
                    for key in STATS_V5_KEYS {
                        result.remove(key);
                    }
                    result.remove("stats_version");
                }
            }
        }
        (version, value.to_string())
    }

    /// The guest JSON reports the notifications replayed at registration apart from live hot-adds
    /// (the A/B table shows them on their own rows).
    #[test]
    fn the_replay_at_registration_is_reported_apart_from_hot_adds() {
        let stats = full_stats();
        let text = stats_json(&stats, guest("10.0.20348", 4, 64, None)).expect("json");
        let value: Value = serde_json::from_str(&text).expect("parses");
        let result = &value["results"][0];
        assert_eq!(result["hot_add"]["start"], stats.hot_add_start);
        assert_eq!(
            result["hot_add_replayed"]["start"],
            stats.replayed_add_start
        );
        assert_eq!(
            result["hot_add_replayed"]["complete"],
            stats.replayed_add_complete
        );
        assert_ne!(stats.hot_add_start, stats.replayed_add_start);
        assert_eq!(result["stats_version"], STATS_VERSION);
    }

    /// The documents written before the schema crate existed (schema 2, by a hand-written writer), for
    /// the same counters: today's schema-3 output holds the same keys and values; only the version,
    /// whitespace and number spelling differ (which is why the version was bumped).
    #[test]
    fn output_matches_the_documents_of_the_previous_writer() {
        let cases = [
            (
                full_stats(),
                guest("10.0.20348", 4, 64, Some("Microsoft Hv\0\0")),
                include_str!("../tests/fixtures/stats-v2-full.json"),
            ),
            (
                Stats::default(),
                guest("6.1.7601", 1, 1, None),
                include_str!("../tests/fixtures/stats-v2-empty.json"),
            ),
            (
                Stats {
                    strategy: 9,
                    callback_state: 77,
                    ..Stats::default()
                },
                guest("odd \"build\"\n\u{1}", 2, 8, Some("x\"y\\\0")),
                include_str!("../tests/fixtures/stats-v2-escapes.json"),
            ),
        ];
        for (stats, guest, previous) in cases {
            let text = stats_json(&stats, guest).unwrap();
            assert!(text.ends_with("}\n"));
            assert_ne!(text, previous);
            let (version, now) = canonical(&text);
            let (previous_version, before) = canonical(previous);
            assert_eq!(
                (version, previous_version),
                (SCHEMA_VERSION.into(), 2.into())
            );
            assert_eq!(now, before);
        }
    }

    #[test]
    fn json_carries_the_schema_fields() {
        let mut stats = Stats {
            version: STATS_VERSION,
            strategy: 0,
            callback_state: CallbackState::NotUsed as u32,
            config_warnings: 1,
            retired: 10,
            freed: 7,
            pending: 3,
            ..Stats::default()
        };
        stats.enter_exit_ns.record(250);
        let text = stats_json(&stats, guest("10.0.20348", 4, 64, Some("Microsoft Hv"))).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        let result = &value["results"][0];
        assert_eq!(value["schema_version"], SCHEMA_VERSION);
        assert_eq!(value["scenario"]["source"], "guest");
        assert_eq!(result["strategy"], "lazy");
        assert_eq!(result["pending_at_end"], 3);
        assert_eq!(result["enter_exit_ns"]["hist"][0][1], 1);
        assert!(result["first_enter_ns"]["p50"].is_null());
        assert_eq!(result["guest"]["hypervisor"]["name"], "Hyper-V");
        for key in kepoch_report::FIGURES {
            assert!(result.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn table_mentions_the_strategy() {
        let stats = Stats {
            strategy: 1,
            callback_state: CallbackState::ApiMissing as u32,
            ..Stats::default()
        };
        let table = stats_table(&stats);
        assert!(table.contains("callback"));
        assert!(table.contains("api-missing"));
    }
}
