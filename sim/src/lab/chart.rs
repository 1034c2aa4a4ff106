//! The SVG chart: first-enter latency distribution (every sample, log scale, with the median) and
//! per-CPU memory, one column per strategy.

use super::table::num;
use super::Column;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

fn color_of(heading: &str, i: usize) -> RGBColor {
    match heading {
        "eager" => RGBColor(200, 60, 50),
        "lazy" => RGBColor(50, 100, 200),
        "callback" => RGBColor(40, 150, 80),
        _ => {
            let (r, g, b) = Palette99::pick(i + 3).to_rgba().rgb();
            RGBColor(r, g, b)
        }
    }
}

/// First-enter samples of a result: the raw samples if present, else its p50/p99/max.
fn samples(v: &Value) -> Vec<f64> {
    if let Some(s) = v.get("first_enter_samples_ns").and_then(Value::as_array) {
        let s: Vec<f64> = s.iter().filter_map(Value::as_f64).collect();
        if !s.is_empty() {
            return s;
        }
    }
    ["p50", "p99", "max"]
        .iter()
        .filter_map(|k| num(v, &["first_enter_ns", k]))
        .collect()
}

fn median(s: &[f64]) -> Option<f64> {
    let mut s = s.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// Renders the chart for `columns` as an SVG document. `title` goes on top.
pub fn render(columns: &[Column], title: &str) -> Result<String, String> {
    let mut svg = String::new();
    draw(&mut svg, columns, title).map_err(|e| format!("drawing the chart failed: {e}"))?;
    Ok(svg)
}

/// Axis labels: the heading, with the source when the columns come from different sources.
fn labels(columns: &[Column]) -> Vec<String> {
    let mixed = columns.iter().any(|c| c.source != columns[0].source);
    columns
        .iter()
        .map(|c| {
            if mixed {
                format!("{} [{}]", c.heading, c.source)
            } else {
                c.heading.clone()
            }
        })
        .collect()
}

fn centered(size: u32, color: RGBColor) -> TextStyle<'static> {
    ("sans-serif", size)
        .into_font()
        .color(&color)
        .pos(Pos::new(HPos::Center, VPos::Bottom))
}

fn draw(
    svg: &mut String,
    columns: &[Column],
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let n = columns.len().max(1);
    let width = (400 + 220 * n).min(2400) as u32;
    let root = SVGBackend::with_string(svg, (width, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(width / 2);
    let labels = labels(columns);
    let x_fmt = |x: &SegmentValue<usize>| match x {
        SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };

    // Left: first-enter latency, every sample, log scale.
    let all: Vec<f64> = columns
        .iter()
        .flat_map(|c| samples(&c.result))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if all.is_empty() {
        (1.0, 1_000.0)
    } else {
        ((lo / 2.0).max(1.0), hi * 2.0)
    };
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "First enter on a CPU (ns, log scale; bar = median)",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n - 1).into_segmented(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("nanoseconds")
        .draw()?;
    for (i, c) in columns.iter().enumerate() {
        let color = color_of(&c.heading, i);
        let s = samples(&c.result);
        let k = s.len().max(1) as i32;
        chart.draw_series(
            s.iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.0)
                .map(|(j, v)| {
                    let dx = ((j as i32 * 37) % 41 - 20) * 2 / k.clamp(1, 4);
                    EmptyElement::at((SegmentValue::CenterOf(i), *v))
                        + Circle::new((dx, 0), 4, color.mix(0.7).filled())
                }),
        )?;
        if let Some(m) = median(&s).filter(|m| *m > 0.0) {
            chart.draw_series(std::iter::once(
                EmptyElement::at((SegmentValue::CenterOf(i), m))
                    + Rectangle::new([(-40, -1), (40, 1)], color.filled()),
            ))?;
        }
        if s.is_empty() {
            let why = if c.result.get("loaded").and_then(Value::as_bool) == Some(false) {
                "did not load"
            } else {
                "no samples"
            };
            chart.draw_series(std::iter::once(Text::new(
                why.to_string(),
                (SegmentValue::CenterOf(i), (lo * hi).sqrt()),
                centered(14, color),
            )))?;
        }
    }

    // Right: per-CPU memory.
    let bytes: Vec<Option<f64>> = columns
        .iter()
        .map(|c| num(&c.result, &["per_cpu_bytes"]))
        .collect();
    let top = bytes.iter().flatten().copied().fold(0.0, f64::max).max(1.0) * 1.2;
    let mut chart = ChartBuilder::on(&right)
        .caption("Per-CPU memory (bytes)", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("bytes")
        .draw()?;
    for (i, (c, b)) in columns.iter().zip(&bytes).enumerate() {
        let color = color_of(&c.heading, i);
        match b {
            Some(b) => {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *b),
                    ],
                    color.mix(0.8).filled(),
                );
                bar.set_margin(0, 0, 25, 25);
                chart.draw_series(std::iter::once(bar))?;
                let cpus = num(&c.result, &["cpus_prepared"]).unwrap_or(0.0);
                chart.draw_series(std::iter::once(Text::new(
                    format!("{b:.0} B, {cpus:.0} CPUs"),
                    (SegmentValue::CenterOf(i), *b + top * 0.02),
                    centered(13, BLACK),
                )))?;
            }
            None => {
                let why = if c.result.get("loaded").and_then(Value::as_bool) == Some(false) {
                    "did not load"
                } else {
                    "not measured"
                };
                chart.draw_series(std::iter::once(Text::new(
                    why.to_string(),
                    (SegmentValue::CenterOf(i), top * 0.05),
                    centered(14, color),
                )))?;
            }
        }
    }
    root.present()?;
    Ok(())
}
