//! The side-by-side table (one column per strategy and source, one row per SPEC §6 figure, with the
//! 95 % interval of every compared figure) and the verdict, both read from the same summaries and
//! comparisons ([`super::analysis`]).

use super::analysis::{estimate, Figure, FIGURES};
use super::bootstrap::MIN_ROUNDS;
use serde_json::Value;
use std::fmt::Write;

/// The value at `path`, if present.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    Some(cur)
}

/// The number at `path`, if present and not null.
pub fn num(v: &Value, path: &[&str]) -> Option<f64> {
    at(v, path).and_then(Value::as_f64)
}

fn loaded(v: &Value) -> bool {
    v.get("loaded").and_then(Value::as_bool).unwrap_or(false)
}

/// The NTSTATUS name in a load error, or the error itself.
fn short_error(text: &str) -> String {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("STATUS_"))
        .map_or_else(|| text.chars().take(28).collect(), str::to_string)
}

/// A number as the table prints it: whole numbers without decimals, others with up to one.
pub fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Column headings: the strategy, with the source when several columns share a strategy.
pub fn headings(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .map(|r| {
            let strategy = r["strategy"].as_str().unwrap_or("?");
            let shared = results
                .iter()
                .filter(|o| o["strategy"].as_str() == Some(strategy))
                .count()
                > 1;
            if shared {
                format!(
                    "{strategy} ({})",
                    r["column_source"].as_str().unwrap_or("?")
                )
            } else {
                strategy.to_string()
            }
        })
        .collect()
}

fn text_cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None => "-".into(),
        Some(Value::Null) if key == "load_error" => "none".into(),
        Some(Value::Null) => "-".into(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "NO" }.into(),
        Some(Value::String(s)) if key == "load_error" => short_error(s),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn figure_cell(v: &Value, f: &Figure) -> String {
    match estimate(v, f.key) {
        Some((value, Some((lo, hi)))) if f.compared => {
            format!("{} [{}, {}]", fmt_num(value), fmt_num(lo), fmt_num(hi))
        }
        Some((value, _)) => fmt_num(value),
        None if loaded(v) => "n/a".into(),
        None => "-".into(),
    }
}

fn samples_cell(v: &Value, object: &str) -> String {
    match num(v, &[object, "count"]) {
        Some(n) if loaded(v) => fmt_num(n),
        _ => "-".into(),
    }
}

/// The table, with the full load errors and the violations as notes under it.
pub fn render(results: &[Value]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let col = |f: &dyn Fn(&Value) -> String| results.iter().map(f).collect::<Vec<_>>();
    rows.push((
        "rounds (loaded / run)".into(),
        col(&|r| format!("{} / {}", r["rounds_loaded"], r["rounds"])),
    ));
    for (label, key) in [
        ("loaded", "loaded"),
        ("load error", "load_error"),
        ("callback registration", "callback_state"),
    ] {
        rows.push((label.into(), col(&|r| text_cell(r, key))));
    }
    for f in FIGURES {
        if f.key == "first_enter_ns.p50" {
            rows.push((
                "first enter samples (count)".into(),
                col(&|r| samples_cell(r, "first_enter_ns")),
            ));
        }
        if f.key == "enter_exit_ns.p50" {
            rows.push((
                "enter+exit samples (count)".into(),
                col(&|r| samples_cell(r, "enter_exit_ns")),
            ));
        }
        rows.push((f.label.into(), col(&|r| figure_cell(r, f))));
    }
    let heads = headings(results);
    let sources = col(&|r| r["column_source"].as_str().unwrap_or("").to_string());
    let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..results.len())
        .map(|i| {
            rows.iter()
                .map(|(_, c)| c[i].len())
                .chain([heads[i].len(), sources[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |label: &str, values: &[String]| {
        let _ = write!(out, "{label:<label_width$}");
        for (v, w) in values.iter().zip(&widths) {
            let _ = write!(out, "  {v:>w$}");
        }
        out.push('\n');
    };
    line("", &heads);
    line("", &sources);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&"-".repeat(label_width), &rule);
    for (label, cells) in &rows {
        line(label, cells);
    }
    out.push_str(
        "[a, b]: 95 % interval, bootstrap over rounds; latencies pooled over the rounds' samples\n",
    );
    for (c, head) in results.iter().zip(&heads) {
        if let Some(error) = c.get("load_error").and_then(Value::as_str) {
            let _ = writeln!(out, "note: {head} did not load: {error}");
        }
        if let Some(v) = c.get("violations").and_then(Value::as_array) {
            for text in v.iter().filter_map(Value::as_str) {
                let _ = writeln!(out, "VIOLATION: {head}: {text}");
            }
        }
    }
    out
}

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
