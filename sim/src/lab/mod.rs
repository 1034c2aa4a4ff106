//! The A/B lab: runs every activation strategy on the same scenario and compares the measured
//! figures of SPEC §6 side by side (table, verdict, JSON, SVG chart), and merges such results with
//! stats JSON from real guests (`kepochctl stats --json`).
//!
//! Every result is a JSON object (the SPEC §6 schema); the table, the verdict and the chart are
//! computed from those objects, so simulator and guest results are shown the same way.

pub mod chart;
pub mod run;
pub mod scenario;
pub mod table;

use kepoch::Strategy;
use run::{run_strategy, Progress, RunMode};
use scenario::{Scenario, ScenarioError};
use serde_json::{json, Value};

/// SPEC §6 figures every result carries (besides `strategy`, `loaded` and `load_error`).
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

/// Strategies in the order the lab runs and shows them.
pub const ORDER: [Strategy; 3] = [Strategy::Eager, Strategy::Lazy, Strategy::Callback];

/// The `scenario` object of the JSON document.
pub fn scenario_json(scenario: &Scenario, mode: RunMode) -> Value {
    let mut v = serde_json::to_value(scenario).unwrap_or_else(|_| json!({}));
    v["source"] = json!("sim");
    v["mode"] = json!(mode.name());
    v["cycle_period_us"] = json!(kepoch::Config::default().cycle_period_us);
    v["stall_threshold_cycles"] = json!(run::LAB_STALL_THRESHOLD_CYCLES);
    v
}

/// Runs eager, lazy and callback on `scenario` (same seed, schedule and workload) and returns the
/// SPEC §6 document `{"scenario": {...}, "results": [...]}`. `progress` gets the strategy and the
/// fraction done.
pub fn run_ab(
    scenario: &Scenario,
    mode: RunMode,
    progress: &(dyn Fn(Strategy, f64) + Sync),
) -> Result<Value, ScenarioError> {
    scenario.validate()?;
    let mut results = Vec::new();
    for strategy in ORDER {
        let p = |f: f64| progress(strategy, f);
        let p: Progress<'_> = &p;
        results.push(run_strategy(scenario, strategy, mode, p)?);
    }
    Ok(json!({"scenario": scenario_json(scenario, mode), "results": results}))
}

/// A column of a comparison: a heading, the source line under it and the result object.
#[derive(Clone, Debug)]
pub struct Column {
    /// Strategy name (or what the file says).
    pub heading: String,
    /// Where the figures come from (`sim <scenario>`, `guest <hypervisor> <build>`).
    pub source: String,
    /// The SPEC §6 result object.
    pub result: Value,
}

/// Turns a SPEC §6 document (from `ab --json` or `kepochctl stats --json`) into columns. `origin`
/// names the file in messages.
pub fn columns_of(document: &Value, origin: &str) -> Result<Vec<Column>, String> {
    let results = document
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            format!(
                "{origin}: no \"results\" array (not an ab --json or kepochctl stats --json file)"
            )
        })?;
    if results.is_empty() {
        return Err(format!("{origin}: \"results\" is empty"));
    }
    let scenario = document.get("scenario");
    let mut columns = Vec::new();
    for (i, r) in results.iter().enumerate() {
        if !r.is_object() {
            return Err(format!("{origin}: result {i} is not an object"));
        }
        let heading = r
            .get("strategy")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{origin}: result {i} has no \"strategy\""))?
            .to_string();
        let source = source_label(r, scenario);
        columns.push(Column {
            heading,
            source,
            result: r.clone(),
        });
    }
    Ok(columns)
}

fn source_label(result: &Value, scenario: Option<&Value>) -> String {
    let str_at = |v: Option<&Value>, path: &[&str]| -> Option<String> {
        let mut cur = v?;
        for p in path {
            cur = cur.get(*p)?;
        }
        cur.as_str().map(str::to_string)
    };
    let source = result
        .get("source")
        .and_then(Value::as_str)
        .or_else(|| {
            scenario
                .and_then(|s| s.get("source"))
                .and_then(Value::as_str)
        })
        .unwrap_or("unknown");
    match source {
        "guest" => {
            let guest = result.get("guest").or_else(|| scenario?.get("guest"));
            let hv = str_at(guest, &["hypervisor", "name"]).unwrap_or_else(|| "bare metal?".into());
            let build = str_at(guest, &["os_build"]).unwrap_or_default();
            format!("guest {hv} {build}").trim().to_string()
        }
        other => match str_at(scenario, &["name"]) {
            Some(name) => format!("{other} {name}"),
            None => other.to_string(),
        },
    }
}
