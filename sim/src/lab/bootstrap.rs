//! The statistics of an A/B: latency distributions (exact samples or histogram buckets with at most
//! 1 % error), nearest-rank quantiles, and a seeded bootstrap over rounds that gives a 95 % confidence
//! interval for a figure and for the difference and ratio of a figure between two strategies.
//!
//! Rounds are the unit of resampling: a round is one machine (or one guest boot) with its own seed, so
//! the intervals include the round-to-round variation that a single run hides. Strategies are resampled
//! independently (guest rounds of different strategies are different boots).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 2_000;
/// Confidence level of every interval.
pub const CONFIDENCE: f64 = 0.95;
/// Fewest rounds per strategy for an interval: with fewer, resampling cannot show any variation and an
/// interval would claim a certainty the data do not have.
pub const MIN_ROUNDS: usize = 3;

/// A distribution of durations: `(value, count)` points, exact samples (count 1) or histogram buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dist {
    /// The points, in any order.
    pub points: Vec<(f64, u64)>,
}

impl Dist {
    /// Exact samples.
    pub fn from_samples(samples: &[f64]) -> Dist {
        Dist {
            points: samples.iter().map(|&v| (v, 1)).collect(),
        }
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.points.iter().map(|p| p.1).sum()
    }

    /// Largest value.
    pub fn max(&self) -> Option<f64> {
        self.points
            .iter()
            .filter(|p| p.1 > 0)
            .map(|p| p.0)
            .max_by(f64::total_cmp)
    }

    /// The `q`-quantile (nearest rank: the smallest value with at least `ceil(q * n)` samples at or
    /// below it).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile_of(self.points.clone(), q)
    }
}

/// Nearest-rank quantile of unsorted points (sorted here).
fn quantile_of(mut points: Vec<(f64, u64)>, q: f64) -> Option<f64> {
    points.retain(|p| p.1 > 0);
    let n: u64 = points.iter().map(|p| p.1).sum();
    if n == 0 {
        return None;
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (v, c) in &points {
        seen += c;
        if seen >= rank {
            return Some(*v);
        }
    }
    points.last().map(|p| p.0)
}

/// Median of values (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// What one round contributes to a figure.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A count or size measured once per round.
    Scalar(f64),
    /// A latency distribution; the figure is its quantile `q`, pooled over the rounds.
    Dist(Dist),
    /// Only the round's quantile is known (a file without the distribution).
    Point(f64),
}

/// How a figure is computed from a set of rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Statistic {
    /// Median over rounds of a per-round value.
    Median,
    /// Sum over rounds (safety counts: one leak in one round must show).
    Sum,
    /// Quantile `q` of every round's samples pooled; when a round only has its quantile, the median
    /// of the rounds' quantiles.
    Quantile(f64),
}

impl Statistic {
    /// The figure of the rounds picked by `picks` (indexes into `obs`).
    pub fn eval(self, obs: &[Observation], picks: &[usize]) -> Option<f64> {
        match self {
            Statistic::Sum => {
                let values: Vec<f64> = picks.iter().filter_map(|&i| scalar(&obs[i])).collect();
                (!values.is_empty()).then(|| values.iter().sum())
            }
            Statistic::Median => {
                let values: Vec<f64> = picks.iter().filter_map(|&i| scalar(&obs[i])).collect();
                median(&values)
            }
            Statistic::Quantile(q) => {
                let pooled = picks
                    .iter()
                    .all(|&i| matches!(obs[i], Observation::Dist(_)));
                if pooled {
                    let mut points = Vec::new();
                    for &i in picks {
                        if let Observation::Dist(d) = &obs[i] {
                            points.extend_from_slice(&d.points);
                        }
                    }
                    quantile_of(points, q)
                } else {
                    let values: Vec<f64> = picks
                        .iter()
                        .filter_map(|&i| match &obs[i] {
                            Observation::Dist(d) => d.quantile(q),
                            Observation::Point(v) | Observation::Scalar(v) => Some(*v),
                        })
                        .collect();
                    median(&values)
                }
            }
        }
    }

    /// Whether every round's samples are pooled (false: median of the rounds' values).
    pub fn pools(self, obs: &[Observation]) -> bool {
        matches!(self, Statistic::Quantile(_))
            && obs.iter().all(|o| matches!(o, Observation::Dist(_)))
    }
}

fn scalar(o: &Observation) -> Option<f64> {
    match o {
        Observation::Scalar(v) | Observation::Point(v) => Some(*v),
        Observation::Dist(_) => None,
    }
}

/// A value with its 95 % interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// The figure from all rounds.
    pub value: f64,
    /// Lower end of the 95 % interval (`None` with fewer than [`MIN_ROUNDS`] rounds).
    pub low: Option<f64>,
    /// Upper end.
    pub high: Option<f64>,
}

impl Interval {
    /// Whether the interval lies entirely on one side of `x`.
    pub fn excludes(&self, x: f64) -> bool {
        match (self.low, self.high) {
            (Some(lo), Some(hi)) => lo > x || hi < x,
            _ => false,
        }
    }
}

/// The comparison of one figure between two strategies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// `a - b`.
    pub difference: Interval,
    /// `a / b`, when `b` is positive.
    pub ratio: Option<Interval>,
}

impl Comparison {
    /// Whether the difference is real: its interval excludes 0.
    pub fn significant(&self) -> bool {
        self.difference.excludes(0.0)
    }
}

/// A seeded bootstrap: the same seed gives the same intervals.
pub struct Bootstrap {
    seed: u64,
}

fn resample(rng: &mut ChaCha8Rng, n: usize, out: &mut Vec<usize>) {
    out.clear();
    out.extend((0..n).map(|_| rng.gen_range(0..n)));
}

/// The percentile interval of bootstrap replicates (sorted here).
fn percentile_interval(mut reps: Vec<f64>) -> Option<(f64, f64)> {
    reps.retain(|v| v.is_finite());
    // Too many undefined replicates (e.g. a ratio whose denominator was often 0): no interval.
    if reps.len() < RESAMPLES * 9 / 10 {
        return None;
    }
    reps.sort_by(f64::total_cmp);
    let alpha = (1.0 - CONFIDENCE) / 2.0;
    let pick = |q: f64| reps[((q * (reps.len() - 1) as f64).round() as usize).min(reps.len() - 1)];
    Some((pick(alpha), pick(1.0 - alpha)))
}

impl Bootstrap {
    /// A bootstrap whose resamples come from `seed`.
    pub fn new(seed: u64) -> Bootstrap {
        Bootstrap { seed }
    }

    fn rng(&self, salt: &str) -> ChaCha8Rng {
        // FNV-1a of the salt, so that every figure and pair gets its own stream, independent of the
        // order in which they are computed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in salt.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        ChaCha8Rng::seed_from_u64(self.seed ^ h)
    }

    /// The figure of every round and its interval. `salt` names the figure and column.
    pub fn estimate(&self, stat: Statistic, obs: &[Observation], salt: &str) -> Option<Interval> {
        let all: Vec<usize> = (0..obs.len()).collect();
        let value = stat.eval(obs, &all)?;
        if obs.len() < MIN_ROUNDS {
            return Some(Interval {
                value,
                low: None,
                high: None,
            });
        }
        let mut rng = self.rng(salt);
        let mut picks = Vec::with_capacity(obs.len());
        let reps: Vec<f64> = (0..RESAMPLES)
            .map(|_| {
                resample(&mut rng, obs.len(), &mut picks);
                stat.eval(obs, &picks).unwrap_or(f64::NAN)
            })
            .collect();
        let (low, high) = percentile_interval(reps).unzip();
        Some(Interval { value, low, high })
    }

    /// `a` against `b`: difference and ratio of the figure with their intervals (rounds of each side
    /// resampled independently).
    pub fn compare(
        &self,
        stat: Statistic,
        a: &[Observation],
        b: &[Observation],
        salt: &str,
    ) -> Option<Comparison> {
        let all = |n: usize| (0..n).collect::<Vec<usize>>();
        let va = stat.eval(a, &all(a.len()))?;
        let vb = stat.eval(b, &all(b.len()))?;
        let ratio_value = (vb > 0.0).then(|| va / vb);
        if a.len() < MIN_ROUNDS || b.len() < MIN_ROUNDS {
            let none = |value| Interval {
                value,
                low: None,
                high: None,
            };
            return Some(Comparison {
                difference: none(va - vb),
                ratio: ratio_value.map(none),
            });
        }
        let mut rng = self.rng(salt);
        let (mut pa, mut pb) = (Vec::new(), Vec::new());
        let mut diffs = Vec::with_capacity(RESAMPLES);
        let mut ratios = Vec::with_capacity(RESAMPLES);
        for _ in 0..RESAMPLES {
            resample(&mut rng, a.len(), &mut pa);
            resample(&mut rng, b.len(), &mut pb);
            let (x, y) = (
                stat.eval(a, &pa).unwrap_or(f64::NAN),
                stat.eval(b, &pb).unwrap_or(f64::NAN),
            );
            diffs.push(x - y);
            ratios.push(if y > 0.0 { x / y } else { f64::NAN });
        }
        let (low, high) = percentile_interval(diffs).unzip();
        let ratio = ratio_value.map(|value| {
            let (low, high) = percentile_interval(ratios).unzip();
            Interval { value, low, high }
        });
        Some(Comparison {
            difference: Interval {
                value: va - vb,
                low,
                high,
            },
            ratio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(rng: &mut ChaCha8Rng, n: usize, per: usize, center: f64) -> Vec<Observation> {
        (0..n)
            .map(|_| {
                let s: Vec<f64> = (0..per)
                    .map(|_| center * rng.gen_range(0.8..1.25))
                    .collect();
                Observation::Dist(Dist::from_samples(&s))
            })
            .collect()
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let d = Dist::from_samples(&[5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!(d.quantile(0.5), Some(3.0));
        assert_eq!(d.quantile(0.99), Some(5.0));
        assert_eq!(d.quantile(0.0), Some(1.0));
        assert_eq!(d.max(), Some(5.0));
        assert_eq!(Dist::default().quantile(0.5), None);
        let h = Dist {
            points: vec![(100.0, 98), (5000.0, 2)],
        };
        assert_eq!(h.quantile(0.5), Some(100.0));
        assert_eq!(h.quantile(0.99), Some(5000.0));
        assert_eq!(median(&[1.0, 3.0, 2.0, 10.0]), Some(2.5));
    }

    #[test]
    fn a_real_difference_is_significant_and_none_is_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let slow = rounds(&mut rng, 8, 15, 4000.0);
        let fast = rounds(&mut rng, 8, 15, 500.0);
        let same = rounds(&mut rng, 8, 15, 500.0);
        let b = Bootstrap::new(1);
        let q = Statistic::Quantile(0.5);
        let c = b.compare(q, &slow, &fast, "x").unwrap();
        assert!(c.significant(), "{c:?}");
        let r = c.ratio.unwrap();
        assert!(r.low.unwrap() > 5.0 && r.high.unwrap() < 12.0, "{r:?}");
        assert!(r.low.unwrap() <= r.value && r.value <= r.high.unwrap());
        let c = b.compare(q, &same, &fast, "x").unwrap();
        assert!(!c.significant(), "{c:?}");
        assert!(c.ratio.unwrap().low.unwrap() < 1.0 && c.ratio.unwrap().high.unwrap() > 1.0);
        // Seeded: the same seed gives the same interval, another seed a (slightly) different one.
        assert_eq!(
            b.compare(q, &slow, &fast, "x"),
            b.compare(q, &slow, &fast, "x")
        );
        assert_ne!(
            b.compare(q, &slow, &fast, "x"),
            Bootstrap::new(2).compare(q, &slow, &fast, "x")
        );
    }

    #[test]
    fn too_few_rounds_give_no_interval_and_no_verdict() {
        let one = vec![Observation::Scalar(10.0)];
        let other = vec![Observation::Scalar(20.0)];
        let b = Bootstrap::new(0);
        let c = b.compare(Statistic::Median, &one, &other, "y").unwrap();
        assert_eq!(c.difference.value, -10.0);
        assert!(c.difference.low.is_none() && !c.significant());
        let e = b.estimate(Statistic::Median, &one, "y").unwrap();
        assert_eq!((e.value, e.low), (10.0, None));
    }

    #[test]
    fn constant_figures_differ_for_certain_and_sums_add_up() {
        let a = vec![Observation::Scalar(4096.0); 5];
        let b = vec![Observation::Scalar(1024.0); 5];
        let c = Bootstrap::new(0)
            .compare(Statistic::Median, &a, &b, "z")
            .unwrap();
        assert!(c.significant());
        assert_eq!(c.ratio.unwrap().low, Some(4.0));
        let leaks = [0.0, 0.0, 1.0].map(Observation::Scalar);
        assert_eq!(Statistic::Sum.eval(&leaks, &[0, 1, 2]), Some(1.0));
        // Rounds known only by their quantile: the median of the rounds' values.
        let mixed = vec![
            Observation::Point(10.0),
            Observation::Dist(Dist::from_samples(&[30.0, 30.0])),
            Observation::Point(20.0),
        ];
        let q = Statistic::Quantile(0.5);
        assert_eq!(q.eval(&mixed, &[0, 1, 2]), Some(20.0));
        assert!(!q.pools(&mixed));
    }
}
