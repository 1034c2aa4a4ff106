//! The verdict paragraph: which strategies loaded and on what their figures rest (rounds, samples,
//! rounds cut short or over their time plan), then for every compared figure only the differences
//! whose 95 % interval excludes "no difference", then safety. It reads the same summaries and
//! comparisons as the table ([`super::analysis`]).

use super::analysis::estimate;
use super::bootstrap::MIN_ROUNDS;
use super::figures::{Figure, FIGURES};
use super::table::{clip, fmt_num, headings, loaded, num, short_error};
use serde_json::Value;

fn list(names: &[String]) -> String {
    match names.len() {
        0 => String::new(),
        1 => names[0].clone(),
        n => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

/// A figure's value with the unit its label names.
fn with_unit(f: &Figure, v: f64) -> String {
    if f.label.ends_with("(ns)") {
        if v >= 10_000.0 {
            format!("{:.1} us", v / 1_000.0)
        } else {
            format!("{v:.0} ns")
        }
    } else if f.label.ends_with("(us)") {
        format!("{} us", fmt_num(v))
    } else if f.label.ends_with("(bytes)") {
        format!("{} bytes", fmt_num(v))
    } else {
        fmt_num(v)
    }
}

/// The label without its unit.
fn name_of(f: &Figure) -> &str {
    f.label.split(" (").next().unwrap_or(f.label)
}

fn ci_text(ci: &Value, unit: &dyn Fn(f64) -> String) -> Option<String> {
    let a = ci.as_array()?;
    Some(format!(
        "{} to {}",
        unit(a.first()?.as_f64()?),
        unit(a.get(1)?.as_f64()?)
    ))
}

/// One sentence about figure `f`: the differences that are significant, then the pairs without one.
fn figure_sentence(
    f: &Figure,
    results: &[Value],
    heads: &[String],
    comparisons: &[Value],
) -> Option<String> {
    let mine: Vec<&Value> = comparisons
        .iter()
        .filter(|c| c["figure"].as_str() == Some(f.key))
        .collect();
    if mine.is_empty() {
        return None;
    }
    let value_of = |name: &str| {
        let i = heads.iter().position(|h| h == name)?;
        estimate(&results[i], f.key).map(|(v, _)| v)
    };
    let mut real = Vec::new();
    let mut none = Vec::new();
    let mut unknown = Vec::new();
    for c in &mine {
        let (a, b) = (
            c["a"].as_str().unwrap_or("?"),
            c["b"].as_str().unwrap_or("?"),
        );
        let (va, vb) = (
            value_of(a).unwrap_or(f64::NAN),
            value_of(b).unwrap_or(f64::NAN),
        );
        let values = format!("{} vs {}", with_unit(f, va), with_unit(f, vb));
        if c["difference_ci95"].is_null() {
            unknown.push(format!("{a} and {b} ({values})"));
        } else if c["significant"] == true {
            let ratio = c["ratio"]
                .as_f64()
                .zip(ci_text(&c["ratio_ci95"], &|x| format!("{x:.2}x")));
            real.push(match ratio {
                Some((r, ci)) => format!("{a} {r:.2}x {b} ({values}; 95 % CI {ci})"),
                None => format!(
                    "{a} above {b} ({values}; difference 95 % CI {})",
                    ci_text(&c["difference_ci95"], &|x| with_unit(f, x)).unwrap_or_default()
                ),
            });
        } else {
            let ratio = c["ratio"]
                .as_f64()
                .zip(ci_text(&c["ratio_ci95"], &|x| format!("{x:.2}x")))
                .map(|(r, ci)| format!(", ratio {r:.2}x, 95 % CI {ci}"))
                .unwrap_or_default();
            none.push(format!("{a} and {b} ({values}{ratio})"));
        }
    }
    let mut parts = Vec::new();
    if !real.is_empty() {
        parts.push(real.join("; "));
    }
    if !none.is_empty() {
        parts.push(format!("no significant difference between {}", list(&none)));
    }
    if !unknown.is_empty() {
        parts.push(format!(
            "too few rounds for an interval (needs {MIN_ROUNDS} per strategy) for {}",
            list(&unknown)
        ));
    }
    Some(format!("{}: {}.", capitalise(name_of(f)), parts.join("; ")))
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Wraps `text` at `width` columns.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut len = 0;
    for word in text.split_whitespace() {
        if len > 0 && len + 1 + word.len() > width {
            out.push('\n');
            len = 0;
        } else if len > 0 {
            out.push(' ');
            len += 1;
        }
        out.push_str(word);
        len += word.len();
    }
    out
}

/// First-enter samples a strategy needs for a p99 that rests on more than one sample (the built-in
/// scenarios plan at least this many per strategy in the default 8 rounds).
pub const MIN_FIRST_ENTER_SAMPLES: u64 = 100;

/// The sentences about rounds that did not run as planned, and about first-enter figures that rest on
/// fewer than [`MIN_FIRST_ENTER_SAMPLES`] samples, with the reason when rounds were cut short.
fn plan_sentences(results: &[Value], heads: &[String], up: &[usize]) -> Vec<String> {
    let mut s = Vec::new();
    let count = |i: usize, key: &str| num(&results[i], &[key]).unwrap_or(0.0) as u64;
    let example = |i: usize, key: &str| {
        results[i][key]
            .as_str()
            .map(|t| clip(t, 160))
            .unwrap_or_default()
    };
    let rounds = |i: usize| count(i, "rounds_loaded");
    let short: Vec<String> = up
        .iter()
        .filter(|&&i| count(i, "rounds_shortened") > 0)
        .map(|&i| {
            format!(
                "{} {} of {} rounds (e.g. {})",
                heads[i],
                count(i, "rounds_shortened"),
                rounds(i),
                example(i, "shortened_example")
            )
        })
        .collect();
    if !short.is_empty() {
        s.push(format!(
            "SHORTENED: rounds that ran fewer loads than planned, so their figures rest on less run time: {}.",
            list(&short)
        ));
    }
    let retried: Vec<String> = up
        .iter()
        .filter(|&&i| count(i, "failed_loads") > 0 && count(i, "rounds_shortened") == 0)
        .map(|&i| format!("{} {}", heads[i], count(i, "failed_loads")))
        .collect();
    if !retried.is_empty() {
        s.push(format!(
            "Failed reloads, retried (every round ran all its loads): {}.",
            list(&retried)
        ));
    }
    let over: Vec<String> = up
        .iter()
        .filter(|&&i| count(i, "rounds_overran") > 0)
        .map(|&i| {
            format!(
                "{} {} of {} rounds (e.g. {})",
                heads[i],
                count(i, "rounds_overran"),
                rounds(i),
                example(i, "overran_example")
            )
        })
        .collect();
    if !over.is_empty() {
        s.push(format!(
            "OVER TIME PLAN: rounds that took longer than planned (a busy host or a machine too large for it: the simulated CPUs ran slower than real ones): {}.",
            list(&over)
        ));
    }
    let few: Vec<String> = up
        .iter()
        .filter_map(|&i| {
            let n = num(&results[i], &["first_enter_ns", "count"])? as u64;
            if n >= MIN_FIRST_ENTER_SAMPLES {
                return None;
            }
            let why = if count(i, "rounds_shortened") > 0 {
                " (rounds were shortened)"
            } else {
                ""
            };
            Some(format!("{} {n}{why}", heads[i]))
        })
        .collect();
    if !few.is_empty() {
        s.push(format!(
            "Fewer than {MIN_FIRST_ENTER_SAMPLES} first-enter samples (first-enter p99 and max rest on few samples): {}.",
            list(&few)
        ));
    }
    s
}

/// The verdict paragraph: which strategy loads, what each figure rests on, then for every compared
/// figure only the differences whose 95 % interval excludes "no difference" (and "no significant
/// difference" otherwise), then safety. Every number comes from `results` and `comparisons`.
pub fn verdict(results: &[Value], comparisons: &[Value]) -> String {
    let heads = headings(results);
    let up: Vec<usize> = (0..results.len())
        .filter(|&i| loaded(&results[i]))
        .collect();
    let down: Vec<usize> = (0..results.len())
        .filter(|&i| !loaded(&results[i]))
        .collect();
    let mut s = Vec::new();

    let rounds_of = |i: usize| {
        let r = &results[i];
        let (l, n) = (
            r["rounds_loaded"].as_u64().unwrap_or(0),
            r["rounds"].as_u64().unwrap_or(0),
        );
        if l == n {
            format!("{} ({n} rounds)", heads[i])
        } else {
            format!("{} ({l} of {n} rounds)", heads[i])
        }
    };
    let up_names: Vec<String> = up.iter().map(|&i| rounds_of(i)).collect();
    match (up.is_empty(), down.is_empty()) {
        (false, true) => s.push(format!("Loaded: {}.", list(&up_names))),
        (true, _) => s.push("No strategy loaded.".into()),
        (false, false) => {
            let why: Vec<String> = down
                .iter()
                .map(|&i| {
                    let error = results[i]["load_error"]
                        .as_str()
                        .map_or_else(|| "unknown error".into(), short_error);
                    format!("{} did not ({error})", heads[i])
                })
                .collect();
            s.push(format!("Loaded: {}; {}.", list(&up_names), list(&why)));
        }
    }
    let samples: Vec<String> = up
        .iter()
        .filter_map(|&i| {
            num(&results[i], &["first_enter_ns", "count"]).map(|n| format!("{} {n:.0}", heads[i]))
        })
        .collect();
    if !samples.is_empty() {
        s.push(format!("First-enter samples: {}.", list(&samples)));
    }
    s.extend(plan_sentences(results, &heads, &up));
    for f in FIGURES.iter().filter(|f| f.compared) {
        if let Some(text) = figure_sentence(f, results, &heads, comparisons) {
            s.push(text);
        }
    }
    let bad: Vec<String> = up
        .iter()
        .filter(|&&i| {
            num(&results[i], &["use_after_free"]).unwrap_or(0.0) > 0.0
                || num(&results[i], &["leaked"]).unwrap_or(0.0) > 0.0
        })
        .map(|&i| heads[i].clone())
        .collect();
    let checked = up
        .iter()
        .any(|&i| num(&results[i], &["use_after_free"]).is_some());
    if !bad.is_empty() {
        s.push(format!(
            "FAILURE: use-after-free or leak under {}.",
            list(&bad)
        ));
    } else if checked {
        s.push("No use-after-free and no leak in any round of any strategy that loaded.".into());
    }
    let stalls: Vec<String> = up
        .iter()
        .filter_map(|&i| {
            num(&results[i], &["stalls_reported"])
                .filter(|n| *n > 0.0)
                .map(|n| format!("{} {} per round", heads[i], fmt_num(n)))
        })
        .collect();
    if !stalls.is_empty() {
        s.push(format!("Stalled readers reported: {}.", list(&stalls)));
    }
    wrap(&s.join(" "), 100)
}
