//! Processor-change notifications: `KeRegisterProcessorChangeCallback` with the
//! `KE_PROCESSOR_CHANGE_ADD_EXISTING` replay, `KeDeregisterProcessorChangeCallback`, and live hot-add
//! (AddStart, then the processor starts and AddComplete, or AddFailure). Registration, replay,
//! deregistration and hot-adds are serialised by one lock (NT's `KiDynamicProcessorLock`) and the
//! callbacks run at APC_LEVEL, as observed on NT.

use core::ffi::c_void;
use std::format;
use std::sync::Arc;
use std::vec::Vec;

use super::kernel::{enter, with_context, Kernel, Rule, APC};
use super::processor::{start_processor, Phase};
use crate::nt::{
    ProcessorCallbackFn, KE_PROCESSOR_CHANGE_ADD_EXISTING, KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    NTSTATUS, PROCESSOR_NUMBER,
};

/// `KeProcessorAddStartNotify`.
const ADD_START: u32 = 0;
/// `KeProcessorAddCompleteNotify`.
const ADD_COMPLETE: u32 = 1;
/// `KeProcessorAddFailureNotify`.
const ADD_FAILURE: u32 = 2;

#[derive(Clone, Copy)]
struct Registration {
    handle: usize,
    callback: ProcessorCallbackFn,
    context: usize,
}

/// Registrations and the dynamic-processor lock.
#[derive(Default)]
pub(super) struct Callbacks {
    registrations: Vec<Registration>,
    next: usize,
    locked: bool,
}

impl Callbacks {
    /// Registrations still in place (leak report).
    pub(super) fn registered(&self) -> usize {
        self.registrations.len()
    }
}

fn lock(kernel: &Kernel) {
    let state = kernel.lock();
    let mut state = kernel.wait_until(
        state,
        &kernel.changed,
        |_| {
            "the dynamic processor lock (registration, deregistration or a hot-add holds it)".into()
        },
        |s| !s.callbacks.locked,
    );
    state.callbacks.locked = true;
}

fn unlock(kernel: &Kernel) {
    kernel.lock().callbacks.locked = false;
    kernel.changed.notify_all();
}

/// Calls one registration at APC_LEVEL; returns the `OperationStatus` it left.
fn notify(
    kernel: &Kernel,
    registration: Registration,
    state: u32,
    slot: usize,
    status: NTSTATUS,
) -> NTSTATUS {
    let (index, group, number) = {
        let s = kernel.lock();
        let cpu = &s.cpus[slot];
        (
            cpu.index.expect("an index while notifying"),
            cpu.group,
            cpu.number,
        )
    };
    let mut change = KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
        State: state,
        NtNumber: index,
        Status: status,
        ProcNumber: PROCESSOR_NUMBER {
            Group: group,
            Number: number,
            Reserved: 0,
        },
    };
    let sent = change;
    let mut operation_status: NTSTATUS = 0;
    let previous = with_context(|c| core::mem::replace(&mut c.irql, APC));
    // SAFETY: the driver registered this callback and context and keeps both valid until it
    // deregisters, which waits for this notification (the lock).
    unsafe {
        (registration.callback)(
            registration.context as *mut c_void,
            &mut change,
            &mut operation_status,
        )
    };
    let irql = with_context(|c| core::mem::replace(&mut c.irql, previous));
    if irql != APC {
        kernel.fail(format!(
            "a processor-change callback returned at IRQL {irql} (entered at APC_LEVEL)"
        ));
    }
    if change.State != sent.State
        || change.NtNumber != sent.NtNumber
        || change.Status != sent.Status
        || (
            change.ProcNumber.Group,
            change.ProcNumber.Number,
            change.ProcNumber.Reserved,
        ) != (
            sent.ProcNumber.Group,
            sent.ProcNumber.Number,
            sent.ProcNumber.Reserved,
        )
    {
        kernel.fail("a processor-change callback modified its ChangeContext".into());
    }
    if state != ADD_START && operation_status != 0 {
        kernel.fail(format!(
            "a processor-change callback set OperationStatus {operation_status:#x} outside AddStart"
        ));
    }
    operation_status
}

/// AddStart to each registration in turn; on a veto, AddFailure to those that accepted. Returns the
/// veto, if any.
fn start_each(kernel: &Kernel, registrations: &[Registration], slot: usize) -> Option<NTSTATUS> {
    for (done, registration) in registrations.iter().enumerate() {
        let status = notify(kernel, *registration, ADD_START, slot, 0);
        if status < 0 {
            for earlier in &registrations[..done] {
                notify(kernel, *earlier, ADD_FAILURE, slot, status);
            }
            return Some(status);
        }
    }
    None
}

/// `KeRegisterProcessorChangeCallback` (resolved with `MmGetSystemRoutineAddress`).
///
/// # Safety
/// `context` stays valid until the callback is deregistered.
pub unsafe extern "system" fn KeRegisterProcessorChangeCallback(
    callback: ProcessorCallbackFn,
    context: *mut c_void,
    flags: u32,
) -> *mut c_void {
    let (kernel, _) = enter("KeRegisterProcessorChangeCallback", Rule::Passive);
    if kernel.config.fail_callback_registration {
        return core::ptr::null_mut();
    }
    lock(&kernel);
    let handle = {
        let mut state = kernel.lock();
        state.callbacks.next += 1;
        0x7000_0000 + 16 * state.callbacks.next
    };
    let registration = Registration {
        handle,
        callback,
        context: context as usize,
    };
    if flags & KE_PROCESSOR_CHANGE_ADD_EXISTING != 0 {
        let existing: Vec<usize> = {
            let state = kernel.lock();
            let mut slots: Vec<usize> = (0..state.cpus.len())
                .filter(|&s| state.cpus[s].phase == Phase::Complete)
                .collect();
            slots.sort_by_key(|&s| state.cpus[s].index);
            slots
        };
        let mut vetoed = None;
        for (done, &slot) in existing.iter().enumerate() {
            let status = notify(&kernel, registration, ADD_START, slot, 0);
            if status < 0 {
                for &earlier in &existing[..done] {
                    notify(&kernel, registration, ADD_FAILURE, earlier, status);
                }
                vetoed = Some(status);
                break;
            }
        }
        if vetoed.is_none() {
            for &slot in &existing {
                notify(&kernel, registration, ADD_COMPLETE, slot, 0);
            }
        }
    }
    kernel.lock().callbacks.registrations.push(registration);
    unlock(&kernel);
    handle as *mut c_void
}

/// `KeDeregisterProcessorChangeCallback` (resolved with `MmGetSystemRoutineAddress`).
///
/// # Safety
/// `handle` came from `KeRegisterProcessorChangeCallback` and is deregistered once.
pub unsafe extern "system" fn KeDeregisterProcessorChangeCallback(handle: *mut c_void) {
    let (kernel, _) = enter("KeDeregisterProcessorChangeCallback", Rule::Passive);
    lock(&kernel);
    let removed = {
        let mut state = kernel.lock();
        let before = state.callbacks.registrations.len();
        state
            .callbacks
            .registrations
            .retain(|r| r.handle != handle as usize);
        before != state.callbacks.registrations.len()
    };
    unlock(&kernel);
    if !removed {
        kernel.fail(format!(
            "KeDeregisterProcessorChangeCallback({handle:p}): not registered"
        ));
    }
}

/// How a live hot-add ends.
#[derive(Clone, Copy, Debug)]
pub(super) enum AddOutcome {
    /// The processor starts, runs for the window, and AddComplete follows.
    Complete,
    /// AddFailure with this status right after AddStart; the processor never starts.
    FailBeforeStart(NTSTATUS),
    /// The processor starts and runs for the window (code may run on it), then AddFailure with this
    /// status: it stops and is absent again. The add-window documents disagree on whether the
    /// processor runs at AddStart, so the emulation covers this worst reading (epoch/PROTOCOL.md,
    /// "Hot-add window").
    FailAfterStart(NTSTATUS),
}

/// A live hot-add of the absent processor `(group, number)`: AddStart to every registration; then,
/// unless a callback vetoed or the add fails before start, the processor starts and runs for the window
/// (threads may already migrate to it: more than NT allows, which schedules threads there only after
/// AddComplete, so that the driver's own threads exercise the window) and AddComplete follows, or
/// AddFailure (`FailAfterStart`) after which the processor stops. A veto or `FailBeforeStart` sends
/// AddFailure to the callbacks that accepted AddStart and the processor stays absent. Returns the new
/// index. Runs on an emulated thread at PASSIVE.
pub(super) fn hot_add(
    kernel: &Arc<Kernel>,
    group: u16,
    number: u8,
    outcome: AddOutcome,
) -> Result<u32, NTSTATUS> {
    lock(kernel);
    let (slot, registrations) = {
        let mut state = kernel.lock();
        let slot = state
            .cpus
            .iter()
            .position(|c| c.group == group && c.number == number && c.phase == Phase::Absent)
            .unwrap_or_else(|| panic!("hot-add of ({group}, {number}): no such absent processor"));
        let index = state
            .cpus
            .iter()
            .filter(|c| c.phase >= Phase::Running)
            .count() as u32;
        state.cpus[slot].index = Some(index);
        state.cpus[slot].phase = Phase::Starting;
        (slot, state.callbacks.registrations.clone())
    };
    let thread = super::kernel::with_context(|c| c.thread);
    if kernel.config.fail_add_start_allocations {
        kernel.pool.fail_thread(Some(thread));
    }
    let refused = start_each(kernel, &registrations, slot);
    kernel.pool.fail_thread(None);
    let before_start = match outcome {
        AddOutcome::FailBeforeStart(status) => Some(status),
        _ => None,
    };
    let result = match refused.or(before_start) {
        Some(status) => {
            if refused.is_none() {
                for registration in &registrations {
                    notify(kernel, *registration, ADD_FAILURE, slot, status);
                }
            }
            let mut state = kernel.lock();
            state.cpus[slot].index = None;
            state.cpus[slot].phase = Phase::Absent;
            Err(status)
        }
        None => {
            kernel.lock().cpus[slot].phase = Phase::Running;
            let thread = start_processor(kernel, slot);
            kernel.keep_service_thread(thread);
            std::thread::sleep(kernel.config.hot_add_window);
            match outcome {
                AddOutcome::FailAfterStart(status) => {
                    for registration in &registrations {
                        notify(kernel, *registration, ADD_FAILURE, slot, status);
                    }
                    stop_failed_processor(kernel, slot);
                    Err(status)
                }
                _ => {
                    for registration in &registrations {
                        notify(kernel, *registration, ADD_COMPLETE, slot, 0);
                    }
                    let mut state = kernel.lock();
                    state.cpus[slot].phase = Phase::Complete;
                    Ok(state.cpus[slot].index.expect("index"))
                }
            }
        }
    };
    unlock(kernel);
    result
}

/// After AddFailure the processor runs nothing again: its DPC loop ends, and a DPC still queued to it,
/// or a thread still on it, is a failure (nothing would ever run them).
fn stop_failed_processor(kernel: &Arc<Kernel>, slot: usize) {
    let mut state = kernel.lock();
    let name = state.cpus[slot].name();
    let queued = state.cpus[slot].queue.len();
    let busy = state.cpus[slot].owner.is_some();
    state.cpus[slot].index = None;
    state.cpus[slot].phase = Phase::Absent;
    drop(state);
    kernel.cpu_changed[slot].notify_all();
    if queued > 0 || busy {
        kernel.fail(format!(
            "{name} failed its add with {queued} DPC(s) still queued to it{}: nothing will run them",
            if busy { " and code running on it" } else { "" }
        ));
    }
}
