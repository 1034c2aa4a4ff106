//! System threads (`PsCreateSystemThread`, waits on their handles), the current thread's id and
//! system affinity.

use core::ffi::c_void;
use std::collections::HashMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use super::handles::HandleObject;
use super::kernel::{
    enter, with_context, Role, Rule, PASSIVE, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER,
};
use super::preempt::scheduling_point;
use super::processor::maybe_migrate;
use super::stack::{on_kernel_stack, StackKind};
use crate::nt::{CLIENT_ID, HANDLE, KSTART_ROUTINE, NTSTATUS, OBJECT_ATTRIBUTES, PKSTART_ROUTINE};

/// A driver-created system thread.
struct ThreadRecord {
    routine: usize,
    finished: bool,
}

/// System threads by id.
#[derive(Default)]
pub(super) struct Threads {
    records: HashMap<u64, ThreadRecord>,
    created: u64,
}

impl Threads {
    /// Threads that have not returned from their start routine.
    pub(super) fn running(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|(_, t)| !t.finished)
            .map(|(id, t)| format!("system thread {id} (start routine {:#x})", t.routine))
            .collect()
    }
}

/// Address and context of a start routine, sent to the new OS thread.
struct Start(KSTART_ROUTINE, usize);
// SAFETY: the context pointer is handed to the new thread exactly as the kernel hands it over; the
// driver's contract (PsCreateSystemThread) is that it may be used from that thread.
unsafe impl Send for Start {}

/// `PsCreateSystemThread`: a new emulated thread at PASSIVE on some processor.
///
/// # Safety
/// `handle` is writable; `attributes` is null or valid; `routine` may run with `context`.
#[no_mangle]
pub unsafe extern "system" fn PsCreateSystemThread(
    handle: *mut HANDLE,
    _access: u32,
    attributes: *const OBJECT_ATTRIBUTES,
    process: HANDLE,
    _client: *mut CLIENT_ID,
    routine: PKSTART_ROUTINE,
    context: *const c_void,
) -> NTSTATUS {
    let (kernel, _) = enter("PsCreateSystemThread", Rule::Passive);
    let Some(routine) = routine else {
        kernel.fail("PsCreateSystemThread without a start routine".into());
        return STATUS_INVALID_PARAMETER;
    };
    // SAFETY: the driver converted a KSTART_ROUTINE (`nt::start_routine`); this restores its type
    // (function pointers of the same size).
    let routine =
        unsafe { core::mem::transmute::<unsafe extern "system" fn(), KSTART_ROUTINE>(routine) };
    // SAFETY: per the caller.
    let kernel_handle = !attributes.is_null()
        && unsafe { (*attributes).Attributes } & crate::nt::OBJ_KERNEL_HANDLE != 0;
    let role = with_context(|c| c.role);
    if !kernel_handle && process.is_null() && role == Role::Caller {
        kernel.fail(
            "PsCreateSystemThread from a caller's process without OBJ_KERNEL_HANDLE: the handle would \
             be a handle of that process"
                .into(),
        );
    }
    let mut state = kernel.lock();
    state.threads.created += 1;
    if kernel.config.fail_thread_creation == Some(state.threads.created) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    drop(state);
    let id = kernel.new_thread_id();
    let mut state = kernel.lock();
    state.threads.records.insert(
        id,
        ThreadRecord {
            routine: routine as usize,
            finished: false,
        },
    );
    let value = state.handles.open(HandleObject::Thread(id));
    let cpu = maybe_migrate(&state);
    drop(state);
    // SAFETY: per the caller.
    unsafe { handle.write(value) };
    let start = Start(routine, context as usize);
    let k = kernel.clone();
    kernel.spawn(id, Role::System, cpu, PASSIVE, move || {
        let start = start;
        on_kernel_stack(
            &k,
            StackKind::Thread,
            || {
                format!(
                    "system thread {id} (start routine {:p})",
                    start.0 as *const ()
                )
            },
            // SAFETY: the driver's start routine with its context, on a new system thread at PASSIVE.
            || unsafe { (start.0)(start.1 as *mut c_void) },
        );
        let irql = with_context(|c| c.irql);
        if irql != PASSIVE {
            k.fail(format!("system thread {id} returned at IRQL {irql}"));
        }
        if let Some(record) = k.lock().threads.records.get_mut(&id) {
            record.finished = true;
        }
        k.changed.notify_all();
    });
    0
}

/// `PsTerminateSystemThread`. The emulation cannot end the OS thread here, so it returns; the
/// thread must then return from its start routine without calling the kernel again (checked).
///
/// # Safety
/// Called by a system thread on itself.
#[no_mangle]
pub unsafe extern "system" fn PsTerminateSystemThread(_status: NTSTATUS) -> NTSTATUS {
    let (kernel, _) = enter("PsTerminateSystemThread", Rule::Passive);
    let role = with_context(|c| {
        c.terminated = true;
        c.role
    });
    if role != Role::System {
        kernel.fail("PsTerminateSystemThread on a thread the driver did not create".into());
    }
    0
}

/// `ZwWaitForSingleObject` on a system thread's handle.
///
/// # Safety
/// `handle` is an open handle; `timeout` is null or readable.
#[no_mangle]
pub unsafe extern "system" fn ZwWaitForSingleObject(
    handle: HANDLE,
    _alertable: bool,
    timeout: *const i64,
) -> NTSTATUS {
    let (kernel, _) = enter("ZwWaitForSingleObject", Rule::Passive);
    if !timeout.is_null() {
        kernel.fail(
            "ZwWaitForSingleObject with a timeout (not used by this driver; unsupported)".into(),
        );
    }
    let state = kernel.lock();
    let Some(HandleObject::Thread(id)) = state.handles.get(handle).cloned() else {
        drop(state);
        kernel.fail(format!(
            "ZwWaitForSingleObject({handle:p}): not a thread handle"
        ));
        return STATUS_INVALID_HANDLE;
    };
    let _state = kernel.wait_until(
        state,
        &kernel.changed,
        |_| format!("system thread {id} to end (ZwWaitForSingleObject)"),
        |s| s.threads.records.get(&id).is_none_or(|t| t.finished),
    );
    0
}

/// `PsGetCurrentThreadId`: the calling emulated thread's number (`CLIENT_ID.UniqueThread`; stable
/// for the thread's life, distinct from every other thread of the machine, never 0). In a DPC it is
/// the thread the DPC interrupted, as on NT, where a DPC runs in the context of whatever thread its
/// processor was running: the last thread that stepped aside at a kernel call on that processor for
/// it, or 0 (the idle thread's id) when none did.
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn PsGetCurrentThreadId() -> HANDLE {
    let (kernel, _) = enter("PsGetCurrentThreadId", Rule::Any);
    let (thread, role, slot) = with_context(|c| (c.thread, c.role, c.cpu));
    let id = if role == Role::Dpc {
        kernel.lock().cpus[slot].interrupted
    } else {
        thread
    };
    id as usize as HANDLE
}

/// `KeSetSystemAffinityThreadEx`: group-0 affinity; returns the previous one (0: none).
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn KeSetSystemAffinityThreadEx(affinity: usize) -> usize {
    let (kernel, _) = enter("KeSetSystemAffinityThreadEx", Rule::AtMostApc);
    let previous = with_context(|c| {
        let previous = c.affinity.unwrap_or(0) as usize;
        c.affinity = Some(affinity as u64);
        previous
    });
    let state = kernel.lock();
    let cpu = &state.cpus[maybe_migrate(&state)];
    let outside = cpu.group != 0 || cpu.number >= 64 || affinity & (1 << cpu.number) == 0;
    drop(state);
    if outside {
        kernel.fail(format!(
            "KeSetSystemAffinityThreadEx({affinity:#x}): no active processor of group 0 in the mask"
        ));
    }
    // Moved onto a processor of the new affinity: a DPC running there returns first.
    scheduling_point(&kernel, false);
    previous
}

/// `KeRevertToUserAffinityThreadEx`.
///
/// # Safety
/// `previous` came from `KeSetSystemAffinityThreadEx` on this thread.
#[no_mangle]
pub unsafe extern "system" fn KeRevertToUserAffinityThreadEx(previous: usize) {
    let (kernel, _) = enter("KeRevertToUserAffinityThreadEx", Rule::AtMostApc);
    with_context(|c| c.affinity = (previous != 0).then_some(previous as u64));
    let state = kernel.lock();
    maybe_migrate(&state);
    drop(state);
    scheduling_point(&kernel, false);
}
