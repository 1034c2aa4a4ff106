//! The control interface of `\Device\kepoch` (`\\.\kepoch` from user mode): IOCTL codes, request
//! layouts and the pure decoder the driver runs on every `IRP_MJ_DEVICE_CONTROL`.
//!
//! Compiled on every target: the driver uses it to validate requests, `kepochctl` to build them, and
//! the host tests fuzz [`decode`] with arbitrary codes, lengths and bytes. All IOCTLs are
//! `METHOD_BUFFERED` on `FILE_DEVICE_UNKNOWN`.
//!
//! | code | input | output | effect |
//! |---|---|---|---|
//! | [`IOCTL_GET_STATS`] | none | `>= size_of::<Stats>()` (at least 8 for the header) | counters since the last reset |
//! | [`IOCTL_RESET_STATS`] | none | none | new baseline for counters and histograms |
//! | [`IOCTL_LOAD_START`] | [`LoadRequest`] (16 bytes) | none | starts the load generator |
//! | [`IOCTL_LOAD_STOP`] | none | none | stops it and waits for its threads |
//! | [`IOCTL_SYNC`] | none | none | `synchronize()` at PASSIVE |
//!
//! Input lengths are exact: every input is a fixed structure (or none), and an input longer or shorter
//! than it gets `STATUS_INFO_LENGTH_MISMATCH` without any effect.

use kepoch::stats::LatencyHistogram;
use kepoch::{Stats, STATS_VERSION};

/// `FILE_DEVICE_UNKNOWN`.
pub const FILE_DEVICE_UNKNOWN: u32 = 0x22;
/// `METHOD_BUFFERED`.
pub const METHOD_BUFFERED: u32 = 0;
/// `FILE_READ_ACCESS`: the caller's handle needs read access.
pub const FILE_READ_ACCESS: u32 = 1;
/// `FILE_WRITE_ACCESS`: the caller's handle needs write access.
pub const FILE_WRITE_ACCESS: u32 = 2;

/// `CTL_CODE(DeviceType, Function, Method, Access)`.
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// Reads the counters ([`Stats`], versioned).
pub const IOCTL_GET_STATS: u32 = ctl_code(
    FILE_DEVICE_UNKNOWN,
    0x800,
    METHOD_BUFFERED,
    FILE_READ_ACCESS,
);
/// Takes a new baseline: later reads count from here (the core's counters are monotonic).
pub const IOCTL_RESET_STATS: u32 = ctl_code(
    FILE_DEVICE_UNKNOWN,
    0x801,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);
/// Starts the load generator with a [`LoadRequest`].
pub const IOCTL_LOAD_START: u32 = ctl_code(
    FILE_DEVICE_UNKNOWN,
    0x802,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);
/// Stops the load generator and waits for its threads.
pub const IOCTL_LOAD_STOP: u32 = ctl_code(
    FILE_DEVICE_UNKNOWN,
    0x803,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);
/// Runs `synchronize()` (blocks until everything retired before it is freed).
pub const IOCTL_SYNC: u32 = ctl_code(
    FILE_DEVICE_UNKNOWN,
    0x804,
    METHOD_BUFFERED,
    FILE_WRITE_ACCESS,
);

/// Every IOCTL the driver accepts.
pub const ALL_CODES: [u32; 5] = [
    IOCTL_GET_STATS,
    IOCTL_RESET_STATS,
    IOCTL_LOAD_START,
    IOCTL_LOAD_STOP,
    IOCTL_SYNC,
];

/// NTSTATUS values the decoder answers with (the driver completes the IRP with them).
pub mod status {
    /// `STATUS_SUCCESS`.
    pub const SUCCESS: i32 = 0;
    /// `STATUS_BUFFER_OVERFLOW` (a warning: the I/O manager still copies `Information` bytes back).
    pub const BUFFER_OVERFLOW: i32 = 0x8000_0005u32 as i32;
    /// `STATUS_INFO_LENGTH_MISMATCH`: the input buffer has the wrong size.
    pub const INFO_LENGTH_MISMATCH: i32 = 0xC000_0004u32 as i32;
    /// `STATUS_INVALID_PARAMETER`: a field is out of range.
    pub const INVALID_PARAMETER: i32 = 0xC000_000Du32 as i32;
    /// `STATUS_INVALID_DEVICE_REQUEST`: unknown IOCTL code.
    pub const INVALID_DEVICE_REQUEST: i32 = 0xC000_0010u32 as i32;
    /// `STATUS_BUFFER_TOO_SMALL`: the output buffer cannot even hold the stats header.
    pub const BUFFER_TOO_SMALL: i32 = 0xC000_0023u32 as i32;
    /// `STATUS_DEVICE_BUSY`: the load generator is already running.
    pub const DEVICE_BUSY: i32 = 0x8000_0011u32 as i32;
}

/// Bounds of a [`LoadRequest`].
pub mod limits {
    /// Smallest accepted rate (operations per second, all threads together).
    pub const MIN_RATE: u32 = 1;
    /// Largest accepted rate.
    pub const MAX_RATE: u32 = 10_000_000;
    /// Shortest run.
    pub const MIN_SECONDS: u32 = 1;
    /// Longest run (one hour).
    pub const MAX_SECONDS: u32 = 3_600;
    /// Most load threads; `threads = 0` means one per active processor, capped at this.
    pub const MAX_THREADS: u32 = 64;
}

/// Input of [`IOCTL_LOAD_START`]: four little-endian `u32`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadRequest {
    /// Operations (enter, read, exit, replace, retire) per second over all threads.
    pub rate: u32,
    /// Run time; the generator stops by itself afterwards.
    pub seconds: u32,
    /// Threads, each pinned to a different processor; 0 = one per active processor.
    pub threads: u32,
}

impl LoadRequest {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// The 16 bytes sent to the driver (the last `u32` is reserved and zero).
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.rate.to_le_bytes());
        out[4..8].copy_from_slice(&self.seconds.to_le_bytes());
        out[8..12].copy_from_slice(&self.threads.to_le_bytes());
        out
    }

    /// Whether every field is in range.
    pub fn validate(&self) -> Result<(), i32> {
        let ok = (limits::MIN_RATE..=limits::MAX_RATE).contains(&self.rate)
            && (limits::MIN_SECONDS..=limits::MAX_SECONDS).contains(&self.seconds)
            && self.threads <= limits::MAX_THREADS;
        if ok {
            Ok(())
        } else {
            Err(status::INVALID_PARAMETER)
        }
    }

    fn decode(input: &[u8]) -> Result<LoadRequest, i32> {
        if input.len() != Self::SIZE {
            return Err(status::INFO_LENGTH_MISMATCH);
        }
        let word =
            |i: usize| u32::from_le_bytes([input[i], input[i + 1], input[i + 2], input[i + 3]]);
        if word(12) != 0 {
            return Err(status::INVALID_PARAMETER);
        }
        let request = LoadRequest {
            rate: word(0),
            seconds: word(4),
            threads: word(8),
        };
        request.validate()?;
        Ok(request)
    }
}

/// A validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// [`IOCTL_GET_STATS`]; the output buffer holds at least [`STATS_HEADER_SIZE`] bytes.
    GetStats,
    /// [`IOCTL_RESET_STATS`].
    ResetStats,
    /// [`IOCTL_LOAD_START`].
    LoadStart(LoadRequest),
    /// [`IOCTL_LOAD_STOP`].
    LoadStop,
    /// [`IOCTL_SYNC`].
    Sync,
}

/// Bytes of the stats header (`version`, `size`) that a too-small buffer still receives.
pub const STATS_HEADER_SIZE: usize = 8;

/// Validates an IOCTL: its code, the input bytes and the output buffer length. Never panics; the error
/// is the NTSTATUS to complete the IRP with.
pub fn decode(code: u32, input: &[u8], output_len: usize) -> Result<Request, i32> {
    let no_input = |request: Request| {
        if !input.is_empty() {
            Err(status::INFO_LENGTH_MISMATCH)
        } else {
            Ok(request)
        }
    };
    let no_output = |request: Request| {
        if output_len != 0 {
            Err(status::INVALID_PARAMETER)
        } else {
            no_input(request)
        }
    };
    match code {
        IOCTL_GET_STATS => {
            let request = no_input(Request::GetStats)?;
            if output_len < STATS_HEADER_SIZE {
                return Err(status::BUFFER_TOO_SMALL);
            }
            Ok(request)
        }
        IOCTL_RESET_STATS => no_output(Request::ResetStats),
        IOCTL_LOAD_START => {
            if output_len != 0 {
                return Err(status::INVALID_PARAMETER);
            }
            LoadRequest::decode(input).map(Request::LoadStart)
        }
        IOCTL_LOAD_STOP => no_output(Request::LoadStop),
        IOCTL_SYNC => no_output(Request::Sync),
        _ => Err(status::INVALID_DEVICE_REQUEST),
    }
}

// The stats travel as raw bytes, so `Stats` must have no padding (padding would leak kernel memory to
// user mode). It is six u32s followed only by u64s and u64 arrays; this sum breaks the build when a
// field is appended, as a reminder to update it together with `subtract_baseline`.
const STATS_U64_FIELDS: usize = 31;
const _: () = assert!(core::mem::offset_of!(Stats, cpus_prepared) == 24);
const _: () = assert!(
    core::mem::size_of::<Stats>()
        == 24 + 8 * STATS_U64_FIELDS + 5 * core::mem::size_of::<LatencyHistogram>(),
    "Stats changed: update STATS_U64_FIELDS and subtract_baseline in driver/src/ioctl.rs"
);
const _: () = assert!(
    core::mem::size_of::<LatencyHistogram>() == 4 * kepoch::stats::LATENCY_BUCKETS + 3 * 8,
    "LatencyHistogram changed (or padded): the u32 buckets must be followed by exactly three u64s"
);

/// Size of the current [`Stats`].
pub const STATS_SIZE: usize = core::mem::size_of::<Stats>();

/// The bytes of `stats` (no padding, see the assertions above).
pub fn stats_bytes(stats: &Stats) -> &[u8] {
    // SAFETY: `Stats` is repr(C), made of integers only, without padding (asserted above), so all of its
    // STATS_SIZE bytes are initialised; the slice borrows `stats`.
    unsafe { core::slice::from_raw_parts((stats as *const Stats).cast::<u8>(), STATS_SIZE) }
}

/// Writes `stats` into the output buffer of [`IOCTL_GET_STATS`]: everything when it fits
/// (`STATUS_SUCCESS`), otherwise only the 8-byte header (`version`, `size`) with
/// `STATUS_BUFFER_OVERFLOW`, so that a tool built against another version can tell. Returns the status
/// and the number of bytes written.
pub fn encode_stats(stats: &Stats, output: &mut [u8]) -> (i32, usize) {
    let bytes = stats_bytes(stats);
    if output.len() >= bytes.len() {
        output[..bytes.len()].copy_from_slice(bytes);
        (status::SUCCESS, bytes.len())
    } else if output.len() >= STATS_HEADER_SIZE {
        output[..STATS_HEADER_SIZE].copy_from_slice(&bytes[..STATS_HEADER_SIZE]);
        (status::BUFFER_OVERFLOW, STATS_HEADER_SIZE)
    } else {
        (status::BUFFER_TOO_SMALL, 0)
    }
}

/// Why [`decode_stats`] refused a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsDecodeError {
    /// Fewer than 8 bytes.
    Truncated,
    /// The driver speaks another version of [`Stats`].
    Version {
        /// Version in the buffer.
        version: u32,
        /// Size the driver reported.
        size: u32,
    },
}

/// Reads [`Stats`] from what the driver returned (user mode side).
pub fn decode_stats(bytes: &[u8]) -> Result<Stats, StatsDecodeError> {
    if bytes.len() < STATS_HEADER_SIZE {
        return Err(StatsDecodeError::Truncated);
    }
    let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let size = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != STATS_VERSION || size as usize != STATS_SIZE || bytes.len() < STATS_SIZE {
        return Err(StatsDecodeError::Version { version, size });
    }
    // SAFETY: at least STATS_SIZE readable bytes; every bit pattern is a valid `Stats` (integers only);
    // read_unaligned because a byte buffer has no alignment.
    Ok(unsafe { bytes.as_ptr().cast::<Stats>().read_unaligned() })
}

/// Counters since a reset, in place: monotonic counters of `now` minus the baseline; gauges (prepared
/// processors, bytes, epochs, pending, load facts such as the notifications replayed at
/// registration) as they are now; histograms bucket-wise. In place
/// because a [`Stats`] (40 KB) does not belong on a 24 KiB kernel stack.
pub fn subtract_baseline(now: &mut Stats, baseline: &Stats) {
    macro_rules! delta {
        ($($field:ident),* $(,)?) => {
            $( now.$field = now.$field.saturating_sub(baseline.$field); )*
        };
    }
    delta!(
        prepare_at_dispatch,
        prepare_passive,
        prepare_failures,
        fallback_uses,
        enters,
        exits,
        remote_exits,
        retired,
        freed,
        double_retires,
        cycles,
        messages,
        stalls_reported,
        joins,
        leaves,
        hot_add_start,
        hot_add_complete,
        hot_add_failure,
        hot_add_vetoed,
        work_items_run,
        visits_cut_short,
    );
    now.first_enter_ns.subtract(&baseline.first_enter_ns);
    now.visit_ns.subtract(&baseline.visit_ns);
    now.frees_per_visit.subtract(&baseline.frees_per_visit);
    now.enter_exit_ns.subtract(&baseline.enter_exit_ns);
    now.cycle_latency_ns.subtract(&baseline.cycle_latency_ns);
}

#[cfg(test)]
mod tests;
