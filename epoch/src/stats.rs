//! Counters: cheap enough to stay on in release builds. Per-processor counters are written only by
//! their owner with plain stores; the rare slow-path events use shared atomics.

use crate::sync::{owner_add, AtomicU64, Ordering};

/// Counters of one participant, written only by its owner (the processor at DISPATCH, or the holder of
/// the overflow lock). Enters and exits are not counted here: the reader table's entries already
/// count them (`ReaderTable::totals`).
#[derive(Default)]
pub(crate) struct ParticipantCounters {
    pub(crate) retires: AtomicU64,
    pub(crate) freed: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) joins: AtomicU64,
    pub(crate) leaves: AtomicU64,
}

impl ParticipantCounters {
    /// Owner-side increment.
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        owner_add(counter, 1);
    }
}

/// Slow-path counters shared by the whole domain.
#[derive(Default)]
pub(crate) struct DomainCounters {
    pub(crate) remote_exits: AtomicU64,
    pub(crate) prepare_at_dispatch: AtomicU64,
    pub(crate) prepare_passive: AtomicU64,
    pub(crate) prepare_failures: AtomicU64,
    pub(crate) fallback_uses: AtomicU64,
    pub(crate) double_retires: AtomicU64,
    pub(crate) stalls_reported: AtomicU64,
    pub(crate) cycles: AtomicU64,
    pub(crate) work_items_run: AtomicU64,
    pub(crate) per_cpu_bytes: AtomicU64,
    pub(crate) cpus_prepared: AtomicU64,
    pub(crate) hot_add_start: AtomicU64,
    pub(crate) hot_add_complete: AtomicU64,
    pub(crate) hot_add_failure: AtomicU64,
    pub(crate) leaked_readers: AtomicU64,
}

impl DomainCounters {
    /// Shared increment (a locked add; slow paths only).
    pub(crate) fn add(counter: &AtomicU64, delta: u64) {
        counter.fetch_add(delta, Ordering::Relaxed);
    }
}

/// How the `callback` strategy ended up running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CallbackState {
    /// Strategy is not `callback`.
    NotUsed = 0,
    /// Registered: processors are prepared in notifications.
    Registered = 1,
    /// The routine does not exist on this host: running as `lazy`.
    ApiMissing = 2,
    /// Registration failed: running as `lazy`.
    RegistrationFailed = 3,
}

/// Version of [`Stats`]; bumped on any layout change.
///
/// 2: appended `config_warnings`, `first_enter_ns` and `enter_exit_ns`.
/// 3: appended `cycle_latency_ns`.
pub const STATS_VERSION: u32 = 3;

/// A snapshot of a domain's counters. `repr(C)` and versioned: the driver returns it through an IOCTL
/// and user-mode tools decode it, so fields are only ever appended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// [`STATS_VERSION`].
    pub version: u32,
    /// `size_of::<Stats>()`, so that a reader can tell versions apart.
    pub size: u32,
    /// Configured strategy (registry value).
    pub strategy: u32,
    /// [`CallbackState`] as a number.
    pub callback_state: u32,
    /// Reported maximum processor count.
    pub max_reported: u32,
    /// Active processor count at the snapshot.
    pub active: u32,
    /// Processors with prepared per-CPU state.
    pub cpus_prepared: u64,
    /// Bytes of per-CPU state (slots and group tables).
    pub per_cpu_bytes: u64,
    /// Preparations paid on the hot path, at DISPATCH.
    pub prepare_at_dispatch: u64,
    /// Preparations done at PASSIVE/APC (load, notifications).
    pub prepare_passive: u64,
    /// Preparations that failed (allocation or binding).
    pub prepare_failures: u64,
    /// Enters and retirements served by the shared overflow slot.
    pub fallback_uses: u64,
    /// Epoch enters.
    pub enters: u64,
    /// Epoch exits (local and migrated).
    pub exits: u64,
    /// Exits on a processor other than the one the reader entered on.
    pub remote_exits: u64,
    /// Items retired (memory and work items).
    pub retired: u64,
    /// Items disposed of (freed or handed to a passive thread).
    pub freed: u64,
    /// Items retired but not yet disposed of.
    pub pending: u64,
    /// Rejected second retirements of the same item.
    pub double_retires: u64,
    /// Completed reclamation cycles.
    pub cycles: u64,
    /// Per-CPU messages delivered.
    pub messages: u64,
    /// Stalled readers reported.
    pub stalls_reported: u64,
    /// Times a processor joined the cycle.
    pub joins: u64,
    /// Times a processor left the cycle (idle deactivation).
    pub leaves: u64,
    /// Processor-change AddStart notifications seen.
    pub hot_add_start: u64,
    /// AddComplete notifications seen.
    pub hot_add_complete: u64,
    /// AddFailure notifications seen.
    pub hot_add_failure: u64,
    /// Hot-adds vetoed by kepoch (always 0: kepoch never vetoes).
    pub hot_add_vetoed: u64,
    /// Work items run at PASSIVE.
    pub work_items_run: u64,
    /// Current global epoch.
    pub global_epoch: u64,
    /// Newest released epoch.
    pub released_epoch: u64,
    /// Readers still inside an epoch at shutdown (a caller bug, reported).
    pub leaked_readers: u64,
    // ---- version 2 ----
    /// Registry values that were ignored or clamped at load (each also logged as a warning).
    pub config_warnings: u64,
    /// Latency of the first enter of a load thread on its processor (includes a lazy preparation
    /// when one is paid there), in nanoseconds.
    pub first_enter_ns: LatencyHistogram,
    /// Latency of an enter/exit pair, in nanoseconds.
    pub enter_exit_ns: LatencyHistogram,
    // ---- version 3 ----
    /// Duration of a reclamation cycle, from publishing its epoch to releasing, in nanoseconds
    /// (measured by the core with [`Platform::now_ns`](crate::platform::Platform::now_ns)).
    pub cycle_latency_ns: LatencyHistogram,
}

/// Number of buckets of a [`LatencyHistogram`]: bucket 47 starts at 2^47 ns (about 39 hours).
pub const LATENCY_BUCKETS: usize = 48;

/// A log2 histogram of durations in nanoseconds: bucket 0 counts 0 and 1 ns, bucket `i > 0` counts
/// `2^i ..= 2^(i+1) - 1` ns (the last bucket also everything above). `repr(C)`, part of [`Stats`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Samples per bucket.
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Largest sample seen, exact.
    pub max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: [0; LATENCY_BUCKETS],
            max_ns: 0,
        }
    }
}

/// Percentiles read from a [`LatencyHistogram`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median: upper bound of the bucket holding it (never above `max`).
    pub p50: u64,
    /// 99th percentile: upper bound of the bucket holding it (never above `max`).
    pub p99: u64,
    /// Largest sample.
    pub max: u64,
}

impl LatencyHistogram {
    /// The bucket a duration falls into.
    pub fn bucket_of(ns: u64) -> usize {
        let bucket = (u64::BITS - 1).saturating_sub(ns.leading_zeros()) as usize;
        bucket.min(LATENCY_BUCKETS - 1)
    }

    /// Largest duration counted in `bucket`.
    pub fn bucket_upper_bound(bucket: usize) -> u64 {
        if bucket + 1 >= LATENCY_BUCKETS {
            u64::MAX
        } else {
            (1u64 << (bucket + 1)) - 1
        }
    }

    /// Counts one sample.
    pub fn record(&mut self, ns: u64) {
        let bucket = &mut self.buckets[Self::bucket_of(ns)];
        *bucket = bucket.saturating_add(1);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |sum, &b| sum.saturating_add(b))
    }

    /// Adds the samples of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The samples recorded since `baseline` was taken (bucket-wise difference). The maximum cannot
    /// be subtracted: it is kept when new samples arrived and reset to 0 otherwise.
    pub fn since(&self, baseline: &LatencyHistogram) -> LatencyHistogram {
        let mut out = LatencyHistogram::default();
        for (o, (now, then)) in out
            .buckets
            .iter_mut()
            .zip(self.buckets.iter().zip(baseline.buckets.iter()))
        {
            *o = now.saturating_sub(*then);
        }
        if out.count() != 0 {
            out.max_ns = self.max_ns;
        }
        out
    }

    /// The `q`-quantile (`q_num / q_den`, e.g. 99/100): the upper bound of the bucket holding the
    /// sample of that rank, capped at the exact maximum. 0 for an empty histogram.
    pub fn quantile(&self, q_num: u64, q_den: u64) -> u64 {
        let count = self.count();
        if count == 0 || q_den == 0 {
            return 0;
        }
        // Rank (1-based) of the sample: ceil(count * q), at least 1.
        let rank = ((u128::from(count) * u128::from(q_num)).div_ceil(u128::from(q_den))).max(1);
        let mut seen = 0u128;
        for (bucket, &n) in self.buckets.iter().enumerate() {
            seen += u128::from(n);
            if seen >= rank {
                return Self::bucket_upper_bound(bucket).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// p50, p99 and max.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50: self.quantile(50, 100),
            p99: self.quantile(99, 100),
            max: self.max_ns,
        }
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn buckets_are_log2() {
        assert_eq!(LatencyHistogram::bucket_of(0), 0);
        assert_eq!(LatencyHistogram::bucket_of(1), 0);
        assert_eq!(LatencyHistogram::bucket_of(2), 1);
        assert_eq!(LatencyHistogram::bucket_of(3), 1);
        assert_eq!(LatencyHistogram::bucket_of(4), 2);
        assert_eq!(LatencyHistogram::bucket_of(1023), 9);
        assert_eq!(LatencyHistogram::bucket_of(1024), 10);
        assert_eq!(LatencyHistogram::bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        for bucket in 0..LATENCY_BUCKETS - 1 {
            let top = LatencyHistogram::bucket_upper_bound(bucket);
            assert_eq!(LatencyHistogram::bucket_of(top), bucket);
            assert_eq!(LatencyHistogram::bucket_of(top + 1), bucket + 1);
        }
    }

    #[test]
    fn empty_histogram_summarises_to_zero() {
        assert_eq!(
            LatencyHistogram::default().summary(),
            LatencySummary::default()
        );
    }

    #[test]
    fn percentiles_pick_the_right_bucket() {
        let mut h = LatencyHistogram::default();
        // 98 fast samples (100 ns, bucket 6: 64..=127), 2 slow ones (5000 ns, bucket 12: 4096..=8191).
        for _ in 0..98 {
            h.record(100);
        }
        h.record(5000);
        h.record(5000);
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, 127);
        assert_eq!(s.p99, 5000); // bucket bound 8191, capped at the exact maximum
        assert_eq!(s.max, 5000);
        // One sample: every percentile is that sample's bucket, capped at the sample.
        let mut one = LatencyHistogram::default();
        one.record(300);
        assert_eq!(one.summary().p50, 300);
        assert_eq!(one.summary().p99, 300);
    }

    #[test]
    fn p99_needs_more_than_one_percent_above() {
        let mut h = LatencyHistogram::default();
        for _ in 0..99 {
            h.record(10);
        }
        h.record(1_000_000);
        // Rank 99 of 100 is still a fast sample.
        assert_eq!(h.quantile(99, 100), 15);
        assert_eq!(h.summary().max, 1_000_000);
    }

    #[test]
    fn since_and_merge_are_bucket_wise() {
        let mut a = LatencyHistogram::default();
        a.record(10);
        let baseline = a;
        assert_eq!(a.since(&baseline), LatencyHistogram::default());
        a.record(10);
        a.record(2000);
        let d = a.since(&baseline);
        assert_eq!(d.count(), 2);
        assert_eq!(d.max_ns, 2000);
        let mut m = baseline;
        m.merge(&d);
        assert_eq!(m.count(), 3);
        assert_eq!(m.buckets, a.buckets);
    }
}
