//! Rounds and spreads: every timed figure runs its workloads in alternating rounds (so that machine
//! noise hits them alike) and reports the per-round ratio's minimum, median and maximum.

use crate::common::Workload;
use std::fmt;

/// Median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Minimum, median and maximum of a set of per-round values.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// Smallest value.
    pub min: f64,
    /// Median value.
    pub median: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (at least one).
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        let median = median(&mut sorted);
        Spread {
            min: sorted[0],
            median,
            max: sorted[sorted.len() - 1],
        }
    }
}

impl fmt::Display for Spread {
    /// `median× (min–max)`, two decimals (one above 10).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = if self.median >= 10.0 { 1 } else { 2 };
        write!(
            f,
            "{:.d$}× ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// Per-round nanoseconds per operation of each workload.
pub struct Rounds {
    /// `ns[w][r]`: workload `w` in round `r`.
    pub ns: Vec<Vec<f64>>,
}

impl Rounds {
    /// Runs every workload `rounds` times with `iters` operations each, after a warm-up batch; the
    /// order of the workloads rotates from round to round.
    pub fn run(workloads: &mut [&mut dyn Workload], iters: u64, rounds: usize) -> Rounds {
        for w in workloads.iter_mut() {
            w.run(iters / 4 + 1);
        }
        let n = workloads.len();
        let mut ns = vec![Vec::with_capacity(rounds); n];
        for round in 0..rounds {
            for k in 0..n {
                let w = (round + k) % n;
                let took = workloads[w].run(iters);
                ns[w].push(took.as_nanos() as f64 / iters as f64);
            }
        }
        Rounds { ns }
    }

    /// Median nanoseconds per operation of workload `w`.
    pub fn median_ns(&self, w: usize) -> f64 {
        median(&mut self.ns[w].clone())
    }

    /// Spread of the per-round ratio workload `a` / workload `b`.
    pub fn ratio(&self, a: usize, b: usize) -> Spread {
        let ratios: Vec<f64> = self.ns[a]
            .iter()
            .zip(&self.ns[b])
            .map(|(x, y)| x / y)
            .collect();
        Spread::of(&ratios)
    }
}

/// Least-squares slope, intercept and R² of `points`.
pub fn fit(points: &[(f64, f64)]) -> (f64, f64, f64) {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_res: f64 = points
        .iter()
        .map(|p| (p.1 - (intercept + slope * p.0)).powi(2))
        .sum();
    let ss_tot: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    (slope, intercept, 1.0 - ss_res / ss_tot)
}

/// `value` nanoseconds, in ns or µs.
pub fn ns(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.2} µs", value / 1000.0)
    } else if value >= 10.0 {
        format!("{value:.1} ns")
    } else {
        format!("{value:.2} ns")
    }
}
