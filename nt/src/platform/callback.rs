//! Processor-change notifications: the core's callback behind `KeRegisterProcessorChangeCallback`
//! (resolved at run time), with `KE_PROCESSOR_CHANGE_ADD_EXISTING`.

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr::{self, NonNull};

use kepoch::platform::{
    CurrentProcessor, ProcessorChange, ProcessorChangeFn, ProcessorNumber, Status,
};

use crate::pool::Pool;
use crate::sys;

/// STATUS_UNSUCCESSFUL: `KeRegisterProcessorChangeCallback` returned no handle.
const STATUS_UNSUCCESSFUL: Status = Status(0xC000_0001u32 as i32);

/// What the platform hands to the kernel as callback context (pool-allocated, freed at
/// deregistration): the core's callback, its context, and the kernel's registration handle.
struct Registration {
    callback: ProcessorChangeFn,
    context: *const (),
    kernel_handle: *mut c_void,
}

unsafe extern "system" fn processor_change_trampoline(
    context: *mut c_void,
    change: *mut sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    operation_status: *mut sys::NTSTATUS,
) {
    // SAFETY: `context` is our Registration, alive until deregistration returns; the kernel passes a
    // valid notification context for the duration of the call.
    let (registration, notification) = unsafe { (&*context.cast::<Registration>(), *change) };
    let Some(kind) = processor_change_from_nt(notification.State, notification.Status) else {
        return;
    };
    let processor = CurrentProcessor {
        number: ProcessorNumber::new(
            notification.ProcNumber.Group,
            notification.ProcNumber.Number,
        ),
        index: notification.NtNumber,
    };
    // SAFETY: the core registered this callback with this context and keeps the context valid until it
    // deregisters (processor_change_register's contract).
    let result = unsafe { (registration.callback)(registration.context, kind, processor) };
    if let Some(veto) = veto_status(kind, result) {
        // SAFETY: the kernel passes a writable status for the duration of the call; only AddStart may set it.
        unsafe { *operation_status = veto };
    }
}

/// `processor_change_register` with the resolved `register` routine; the registration block comes
/// from `pool`.
///
/// # Safety
/// The core's contract: `context` stays valid until [`deregister`].
pub(super) unsafe fn register(
    pool: &Pool,
    register: sys::KeRegisterProcessorChangeCallbackFn,
    callback: ProcessorChangeFn,
    context: *const (),
) -> Result<NonNull<()>, Status> {
    let layout = Layout::new::<Registration>();
    let block = pool
        .allocate(layout)
        .ok_or(Status::INSUFFICIENT_RESOURCES)?
        .cast::<Registration>();
    // SAFETY: `block` is fresh, suitably aligned storage for a Registration, initialised before the
    // kernel can call the trampoline (which happens during the registration itself: ADD_EXISTING).
    unsafe {
        block.as_ptr().write(Registration {
            callback,
            context,
            kernel_handle: ptr::null_mut(),
        });
        let handle = register(
            processor_change_trampoline,
            block.as_ptr().cast(),
            sys::KE_PROCESSOR_CHANGE_ADD_EXISTING,
        );
        if handle.is_null() {
            pool.free(block.cast(), layout);
            return Err(STATUS_UNSUCCESSFUL);
        }
        // The trampoline never reads `kernel_handle`, so this write races with nothing.
        (*block.as_ptr()).kernel_handle = handle;
    }
    Ok(block.cast())
}

/// `processor_change_deregister`.
///
/// # Safety
/// `handle` came from [`register`] with the same pool and is deregistered once.
pub(super) unsafe fn deregister(
    pool: &Pool,
    deregister: sys::KeDeregisterProcessorChangeCallbackFn,
    handle: NonNull<()>,
) {
    let block = handle.cast::<Registration>();
    // SAFETY: per the caller; after KeDeregisterProcessorChangeCallback returns the kernel no longer
    // calls the trampoline, so the block can be freed.
    unsafe {
        deregister((*block.as_ptr()).kernel_handle);
        pool.free(block.cast(), Layout::new::<Registration>());
    }
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
    use super::*;

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
