//! The visit (DPC) figures of the lab on the built-in `retire-storm`: with the default
//! `MaxFreesPerVisit` no visit frees more than the bound and the JSON carries `dpc_us` and
//! `frees_per_visit` per strategy; the same scenario with the bound off (0) has visits that free
//! far more.

mod common;

use common::{arg, sim, temp, text};
use serde_json::Value;

/// Runs `ab ARGS --quiet --json FILE` and returns the document.
fn ab(args: &[&str], name: &str) -> Value {
    let json = temp(name);
    let json_arg = arg(&json);
    let mut all = vec!["ab", "--quiet", "--rounds", "2", "--json", &json_arg];
    all.extend_from_slice(args);
    let out = sim(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

/// The largest `frees_per_visit.max` over the loaded results of each strategy.
fn largest_visits(doc: &Value) -> Vec<(String, u64, f64)> {
    let mut rows = Vec::new();
    for result in doc["results"].as_array().expect("results") {
        if result["loaded"] != Value::Bool(true) {
            continue;
        }
        let strategy = result["strategy"].as_str().expect("strategy").to_string();
        let frees = result["frees_per_visit"]["max"]
            .as_u64()
            .expect("frees max");
        let dpc = result["dpc_us"]["max"].as_f64().expect("dpc max");
        assert!(result["dpc_us"]["p99"].as_f64().is_some(), "{result}");
        rows.push((strategy, frees, dpc));
    }
    assert!(!rows.is_empty());
    rows
}

#[test]
fn retire_storm_visits_stay_within_the_bound_and_exceed_it_without() {
    let bounded = ab(&["--scenario", "retire-storm"], "retire-storm.json");
    for (strategy, frees, _) in largest_visits(&bounded) {
        assert!(
            frees <= u64::from(kepoch::config::DEFAULT_MAX_FREES_PER_VISIT),
            "{strategy}: a visit freed {frees} items"
        );
    }
    let builtin = kepoch_sim::lab::builtins::BUILTINS
        .iter()
        .find(|b| b.name == "retire-storm")
        .expect("built in");
    let file = temp("retire-storm-unbounded.toml");
    let unbounded_text = builtin
        .text
        .replace("[workload]", "[workload]\nmax_frees_per_visit = 0");
    std::fs::write(&file, unbounded_text).unwrap();
    let unbounded = ab(&["--scenario", &arg(&file)], "retire-storm-unbounded.json");
    let largest = largest_visits(&unbounded)
        .into_iter()
        .map(|(_, frees, _)| frees)
        .max()
        .unwrap();
    assert!(
        largest > 4 * u64::from(kepoch::config::DEFAULT_MAX_FREES_PER_VISIT),
        "without the bound the bursts should give visits of thousands of frees, largest {largest}"
    );
}
