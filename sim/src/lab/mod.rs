//! The A/B lab: runs every activation strategy on the same scenario and compares the measured
//! figures side by side (table, verdict, JSON, SVG chart), and merges such results with
//! stats JSON from real guests (`kepochctl stats --json`).
//!
//! Every result is a JSON object (the `kepoch-report` schema); the table, the verdict and the chart are
//! computed from those objects, so simulator and guest results are shown the same way.

pub mod analysis;
pub mod bootstrap;
pub mod builtins;
pub mod chart;
pub mod figures;
pub mod limits;
mod round;
pub mod run;
pub mod scenario;
pub mod table;
mod tasks;
pub mod verdict;

use analysis::Group;
use kepoch::Strategy;
use run::{run_round, Progress, RunMode};
use scenario::{Scenario, ScenarioError};
use serde_json::{json, Value};

/// Version of the report JSON (the `kepoch-report` schema) written by `ab --json`, `report --json`
/// and `kepochctl stats --json`; `report` reads schema 1 and 2.
pub use kepoch_report::SCHEMA_VERSION;

/// The figures every result carries (besides `strategy`, `loaded` and `load_error`).
pub use kepoch_report::FIGURES;

/// Longest column label (`sim NAME`, `guest HYPERVISOR BUILD`) taken from a file.
const MAX_LABEL_CHARS: usize = 80;

/// Rounds per strategy when `--rounds` is not given.
pub const DEFAULT_ROUNDS: u32 = 8;

/// Strategies in the order the lab runs and shows them.
pub const ORDER: [Strategy; 3] = [Strategy::Eager, Strategy::Lazy, Strategy::Callback];

/// The `scenario` object of the JSON document.
pub fn scenario_json(scenario: &Scenario, mode: RunMode, rounds: u32) -> Value {
    let mut v = serde_json::to_value(scenario).unwrap_or_else(|_| json!({}));
    v["source"] = json!("sim");
    v["mode"] = json!(mode.name());
    v["rounds"] = json!(rounds);
    v["cycle_period_us"] = json!(kepoch::Config::default().cycle_period_us);
    v["stall_threshold_cycles"] = json!(run::LAB_STALL_THRESHOLD_CYCLES);
    v
}

/// Called with the round, the strategy and the fraction of that round done.
pub type AbProgress<'a> = &'a (dyn Fn(u32, Strategy, f64) + Sync);

/// Runs `rounds` rounds of eager, lazy and callback on `scenario`: round `r` of every strategy uses the
/// same machine seed and workload ([`run::round_seed`]), and the order of the strategies rotates from
/// round to round so that drift of the host hits all of them alike. Returns the report document
/// (schema [`SCHEMA_VERSION`]).
pub fn run_ab(
    scenario: &Scenario,
    mode: RunMode,
    rounds: u32,
    progress: AbProgress<'_>,
) -> Result<Value, ScenarioError> {
    scenario.validate()?;
    if rounds == 0 {
        return Err(ScenarioError("--rounds must be at least 1".into()));
    }
    let mut all = Vec::new();
    for r in 0..rounds {
        for k in 0..ORDER.len() {
            let strategy = ORDER[(k + r as usize) % ORDER.len()];
            let p = |f: f64| progress(r, strategy, f);
            let p: Progress<'_> = &p;
            all.push(run_round(scenario, strategy, mode, r, p)?);
        }
    }
    let label = format!("sim {}", scenario.name);
    for round in &mut all {
        round["column_source"] = json!(label);
    }
    Ok(document(
        scenario_json(scenario, mode, rounds),
        all,
        scenario.seed,
    ))
}

/// The report document of `rounds` (each with `strategy` and `column_source`): the rounds, one
/// summary per column, the comparisons and the verdict, with intervals from a bootstrap seeded by
/// `seed`.
pub fn document(scenario: Value, rounds: Vec<Value>, seed: u64) -> Value {
    let groups = group(&rounds);
    let (results, comparisons) = analysis::analyze(&groups, seed);
    let verdict = verdict::verdict(&results, &comparisons);
    json!({
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario,
        "bootstrap": {
            "seed": seed,
            "resamples": bootstrap::RESAMPLES,
            "confidence": bootstrap::CONFIDENCE,
            "min_rounds": bootstrap::MIN_ROUNDS,
            "unit": "round",
        },
        "results": results,
        "comparisons": comparisons,
        "verdict": verdict,
        "rounds": rounds,
    })
}

/// Groups rounds into columns by strategy and source; columns of [`ORDER`]'s strategies first.
pub fn group(rounds: &[Value]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for r in rounds {
        let strategy = r.get("strategy").and_then(Value::as_str).unwrap_or("?");
        let source = r
            .get("column_source")
            .and_then(Value::as_str)
            .unwrap_or("?");
        match groups
            .iter_mut()
            .find(|g| g.strategy == strategy && g.source == source)
        {
            Some(g) => g.rounds.push(r.clone()),
            None => groups.push(Group {
                strategy: strategy.into(),
                source: source.into(),
                rounds: vec![r.clone()],
            }),
        }
    }
    let rank = |g: &Group| {
        ORDER
            .iter()
            .position(|s| s.name() == g.strategy)
            .unwrap_or(ORDER.len())
    };
    groups.sort_by_key(rank);
    groups
}

/// The rounds of a report document (from `ab --json` or `kepochctl stats --json`, any schema
/// version): its `rounds` when it has them, else every entry of `results` is one round. Each round gets
/// `file` (= `origin`), `column_source` and `topology` (what must match for rounds to be compared).
pub fn rounds_of(document: &Value, origin: &str) -> Result<Vec<Value>, String> {
    let source = kepoch_report::SourceDocument::from_value(document)
        .map_err(|e| format!("{origin}: {e}"))?;
    let scenario = source.scenario.clone();
    let list = source.into_rounds().ok_or_else(|| {
        format!("{origin}: no \"results\" array (not an ab --json or kepochctl stats --json file)")
    })?;
    if list.is_empty() {
        return Err(format!("{origin}: \"results\" is empty"));
    }
    let scenario = scenario.as_ref();
    let mut rounds = Vec::new();
    for (i, mut r) in list.into_iter().enumerate() {
        if !r.is_object() {
            return Err(format!("{origin}: result {i} is not an object"));
        }
        kepoch_report::check_result(&r).map_err(|e| {
            let strategy = r.get("strategy").and_then(Value::as_str).unwrap_or("?");
            format!("{origin}: result {i} ({strategy}): {e}")
        })?;
        r["column_source"] = json!(table::clip(&source_label(&r, scenario), MAX_LABEL_CHARS));
        r["topology"] = topology(&r, scenario);
        r["file"] = json!(origin);
        rounds.push(r);
    }
    Ok(rounds)
}

/// What makes rounds comparable: the guest's hypervisor, OS build and processor counts, or the
/// simulated scenario's machine and schedule.
fn topology(result: &Value, scenario: Option<&Value>) -> Value {
    let guest = result
        .get("guest")
        .or_else(|| scenario.and_then(|s| s.get("guest")));
    if let Some(g) = guest.filter(|g| g.is_object()) {
        return json!({
            "hypervisor": g.get("hypervisor").and_then(|h| h.get("name")).cloned().unwrap_or(Value::Null),
            "os_build": g.get("os_build").cloned().unwrap_or(Value::Null),
            "max_processors": g.get("max_processors").cloned().unwrap_or(Value::Null),
            "active_processors": g.get("active_processors").cloned().unwrap_or(Value::Null),
        });
    }
    let pick = |k: &str| {
        scenario
            .and_then(|s| s.get(k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!({
        "scenario": pick("name"),
        "max_reported": pick("max_reported"),
        "active_at_boot": pick("active_at_boot"),
        "group_size": pick("group_size"),
        "firmware": pick("firmware"),
        "hot_add": pick("hot_add"),
    })
}

/// `Err` naming the first difference when the rounds do not all share one topology.
pub fn check_topology(rounds: &[Value]) -> Result<(), String> {
    let Some(first) = rounds.first() else {
        return Ok(());
    };
    let t0 = &first["topology"];
    for r in &rounds[1..] {
        let t = &r["topology"];
        if t == t0 {
            continue;
        }
        let file = |v: &Value| {
            format!(
                "{} ({})",
                v["file"].as_str().unwrap_or("?"),
                v["strategy"].as_str().unwrap_or("?")
            )
        };
        let keys = |v: &Value| -> Vec<String> {
            v.as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect()
        };
        let kind = |v: &Value| match v.get("scenario") {
            Some(name) => format!("a simulated scenario {name}"),
            None => format!(
                "a guest ({} {})",
                v["hypervisor"].as_str().unwrap_or("unknown hypervisor"),
                v["os_build"].as_str().unwrap_or("")
            ),
        };
        let (what0, what) = if keys(t0) != keys(t) {
            (kind(t0), kind(t))
        } else {
            let key = keys(t0)
                .into_iter()
                .find(|k| t0.get(k.as_str()) != t.get(k.as_str()))
                .unwrap_or_default();
            (
                format!("{key} {}", t0[key.as_str()]),
                format!("{key} {}", t[key.as_str()]),
            )
        };
        return Err(format!(
            "rounds from different guests/topologies: {} has {what0}, {} has {what}; pass --allow-mixed to compare them anyway",
            file(first),
            file(r)
        ));
    }
    Ok(())
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
