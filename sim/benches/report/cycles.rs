//! Reclamation cycles on a machine reporting 2048 processors with 64 active: the messages a cycle
//! sends (one per participating CPU, never one per reported processor) and its latency against the
//! number of participating CPUs (linear).

use crate::common::domain;
use crate::doc::Row;
use crate::rounds::{fit, median, ns};
use kepoch::Strategy;
use kepoch_sim::bench::BenchPlatform;
use std::fmt::Write as _;
use std::time::Instant;

/// Cycle latency and messages with `participating` CPUs on a machine reporting 2048 processors with 64
/// active. Returns (median cycle ns, messages per cycle).
fn cycle_figures(participating: u32, cycles: usize) -> (f64, f64) {
    let (platform, domain) = domain(2048, 64, Strategy::Callback, false);
    for cpu in 0..participating {
        BenchPlatform::pin_current_thread(cpu);
        drop(domain.enter());
    }
    BenchPlatform::pin_current_thread(0);
    for _ in 0..10 {
        domain.flush();
        platform.pump();
    }
    let cycles_before = domain.stats().cycles;
    let messages_before = platform.messages_sent();
    let mut times = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let start = Instant::now();
        domain.flush();
        platform.pump();
        times.push(start.elapsed().as_nanos() as f64);
    }
    let ran = domain.stats().cycles - cycles_before;
    assert_eq!(
        ran, cycles as u64,
        "one flush+pump must run exactly one cycle"
    );
    let messages = (platform.messages_sent() - messages_before) as f64 / cycles as f64;
    (median(&mut times), messages)
}

/// Messages per cycle and cycle latency against participating CPUs.
pub fn cycle_rows(rounds: usize, rows: &mut Vec<Row>, extra: &mut String) {
    let cycles = 20 * rounds;
    let mut points = Vec::new();
    let mut messages_ok = true;
    let mut message_cells = Vec::new();
    let _ = writeln!(
        extra,
        "Cycle latency (machine reporting 2048 processors, 64 active; {cycles} cycles each, median):\n\n| participating CPUs | messages per cycle | cycle latency |\n|---:|---:|---:|"
    );
    for n in [1u32, 2, 4, 8, 16, 32, 64] {
        let (latency, messages) = cycle_figures(n, cycles);
        messages_ok &= messages == f64::from(n);
        message_cells.push(format!("{n}→{messages:.0}"));
        points.push((f64::from(n), latency));
        let _ = writeln!(extra, "| {n} | {messages:.1} | {} |", ns(latency));
    }
    let _ = writeln!(extra);
    rows.push(Row {
        figure: "messages per cycle (reported max 2048, 64 active)",
        kepoch: message_cells.join(", "),
        peer: "participating CPUs (never 2048)".into(),
        ratio: "1.00× for every count".into(),
        target: "= participating CPUs",
        pass: messages_ok,
        why_missed: "a cycle messaged CPUs that do not participate.".into(),
    });
    let (slope, intercept, r2) = fit(&points);
    let per_cpu_small = (points[3].1 - points[0].1) / 7.0;
    let per_cpu_large = (points[6].1 - points[4].1) / 48.0;
    rows.push(Row {
        figure: "cycle latency vs participating CPUs (1…64)",
        kepoch: format!(
            "slope {} per CPU, intercept {}, R² {r2:.3}",
            ns(slope),
            ns(intercept)
        ),
        peer: format!(
            "per-CPU step 1→8: {}, 16→64: {}",
            ns(per_cpu_small),
            ns(per_cpu_large)
        ),
        ratio: format!(
            "{:.2}× (step 16→64 / step 1→8)",
            per_cpu_large / per_cpu_small
        ),
        target: "linear (R² ≥ 0.95)",
        pass: r2 >= 0.95,
        why_missed: "the cycle's cost per CPU is not constant.".into(),
    });
}
