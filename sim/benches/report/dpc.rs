//! DPC (visit) duration on the lab's built-in `retire-storm`, parallel mode: every visit's work
//! with the default bound (`MaxFreesPerVisit` and the visit budget), the same scenario without the
//! bound, and a control measured during the bounded run: a fixed computation of the budget's
//! length that touches no memory, timed with the same clock rule as a visit (the lower of wall and
//! thread CPU time, `WorkInstant::work_ns_until`). The control's spread is what the machine adds to
//! a piece of work of a DPC's size; visits that touch memory can be stretched further.

use crate::common::CpuInstant;
use crate::doc::Row;
use kepoch::platform::WorkInstant;
use kepoch_sim::lab::run::RunMode;
use kepoch_sim::lab::{run_ab, scenario};
use serde_json::Value;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Microsoft's guidance for the longest a DPC should run, and the row's target for a visit's maximum.
const DPC_TARGET_US: f64 = 100.0;

/// Pause of the control thread between two samples: about half as many samples per second as the
/// lab's visits on a 2-core host, at a tenth of a core.
const CONTROL_PAUSE: Duration = Duration::from_micros(500);

/// The work clock of a visit in parallel mode, read on this thread.
fn work_clock(origin: Instant) -> WorkInstant {
    WorkInstant {
        wall_ns: origin.elapsed().as_nanos() as u64,
        run_ns: CpuInstant::now().since_thread_start().as_nanos() as u64,
    }
}

/// The control's fixed computation: `steps` dependent multiply-adds, no memory access.
fn compute(steps: u64) -> u64 {
    let mut x = black_box(1u64);
    for i in 0..steps {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
    }
    black_box(x)
}

/// Steps of [`compute`] that take `us` microseconds when nothing interferes (the fastest of a few
/// timed runs sets the rate).
fn steps_for(us: u64) -> u64 {
    let origin = Instant::now();
    let probe = 1_000_000;
    let fastest = (0..11)
        .map(|_| {
            let start = work_clock(origin);
            compute(probe);
            start.work_ns_until(work_clock(origin)).max(1)
        })
        .min()
        .unwrap_or(1);
    (probe * us * 1_000 / fastest).max(1)
}

/// The control thread: samples (ns) of `steps` of [`compute`] until `stop` is set.
fn spawn_control(steps: u64, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<u64>> {
    thread::spawn(move || {
        let origin = Instant::now();
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let start = work_clock(origin);
            compute(steps);
            samples.push(start.work_ns_until(work_clock(origin)));
            thread::sleep(CONTROL_PAUSE);
        }
        samples
    })
}

/// p50, p99 and maximum of the control's samples, in µs (`None` without samples).
fn control_summary(samples: &mut [u64]) -> Option<[f64; 3]> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    Some([at(0.5), at(0.99), at(1.0)])
}

/// The lab's figures of one `ab` document: the highest p50, p99 and maximum visit (µs) of the three
/// strategies (each may come from another strategy), the largest visit's frees, and the visits of
/// all three.
struct Visits {
    p50: f64,
    p99: f64,
    max: f64,
    most_frees: u64,
    count: u64,
}

impl Visits {
    /// The figures, or why the document lacks them.
    fn of(document: &Value) -> Result<Visits, String> {
        let loaded: Vec<&Value> = document["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["loaded"] == Value::Bool(true))
            .collect();
        if loaded.is_empty() {
            return Err("retire-storm loaded in no round".into());
        }
        let worst = |key: &str| -> Result<f64, String> {
            loaded.iter().try_fold(0.0, |worst: f64, r| {
                r["dpc_us"][key]
                    .as_f64()
                    .map(|v| worst.max(v))
                    .ok_or_else(|| format!("a loaded result has no dpc_us.{key}"))
            })
        };
        let most_frees = loaded.iter().try_fold(0, |most: u64, r| {
            r["frees_per_visit"]["max"]
                .as_u64()
                .map(|v| most.max(v))
                .ok_or_else(|| "a loaded result has no frees_per_visit.max".to_string())
        })?;
        Ok(Visits {
            p50: worst("p50")?,
            p99: worst("p99")?,
            max: worst("max")?,
            most_frees,
            count: document["rounds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["dpc_us"]["count"].as_u64())
                .sum(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            self.p50, self.p99, self.max
        )
    }
}

/// What the control (p50, p99, max in µs) says about a visits' maximum above the target: whether
/// the machine alone stretches a DPC-sized computation past it, and how far the visits go beyond
/// the control.
fn why_missed(bounded: &Visits, unbounded: &Visits, [c50, _, cmax]: [f64; 3]) -> String {
    let mut why = String::new();
    if cmax > DPC_TARGET_US {
        why.push_str(&format!(
            "this machine stretches the control's fixed {c50:.0}-µs computation (its median) to {cmax:.0} µs in the same \
             run: here any piece of work of a DPC's size can read above 100 µs. "
        ));
    }
    if bounded.max > cmax {
        why.push_str(&format!(
            "The longest visit took {:.0} µs, {:.2}× the control's maximum: unlike the control, a visit touches memory \
             (its frees go through the simulated pool's records and poisoning); README (the `retire-storm` notes) records \
             where long visits were seen to stall. ",
            bounded.max,
            bounded.max / cmax.max(1e-3)
        ));
    }
    why.push_str(&format!(
        "The bound shows in the visits' p99 ({:.0} µs against {:.0} µs without it) and in the largest visit ({} frees \
         against {}).",
        bounded.p99, unbounded.p99, bounded.most_frees, unbounded.most_frees
    ));
    why
}

/// The row's title.
const FIGURE: &str = "DPC (visit) duration at `retire-storm`, lab, parallel mode (default `MaxFreesPerVisit` and visit budget)";

/// Runs `retire-storm` (`rounds` rounds of each strategy) with the bound while the control runs,
/// then without it, and adds the row.
pub fn dpc_row(rounds: u32, rows: &mut Vec<Row>, extra: &mut String) {
    use std::fmt::Write as _;
    let budget_us = u64::from(kepoch::config::DEFAULT_VISIT_BUDGET_US);
    let bound = kepoch::config::DEFAULT_MAX_FREES_PER_VISIT;
    let run = |max_frees_per_visit: Option<u32>| {
        let mut storm = scenario::load("retire-storm").expect("the built-in scenario");
        storm.workload.max_frees_per_visit = max_frees_per_visit;
        run_ab(&storm, RunMode::Parallel, rounds, &|_, _, _| {})
            .map_err(|e| e.0)
            .and_then(|document| Visits::of(&document))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let control = spawn_control(steps_for(budget_us), stop.clone());
    let bounded = run(None);
    stop.store(true, Ordering::Relaxed);
    let mut samples = control.join().expect("the control thread");
    let unbounded = run(Some(0));
    let measured = match (bounded, unbounded, control_summary(&mut samples)) {
        (Ok(b), Ok(u), Some(c)) => Ok((b, u, c)),
        (Err(e), _, _) | (_, Err(e), _) => Err(e),
        (_, _, None) => Err("the control took no sample".to_string()),
    };
    let (bounded, unbounded, control) = match measured {
        Ok(figures) => figures,
        Err(why) => {
            rows.push(Row {
                figure: FIGURE,
                kepoch: "not measured".into(),
                peer: "not measured".into(),
                ratio: "—".into(),
                target: "max ≤ 100 µs",
                pass: false,
                why_missed: format!("the run gave no figures: {why}."),
            });
            return;
        }
    };
    let [c50, c99, cmax] = control;
    let control_text = format!(
        "control, a fixed {budget_us}-µs computation timed the same way during the bounded run: p50 {c50:.0} µs, p99 {c99:.0} µs, max {cmax:.0} µs ({} samples)",
        samples.len()
    );
    let bounded_text = format!(
        "{} (at most {bound} frees and {budget_us} µs of freeing per visit; {} visits of the three strategies)",
        bounded.describe(),
        bounded.count
    );
    rows.push(Row {
        figure: FIGURE,
        kepoch: bounded_text.clone(),
        peer: format!(
            "without the bound: {}, up to {} frees per visit ({} visits); {control_text}",
            unbounded.describe(),
            unbounded.most_frees,
            unbounded.count
        ),
        ratio: format!("max / control max: {:.2}×", bounded.max / cmax.max(1e-3)),
        target: "max ≤ 100 µs",
        pass: bounded.max <= DPC_TARGET_US,
        why_missed: why_missed(&bounded, &unbounded, control),
    });
    let _ = writeln!(
        extra,
        "DPC (visit) duration, `kepoch-sim ab --scenario retire-storm`, {rounds} rounds of each strategy, the highest \
         figure of the three strategies: with the default bound {bounded_text}; without it {} ({} visits, up to {} frees); \
         {control_text}.\n",
        unbounded.describe(),
        unbounded.count,
        unbounded.most_frees,
    );
}
