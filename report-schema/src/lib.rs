//! The report schema: the serde types of the JSON that `kepoch-sim ab --json`,
//! `kepoch-sim report --json` and `kepochctl stats --json` write, and of the envelope `report` reads.
//!
//! Version history ([`SCHEMA_VERSION`]): 1 had no `schema_version` field and one result per strategy;
//! 2 added `schema_version`, `rounds` (every round's result), summaries with sample counts and 95 %
//! intervals (`estimates`), `comparisons`, the `verdict`, and the `hist` of every latency. 3 has the
//! fields and values of 2, and every writer (the lab and `kepochctl`) serialises through this crate
//! with serde_json: `kepochctl`'s schema-2 text came from a hand-written writer, so its whitespace and
//! number spelling differ (`2.000` there, `2.0` here), which a byte-for-byte consumer would notice.
//! [`SourceDocument`] reads all three.

mod ab;
mod check;
mod guest;
mod latency;

pub use ab::{AbHotAdd, AbLoad, AbRecord, AbRegistry};
pub use check::{check_result, STRATEGIES};
pub use guest::{
    callback_state_name, hypervisor_name, strategy_name, Guest, GuestDocument, GuestResult,
    GuestScenario, Hypervisor,
};
pub use latency::{CycleLatency, DurationUs, HotAdd, HotAddReplayed, Latency, Samples};

use serde::Deserialize;
use serde_json::Value;

/// Version of the report JSON written today.
pub const SCHEMA_VERSION: u32 = 3;

/// The figures every result carries (besides `strategy`, `loaded` and `load_error`); `null` when
/// not measured.
pub const FIGURES: &[&str] = &[
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

/// Any report document as `report` reads it (schema 1 or 2, from the lab or a guest): the envelope is
/// typed, the results stay JSON objects (their figures differ between sources and versions).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SourceDocument {
    /// Absent in schema 1.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// The scenario or the guest facts.
    #[serde(default)]
    pub scenario: Option<Value>,
    /// Every round (schema 2 lab documents).
    #[serde(default)]
    pub rounds: Option<Vec<Value>>,
    /// One summary per column (lab) or one result per round (guest, schema 1).
    #[serde(default)]
    pub results: Option<Vec<Value>>,
}

impl SourceDocument {
    /// Reads the envelope of `document`; `Err` says which part is malformed or that the file was
    /// written by a newer schema.
    pub fn from_value(document: &Value) -> Result<SourceDocument, String> {
        if !document.is_object() {
            return Err("not a JSON object".into());
        }
        let doc = SourceDocument::deserialize(document).map_err(|e| e.to_string())?;
        match doc.schema_version {
            Some(v) if v > SCHEMA_VERSION => Err(format!(
                "schema_version {v} is newer than this tool reads (1..={SCHEMA_VERSION})"
            )),
            Some(0) => Err(format!(
                "schema_version 0 is not a schema version (1..={SCHEMA_VERSION}; schema 1 files have no schema_version)"
            )),
            _ => Ok(doc),
        }
    }

    /// The rounds: `rounds` when present, else every entry of `results` is one round.
    pub fn into_rounds(self) -> Option<Vec<Value>> {
        self.rounds.or(self.results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_schema_version_and_refuses_newer_ones() {
        let v1 = json!({"scenario": {"name": "x"}, "results": [{"strategy": "lazy"}]});
        let doc = SourceDocument::from_value(&v1).unwrap();
        assert_eq!(doc.schema_version, None);
        assert_eq!(doc.into_rounds().unwrap().len(), 1);
        let v2 = json!({"schema_version": 2, "results": [{}], "rounds": [{}, {}]});
        assert_eq!(
            SourceDocument::from_value(&v2)
                .unwrap()
                .into_rounds()
                .unwrap()
                .len(),
            2
        );
        let v3 = json!({"schema_version": 3, "results": [{}, {}, {}]});
        assert_eq!(
            SourceDocument::from_value(&v3)
                .unwrap()
                .into_rounds()
                .unwrap()
                .len(),
            3
        );
        let v4 = json!({"schema_version": 4, "results": []});
        let e = SourceDocument::from_value(&v4).unwrap_err();
        assert!(e.contains("schema_version 4"), "{e}");
        let v0 = json!({"schema_version": 0, "results": [{}]});
        let e = SourceDocument::from_value(&v0).unwrap_err();
        assert!(
            e.contains("schema_version 0 is not a schema version"),
            "{e}"
        );
        let bad = json!({"results": 5});
        assert!(SourceDocument::from_value(&bad).is_err());
        assert!(SourceDocument::from_value(&json!([1])).is_err());
        assert_eq!(
            SourceDocument::from_value(&json!({}))
                .unwrap()
                .into_rounds(),
            None
        );
    }
}
