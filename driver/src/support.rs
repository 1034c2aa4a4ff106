//! Target-independent helpers of the driver: the SIDs of its device's DACL, the load generator's
//! arithmetic and its shared histograms. Pure logic, unit-tested on the host.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kepoch::stats::{LatencyHistogram, LATENCY_BUCKETS};

/// A SID with two sub-authorities at most, in the binary layout of `SID` (revision 1, NT authority).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WellKnownSid {
    revision: u8,
    sub_authority_count: u8,
    identifier_authority: [u8; 6],
    sub_authority: [u32; 2],
}

impl WellKnownSid {
    /// `S-1-5-18`, LocalSystem (`SY` in SDDL).
    pub const LOCAL_SYSTEM: WellKnownSid = WellKnownSid::nt(1, [18, 0]);
    /// `S-1-5-32-544`, BUILTIN\Administrators (`BA` in SDDL).
    pub const BUILTIN_ADMINISTRATORS: WellKnownSid = WellKnownSid::nt(2, [32, 544]);

    const fn nt(count: u8, sub_authority: [u32; 2]) -> WellKnownSid {
        WellKnownSid {
            revision: 1,
            sub_authority_count: count,
            identifier_authority: [0, 0, 0, 0, 0, 5],
            sub_authority,
        }
    }

    /// `RtlLengthSid`: 8 bytes plus 4 per sub-authority.
    pub const fn length(&self) -> usize {
        8 + 4 * self.sub_authority_count as usize
    }

    /// The SID in SDDL string form, for logs and tests.
    pub fn write_sddl(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "S-{}-{}", self.revision, self.identifier_authority[5])?;
        for sub in &self.sub_authority[..usize::from(self.sub_authority_count)] {
            write!(out, "-{sub}")?;
        }
        Ok(())
    }
}

/// Bytes of a DACL holding one ACCESS_ALLOWED_ACE per SID: the 8-byte ACL header plus, per ACE, its
/// 8-byte header (type, flags, size, mask) and the SID.
pub const fn dacl_size(sids: &[WellKnownSid]) -> usize {
    let mut size = 8;
    let mut i = 0;
    while i < sids.len() {
        size += 8 + sids[i].length();
        i += 1;
    }
    size
}

/// The `n`-th (0-based, wrapping) set bit of an affinity mask: spreads load threads over the active
/// processors of a group. `None` for an empty mask.
pub fn nth_set_bit(mask: u64, n: u32) -> Option<u32> {
    let count = mask.count_ones();
    if count == 0 {
        return None;
    }
    let mut wanted = n % count;
    let mut rest = mask;
    loop {
        let bit = rest.trailing_zeros();
        if wanted == 0 {
            return Some(bit);
        }
        wanted -= 1;
        rest &= rest - 1;
    }
}

/// The share of `rate` (operations per second) of thread `index` of `threads`: as even as possible,
/// the first `rate % threads` threads do one more.
pub fn thread_rate(rate: u32, threads: u32, index: u32) -> u32 {
    if threads == 0 {
        return 0;
    }
    rate / threads + u32::from(index < rate % threads)
}

/// How many operations a thread running at `rate` per second should have done after `elapsed` ticks of
/// a counter running at `frequency` ticks per second.
pub fn ops_due(elapsed: u64, frequency: u64, rate: u32) -> u64 {
    if frequency == 0 {
        return 0;
    }
    let due = u128::from(elapsed) * u128::from(rate) / u128::from(frequency);
    u64::try_from(due).unwrap_or(u64::MAX)
}

/// Converts performance-counter ticks to nanoseconds.
pub fn ticks_to_ns(ticks: u64, frequency: u64) -> u64 {
    if frequency == 0 {
        return 0;
    }
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(frequency);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// A [`LatencyHistogram`] that several threads record into (relaxed atomics; the load generator times
/// outside the measured region, so the shared writes do not skew the figures). All-zero is an empty
/// histogram, so it can live in zeroed pool memory without being built on the stack.
pub struct AtomicHistogram {
    buckets: [AtomicU32; LATENCY_BUCKETS],
    above: AtomicU64,
    count: AtomicU64,
    max_ns: AtomicU64,
}

impl AtomicHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: AtomicU32 = AtomicU32::new(0);
        AtomicHistogram {
            buckets: [ZERO; LATENCY_BUCKETS],
            above: AtomicU64::new(0),
            count: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    /// Counts one sample (bucket counts saturate, like [`LatencyHistogram::record`]).
    pub fn record(&self, ns: u64) {
        match LatencyHistogram::bucket_of(ns) {
            Some(b) => {
                let _ = self.buckets[b]
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
            }
            None => {
                self.above.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Copies the current counts into `out`, in place.
    pub fn snapshot_into(&self, out: &mut LatencyHistogram) {
        for (o, b) in out.buckets.iter_mut().zip(self.buckets.iter()) {
            *o = b.load(Ordering::Relaxed);
        }
        out.above = self.above.load(Ordering::Relaxed);
        out.count = self.count.load(Ordering::Relaxed);
        out.max_ns = self.max_ns.load(Ordering::Relaxed);
    }
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn well_known_sids_and_dacl_size() {
        use std::string::String;
        let mut text = String::new();
        WellKnownSid::LOCAL_SYSTEM.write_sddl(&mut text).unwrap();
        assert_eq!(text, "S-1-5-18");
        text.clear();
        WellKnownSid::BUILTIN_ADMINISTRATORS
            .write_sddl(&mut text)
            .unwrap();
        assert_eq!(text, "S-1-5-32-544");
        assert_eq!(WellKnownSid::LOCAL_SYSTEM.length(), 12);
        assert_eq!(WellKnownSid::BUILTIN_ADMINISTRATORS.length(), 16);
        assert_eq!(core::mem::size_of::<WellKnownSid>(), 16);
        assert_eq!(
            dacl_size(&[
                WellKnownSid::LOCAL_SYSTEM,
                WellKnownSid::BUILTIN_ADMINISTRATORS
            ]),
            52
        );
    }

    #[test]
    fn threads_spread_over_active_processors() {
        assert_eq!(nth_set_bit(0, 3), None);
        assert_eq!(nth_set_bit(0b1011, 0), Some(0));
        assert_eq!(nth_set_bit(0b1011, 1), Some(1));
        assert_eq!(nth_set_bit(0b1011, 2), Some(3));
        assert_eq!(nth_set_bit(0b1011, 3), Some(0));
        assert_eq!(nth_set_bit(u64::MAX, 63), Some(63));
        assert_eq!(nth_set_bit(1 << 63, 5), Some(63));
    }

    #[test]
    fn rate_is_split_and_paced() {
        let total: u32 = (0..7).map(|i| thread_rate(100, 7, i)).sum();
        assert_eq!(total, 100);
        assert_eq!(thread_rate(100, 7, 0), 15);
        assert_eq!(thread_rate(100, 7, 6), 14);
        assert_eq!(thread_rate(5, 0, 0), 0);
        assert_eq!(ops_due(10_000_000, 10_000_000, 1000), 1000);
        assert_eq!(ops_due(5_000_000, 10_000_000, 1000), 500);
        assert_eq!(ops_due(u64::MAX, 1, u32::MAX), u64::MAX);
        assert_eq!(ops_due(5, 0, 1), 0);
        assert_eq!(ticks_to_ns(10, 10_000_000), 1000);
        assert_eq!(ticks_to_ns(3, 0), 0);
    }

    #[test]
    fn atomic_histogram_snapshots() {
        let h = AtomicHistogram::new();
        h.record(100);
        h.record(100);
        h.record(9000);
        h.record(1 << 40);
        let mut s = std::boxed::Box::<LatencyHistogram>::default();
        h.snapshot_into(&mut s);
        assert_eq!(s.count(), 4);
        assert_eq!(s.above, 1);
        assert_eq!(s.max_ns, 1 << 40);
        assert_eq!(s.summary().p50, 100);
        assert!(s.quantile(3, 4).abs_diff(9000) <= 9000 / 128);
    }
}
