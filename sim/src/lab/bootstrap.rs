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
    let n = s.len();
    let (below, &mut middle, _) = s.select_nth_unstable_by(n / 2, f64::total_cmp);
    Some(if n % 2 == 1 {
        middle
    } else {
        let lower = below
            .iter()
            .copied()
            .max_by(f64::total_cmp)
            .unwrap_or(middle);
        (lower + middle) / 2.0
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
        Prepared::new(self, obs).eval(picks)
    }

    /// Whether every round's samples are pooled (false: median of the rounds' values).
    pub fn pools(self, obs: &[Observation]) -> bool {
        matches!(self, Statistic::Quantile(_))
            && obs.iter().all(|o| matches!(o, Observation::Dist(_)))
    }
}

/// The distributions of a set of rounds made ready for repeated pooled quantiles: every distinct
/// value once, sorted, and each round as `(value index, count)` pairs. A pooled quantile of any
/// selection of rounds then adds up counts and scans them once, in time linear in the selection's
/// points and the distinct values: no sort per bootstrap resample.
struct Pooled {
    values: Vec<f64>,
    rounds: Vec<Vec<(usize, u64)>>,
}

impl Pooled {
    fn new(obs: &[Observation]) -> Pooled {
        let mut values: Vec<f64> = obs
            .iter()
            .filter_map(|o| match o {
                Observation::Dist(d) => Some(d.points.iter().filter(|p| p.1 > 0).map(|p| p.0)),
                _ => None,
            })
            .flatten()
            .collect();
        values.sort_by(f64::total_cmp);
        values.dedup_by(|a, b| a.total_cmp(b).is_eq());
        let index = |v: f64| values.partition_point(|x| x.total_cmp(&v).is_lt());
        let rounds = obs
            .iter()
            .map(|o| match o {
                Observation::Dist(d) => d
                    .points
                    .iter()
                    .filter(|p| p.1 > 0)
                    .map(|p| (index(p.0), p.1))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        Pooled { values, rounds }
    }

    /// Nearest-rank quantile `q` of the picked rounds' points together.
    fn quantile(&self, picks: &[usize], q: f64) -> Option<f64> {
        let mut counts = vec![0u64; self.values.len()];
        let mut n = 0u64;
        for &i in picks {
            for &(k, c) in &self.rounds[i] {
                counts[k] += c;
                n += c;
            }
        }
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (k, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(self.values[k]);
            }
        }
        self.values.last().copied()
    }
}

/// A statistic over a fixed set of rounds, ready to be evaluated on many selections of them.
struct Prepared<'a> {
    stat: Statistic,
    obs: &'a [Observation],
    pooled: Option<Pooled>,
}

impl<'a> Prepared<'a> {
    fn new(stat: Statistic, obs: &'a [Observation]) -> Prepared<'a> {
        let pooled = matches!(stat, Statistic::Quantile(_)).then(|| Pooled::new(obs));
        Prepared { stat, obs, pooled }
    }

    /// The figure of the rounds picked by `picks` (indexes into the rounds).
    fn eval(&self, picks: &[usize]) -> Option<f64> {
        let obs = self.obs;
        match self.stat {
            Statistic::Sum => {
                let values: Vec<f64> = picks.iter().filter_map(|&i| scalar(&obs[i])).collect();
                (!values.is_empty()).then(|| values.iter().sum())
            }
            Statistic::Median => {
                let values: Vec<f64> = picks.iter().filter_map(|&i| scalar(&obs[i])).collect();
                median(&values)
            }
            Statistic::Quantile(q) => {
                let all_dists = picks
                    .iter()
                    .all(|&i| matches!(obs[i], Observation::Dist(_)));
                match &self.pooled {
                    Some(pooled) if all_dists => pooled.quantile(picks, q),
                    _ => {
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
        let prepared = Prepared::new(stat, obs);
        let value = prepared.eval(&all)?;
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
                prepared.eval(&picks).unwrap_or(f64::NAN)
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
        let (prepared_a, prepared_b) = (Prepared::new(stat, a), Prepared::new(stat, b));
        let va = prepared_a.eval(&all(a.len()))?;
        let vb = prepared_b.eval(&all(b.len()))?;
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
                prepared_a.eval(&pa).unwrap_or(f64::NAN),
                prepared_b.eval(&pb).unwrap_or(f64::NAN),
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
mod tests;
