//! The METHOD_BUFFERED system buffer as the I/O manager allocates it: pool nobody initialised, so it
//! is filled here with a poison pattern (not zeros), with the caller's input copied to its start; and
//! the check after completion that the `IoStatus.Information` bytes the I/O manager copies back to the
//! caller were written by the driver (or are the caller's own input), not left over pool contents.

use core::ops::Range;
use std::vec;
use std::vec::Vec;

/// Shortest run of untouched poison reported as not written: data the driver wrote matches a run of
/// this many pattern bytes with probability 2^-64. (A driver that reports fewer extra bytes than this
/// is not caught.)
pub(super) const UNWRITTEN_RUN: usize = 8;

/// One IRP's system buffer: `max(input, output)` bytes, 16-aligned like the pool block the I/O manager
/// allocates.
pub(super) struct SystemBuffer {
    words: Vec<u128>,
    length: usize,
    /// Seeds the poison pattern (a different pattern for every IRP).
    key: u64,
}

/// SplitMix64's finaliser: a well-mixed 64-bit value of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl SystemBuffer {
    /// A buffer of `max(input.len(), output_length)` bytes: poison, then `input` at its start.
    pub(super) fn new(input: &[u8], output_length: usize, key: u64) -> SystemBuffer {
        let length = input.len().max(output_length);
        let mut buffer = SystemBuffer {
            words: vec![0u128; length.div_ceil(16)],
            length,
            key,
        };
        let poison: Vec<u8> = (0..length).map(|offset| buffer.poison(offset)).collect();
        buffer.bytes_mut().copy_from_slice(&poison);
        buffer.bytes_mut()[..input.len()].copy_from_slice(input);
        buffer
    }

    /// The poison byte at `offset`.
    fn poison(&self, offset: usize) -> u8 {
        (mix(self.key ^ (offset / 8) as u64) >> (8 * (offset % 8))) as u8
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the words hold at least `length` initialised bytes; u8 has no alignment or validity
        // requirement; the slice borrows the buffer mutably.
        unsafe {
            core::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.length)
        }
    }

    /// The buffer's contents (after the driver completed the IRP).
    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: as in `bytes_mut`, shared.
        unsafe { core::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.length) }
    }

    /// Where the driver reads and writes: `SystemBuffer`.
    pub(super) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }

    /// The runs of at least [`UNWRITTEN_RUN`] bytes among the first `copied` that still hold the
    /// poison: nobody wrote them, and the I/O manager would copy them to the caller.
    pub(super) fn unwritten(&self, copied: usize) -> Vec<Range<usize>> {
        let bytes = &self.bytes()[..copied.min(self.length)];
        let mut runs = Vec::new();
        let mut start = None;
        for (offset, byte) in bytes.iter().enumerate() {
            match (*byte == self.poison(offset), start) {
                (true, None) => start = Some(offset),
                (false, Some(first)) => {
                    if offset - first >= UNWRITTEN_RUN {
                        runs.push(first..offset);
                    }
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(first) = start.filter(|first| bytes.len() - first >= UNWRITTEN_RUN) {
            runs.push(first..bytes.len());
        }
        runs
    }
}
