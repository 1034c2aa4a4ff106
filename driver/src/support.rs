//! Target-independent helpers of the NT platform: pool tag, over-aligned pool blocks, fixed-size log
//! lines, UTF-16 literals, timer and notification conversions. Pure logic, unit-tested on the host.

use core::alloc::Layout;
use core::fmt;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kepoch::config::RegistryValue;
use kepoch::platform::{ProcessorChange, Status};
use kepoch::stats::{LatencyHistogram, LATENCY_BUCKETS};

/// Pool tag of every kepoch allocation: shows as `Epch` in `!poolused` / PoolMon (C literal `'hcpE'`).
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"Epch");

/// Alignment NT pool guarantees for blocks smaller than a page on x64 (`MEMORY_ALLOCATION_ALIGNMENT`).
pub const POOL_ALIGNMENT: usize = 16;

/// How a [`Layout`] is served from pool: directly (alignment the pool already gives) or over-allocated
/// with the original block address stored just below the aligned start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolBlock {
    /// Allocate `size` bytes and use them as they are.
    Direct {
        /// Bytes to request (at least 1).
        size: usize,
    },
    /// Allocate `size` bytes, use [`aligned_start`] inside them, and keep the base below it.
    OverAligned {
        /// Bytes to request.
        size: usize,
    },
}

impl PoolBlock {
    /// The request for `layout`, or `None` when the padded size overflows.
    pub fn for_layout(layout: Layout) -> Option<PoolBlock> {
        if layout.align() <= POOL_ALIGNMENT {
            return Some(PoolBlock::Direct {
                size: layout.size().max(1),
            });
        }
        let size = layout
            .size()
            .checked_add(layout.align())?
            .checked_add(core::mem::size_of::<usize>())?;
        Some(PoolBlock::OverAligned { size })
    }

    /// Bytes to request from the pool.
    pub fn size(self) -> usize {
        match self {
            PoolBlock::Direct { size } | PoolBlock::OverAligned { size } => size,
        }
    }
}

/// The first address at or above `base + size_of::<usize>()` that is aligned to `align` (a power of
/// two): the start of an over-aligned block, leaving room for the base address right below it.
pub fn aligned_start(base: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (base + core::mem::size_of::<usize>() + align - 1) & !(align - 1)
}

/// Capacity of one log line: DbgPrintEx transmits at most 512 bytes per call.
pub const LOG_LINE_CAPACITY: usize = 512;

/// A log line formatted without allocation: truncated at [`LOG_LINE_CAPACITY`] (on a character
/// boundary), always newline- and NUL-terminated, with interior NULs replaced so nothing is cut short.
pub struct LogLine {
    buf: [u8; LOG_LINE_CAPACITY],
    len: usize,
    truncated: bool,
}

impl LogLine {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; LOG_LINE_CAPACITY],
            len: 0,
            truncated: false,
        }
    }

    /// Formats `args` into a new line.
    pub fn format(args: fmt::Arguments<'_>) -> Self {
        let mut line = Self::new();
        // Writing into a LogLine never fails; it truncates instead.
        let _ = fmt::write(&mut line, args);
        line
    }

    /// The text so far (without the terminator).
    pub fn text(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Whether some of the text did not fit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The line ending in `"\n\0"`, ready for a `%s` argument of DbgPrintEx.
    pub fn terminated(&mut self) -> &[u8] {
        self.buf[self.len] = b'\n';
        self.buf[self.len + 1] = 0;
        &self.buf[..self.len + 2]
    }
}

impl Default for LogLine {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for LogLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Two bytes stay free for "\n\0".
        let room = LOG_LINE_CAPACITY - 2 - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        if take < s.len() {
            self.truncated = true;
        }
        for (dst, &src) in self.buf[self.len..self.len + take]
            .iter_mut()
            .zip(s.as_bytes())
        {
            *dst = if src == 0 { b'?' } else { src };
        }
        self.len += take;
        Ok(())
    }
}

/// Converts an ASCII string to UTF-16 at compile time (used by [`wide!`](crate::wide)).
///
/// Panics (at compile time when used in a const) on non-ASCII input or a length mismatch.
pub const fn ascii_to_utf16<const N: usize>(s: &str) -> [u16; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() == N, "length mismatch");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(bytes[i] < 0x80, "ASCII only");
        out[i] = bytes[i] as u16;
        i += 1;
    }
    out
}

/// A `&'static [u16]` UTF-16 copy of an ASCII string literal, without terminator (for `UNICODE_STRING`).
#[macro_export]
macro_rules! wide {
    ($s:expr) => {{
        const WIDE: [u16; $s.len()] = $crate::support::ascii_to_utf16::<{ $s.len() }>($s);
        &WIDE as &'static [u16]
    }};
}

/// The due time of the next tick of a timer with period `period_us`, in the relative 100 ns units of
/// `KeSetTimerEx` (negative = relative). A period of 0 is treated as 1 µs; NT rounds up to its clock
/// interval anyway.
pub fn relative_due_time(period_us: u32) -> i64 {
    -(i64::from(period_us.max(1)) * 10)
}

/// The period of a periodic `KeSetTimerEx` (milliseconds, at least 1) for a cycle period in
/// microseconds, rounded up. NT timers expire on clock ticks (1 to 15.6 ms), so sub-millisecond periods
/// are not available from a KTIMER anyway.
pub fn timer_period_ms(period_us: u32) -> i32 {
    i32::try_from(period_us.div_ceil(1000).max(1)).unwrap_or(i32::MAX)
}

/// `KE_PROCESSOR_CHANGE_NOTIFY_STATE` + status → the core's [`ProcessorChange`]; `None` for a state
/// this driver does not know (it is then ignored, never vetoed).
pub fn processor_change_from_nt(state: u32, status: i32) -> Option<ProcessorChange> {
    match state {
        0 => Some(ProcessorChange::AddStart),
        1 => Some(ProcessorChange::AddComplete),
        2 => Some(ProcessorChange::AddFailure(Status(status))),
        _ => None,
    }
}

/// What goes into `*OperationStatus` after the core handled a notification: only an AddStart may veto
/// (by returning an error); everything else leaves the kernel's value untouched (`None`).
pub fn veto_status(change: ProcessorChange, result: Status) -> Option<i32> {
    match change {
        ProcessorChange::AddStart if !result.is_success() => Some(result.0),
        _ => None,
    }
}

/// `REG_DWORD`.
pub const REG_DWORD: u32 = 4;
/// `STATUS_OBJECT_NAME_NOT_FOUND`.
const STATUS_OBJECT_NAME_NOT_FOUND: i32 = 0xC000_0034u32 as i32;
/// `STATUS_BUFFER_OVERFLOW`.
const STATUS_BUFFER_OVERFLOW: i32 = 0x8000_0005u32 as i32;

/// Interprets `ZwQueryValueKey(KeyValuePartialInformation)`: `status` of the call and, when the fixed
/// part was returned (success or `STATUS_BUFFER_OVERFLOW`), the value's type and data. A value that does
/// not exist is `Missing`; anything but a 4-byte REG_DWORD is `WrongType`; any other failure is
/// returned as the error status (the caller logs it and uses the default).
pub fn registry_value_from_query(
    status: i32,
    reg_type: u32,
    data: &[u8],
) -> Result<RegistryValue, i32> {
    if status == STATUS_OBJECT_NAME_NOT_FOUND {
        return Ok(RegistryValue::Missing);
    }
    if status != 0 && status != STATUS_BUFFER_OVERFLOW {
        return Err(status);
    }
    match (status, reg_type, data) {
        (0, REG_DWORD, &[a, b, c, d]) => Ok(RegistryValue::Dword(u32::from_le_bytes([a, b, c, d]))),
        _ => Ok(RegistryValue::WrongType(reg_type)),
    }
}

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
    use core::fmt::Write;
    use std::vec;

    #[test]
    fn registry_queries_map_to_registry_values() {
        const REG_SZ: u32 = 1;
        let not_found = 0xC000_0034u32 as i32;
        let overflow = 0x8000_0005u32 as i32;
        let denied = 0xC000_0022u32 as i32;
        assert_eq!(
            registry_value_from_query(not_found, 0, &[]),
            Ok(RegistryValue::Missing)
        );
        assert_eq!(
            registry_value_from_query(0, REG_DWORD, &7u32.to_le_bytes()),
            Ok(RegistryValue::Dword(7))
        );
        assert_eq!(
            registry_value_from_query(0, REG_SZ, &[b'7', 0, 0, 0]),
            Ok(RegistryValue::WrongType(REG_SZ))
        );
        assert_eq!(
            registry_value_from_query(overflow, REG_SZ, &[]),
            Ok(RegistryValue::WrongType(REG_SZ))
        );
        // A REG_DWORD of the wrong length is malformed: not used.
        assert_eq!(
            registry_value_from_query(0, REG_DWORD, &[1, 0]),
            Ok(RegistryValue::WrongType(REG_DWORD))
        );
        assert_eq!(registry_value_from_query(denied, 0, &[]), Err(denied));
    }

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

    #[test]
    fn pool_tag_reads_epch_in_memory() {
        assert_eq!(POOL_TAG, 0x6863_7045); // 'hcpE'
        assert_eq!(&POOL_TAG.to_le_bytes(), b"Epch");
    }

    #[test]
    fn small_alignments_are_served_directly() {
        for align in [1, 2, 4, 8, 16] {
            let layout = Layout::from_size_align(24, align).unwrap();
            assert_eq!(
                PoolBlock::for_layout(layout),
                Some(PoolBlock::Direct { size: 24 })
            );
        }
        let empty = Layout::from_size_align(0, 8).unwrap();
        assert_eq!(PoolBlock::for_layout(empty).unwrap().size(), 1);
    }

    #[test]
    fn over_aligned_blocks_fit_header_and_payload() {
        for align in [32usize, 64, 128, 4096] {
            for size in [0usize, 1, 63, 64, 65, 1000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let block = PoolBlock::for_layout(layout).unwrap();
                assert!(matches!(block, PoolBlock::OverAligned { .. }));
                // Any base the pool may return: 16-aligned, and also odd ones to be safe.
                for base in (0x1000usize..0x1000 + 2 * align).step_by(8) {
                    let start = aligned_start(base, align);
                    assert_eq!(start % align, 0);
                    assert!(start >= base + core::mem::size_of::<usize>());
                    assert!(
                        start + size <= base + block.size(),
                        "{base:#x} {align} {size}"
                    );
                }
            }
        }
    }

    #[test]
    fn log_line_formats_and_terminates() {
        let mut line = LogLine::format(format_args!("kepoch: max={} active={}", 64, 4));
        assert_eq!(line.text(), b"kepoch: max=64 active=4");
        assert!(!line.truncated());
        assert_eq!(line.terminated(), b"kepoch: max=64 active=4\n\0");
    }

    #[test]
    fn log_line_truncates_on_char_boundary_and_replaces_nul() {
        let mut line = LogLine::new();
        line.write_str("a\0b").unwrap();
        assert_eq!(line.text(), b"a?b");
        let long = vec![b'x'; LOG_LINE_CAPACITY];
        line.write_str(core::str::from_utf8(&long).unwrap())
            .unwrap();
        assert!(line.truncated());
        assert_eq!(line.text().len(), LOG_LINE_CAPACITY - 2);
        let t = line.terminated();
        assert_eq!(t.len(), LOG_LINE_CAPACITY);
        assert_eq!(&t[t.len() - 2..], b"\n\0");

        // A multi-byte character that does not fit entirely is dropped, not split.
        let mut line = LogLine::new();
        let pad = vec![b'y'; LOG_LINE_CAPACITY - 3];
        line.write_str(core::str::from_utf8(&pad).unwrap()).unwrap();
        line.write_str("é").unwrap();
        assert!(line.truncated());
        assert!(core::str::from_utf8(line.text()).is_ok());
        assert_eq!(line.text().len(), LOG_LINE_CAPACITY - 3);
    }

    #[test]
    fn wide_literal_is_utf16() {
        let w: &[u16] = crate::wide!("\\Device\\kepoch");
        assert_eq!(w.len(), 14);
        assert_eq!(w[0], u16::from(b'\\'));
        assert_eq!(w[13], u16::from(b'h'));
    }

    #[test]
    fn timer_period_rounds_up_to_milliseconds() {
        assert_eq!(timer_period_ms(0), 1);
        assert_eq!(timer_period_ms(100), 1);
        assert_eq!(timer_period_ms(1000), 1);
        assert_eq!(timer_period_ms(1001), 2);
        assert_eq!(timer_period_ms(1_000_000), 1000);
        assert_eq!(timer_period_ms(u32::MAX), 4_294_968);
    }

    #[test]
    fn timer_due_time_is_relative_100ns() {
        assert_eq!(relative_due_time(1000), -10_000);
        assert_eq!(relative_due_time(0), -10);
        assert_eq!(relative_due_time(u32::MAX), -(u32::MAX as i64) * 10);
    }

    #[test]
    fn processor_change_mapping_and_veto() {
        assert_eq!(
            processor_change_from_nt(0, 0),
            Some(ProcessorChange::AddStart)
        );
        assert_eq!(
            processor_change_from_nt(1, 0),
            Some(ProcessorChange::AddComplete)
        );
        assert_eq!(
            processor_change_from_nt(2, Status::INSUFFICIENT_RESOURCES.0),
            Some(ProcessorChange::AddFailure(Status::INSUFFICIENT_RESOURCES))
        );
        assert_eq!(processor_change_from_nt(3, 0), None);

        assert_eq!(
            veto_status(ProcessorChange::AddStart, Status::SUCCESS),
            None
        );
        assert_eq!(
            veto_status(ProcessorChange::AddStart, Status::INSUFFICIENT_RESOURCES),
            Some(Status::INSUFFICIENT_RESOURCES.0)
        );
        assert_eq!(
            veto_status(ProcessorChange::AddComplete, Status::INSUFFICIENT_RESOURCES),
            None
        );
    }
}
