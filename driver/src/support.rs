//! Target-independent helpers of the NT platform: pool tag, over-aligned pool blocks, fixed-size log
//! lines, UTF-16 literals, timer and notification conversions. Pure logic, unit-tested on the host.

use core::alloc::Layout;
use core::fmt;

use kepoch::platform::{ProcessorChange, Status};

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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::fmt::Write;
    use std::vec;

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
