//! The guest document of one round and strategy (the `kepoch-report` schema, one result), with the
//! strategy the driver reported in its statistics and the `ab` record of how the round ran.

use kepoch::Stats;
use kepoch_report::{AbRecord, Guest, GuestDocument, FIGURES};
use serde_json::Value;

use crate::report::{guest_result, STATS_V5_KEYS};

/// The document of a round in which the driver loaded: its statistics, read back after the load.
/// `strategy` is the one the driver reports; `record.strategy_matches` says whether it is the one
/// asked for.
pub fn loaded_document(stats: &Stats, guest: Guest, mut record: AbRecord) -> Value {
    let mut result = guest_result(stats, guest);
    record.strategy_reported = Some(result.strategy.clone());
    record.strategy_matches = Some(result.strategy == record.strategy_requested);
    result.round = record.round;
    document(GuestDocument::new(result), record)
}

/// The document of a round in which the driver did not load: every figure `null`, the strategy the
/// one asked for (the driver reported none), `loaded: false` and why.
pub fn refused_document(guest: Guest, mut record: AbRecord, load_error: String) -> Value {
    let mut result = guest_result(&Stats::default(), guest);
    result.strategy = record.strategy_requested.clone();
    result.loaded = false;
    result.load_error = Some(load_error);
    result.round = record.round;
    result.stats_version = 0;
    record.strategy_reported = None;
    record.strategy_matches = None;
    let mut doc = document(GuestDocument::new(result), record);
    if let Some(result) = doc["results"][0].as_object_mut() {
        for key in FIGURES {
            result.insert((*key).to_string(), Value::Null);
        }
        for key in STATS_V5_KEYS {
            result.remove(key);
        }
    }
    doc
}

fn document(mut doc: GuestDocument, record: AbRecord) -> Value {
    doc.scenario.description = format!(
        "kepochctl ab: round {} of {} (registry ActivationStrategy {})",
        record.round, record.strategy_requested, record.registry.ActivationStrategy
    );
    if let Some(result) = doc.results.first_mut() {
        result.ab = Some(record);
    }
    serde_json::to_value(&doc).unwrap_or(Value::Null)
}

/// The document as pretty JSON with a final newline.
pub fn to_text(doc: &Value) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_else(|_| "null".into()) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use kepoch_report::{check_result, AbRegistry, SourceDocument};

    fn guest() -> Guest {
        Guest {
            os_build: "10.0.20348".into(),
            active_processors: 4,
            max_processors: 64,
            hypervisor: None,
        }
    }

    fn record(strategy: &str, value: u32) -> AbRecord {
        AbRecord {
            round: 2,
            position: 1,
            strategy_requested: strategy.into(),
            registry: AbRegistry {
                ActivationStrategy: value,
                ..AbRegistry::default()
            },
            ..AbRecord::default()
        }
    }

    #[test]
    fn a_loaded_round_records_the_strategy_the_driver_reports() {
        let stats = Stats {
            strategy: 0,
            enters: 5,
            ..Stats::default()
        };
        let doc = loaded_document(&stats, guest(), record("lazy", 0));
        let result = &doc["results"][0];
        assert_eq!(result["strategy"], "lazy");
        assert_eq!(result["round"], 2);
        assert_eq!(result["source"], "guest");
        assert_eq!(result["loaded"], true);
        assert_eq!(result["enters"], 5);
        assert_eq!(result["ab"]["strategy_reported"], "lazy");
        assert_eq!(result["ab"]["strategy_matches"], true);
        check_result(result).unwrap();
        // What `kepoch-sim report` reads.
        let rounds = SourceDocument::from_value(&doc)
            .unwrap()
            .into_rounds()
            .unwrap();
        assert_eq!(rounds.len(), 1);

        // The driver ran callback though lazy was asked for: recorded as such, and flagged.
        let stats = Stats {
            strategy: 1,
            ..Stats::default()
        };
        let doc = loaded_document(&stats, guest(), record("lazy", 0));
        let result = &doc["results"][0];
        assert_eq!(result["strategy"], "callback");
        assert_eq!(result["ab"]["strategy_requested"], "lazy");
        assert_eq!(result["ab"]["strategy_matches"], false);
    }

    #[test]
    fn a_refused_round_has_no_figures() {
        let mut r = record("eager", 2);
        r.start_error = Some(87);
        let doc = refused_document(guest(), r, "refused".into());
        let result = &doc["results"][0];
        assert_eq!(result["strategy"], "eager");
        assert_eq!(result["loaded"], false);
        assert_eq!(result["load_error"], "refused");
        assert_eq!(result["ab"]["start_error"], 87);
        assert!(result["ab"]["strategy_matches"].is_null());
        for key in FIGURES {
            assert!(result[*key].is_null(), "{key}");
        }
        check_result(result).unwrap();
        assert!(to_text(&doc).ends_with("}\n"));
    }
}
