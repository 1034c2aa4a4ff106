//! The SVG chart of a report document, three panels one column per strategy: the distribution of
//! first-enter latency (CDF over every round's samples, log scale, with the median and its 95 %
//! interval), per-CPU memory against what O(reported maximum) would take, and messages per second to
//! the CPUs the workload keeps idle over the round.

use super::analysis::{estimate, round_dist, Group};
use super::table::{headings, num};
use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::CoordTranslate;
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

/// Renders the chart of `document` (its `results` and `rounds`) as an SVG document.
pub fn render(document: &Value, title: &str) -> Result<String, String> {
    let results = document["results"].as_array().cloned().unwrap_or_default();
    let rounds = document["rounds"].as_array().cloned().unwrap_or_default();
    let groups = super::group(&rounds);
    let mut svg = String::new();
    draw(&mut svg, &results, &groups, title)
        .map_err(|e| format!("drawing the chart failed: {e}"))?;
    Ok(svg)
}

fn centered(size: u32, color: RGBColor) -> TextStyle<'static> {
    ("sans-serif", size)
        .into_font()
        .color(&color)
        .pos(Pos::new(HPos::Center, VPos::Bottom))
}

/// The group of result `r` (same strategy and source).
fn group_of<'a>(groups: &'a [Group], r: &Value) -> Option<&'a Group> {
    groups.iter().find(|g| {
        Some(g.strategy.as_str()) == r["strategy"].as_str()
            && Some(g.source.as_str()) == r["column_source"].as_str()
    })
}

/// Every first-enter sample of a column's loaded rounds, sorted, with its count.
fn first_enter_points(group: Option<&Group>) -> Vec<(f64, u64)> {
    let mut points: Vec<(f64, u64)> = group
        .into_iter()
        .flat_map(|g| g.rounds.iter())
        .filter(|r| r["loaded"] == true)
        .filter_map(|r| round_dist(r, "first_enter_ns"))
        .flat_map(|d| d.points)
        .filter(|p| p.0 > 0.0 && p.1 > 0)
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Messages per second to idle CPUs in 100 ms bins, averaged over a column's rounds.
fn idle_rates(group: Option<&Group>) -> Vec<(f64, f64)> {
    let mut bins: Vec<(f64, u32)> = Vec::new();
    for r in group.into_iter().flat_map(|g| g.rounds.iter()) {
        let Some(series) = r["idle_messages"].as_array() else {
            continue;
        };
        let pts: Vec<(f64, f64)> = series
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
            .collect();
        for w in pts.windows(2) {
            let ((t0, c0), (t1, c1)) = (w[0], w[1]);
            if t1 <= t0 {
                continue;
            }
            let bin = (t1 / 100.0) as usize;
            if bins.len() <= bin {
                bins.resize(bin + 1, (0.0, 0));
            }
            bins[bin].0 += (c1 - c0).max(0.0) / (t1 - t0) * 1_000.0;
            bins[bin].1 += 1;
        }
    }
    bins.iter()
        .enumerate()
        .filter(|(_, b)| b.1 > 0)
        .map(|(i, b)| (i as f64 * 100.0 + 50.0, b.0 / f64::from(b.1)))
        .collect()
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The legend box of a panel's labelled series.
fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

fn draw(svg: &mut String, results: &[Value], groups: &[Group], title: &str) -> DrawResult {
    let root = SVGBackend::with_string(svg, (1650, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let panels = root.split_evenly((1, 3));
    let heads = headings(results);
    first_enter_panel(&panels[0], results, groups, &heads)?;
    memory_panel(&panels[1], results, &heads)?;
    idle_panel(&panels[2], results, groups, &heads)?;
    root.present()?;
    Ok(())
}

fn first_enter_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    results: &[Value],
    groups: &[Group],
    heads: &[String],
) -> DrawResult {
    let columns: Vec<Vec<(f64, u64)>> = results
        .iter()
        .map(|r| first_enter_points(group_of(groups, r)))
        .collect();
    let all = columns.iter().flatten().map(|p| p.0);
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    let (lo, hi) = if hi > 0.0 {
        ((lo / 1.5).max(1.0), hi * 1.5)
    } else {
        (1.0, 1e4)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            "First enter on a CPU: CDF of every round's samples",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("nanoseconds (log scale); bar at 0.5 = median and its 95 % interval")
        .y_desc("fraction of samples")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, (r, points)) in results.iter().zip(&columns).enumerate() {
        let color = color_of(r["strategy"].as_str().unwrap_or(""), i);
        let n: u64 = points.iter().map(|p| p.1).sum();
        if n == 0 {
            continue;
        }
        let mut seen = 0;
        let mut line = Vec::new();
        for (v, c) in points {
            line.push((*v, seen as f64 / n as f64));
            seen += c;
            line.push((*v, seen as f64 / n as f64));
        }
        let label = match estimate(r, "first_enter_ns.p50") {
            Some((m, Some((a, b)))) => {
                format!("{}: median {m:.0} ns [{a:.0}, {b:.0}], n={n}", heads[i])
            }
            Some((m, None)) => format!("{}: median {m:.0} ns, n={n}", heads[i]),
            None => format!("{}: n={n}", heads[i]),
        };
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        if let Some((m, ci)) = estimate(r, "first_enter_ns.p50") {
            let (a, b) = ci.unwrap_or((m, m));
            let y = 0.5 + 0.03 * (i as f64 - 1.0);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(a.max(lo), y - 0.01), (b.min(hi), y + 0.01)],
                color.mix(0.5).filled(),
            )))?;
            chart.draw_series(std::iter::once(Circle::new((m, y), 4, color.filled())))?;
        }
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

fn memory_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    results: &[Value],
    heads: &[String],
) -> DrawResult {
    let n = results.len().max(1);
    let bytes: Vec<Option<f64>> = results.iter().map(|r| num(r, &["per_cpu_bytes"])).collect();
    let max_reported = results.iter().find_map(|r| {
        r["max_reported"]
            .as_f64()
            .or_else(|| num(r, &["guest", "max_processors"]))
    });
    // What O(reported maximum) takes: the smallest bytes per prepared CPU times the maximum.
    let per_cpu = results
        .iter()
        .filter_map(|r| {
            Some(num(r, &["per_cpu_bytes"])? / num(r, &["cpus_prepared"]).filter(|c| *c > 0.0)?)
        })
        .fold(f64::INFINITY, f64::min);
    let o_max = max_reported
        .filter(|_| per_cpu.is_finite())
        .map(|m| m * per_cpu);
    let top = bytes
        .iter()
        .flatten()
        .copied()
        .chain(o_max)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Per-CPU memory against the reported maximum",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => heads.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("bytes (median over rounds)")
        .draw()?;
    if let (Some(line), Some(m)) = (o_max, max_reported) {
        chart.draw_series(LineSeries::new(
            [
                (SegmentValue::Exact(0), line),
                (SegmentValue::Exact(n), line),
            ],
            BLACK.mix(0.6).stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("O(max): {m:.0} CPUs x {per_cpu:.0} B = {line:.0} B"),
            (SegmentValue::CenterOf(n / 2), line + top * 0.01),
            centered(12, BLACK),
        )))?;
    }
    for (i, (r, b)) in results.iter().zip(&bytes).enumerate() {
        let color = color_of(r["strategy"].as_str().unwrap_or(""), i);
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
                let cpus = num(r, &["cpus_prepared"]).unwrap_or(0.0);
                chart.draw_series(std::iter::once(Text::new(
                    format!("{b:.0} B, {cpus:.0} CPUs prepared"),
                    (SegmentValue::CenterOf(i), *b + top * 0.05),
                    centered(12, BLACK),
                )))?;
            }
            None => {
                let why = if r["loaded"] == false {
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
    Ok(())
}

fn idle_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    results: &[Value],
    groups: &[Group],
    heads: &[String],
) -> DrawResult {
    let series: Vec<Vec<(f64, f64)>> = results
        .iter()
        .map(|r| idle_rates(group_of(groups, r)))
        .collect();
    let t_end = series
        .iter()
        .flatten()
        .map(|p| p.0 + 50.0)
        .fold(100.0, f64::max);
    let top = series
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Messages to CPUs the workload keeps idle",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("ms into the round (100 ms bins, mean over rounds)")
        .y_desc("messages per second")
        .y_label_formatter(&|v| {
            if top < 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })
        .draw()?;
    if series.iter().all(Vec::is_empty) {
        chart.draw_series(std::iter::once(Text::new(
            "not measured (no time series in these rounds)".to_string(),
            (t_end / 2.0, top / 2.0),
            centered(14, BLACK),
        )))?;
    }
    for (i, (r, s)) in results.iter().zip(&series).enumerate() {
        if s.is_empty() {
            continue;
        }
        let color = color_of(r["strategy"].as_str().unwrap_or(""), i);
        chart
            .draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))?
            .label(heads[i].clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    if series.iter().any(|s| !s.is_empty()) {
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}
