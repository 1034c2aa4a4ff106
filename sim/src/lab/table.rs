//! The side-by-side table (one column per strategy and source, one row per figure, with the
//! 95 % interval of every compared figure) and the verdict, both read from the same summaries and
//! comparisons ([`super::analysis`]).

use super::analysis::estimate;
use super::figures::{Figure, FIGURES};
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

/// Whether a result says it loaded.
pub fn loaded(v: &Value) -> bool {
    v.get("loaded").and_then(Value::as_bool).unwrap_or(false)
}

/// The NTSTATUS (`STATUS_…`) or Win32 (`ERROR_…`, what a guest's service start reports) name in a
/// load error, or the error's first 28 characters (with `…` when cut).
pub fn short_error(text: &str) -> String {
    let words = || text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    words()
        .find(|w| w.starts_with("STATUS_"))
        .or_else(|| words().find(|w| w.starts_with("ERROR_") && w.len() > "ERROR_".len()))
        .map_or_else(
            || {
                let mut cut: String = text.chars().take(28).collect();
                if text.chars().count() > 28 {
                    cut.push('…');
                }
                cut
            },
            str::to_string,
        )
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
    rows.push((
        "rounds shortened / over time plan".into(),
        col(
            &|r| match (num(r, &["rounds_shortened"]), num(r, &["rounds_overran"])) {
                (Some(s), Some(o)) => format!("{s:.0} / {o:.0}"),
                _ => "-".into(),
            },
        ),
    ));
    rows.push((
        "failed load attempts (all rounds)".into(),
        col(&|r| num(r, &["failed_loads"]).map_or_else(|| "-".into(), fmt_num)),
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
        let text = |key: &str| {
            c.get(key)
                .and_then(Value::as_str)
                .map(|t| clip(t, NOTE_CHARS))
        };
        if let Some(error) = text("load_error") {
            let _ = writeln!(out, "note: {head} did not load: {error}");
        }
        if let Some(example) = text("shortened_example") {
            let n = c["rounds_shortened"].as_u64().unwrap_or(0);
            let _ = writeln!(out, "note: {head}: {n} round(s) shortened, e.g. {example}");
        }
        if let Some(example) = text("overran_example") {
            let n = c["rounds_overran"].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "note: {head}: {n} round(s) over their time plan, e.g. {example}"
            );
        }
        if let Some(v) = c.get("violations").and_then(Value::as_array) {
            for text in v.iter().filter_map(Value::as_str) {
                let _ = writeln!(out, "VIOLATION: {head}: {}", clip(text, NOTE_CHARS));
            }
        }
    }
    out
}

/// Longest free text (an error, a violation) the notes under the table print.
const NOTE_CHARS: usize = 300;

/// `text` cut to `max` characters (with `...` at the cut), on one line.
pub fn clip(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let kept: String = one_line.chars().take(max.saturating_sub(3)).collect();
    format!("{kept}...")
}

#[cfg(test)]
mod tests {
    use super::short_error;

    #[test]
    fn a_load_error_shows_its_status_or_win32_name_or_its_cut_start() {
        assert_eq!(
            short_error(
                "eager: KeGetProcessorNumberFromIndex(3) failed with STATUS_INVALID_PARAMETER"
            ),
            "STATUS_INVALID_PARAMETER"
        );
        assert_eq!(
            short_error(
                "refused to load (Win32 50); StartServiceW failed with Win32 error 50 (ERROR_NOT_SUPPORTED)"
            ),
            "ERROR_NOT_SUPPORTED"
        );
        assert_eq!(
            short_error("the domain could not be created"),
            "the domain could not be crea…"
        );
        assert_eq!(short_error("short"), "short");
    }
}
