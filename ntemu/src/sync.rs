//! Events (`KEVENT`), `KeWaitForSingleObject` and `KeDelayExecutionThread`.

use core::ffi::c_void;
use std::collections::HashMap;
use std::format;
use std::string::String;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::dpc::{check_signature, sign};
use super::kernel::{enter, with_context, Role, Rule, DISPATCH};
use crate::nt::{KEVENT, NTSTATUS, STATUS_TIMEOUT};

/// Signature written into the first word of an initialised KEVENT.
const EVENT_SIGNATURE: u64 = u64::from_le_bytes(*b"ntemuEVT");

/// An initialised KEVENT.
pub(super) struct EventObject {
    synchronization: bool,
    signaled: bool,
    /// The threads waiting on it.
    waiting: Vec<u64>,
}

/// Events by address.
#[derive(Default)]
pub(super) struct SyncState {
    events: HashMap<usize, EventObject>,
}

impl SyncState {
    /// Events with waiters inside `[start, start + len)`, for frees.
    pub(super) fn busy_in(&self, start: usize, len: usize) -> Vec<String> {
        self.events
            .iter()
            .filter(|(a, e)| **a >= start && **a < start + len && !e.waiting.is_empty())
            .map(|(a, e)| {
                format!(
                    "KEVENT at +{:#x} has {} waiter(s)",
                    a - start,
                    e.waiting.len()
                )
            })
            .collect()
    }

    /// How many threads wait on the event at `address` (tests that need a waiter blocked first).
    #[cfg(test)]
    pub(super) fn waiting_on(&self, address: usize) -> usize {
        self.events.get(&address).map_or(0, |e| e.waiting.len())
    }

    /// Forgets the events inside a freed range.
    pub(super) fn forget(&mut self, start: usize, len: usize) {
        self.events.retain(|a, _| *a < start || *a >= start + len);
    }
}

/// A relative interval of a wait or delay (negative 100 ns units); `None` for an absolute time.
fn relative(interval: i64) -> Option<Duration> {
    (interval <= 0).then(|| Duration::from_nanos(interval.unsigned_abs().saturating_mul(100)))
}

/// `KeInitializeEvent`.
///
/// # Safety
/// `event` is writable KEVENT storage that stays in place while the event is used.
#[no_mangle]
pub unsafe extern "system" fn KeInitializeEvent(event: *mut KEVENT, kind: i32, state: bool) {
    let (kernel, _) = enter("KeInitializeEvent", Rule::Any);
    if kind != crate::nt::NOTIFICATION_EVENT && kind != crate::nt::SYNCHRONIZATION_EVENT {
        kernel.fail(format!("KeInitializeEvent: unknown EVENT_TYPE {kind}"));
    }
    let mut guard = kernel.lock();
    if guard
        .sync
        .events
        .get(&(event as usize))
        .is_some_and(|e| !e.waiting.is_empty())
    {
        drop(guard);
        kernel.fail(format!(
            "KeInitializeEvent({event:p}) while threads wait on it"
        ));
        return;
    }
    guard.sync.events.insert(
        event as usize,
        EventObject {
            synchronization: kind == crate::nt::SYNCHRONIZATION_EVENT,
            signaled: state,
            waiting: Vec::new(),
        },
    );
    // SAFETY: per the caller (KEVENT is 0x18 bytes, 8-aligned).
    unsafe { sign(event.cast(), EVENT_SIGNATURE) };
}

/// `KeSetEvent` (`Wait = FALSE` only). A DPC that signals is then held up for
/// `MachineConfig::signal_delay`, as if interrupted: a waiter that frees the DPC's memory as soon as
/// it wakes is caught. A thread below DISPATCH that wakes waiters may be preempted by them (seeded):
/// held until one of them blocked again or ended, at most as long.
///
/// # Safety
/// `event` was initialised.
#[no_mangle]
pub unsafe extern "system" fn KeSetEvent(event: *mut KEVENT, _increment: i32, wait: bool) -> i32 {
    let (kernel, irql) = enter("KeSetEvent", Rule::AtMostDispatch);
    if wait {
        kernel.fail("KeSetEvent with Wait = TRUE (not used by this driver; unsupported)".into());
    }
    // SAFETY: per the caller.
    if !unsafe { check_signature(&kernel, "KeSetEvent", event.cast(), EVENT_SIGNATURE) } {
        return 0;
    }
    let mut guard = kernel.lock();
    let Some(object) = guard.sync.events.get_mut(&(event as usize)) else {
        return 0;
    };
    let previous = object.signaled;
    object.signaled = true;
    let woken: Vec<(u64, u64)> = object
        .waiting
        .clone()
        .into_iter()
        .map(|thread| (thread, guard.scheduler.blocked(thread)))
        .collect();
    drop(guard);
    kernel.changed.notify_all();
    if irql >= DISPATCH && with_context(|c| c.role) == Role::Dpc {
        std::thread::sleep(kernel.config.signal_delay);
    } else {
        super::preempt::after_wake(&kernel, &woken);
    }
    i32::from(previous)
}

/// `KeClearEvent`.
///
/// # Safety
/// `event` was initialised.
#[no_mangle]
pub unsafe extern "system" fn KeClearEvent(event: *mut KEVENT) {
    let (kernel, _) = enter("KeClearEvent", Rule::AtMostDispatch);
    // SAFETY: per the caller.
    if !unsafe { check_signature(&kernel, "KeClearEvent", event.cast(), EVENT_SIGNATURE) } {
        return;
    }
    let mut state = kernel.lock();
    if let Some(object) = state.sync.events.get_mut(&(event as usize)) {
        object.signaled = false;
    }
}

/// `KeWaitForSingleObject` on an event: a zero timeout polls (any IRQL up to DISPATCH), otherwise
/// the caller must be at or below APC_LEVEL. An untimed wait is bounded by the machine's deadline.
///
/// # Safety
/// `object` is an initialised KEVENT; `timeout` is null or readable.
#[no_mangle]
pub unsafe extern "system" fn KeWaitForSingleObject(
    object: *const c_void,
    _reason: i32,
    _mode: i8,
    _alertable: bool,
    timeout: *const i64,
) -> NTSTATUS {
    let object = object.cast_mut();
    // SAFETY: per the caller.
    let interval = (!timeout.is_null()).then(|| unsafe { *timeout });
    let rule = if interval == Some(0) {
        Rule::AtMostDispatch
    } else {
        Rule::AtMostApc
    };
    let (kernel, _) = enter("KeWaitForSingleObject", rule);
    // SAFETY: per the caller.
    if !unsafe { check_signature(&kernel, "KeWaitForSingleObject", object, EVENT_SIGNATURE) } {
        return STATUS_TIMEOUT;
    }
    let limit = match interval {
        None => None,
        Some(i) => match relative(i) {
            Some(d) => Some(Instant::now() + d),
            None => {
                kernel.fail(format!(
                    "KeWaitForSingleObject: absolute timeout {i} (unsupported)"
                ));
                return STATUS_TIMEOUT;
            }
        },
    };
    let address = object as usize;
    let thread = with_context(|c| c.thread);
    let mut guard = kernel.lock();
    if let Some(e) = guard.sync.events.get_mut(&address) {
        e.waiting.push(thread);
    }
    let mut timed_out = false;
    guard = kernel.wait_until(
        guard,
        &kernel.changed,
        |_| format!("KeWaitForSingleObject(KEVENT {address:#x}) to be signalled"),
        |s| {
            let signaled = s.sync.events.get(&address).is_none_or(|e| e.signaled);
            timed_out = !signaled && limit.is_some_and(|l| Instant::now() >= l);
            signaled || timed_out
        },
    );
    if let Some(e) = guard.sync.events.get_mut(&address) {
        e.waiting.retain(|&waiter| waiter != thread);
        if !timed_out && e.synchronization {
            e.signaled = false;
        }
    }
    if timed_out {
        STATUS_TIMEOUT
    } else {
        0
    }
}

/// `KeDelayExecutionThread` with a relative interval.
///
/// # Safety
/// `interval` is readable.
#[no_mangle]
pub unsafe extern "system" fn KeDelayExecutionThread(
    _mode: i8,
    _alertable: bool,
    interval: *const i64,
) -> NTSTATUS {
    let (kernel, _) = enter("KeDelayExecutionThread", Rule::AtMostApc);
    // SAFETY: per the caller.
    let interval = unsafe { *interval };
    match relative(interval) {
        Some(duration) if duration <= kernel.config.wait_deadline => {
            super::preempt::sleep(&kernel, duration);
            0
        }
        _ => {
            kernel.fail(format!(
                "KeDelayExecutionThread({interval}): absolute or longer than the machine's wait deadline"
            ));
            0
        }
    }
}

/// `KeEnterCriticalRegion`: disables normal kernel APCs (thread suspension) for the calling thread until
/// the matching `KeLeaveCriticalRegion`. Checked: IRQL <= APC_LEVEL; a thread must not end inside one.
///
/// # Safety
/// None beyond the kernel's: the caller leaves the region on the same thread.
#[no_mangle]
pub unsafe extern "system" fn KeEnterCriticalRegion() {
    enter("KeEnterCriticalRegion", Rule::AtMostApc);
    with_context(|c| c.critical_regions += 1);
}

/// `KeLeaveCriticalRegion`. Checked: IRQL <= APC_LEVEL and a matching `KeEnterCriticalRegion`.
///
/// # Safety
/// Matches an earlier `KeEnterCriticalRegion` of this thread.
#[no_mangle]
pub unsafe extern "system" fn KeLeaveCriticalRegion() {
    let (kernel, _) = enter("KeLeaveCriticalRegion", Rule::AtMostApc);
    let unmatched = with_context(|c| match c.critical_regions.checked_sub(1) {
        Some(left) => {
            c.critical_regions = left;
            false
        }
        None => true,
    });
    if unmatched {
        kernel.fail("KeLeaveCriticalRegion without a matching KeEnterCriticalRegion".into());
    }
}
