//! Failing fast on a C caller's misuse: a log line that names the function and what was wrong, then
//! bug check `MANUALLY_INITIATED_CRASH` (0xE2) with [`BUGCHECK_MARKER`], the function's code, the
//! misuse's code and the address involved (`c/include/kepoch.h`, "Fail-fast"). Continuing after a
//! double free or an exit of a state that was never entered would corrupt pool or free memory a
//! reader still uses.

use kepoch::platform::LogLevel;
use kepoch_nt::sys::irql;
use kepoch_nt::{log_line, sys};

/// The highest device IRQL on x64: `DbgPrintEx` is documented up to DIRQL, so a fail-fast above it
/// bug checks without the log line.
const MAX_DEVICE_IRQL: u8 = 12;

/// First bug-check parameter of every fail-fast of the C API: `'KEPC'` (0x4350454B).
pub const BUGCHECK_MARKER: usize = 0x4350_454B;

/// The exported function a misuse was caught in (second bug-check parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Function {
    /// `ebpf_epoch_enter`, `kepoch_enter`.
    Enter = 1,
    /// `ebpf_epoch_exit`, `kepoch_exit`.
    Exit = 2,
    /// `ebpf_epoch_free`, `kepoch_free`.
    Free = 3,
    /// `ebpf_epoch_free_cache_aligned`, `kepoch_free_cache_aligned`.
    FreeCacheAligned = 4,
    /// `ebpf_epoch_schedule_work_item`, `kepoch_work_item_schedule`.
    ScheduleWorkItem = 5,
    /// `ebpf_epoch_cancel_work_item`, `kepoch_work_item_cancel`.
    CancelWorkItem = 6,
    /// `ebpf_epoch_synchronize`, `kepoch_synchronize`.
    Synchronize = 7,
    /// `ebpf_epoch_terminate`, `kepoch_domain_destroy`.
    Terminate = 8,
    /// `ebpf_epoch_allocate*`, `kepoch_allocate*`.
    Allocate = 9,
    /// `ebpf_epoch_allocate_work_item`, `kepoch_work_item_allocate`.
    AllocateWorkItem = 10,
    /// `ebpf_epoch_is_free_list_empty`.
    IsFreeListEmpty = 11,
    /// `kepoch_flush`, `kepoch_stats`, `ebpf_epoch_create_cpu_work_queue`.
    Other = 12,
}

/// What was wrong (third bug-check parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Misuse {
    /// A required pointer was NULL.
    Null = 1,
    /// An epoch state was entered again before its exit (one state per nesting level).
    StateInUse = 2,
    /// An epoch state was exited that was not entered (or was exited already).
    StateNotEntered = 3,
    /// The exit ran at another IRQL than the enter.
    IrqlChanged = 4,
    /// A state entered at DISPATCH_LEVEL was exited on another processor.
    MigratedAtDispatch = 5,
    /// Called above the highest IRQL the function allows.
    IrqlTooHigh = 6,
    /// A block freed a second time.
    DoubleFree = 7,
    /// A pointer kepoch did not allocate (or whose header was overwritten).
    NotKepochMemory = 8,
    /// A block freed with the other free function (cache-aligned with the plain one, or back).
    WrongFreeFunction = 9,
    /// A work item scheduled while its schedule was pending.
    ScheduledTwice = 10,
    /// A work item cancelled after it was scheduled (the contract cancels unscheduled items only).
    CancelAfterSchedule = 11,
    /// A pointer that is not a live work item.
    NotAWorkItem = 12,
    /// The API was used before `ebpf_epoch_initiate` or after `ebpf_epoch_terminate`.
    NotInitiated = 13,
    /// Terminated while work items were allocated and neither scheduled nor cancelled.
    WorkItemsOutstanding = 14,
    /// A processor index at or above the maximum processor count.
    BadProcessor = 15,
    /// A pointer that is not a live domain handle.
    NotADomain = 16,
}

impl Misuse {
    fn explain(self) -> &'static str {
        match self {
            Misuse::Null => "a required pointer is NULL",
            Misuse::StateInUse => {
                "the epoch state is already entered and not exited: each nesting level needs its own state"
            }
            Misuse::StateNotEntered => {
                "the epoch state was not entered in this domain (or was exited already): exit only what an enter of the same domain filled in"
            }
            Misuse::IrqlChanged => "the exit runs at another IRQL than its enter",
            Misuse::MigratedAtDispatch => {
                "the state was entered at DISPATCH_LEVEL and is exited on another processor"
            }
            Misuse::IrqlTooHigh => "called above the highest IRQL this function allows",
            Misuse::DoubleFree => "the block was freed already (double free)",
            Misuse::NotKepochMemory => {
                "the pointer was not allocated by kepoch's C API in this domain (another domain's block, foreign memory, or the bytes before it were overwritten)"
            }
            Misuse::WrongFreeFunction => {
                "the block was allocated by the other allocation function: free cache-aligned blocks with the cache-aligned free"
            }
            Misuse::ScheduledTwice => "the work item is scheduled already and has not run yet",
            Misuse::CancelAfterSchedule => {
                "the work item was scheduled: only an unscheduled work item can be cancelled"
            }
            Misuse::NotAWorkItem => "the pointer is not a live work item",
            Misuse::NotInitiated => "ebpf_epoch_initiate has not succeeded (or ebpf_epoch_terminate ran)",
            Misuse::WorkItemsOutstanding => {
                "work items were allocated and neither scheduled nor cancelled"
            }
            Misuse::BadProcessor => "no processor has this index",
            Misuse::NotADomain => "the pointer is not a live kepoch domain",
        }
    }
}

/// Logs `function: misuse (detail) at address` at error level and bug checks; never returns.
#[cold]
#[inline(never)]
pub fn fail_fast(
    name: &str,
    function: Function,
    misuse: Misuse,
    address: usize,
    detail: core::fmt::Arguments<'_>,
) -> ! {
    if irql::current() <= MAX_DEVICE_IRQL {
        log_line(
            LogLevel::Error,
            format_args!(
                "kepoch: {name}: {} {detail}(address 0x{address:x}); bug check 0xE2 (0x{BUGCHECK_MARKER:X}, {}, {}, 0x{address:x})",
                misuse.explain(),
                function as usize,
                misuse as usize,
            ),
        );
    }
    // SAFETY: KeBugCheckEx never returns; the parameters are plain values shown in the crash dump.
    unsafe {
        sys::bug_check(
            sys::MANUALLY_INITIATED_CRASH,
            [BUGCHECK_MARKER, function as usize, misuse as usize, address],
        )
    }
}

/// Fails fast unless the caller runs at DISPATCH_LEVEL or below (every export but the
/// PASSIVE_LEVEL ones: above DISPATCH a free could interrupt this processor's own reclamation DPC
/// in the middle of its list).
pub fn require_at_most_dispatch(name: &str, function: Function) {
    let level = irql::current();
    if level > irql::DISPATCH_LEVEL {
        fail_fast(
            name,
            function,
            Misuse::IrqlTooHigh,
            0,
            format_args!("(IRQL {level}; at most DISPATCH_LEVEL) "),
        );
    }
}

/// Fails fast unless the caller runs at PASSIVE_LEVEL.
pub fn require_passive(name: &str, function: Function) {
    let level = irql::current();
    if level != irql::PASSIVE_LEVEL {
        fail_fast(
            name,
            function,
            Misuse::IrqlTooHigh,
            0,
            format_args!("(IRQL {level}; PASSIVE_LEVEL only) "),
        );
    }
}
