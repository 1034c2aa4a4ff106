//! From rounds to columns: groups round results by strategy and source, computes every figure of the report
//! over the rounds (pooled exact quantiles for latencies, medians or sums for counts) with its 95 %
//! interval, and compares every pair of strategies. `ab` and `report` both go through here, so the
//! table, the verdict and the JSON are computed from the same numbers.

use super::bootstrap::{Bootstrap, Comparison, Dist, Interval, Observation, Statistic};
use super::figures::{Figure, FIGURES};
use super::table::{at, num};
use serde_json::{json, Value};
use Statistic::{Median, Quantile, Sum};

/// The distribution a round carries for a latency object (`first_enter_ns`, ...): exact `samples`, a
/// histogram `hist` of `[value, count]` pairs, or (files from before schema 2) the result's
/// `first_enter_samples_ns`.
pub fn round_dist(round: &Value, object: &str) -> Option<Dist> {
    let o = round.get(object)?;
    if let Some(s) = o.get("samples").and_then(Value::as_array) {
        return Some(Dist::from_samples(
            &s.iter().filter_map(Value::as_f64).collect::<Vec<_>>(),
        ));
    }
    if let Some(h) = o.get("hist").and_then(Value::as_array) {
        let points = h
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_u64()?)))
            .collect();
        return Some(Dist { points });
    }
    if object == "first_enter_ns" {
        let s = round.get("first_enter_samples_ns")?.as_array()?;
        return Some(Dist::from_samples(
            &s.iter().filter_map(Value::as_f64).collect::<Vec<_>>(),
        ));
    }
    None
}

/// What a loaded round contributes to `figure` (None: not measured there).
fn observe(round: &Value, figure: &Figure) -> Option<Observation> {
    match figure.stat {
        Quantile(_) => match round_dist(round, figure.path[0]) {
            Some(d) if d.count() > 0 => Some(Observation::Dist(d)),
            _ => num(round, figure.path).map(Observation::Point),
        },
        Median | Sum => num(round, figure.path).map(Observation::Scalar),
    }
}

/// One column: every round of one strategy from one source.
#[derive(Clone, Debug)]
pub struct Group {
    /// Strategy name.
    pub strategy: String,
    /// Where the rounds come from (`sim qemu-hotadd`, `guest KVM 10.0.20348`).
    pub source: String,
    /// The round results.
    pub rounds: Vec<Value>,
}

fn loaded(v: &Value) -> bool {
    v.get("loaded").and_then(Value::as_bool).unwrap_or(false)
}

impl Group {
    fn loaded_rounds(&self) -> Vec<&Value> {
        self.rounds.iter().filter(|r| loaded(r)).collect()
    }

    fn observations(&self, figure: &Figure) -> Vec<Observation> {
        self.loaded_rounds()
            .into_iter()
            .filter_map(|r| observe(r, figure))
            .collect()
    }

    /// Samples behind a latency object over the loaded rounds.
    fn samples(&self, object: &str) -> u64 {
        self.loaded_rounds()
            .into_iter()
            .map(|r| {
                round_dist(r, object).map_or_else(
                    || num(r, &[object, "count"]).unwrap_or(0.0) as u64,
                    |d| d.count(),
                )
            })
            .sum()
    }

    /// Column name: the strategy, with the source when several columns share it.
    pub fn name(&self, all: &[Group]) -> String {
        if all.iter().filter(|g| g.strategy == self.strategy).count() > 1 {
            format!("{} ({})", self.strategy, self.source)
        } else {
            self.strategy.clone()
        }
    }
}

fn interval_json(i: &Interval) -> Value {
    match (i.low, i.high) {
        (Some(lo), Some(hi)) => json!([number(lo), number(hi)]),
        _ => Value::Null,
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A JSON number: an integer when the value is whole (counts stay counts), else rounded to 0.001.
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        json!(v as i64)
    } else {
        json!(round3(v))
    }
}

/// Sets `value` at `path` in `target`, creating objects on the way.
fn set(target: &mut Value, path: &[&str], value: Value) {
    let mut cur = target;
    for p in &path[..path.len() - 1] {
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = value;
}

/// How the loaded rounds kept to their plan (simulated rounds; `null` for rounds that do not say, as
/// guest files): rounds that ran fewer loads than planned, rounds over their wall-clock time plan, and
/// failed load attempts, with the first example of each.
fn run_plan(rounds: &[&Value]) -> Value {
    let planned: Vec<&Value> = rounds
        .iter()
        .copied()
        .filter(|r| r.get("planned_ms").is_some())
        .collect();
    if planned.is_empty() {
        return json!({"rounds_shortened": null, "rounds_overran": null, "failed_loads": null});
    }
    let round_no = |r: &Value| r.get("round").and_then(Value::as_u64).unwrap_or(0);
    let shortened: Vec<String> = planned
        .iter()
        .filter_map(|r| {
            let why = r.get("shortened").and_then(Value::as_str)?;
            Some(format!("round {}: {why}", round_no(r)))
        })
        .collect();
    let overran: Vec<String> = planned
        .iter()
        .filter(|r| r.get("overran") == Some(&Value::Bool(true)))
        .map(|r| {
            let ms = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
            format!(
                "round {}: {} ms of wall time for a plan of {} ms ({} ms of run)",
                round_no(r),
                ms("wall_ms"),
                ms("time_plan_ms"),
                ms("planned_ms")
            )
        })
        .collect();
    let failed: u64 = planned
        .iter()
        .filter_map(|r| r.get("failed_loads").and_then(Value::as_u64))
        .sum();
    json!({
        "rounds_shortened": shortened.len(),
        "shortened_example": shortened.first(),
        "rounds_overran": overran.len(),
        "overran_example": overran.first(),
        "failed_loads": failed,
    })
}

/// The summary of a group: a result whose figures are computed over the rounds, plus
/// `estimates` (value, interval, rounds, samples of every figure).
fn summarize(group: &Group, boot: &Bootstrap) -> Value {
    let up = group.loaded_rounds();
    let first = up.first().copied().or(group.rounds.first());
    let error = group
        .rounds
        .iter()
        .find_map(|r| r.get("load_error").and_then(Value::as_str));
    let mut out = json!({
        "strategy": group.strategy,
        "source": first.and_then(|r| r.get("source")).cloned().unwrap_or(Value::Null),
        "column_source": group.source,
        "loaded": !up.is_empty(),
        "load_error": error,
        "rounds": group.rounds.len(),
        "rounds_loaded": up.len(),
    });
    for key in ["guest", "callback_state", "mode", "max_reported", "active"] {
        if let Some(v) = first.and_then(|r| r.get(key)) {
            out[key] = v.clone();
        }
    }
    if let (Some(o), Value::Object(plan)) = (out.as_object_mut(), run_plan(&up)) {
        o.extend(plan);
    }
    let mut estimates = serde_json::Map::new();
    for f in FIGURES {
        let obs = group.observations(f);
        let salt = format!("{} {} {}", f.key, group.strategy, group.source);
        let value = if up.is_empty() {
            None
        } else {
            boot.estimate(f.stat, &obs, &salt)
        };
        set(
            &mut out,
            f.path,
            value.map_or(Value::Null, |i| number(i.value)),
        );
        if let Some(i) = value {
            let samples = match f.stat {
                Quantile(_) => group.samples(f.path[0]),
                _ => obs.len() as u64,
            };
            estimates.insert(
                f.key.into(),
                json!({
                    "value": number(i.value),
                    "ci95": interval_json(&i),
                    "rounds": obs.len(),
                    "samples": samples,
                    "pooled": f.stat.pools(&obs),
                }),
            );
        }
    }
    if up.is_empty() {
        // Nothing was measured: every figure is null, as in a single result that did not load.
        for key in super::FIGURES {
            out[*key] = Value::Null;
        }
    } else {
        for object in ["first_enter_ns", "enter_exit_ns"] {
            out[object]["count"] = json!(group.samples(object));
        }
    }
    let mut violations = Vec::new();
    for r in &group.rounds {
        if let Some(v) = r.get("violations").and_then(Value::as_array) {
            let round = r.get("round").and_then(Value::as_u64).unwrap_or(0);
            violations.extend(
                v.iter()
                    .filter_map(Value::as_str)
                    .map(|t| json!(format!("round {round}: {t}"))),
            );
        }
    }
    out["violations"] = Value::Array(violations);
    out["estimates"] = Value::Object(estimates);
    out
}

/// A comparison of one figure between two columns, as JSON.
fn comparison_json(
    figure: &Figure,
    a: &str,
    b: &str,
    c: &Comparison,
    rounds: (usize, usize),
) -> Value {
    json!({
        "figure": figure.key,
        "a": a,
        "b": b,
        "rounds": [rounds.0, rounds.1],
        "difference": number(c.difference.value),
        "difference_ci95": interval_json(&c.difference),
        "ratio": c.ratio.map(|r| number(r.value)),
        "ratio_ci95": c.ratio.as_ref().map_or(Value::Null, interval_json),
        "significant": c.significant(),
    })
}

/// The analysis of grouped rounds: `{"results": [...], "comparisons": [...]}`. Comparisons have the
/// larger value first (`a`), so ratios read "a is N× b".
pub fn analyze(groups: &[Group], seed: u64) -> (Vec<Value>, Vec<Value>) {
    let boot = Bootstrap::new(seed);
    let results: Vec<Value> = groups.iter().map(|g| summarize(g, &boot)).collect();
    let mut comparisons = Vec::new();
    for f in FIGURES.iter().filter(|f| f.compared) {
        for i in 0..groups.len() {
            for j in i + 1..groups.len() {
                let (oi, oj) = (groups[i].observations(f), groups[j].observations(f));
                let (vi, vj) = (num(&results[i], f.path), num(&results[j], f.path));
                let (Some(vi), Some(vj)) = (vi, vj) else {
                    continue;
                };
                let (a, b, oa, ob) = if vi >= vj {
                    (i, j, &oi, &oj)
                } else {
                    (j, i, &oj, &oi)
                };
                let salt = format!(
                    "{} {} {}",
                    f.key,
                    groups[a].name(groups),
                    groups[b].name(groups)
                );
                if let Some(c) = boot.compare(f.stat, oa, ob, &salt) {
                    comparisons.push(comparison_json(
                        f,
                        &groups[a].name(groups),
                        &groups[b].name(groups),
                        &c,
                        (oa.len(), ob.len()),
                    ));
                }
            }
        }
    }
    (results, comparisons)
}

/// The estimate of `key` in a summarized result: value and interval.
pub fn estimate(result: &Value, key: &str) -> Option<(f64, Option<(f64, f64)>)> {
    let e = at(result, &["estimates", key])?;
    let value = e.get("value")?.as_f64()?;
    let ci = e
        .get("ci95")
        .and_then(Value::as_array)
        .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
    Some((value, ci))
}
