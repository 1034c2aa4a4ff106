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
    pub(crate) replayed_add_start: AtomicU64,
    pub(crate) replayed_add_complete: AtomicU64,
    pub(crate) replayed_add_failure: AtomicU64,
    pub(crate) visits_cut_short: AtomicU64,
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
/// 4: the three histograms became log-linear ([`LatencyHistogram`]: exact below 128 ns, then 64
///    linear sub-buckets per power of two, at most 0.79 % error) instead of one bucket per power of
///    two; `size` grew from 1416 to 24120 bytes.
/// 5: appended `replayed_add_start`, `replayed_add_complete` and `replayed_add_failure` (the
///    `hot_add_*` counters count live hot-adds only; before, they also counted the notifications
///    registration replays for processors already active), `visits_cut_short`, and the `visit_ns`
///    and `frees_per_visit` histograms; `size` grew to 40072 bytes.
pub const STATS_VERSION: u32 = 5;

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
    /// AddStart notifications of live hot-adds (processors added while the domain was registered;
    /// the replay at registration is counted in `replayed_add_start`).
    pub hot_add_start: u64,
    /// AddComplete notifications of live hot-adds.
    pub hot_add_complete: u64,
    /// AddFailure notifications of live hot-adds.
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
    // ---- version 5 ----
    /// AddStart notifications replayed at registration for processors already active.
    pub replayed_add_start: u64,
    /// AddComplete notifications replayed at registration.
    pub replayed_add_complete: u64,
    /// AddFailure notifications at registration (another registrant vetoed a replayed start).
    pub replayed_add_failure: u64,
    /// Visits that stopped at `max_frees_per_visit` or at `visit_budget_us` with released items left (freed by the next
    /// visit, of a cycle asked for at once).
    pub visits_cut_short: u64,
    /// Duration of each visit (one DPC on one processor), in nanoseconds.
    pub visit_ns: LatencyHistogram,
    /// Items freed by each visit (a count in the histogram's units; the overflow slot's frees at
    /// the end of a cycle are bounded alike but not recorded here).
    pub frees_per_visit: LatencyHistogram,
}

impl Stats {
    /// Sets every field to zero in place (a `Stats` is 40 KB: kernel code never builds one on its
    /// 24 KiB stack).
    pub fn clear(&mut self) {
        // SAFETY: `Stats` is repr(C) and made of integers only (u32, u64, arrays of u32/u64), so the
        // all-zero bit pattern is a valid value; `self` is a unique reference to one `Stats`.
        unsafe { core::ptr::write_bytes(self as *mut Stats, 0, 1) };
    }
}

/// Sub-buckets per power-of-two range of a [`LatencyHistogram`], as a power of two (64).
pub const LATENCY_SUB_BITS: u32 = 6;
const SUB: u64 = 1 << LATENCY_SUB_BITS;
/// Durations below this many nanoseconds are counted exactly, one bucket per nanosecond.
pub const LATENCY_EXACT_BELOW: u64 = 2 * SUB;
/// Durations of at least `2^LATENCY_TOP_BITS` ns (about 68.7 s) are counted in `above` only.
pub const LATENCY_TOP_BITS: u32 = 36;
/// Buckets of a [`LatencyHistogram`]: 128 exact ones, then 64 for each power of two from 2^7 to 2^35.
pub const LATENCY_BUCKETS: usize =
    LATENCY_EXACT_BELOW as usize + (LATENCY_TOP_BITS as usize - 7) * SUB as usize;

/// A log-linear histogram of durations in nanoseconds, `repr(C)`, part of [`Stats`].
///
/// Durations below 128 ns have one bucket each; from 128 ns on, each power-of-two range
/// `2^k ..= 2^(k+1) - 1` is split into 64 equal sub-buckets of width `2^(k-6)`. A bucket is read as its
/// midpoint, so a percentile is within `width / 2 / lower bound <= 1/128` (0.79 %) of the sample of
/// that rank (and never above the exact maximum). Recording is an index computation (a leading-zero
/// count and a shift) and one add. Bucket counts saturate at `u32::MAX`; `count` and `max_ns` are exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Samples per bucket.
    pub buckets: [u32; LATENCY_BUCKETS],
    /// Samples of at least `2^LATENCY_TOP_BITS` ns.
    pub above: u64,
    /// Number of samples (exact).
    pub count: u64,
    /// Largest sample seen, exact.
    pub max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: [0; LATENCY_BUCKETS],
            above: 0,
            count: 0,
            max_ns: 0,
        }
    }
}

/// Percentiles read from a [`LatencyHistogram`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median (within 0.79 %, never above `max`).
    pub p50: u64,
    /// 99th percentile (within 0.79 %, never above `max`).
    pub p99: u64,
    /// Largest sample.
    pub max: u64,
}

impl LatencyHistogram {
    /// The bucket a duration falls into; `None` at or above `2^LATENCY_TOP_BITS` ns.
    #[inline]
    pub fn bucket_of(ns: u64) -> Option<usize> {
        if ns < LATENCY_EXACT_BELOW {
            return Some(ns as usize);
        }
        let k = u64::BITS - 1 - ns.leading_zeros();
        if k >= LATENCY_TOP_BITS {
            return None;
        }
        let sub = (ns >> (k - LATENCY_SUB_BITS)) - SUB;
        Some(LATENCY_EXACT_BELOW as usize + (k as usize - 7) * SUB as usize + sub as usize)
    }

    /// Smallest duration and width of `bucket`.
    pub fn bucket_range(bucket: usize) -> (u64, u64) {
        let b = bucket as u64;
        if b < LATENCY_EXACT_BELOW {
            return (b, 1);
        }
        let k = 7 + (b - LATENCY_EXACT_BELOW) / SUB;
        let sub = (b - LATENCY_EXACT_BELOW) % SUB;
        (
            (SUB + sub) << (k - u64::from(LATENCY_SUB_BITS)),
            1 << (k - 6),
        )
    }

    /// The value `bucket` is read as: its midpoint.
    pub fn bucket_value(bucket: usize) -> u64 {
        let (low, width) = Self::bucket_range(bucket);
        low + (width - 1) / 2
    }

    /// Counts one sample.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        match Self::bucket_of(ns) {
            Some(b) => self.buckets[b] = self.buckets[b].saturating_add(1),
            None => self.above = self.above.saturating_add(1),
        }
        self.count = self.count.saturating_add(1);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds the samples of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.above = self.above.saturating_add(other.above);
        self.count = self.count.saturating_add(other.count);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Makes `self` a copy of `other` in place (no temporary on the stack).
    pub fn copy_from(&mut self, other: &LatencyHistogram) {
        self.buckets.copy_from_slice(&other.buckets);
        self.above = other.above;
        self.count = other.count;
        self.max_ns = other.max_ns;
    }

    /// Keeps only the samples recorded since `baseline` was taken (bucket-wise difference, in place).
    /// The maximum cannot be subtracted: it is kept when new samples arrived and reset to 0 otherwise.
    pub fn subtract(&mut self, baseline: &LatencyHistogram) {
        for (now, then) in self.buckets.iter_mut().zip(baseline.buckets.iter()) {
            *now = now.saturating_sub(*then);
        }
        self.above = self.above.saturating_sub(baseline.above);
        self.count = self.count.saturating_sub(baseline.count);
        if self.count == 0 {
            self.max_ns = 0;
        }
    }

    /// Non-empty buckets as `(value, count)`, smallest first; samples above the range are reported at
    /// the exact maximum.
    pub fn points(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let max = self.max_ns;
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n != 0)
            .map(move |(b, &n)| (Self::bucket_value(b).min(max), u64::from(n)))
            .chain((self.above != 0).then_some((max, self.above)))
    }

    /// The `q`-quantile (`q_num / q_den`, e.g. 99/100) by nearest rank: the value of the bucket holding
    /// the sample of rank `ceil(count * q)`, capped at the exact maximum. 0 for an empty histogram.
    pub fn quantile(&self, q_num: u64, q_den: u64) -> u64 {
        let count = self.count;
        if count == 0 || q_den == 0 {
            return 0;
        }
        let rank = ((u128::from(count) * u128::from(q_num)).div_ceil(u128::from(q_den))).max(1);
        let mut seen = 0u128;
        for (value, n) in self.points() {
            seen += u128::from(n);
            if seen >= rank {
                return value;
            }
        }
        // Saturated buckets lost samples: the rank lies beyond what they hold.
        self.max_ns
    }

    /// p50, p99 and max.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count,
            p50: self.quantile(50, 100),
            p99: self.quantile(99, 100),
            max: self.max_ns,
        }
    }
}

#[cfg(test)]
mod histogram_tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;

    #[test]
    fn buckets_are_exact_then_log_linear() {
        for ns in 0..LATENCY_EXACT_BELOW {
            assert_eq!(LatencyHistogram::bucket_of(ns), Some(ns as usize));
            assert_eq!(LatencyHistogram::bucket_range(ns as usize), (ns, 1));
        }
        assert_eq!(LatencyHistogram::bucket_of(128), Some(128));
        assert_eq!(LatencyHistogram::bucket_of(129), Some(128));
        assert_eq!(LatencyHistogram::bucket_of(130), Some(129));
        assert_eq!(
            LatencyHistogram::bucket_of((1 << 36) - 1),
            Some(LATENCY_BUCKETS - 1)
        );
        assert_eq!(LatencyHistogram::bucket_of(1 << 36), None);
        assert_eq!(LatencyHistogram::bucket_of(u64::MAX), None);
        // Buckets tile the range without gaps or overlaps.
        for b in 0..LATENCY_BUCKETS - 1 {
            let (low, width) = LatencyHistogram::bucket_range(b);
            assert_eq!(LatencyHistogram::bucket_of(low), Some(b));
            assert_eq!(LatencyHistogram::bucket_of(low + width - 1), Some(b));
            assert_eq!(
                LatencyHistogram::bucket_range(b + 1).0,
                low + width,
                "bucket {b}"
            );
        }
    }

    #[test]
    fn every_value_reads_back_within_0_79_percent() {
        let mut ns = 1u64;
        while ns < 1 << 36 {
            for v in [ns, ns + ns / 3, ns * 2 - 1] {
                let b = LatencyHistogram::bucket_of(v).unwrap();
                let read = LatencyHistogram::bucket_value(b) as f64;
                let error = (read - v as f64).abs() / v as f64;
                assert!(error <= 1.0 / 128.0, "{v} read as {read}: {error}");
            }
            ns *= 2;
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
    fn percentiles_are_within_one_percent() {
        let mut h = Box::<LatencyHistogram>::default();
        // 98 fast samples (1000 ns), 2 slow ones (5003 ns).
        for _ in 0..98 {
            h.record(1000);
        }
        h.record(5003);
        h.record(5003);
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!(s.p50.abs_diff(1000) <= 8, "{s:?}");
        assert_eq!(s.p99, 5003); // the bucket's midpoint is above, capped at the exact maximum
        assert_eq!(s.max, 5003);
        let mut one = LatencyHistogram::default();
        one.record(300);
        assert_eq!(one.summary().p50, 300);
        let mut far = LatencyHistogram::default();
        far.record(1 << 40);
        assert_eq!((far.above, far.summary().p50), (1, 1 << 40));
    }

    #[test]
    fn p99_needs_more_than_one_percent_above() {
        let mut h = LatencyHistogram::default();
        for _ in 0..99 {
            h.record(10);
        }
        h.record(1_000_000);
        assert_eq!(h.quantile(99, 100), 10);
        assert_eq!(h.summary().max, 1_000_000);
    }

    #[test]
    fn subtract_and_merge_are_bucket_wise() {
        let mut a = LatencyHistogram::default();
        a.record(10);
        let baseline = a;
        let mut d = a;
        d.subtract(&baseline);
        assert_eq!(d, LatencyHistogram::default());
        a.record(10);
        a.record(2000);
        let mut d = a;
        d.subtract(&baseline);
        assert_eq!(d.count(), 2);
        assert_eq!(d.max_ns, 2000);
        let mut m = baseline;
        m.merge(&d);
        assert_eq!(m.count(), 3);
        assert_eq!(m.buckets, a.buckets);
        let mut c = LatencyHistogram::default();
        c.copy_from(&m);
        assert_eq!(c, m);
        let mut s = Box::<Stats>::default();
        s.enters = 3;
        s.cycle_latency_ns.record(5);
        s.clear();
        assert_eq!(*s, Stats::default());
    }
}
