//! The side-by-side table (one column per strategy, one row per SPEC §6 figure) and the verdict
//! paragraph, both computed from result objects.

use super::Column;
use serde_json::Value;
use std::fmt::Write;

/// Rows of the table: label (with unit) and the path of the figure in a result object.
const ROWS: &[(&str, &[&str])] = &[
    ("loaded", &["loaded"]),
    ("load error", &["load_error"]),
    ("callback registration", &["callback_state"]),
    ("CPUs prepared", &["cpus_prepared"]),
    ("per-CPU memory (bytes)", &["per_cpu_bytes"]),
    (
        "prepared at DISPATCH, hot path (count)",
        &["prepare_at_dispatch"],
    ),
    ("preparation failures (count)", &["prepare_failures"]),
    ("overflow fallback uses (count)", &["fallback_uses"]),
    ("first enter p50 (ns)", &["first_enter_ns", "p50"]),
    ("first enter p99 (ns)", &["first_enter_ns", "p99"]),
    ("first enter max (ns)", &["first_enter_ns", "max"]),
    ("enter+exit p50 (ns)", &["enter_exit_ns", "p50"]),
    ("enter+exit p99 (ns)", &["enter_exit_ns", "p99"]),
    ("enter+exit max (ns)", &["enter_exit_ns", "max"]),
    ("cycles (count)", &["cycles"]),
    ("cycle latency p50 (us)", &["cycle_latency_us", "p50"]),
    ("cycle latency p99 (us)", &["cycle_latency_us", "p99"]),
    ("messages, DPCs delivered (count)", &["messages"]),
    ("messages to idle CPUs (count)", &["messages_to_idle_cpus"]),
    ("retired (objects)", &["retired"]),
    ("freed (objects)", &["freed"]),
    ("pending at end (objects)", &["pending_at_end"]),
    ("leaked after unload (blocks)", &["leaked"]),
    ("use-after-free (reads)", &["use_after_free"]),
    ("stalls reported (count)", &["stalls_reported"]),
    ("hot-add AddStart (count)", &["hot_add", "start"]),
    ("hot-add AddComplete (count)", &["hot_add", "complete"]),
    ("hot-add AddFailure (count)", &["hot_add", "failure"]),
    ("hot-add vetoed (count)", &["hot_add", "vetoed"]),
];

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

fn cell(v: &Value, path: &[&str]) -> String {
    match at(v, path) {
        None => "-".into(),
        Some(Value::Null) => {
            if path == ["load_error"] {
                "none".into()
            } else if loaded(v) {
                "n/a".into()
            } else {
                "-".into()
            }
        }
        Some(Value::Bool(b)) => if *b { "yes" } else { "NO" }.into(),
        Some(Value::String(s)) if path == ["load_error"] => short_error(s),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => other.to_string(),
    }
}

/// The table, with the full load errors as notes under it.
pub fn render(columns: &[Column]) -> String {
    let label_width = ROWS.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let cells: Vec<Vec<String>> = columns
        .iter()
        .map(|c| ROWS.iter().map(|(_, p)| cell(&c.result, p)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .zip(&cells)
        .map(|(c, col)| {
            col.iter()
                .map(String::len)
                .chain([c.heading.len(), c.source.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |label: &str, values: Vec<&str>| {
        let _ = write!(out, "{label:<label_width$}");
        for (v, w) in values.iter().zip(&widths) {
            let _ = write!(out, "  {v:>w$}");
        }
        out.push('\n');
    };
    line("", columns.iter().map(|c| c.heading.as_str()).collect());
    line("", columns.iter().map(|c| c.source.as_str()).collect());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(
        &"-".repeat(label_width),
        rule.iter().map(String::as_str).collect(),
    );
    for (r, (label, _)) in ROWS.iter().enumerate() {
        line(label, cells.iter().map(|col| col[r].as_str()).collect());
    }
    for c in columns {
        if let Some(error) = c.result.get("load_error").and_then(Value::as_str) {
            let _ = writeln!(
                out,
                "note: {} ({}) did not load: {error}",
                c.heading, c.source
            );
        }
        if let Some(v) = c.result.get("violations").and_then(Value::as_array) {
            for text in v.iter().filter_map(Value::as_str) {
                let _ = writeln!(out, "VIOLATION: {} ({}): {text}", c.heading, c.source);
            }
        }
    }
    out
}

/// Exact median of the first-enter samples when the result has them, else the histogram's p50.
fn first_enter_median(v: &Value) -> Option<f64> {
    if let Some(samples) = v.get("first_enter_samples_ns").and_then(Value::as_array) {
        let mut s: Vec<f64> = samples.iter().filter_map(Value::as_f64).collect();
        if !s.is_empty() {
            s.sort_by(f64::total_cmp);
            let n = s.len();
            return Some(if n % 2 == 1 {
                s[n / 2]
            } else {
                (s[n / 2 - 1] + s[n / 2]) / 2.0
            });
        }
    }
    num(v, &["first_enter_ns", "p50"])
}

fn list(names: &[String]) -> String {
    match names.len() {
        0 => String::new(),
        1 => names[0].clone(),
        n => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

fn ns(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1} us", value / 1_000.0)
    } else {
        format!("{value:.0} ns")
    }
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

/// The verdict paragraph: which strategy loads, which pays preparation on the hot path, the
/// first-enter latency ratio, the memory ratio and the messages to idle CPUs, all from the figures.
pub fn verdict(columns: &[Column]) -> String {
    let name = |c: &Column| {
        if columns.iter().filter(|o| o.heading == c.heading).count() > 1 {
            format!("{} ({})", c.heading, c.source)
        } else {
            c.heading.clone()
        }
    };
    let up: Vec<&Column> = columns.iter().filter(|c| loaded(&c.result)).collect();
    let down: Vec<&Column> = columns.iter().filter(|c| !loaded(&c.result)).collect();
    let mut s = Vec::new();

    // Loading.
    let up_names: Vec<String> = up.iter().map(|c| name(c)).collect();
    match (up.is_empty(), down.is_empty()) {
        (false, true) => s.push(format!("All of {} loaded.", list(&up_names))),
        (true, _) => s.push("No strategy loaded.".into()),
        (false, false) => {
            let why: Vec<String> = down
                .iter()
                .map(|c| {
                    let error = c
                        .result
                        .get("load_error")
                        .and_then(Value::as_str)
                        .map_or_else(|| "unknown error".into(), short_error);
                    format!("{} did not ({error})", name(c))
                })
                .collect();
            s.push(format!("{} loaded; {}.", list(&up_names), list(&why)));
        }
    }

    // Preparation on the hot path.
    let mut paid = Vec::new();
    let mut clean = Vec::new();
    for c in &up {
        match num(&c.result, &["prepare_at_dispatch"]) {
            Some(n) if n > 0.0 => paid.push(format!("{} ({n:.0})", name(c))),
            Some(_) => clean.push(name(c)),
            None => {}
        }
    }
    if !paid.is_empty() {
        s.push(format!(
            "Preparation paid on the hot path, at DISPATCH in a first enter: {}.",
            list(&paid)
        ));
    }
    if !clean.is_empty() {
        s.push(format!(
            "{} paid no preparation on the hot path.",
            list(&clean)
        ));
    }
    for c in &up {
        if let Some(f) = num(&c.result, &["prepare_failures"]).filter(|f| *f > 0.0) {
            s.push(format!(
                "{} saw {f:.0} failed preparation(s) and fell back to the lazy path or the overflow slot.",
                name(c)
            ));
        }
    }

    // First-enter latency ratio.
    let mut firsts: Vec<(String, f64)> = up
        .iter()
        .filter_map(|c| first_enter_median(&c.result).map(|m| (name(c), m)))
        .filter(|(_, m)| *m > 0.0)
        .collect();
    firsts.sort_by(|a, b| a.1.total_cmp(&b.1));
    if firsts.len() >= 2 {
        let (fast, slow) = (&firsts[0], &firsts[firsts.len() - 1]);
        s.push(format!(
            "Median first enter on a CPU: {}; {} is {:.1}x {}.",
            firsts
                .iter()
                .map(|(n, m)| format!("{n} {}", ns(*m)))
                .collect::<Vec<_>>()
                .join(", "),
            slow.0,
            slow.1 / fast.1,
            fast.0
        ));
    }

    // Memory ratio.
    let mut mem: Vec<(String, f64, f64)> = up
        .iter()
        .filter_map(|c| {
            Some((
                name(c),
                num(&c.result, &["per_cpu_bytes"])?,
                num(&c.result, &["cpus_prepared"]).unwrap_or(0.0),
            ))
        })
        .collect();
    mem.sort_by(|a, b| a.1.total_cmp(&b.1));
    if mem.len() >= 2 && mem[0].1 > 0.0 {
        let small = &mem[0];
        let parts: Vec<String> = mem
            .iter()
            .map(|(n, b, cpus)| {
                format!(
                    "{n} {b:.0} bytes for {cpus:.0} CPU(s) ({:.1}x {})",
                    b / small.1,
                    small.0
                )
            })
            .collect();
        s.push(format!("Per-CPU memory: {}.", parts.join(", ")));
    }

    // Messages to idle CPUs.
    let mut quiet = Vec::new();
    let mut noisy = Vec::new();
    for c in &up {
        match num(&c.result, &["messages_to_idle_cpus"]) {
            Some(n) if n > 0.0 => {
                let idle = c
                    .result
                    .get("idle_cpus")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                noisy.push(format!("{} sent {n:.0} to {idle} idle CPU(s)", name(c)))
            }
            Some(_) => quiet.push(name(c)),
            None => {}
        }
    }
    if !quiet.is_empty() {
        s.push(format!(
            "Idle CPUs received no messages under {}.",
            list(&quiet)
        ));
    }
    if !noisy.is_empty() {
        s.push(format!(
            "Energy cost: {} (every prepared CPU is visited in every cycle).",
            list(&noisy)
        ));
    }

    // Safety and liveness.
    let bad: Vec<String> = up
        .iter()
        .filter(|c| {
            num(&c.result, &["use_after_free"]).unwrap_or(0.0) > 0.0
                || num(&c.result, &["leaked"]).unwrap_or(0.0) > 0.0
        })
        .map(|c| name(c))
        .collect();
    let checked = up
        .iter()
        .any(|c| num(&c.result, &["use_after_free"]).is_some());
    if !bad.is_empty() {
        s.push(format!(
            "FAILURE: use-after-free or leak under {}.",
            list(&bad)
        ));
    } else if checked {
        s.push("No use-after-free and no leak under any strategy that loaded.".into());
    }
    let stalls: Vec<String> = up
        .iter()
        .filter_map(|c| {
            num(&c.result, &["stalls_reported"])
                .filter(|n| *n > 0.0)
                .map(|n| format!("{} {n:.0}", name(c)))
        })
        .collect();
    if !stalls.is_empty() {
        s.push(format!("Stalled readers reported: {}.", list(&stalls)));
    }
    wrap(&s.join(" "), 100)
}
