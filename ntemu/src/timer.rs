//! Timers: `KTIMER` objects (one-shot and periodic, relative due times) and the clock that expires
//! them, queueing their DPCs on the processors whose add completed.

use std::format;
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::dpc::{check_signature, queue, sign, DPC_SIGNATURE};
use super::kernel::{enter, Kernel, Rule};
use super::processor::Phase;
use crate::nt::{KDPC, KTIMER};

/// Signature written into the first word of an initialised KTIMER.
const TIMER_SIGNATURE: u64 = u64::from_le_bytes(*b"ntemuTMR");

/// An initialised KTIMER.
pub(super) struct TimerObject {
    /// When it expires next; `None` while not armed.
    pub(super) due: Option<Instant>,
    period: Option<Duration>,
    dpc: Option<usize>,
}

/// `KeInitializeTimerEx`.
///
/// # Safety
/// `timer` is writable KTIMER storage that stays in place while the timer is used.
#[no_mangle]
pub unsafe extern "system" fn KeInitializeTimerEx(timer: *mut KTIMER, kind: i32) {
    let (kernel, _) = enter("KeInitializeTimerEx", Rule::AtMostDispatch);
    if kind != crate::nt::NOTIFICATION_TIMER && kind != 1 {
        kernel.fail(format!("KeInitializeTimerEx: unknown TIMER_TYPE {kind}"));
    }
    let mut state = kernel.lock();
    if state
        .dpc
        .timers
        .get(&(timer as usize))
        .is_some_and(|t| t.due.is_some())
    {
        drop(state);
        kernel.fail(format!(
            "KeInitializeTimerEx({timer:p}) while the timer is armed"
        ));
        return;
    }
    state.dpc.timers.insert(
        timer as usize,
        TimerObject {
            due: None,
            period: None,
            dpc: None,
        },
    );
    // SAFETY: per the caller (KTIMER is 0x40 bytes, 8-aligned).
    unsafe { sign(timer.cast(), TIMER_SIGNATURE) };
}

/// `KeSetTimerEx`: relative due times (negative, 100 ns units) and periods in milliseconds.
///
/// # Safety
/// `timer` (and `dpc`, if not null) were initialised and stay valid while the timer is armed.
#[no_mangle]
pub unsafe extern "system" fn KeSetTimerEx(
    timer: *mut KTIMER,
    due: i64,
    period_ms: i32,
    dpc: *const KDPC,
) -> bool {
    let (kernel, _) = enter("KeSetTimerEx", Rule::AtMostDispatch);
    // SAFETY: per the caller.
    if !unsafe { check_signature(&kernel, "KeSetTimerEx", timer.cast(), TIMER_SIGNATURE) } {
        return false;
    }
    // SAFETY: per the caller.
    if !dpc.is_null() {
        // SAFETY: per the caller (a non-null DPC was initialised).
        let valid = unsafe {
            check_signature(
                &kernel,
                "KeSetTimerEx",
                dpc.cast_mut().cast(),
                DPC_SIGNATURE,
            )
        };
        if !valid {
            return false;
        }
    }
    if due > 0 || period_ms < 0 {
        kernel.fail(format!(
            "KeSetTimerEx: absolute due time {due} or negative period {period_ms} (unsupported)"
        ));
        return false;
    }
    let mut state = kernel.lock();
    let Some(object) = state.dpc.timers.get_mut(&(timer as usize)) else {
        return false;
    };
    let was_armed = object.due.is_some();
    object.due = Some(Instant::now() + Duration::from_nanos(due.unsigned_abs() * 100));
    object.period = (period_ms > 0).then(|| Duration::from_millis(period_ms as u64));
    object.dpc = (!dpc.is_null()).then_some(dpc as usize);
    drop(state);
    kernel.changed.notify_all();
    was_armed
}

/// `KeCancelTimer`: disarms; a DPC already queued still runs.
///
/// # Safety
/// `timer` was initialised.
#[no_mangle]
pub unsafe extern "system" fn KeCancelTimer(timer: *mut KTIMER) -> bool {
    let (kernel, _) = enter("KeCancelTimer", Rule::AtMostDispatch);
    // SAFETY: per the caller.
    if !unsafe { check_signature(&kernel, "KeCancelTimer", timer.cast(), TIMER_SIGNATURE) } {
        return false;
    }
    let mut state = kernel.lock();
    let Some(object) = state.dpc.timers.get_mut(&(timer as usize)) else {
        return false;
    };
    object.due.take().is_some()
}

/// The clock: expires due timers, queueing their DPCs round-robin on the processors whose add
/// completed (a timer DPC runs on the processor where the timer expired). Ends at shutdown.
pub(super) fn clock_loop(kernel: Arc<Kernel>) {
    let mut state = kernel.lock();
    while !state.shutdown {
        super::preempt::watchdog(&kernel, &mut state);
        let now = Instant::now();
        let due: Vec<usize> = state
            .dpc
            .timers
            .iter()
            .filter(|(_, t)| t.due.is_some_and(|d| d <= now))
            .map(|(a, _)| *a)
            .collect();
        for address in due {
            let timer = state.dpc.timers.get_mut(&address).expect("listed above");
            let dpc = timer.dpc;
            timer.due = timer.period.map(|p| (timer.due.expect("due") + p).max(now));
            let Some(dpc) = dpc else { continue };
            let complete: Vec<usize> = (0..state.cpus.len())
                .filter(|&s| state.cpus[s].phase == Phase::Complete)
                .collect();
            state.dpc.next_timer_cpu = state.dpc.next_timer_cpu.wrapping_add(1);
            let slot = complete[state.dpc.next_timer_cpu % complete.len()];
            queue(&kernel, &mut state, dpc, slot, (0, 0));
        }
        let next = state
            .dpc
            .timers
            .values()
            .filter_map(|t| t.due)
            .min()
            .map_or(Duration::from_millis(20), |d| {
                d.saturating_duration_since(Instant::now())
            });
        state = kernel
            .changed
            .wait_timeout(state, next.min(Duration::from_millis(20)))
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}
