//! Latency objects and the hot-add counters of a result.

use kepoch::stats::LatencyHistogram;
use serde::{Deserialize, Serialize};

/// A latency in nanoseconds from a histogram: quantiles (`null` without samples) and the non-empty
/// buckets as `[[value, count], ...]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
    /// Largest value.
    pub max: Option<u64>,
    /// Number of samples.
    pub count: u64,
    /// `[value, count]` per non-empty bucket, in increasing value.
    pub hist: Vec<(u64, u64)>,
}

impl Latency {
    /// From the core's log-linear histogram (quantiles within 0.79 %).
    pub fn from_histogram(histogram: &LatencyHistogram) -> Latency {
        let s = histogram.summary();
        if s.count == 0 {
            return Latency::default();
        }
        Latency {
            p50: Some(s.p50),
            p99: Some(s.p99),
            max: Some(s.max),
            count: s.count,
            hist: histogram.points().collect(),
        }
    }
}

/// Reclamation-cycle latency in microseconds: quantiles and `[[value, count], ...]` buckets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CycleLatency {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Number of cycles measured.
    pub count: u64,
    /// `[microseconds, count]` per non-empty bucket.
    pub hist: Vec<(f64, u64)>,
}

impl CycleLatency {
    /// From the core's nanosecond histogram.
    pub fn from_ns_histogram(histogram: &LatencyHistogram) -> CycleLatency {
        let s = histogram.summary();
        if s.count == 0 {
            return CycleLatency::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        CycleLatency {
            p50: Some(us(s.p50)),
            p99: Some(us(s.p99)),
            count: s.count,
            hist: histogram.points().map(|(v, n)| (us(v), n)).collect(),
        }
    }
}

/// A duration in microseconds from a nanosecond histogram, with its maximum: how long each visit
/// (one DPC) of a domain ran (`dpc_us` of a result).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DurationUs {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Longest.
    pub max: Option<f64>,
    /// Number measured.
    pub count: u64,
    /// `[microseconds, count]` per non-empty bucket.
    pub hist: Vec<(f64, u64)>,
}

impl DurationUs {
    /// From the core's nanosecond histogram.
    pub fn from_ns_histogram(histogram: &LatencyHistogram) -> DurationUs {
        let s = histogram.summary();
        if s.count == 0 {
            return DurationUs::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        DurationUs {
            p50: Some(us(s.p50)),
            p99: Some(us(s.p99)),
            max: Some(us(s.max)),
            count: s.count,
            hist: histogram.points().map(|(v, n)| (us(v), n)).collect(),
        }
    }
}

/// A latency kept as exact samples (nearest-rank quantiles), as the simulator measures first enters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
    /// Number of samples.
    pub count: u64,
    /// Every sample.
    pub samples: Vec<u64>,
}

/// Processor hot-add notifications seen (`hot_add` of a result).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotAdd {
    /// `KeProcessorAddStartNotify`.
    pub start: u64,
    /// `KeProcessorAddCompleteNotify`.
    pub complete: u64,
    /// `KeProcessorAddFailureNotify`.
    pub failure: u64,
    /// Start notifications the domain vetoed.
    pub vetoed: u64,
}

/// Notifications replayed at registration for processors already active (`hot_add_replayed` of a
/// result): not hot-adds, counted apart so that the `hot_add` rows show live hot-adds only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotAddReplayed {
    /// AddStart notifications of the replay.
    pub start: u64,
    /// AddComplete notifications of the replay.
    pub complete: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_histograms_have_null_quantiles() {
        let h = LatencyHistogram::default();
        let v = serde_json::to_value(Latency::from_histogram(&h)).unwrap();
        assert!(v["p50"].is_null() && v["max"].is_null());
        assert_eq!(v["count"], 0);
        let c = serde_json::to_value(CycleLatency::from_ns_histogram(&h)).unwrap();
        assert!(c["p99"].is_null());
        assert_eq!(c["hist"], serde_json::json!([]));
    }

    #[test]
    fn cycle_latency_is_in_microseconds() {
        let mut h = LatencyHistogram::default();
        h.record(2000);
        let c = CycleLatency::from_ns_histogram(&h);
        assert_eq!(c.count, 1);
        assert_eq!(c.hist, vec![(2.0, 1)]);
        assert!((c.p50.unwrap() - 2.0).abs() < 0.02);
        let l = Latency::from_histogram(&h);
        assert_eq!(serde_json::to_value(&l).unwrap()["hist"][0][1], 1);
    }
}
