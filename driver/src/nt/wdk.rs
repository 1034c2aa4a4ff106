//! The WDK backend (feature `wdk`): the same names as `raw`, taken from `wdk-sys` (bindgen over the WDK
//! headers). It can only be built on a Windows host with the WDK (wdk-build refuses other hosts), so it
//! is deliberately a list of re-exports plus one accessor: everything else about the driver is shared
//! with the raw backend, which is built and checked on every host.
//!
//! Not yet adapted to the bindings of the raw backend (windows-sys): the driver now calls the routines
//! with windows-sys's types (`bool` for `BOOLEAN`, `i64` for `LARGE_INTEGER`, `*const` parameters,
//! `PIO_WORKITEM` as `isize`, `extern "system"` callbacks with `*const DEVICE_OBJECT`, and
//! `deferred_routine`/`work_item_routine`/`start_routine`/`bug_check`), which wdk-sys' prototypes do
//! not take; this backend needs wrappers with those signatures before it builds again (it could not be
//! compiled where the change was made).

pub use wdk_sys::{
    BOOLEAN, DEVICE_OBJECT, DRIVER_OBJECT, HANDLE, IO_WORKITEM, IRP, KDPC, KEVENT,
    KEY_VALUE_PARTIAL_INFORMATION, KTIMER, LARGE_INTEGER, NTSTATUS, OBJECT_ATTRIBUTES,
    PDRIVER_DISPATCH, PDRIVER_UNLOAD, PIO_WORKITEM_ROUTINE, PKDEFERRED_ROUTINE, PROCESSOR_NUMBER,
    UNICODE_STRING,
};

pub use wdk_sys::ntddk::{
    DbgPrintEx, ExFreePoolWithTag, IoAllocateWorkItem, IoCreateDevice, IoCreateSymbolicLink,
    IoDeleteDevice, IoDeleteSymbolicLink, IoFreeWorkItem, IoQueueWorkItem, IofCompleteRequest,
    KeBugCheckEx, KeCancelTimer, KeClearEvent, KeEnterCriticalRegion, KeFlushQueuedDpcs,
    KeGetCurrentProcessorNumberEx, KeInitializeDpc, KeInitializeEvent, KeInitializeTimerEx,
    KeInsertQueueDpc, KeLeaveCriticalRegion, KeQueryActiveProcessorCountEx,
    KeQueryMaximumProcessorCountEx, KeSetEvent, KeSetImportanceDpc, KeSetTargetProcessorDpcEx,
    KeSetTimerEx, KeWaitForSingleObject, MmGetSystemRoutineAddress, ZwClose, ZwOpenKey,
    ZwQueryValueKey,
};

pub use wdk_sys::{CLIENT_ID, IO_STACK_LOCATION, PKSTART_ROUTINE};

/// `SECURITY_DESCRIPTOR` storage (absolute form, x64), filled only by `RtlCreateSecurityDescriptor`.
#[repr(C)]
pub struct SECURITY_DESCRIPTOR {
    _opaque: [u64; 5],
}

// Routines from ntifs.h and hal that wdk-sys' WDM bindings do not cover; ntoskrnl.lib and hal.lib (both
// linked by wdk-build for WDM drivers) export them. Same signatures as the raw backend.
#[allow(missing_docs)]
extern "system" {
    pub fn RtlCreateSecurityDescriptor(
        descriptor: *mut SECURITY_DESCRIPTOR,
        revision: u32,
    ) -> NTSTATUS;
    pub fn RtlCreateAcl(acl: *mut core::ffi::c_void, length: u32, revision: u32) -> NTSTATUS;
    pub fn RtlAddAccessAllowedAce(
        acl: *mut core::ffi::c_void,
        revision: u32,
        access: u32,
        sid: *mut core::ffi::c_void,
    ) -> NTSTATUS;
    pub fn RtlSetDaclSecurityDescriptor(
        descriptor: *mut SECURITY_DESCRIPTOR,
        present: BOOLEAN,
        dacl: *mut core::ffi::c_void,
        defaulted: BOOLEAN,
    ) -> NTSTATUS;
    pub fn ObOpenObjectByPointer(
        object: *mut core::ffi::c_void,
        attributes: u32,
        access_state: *mut core::ffi::c_void,
        access: u32,
        object_type: *mut core::ffi::c_void,
        mode: i8,
        handle: *mut HANDLE,
    ) -> NTSTATUS;
    pub fn ZwSetSecurityObject(
        handle: HANDLE,
        information: u32,
        descriptor: *mut SECURITY_DESCRIPTOR,
    ) -> NTSTATUS;
    pub fn PsCreateSystemThread(
        handle: *mut HANDLE,
        access: u32,
        attributes: *mut OBJECT_ATTRIBUTES,
        process: HANDLE,
        client: *mut CLIENT_ID,
        routine: PKSTART_ROUTINE,
        context: *mut core::ffi::c_void,
    ) -> NTSTATUS;
    pub fn PsTerminateSystemThread(status: NTSTATUS) -> NTSTATUS;
    pub fn ZwWaitForSingleObject(
        handle: HANDLE,
        alertable: BOOLEAN,
        timeout: *mut LARGE_INTEGER,
    ) -> NTSTATUS;
    pub fn KeSetSystemAffinityThreadEx(affinity: usize) -> usize;
    pub fn KeRevertToUserAffinityThreadEx(affinity: usize);
    pub fn KeQueryActiveProcessors() -> usize;
    pub fn KeDelayExecutionThread(
        mode: i8,
        alertable: BOOLEAN,
        interval: *mut LARGE_INTEGER,
    ) -> NTSTATUS;
    pub fn KeQueryPerformanceCounter(frequency: *mut LARGE_INTEGER) -> LARGE_INTEGER;
}

/// The parameters of an `IRP_MJ_DEVICE_CONTROL` request (bindgen's anonymous-union names).
///
/// # Safety
/// `irp` is a valid IRP_MJ_DEVICE_CONTROL IRP dispatched to the caller.
pub unsafe fn device_io_control(irp: *mut IRP) -> super::DeviceIoControl {
    // SAFETY: per the caller the IRP and its current stack location are valid; plain field reads.
    unsafe {
        let stack = (*irp)
            .Tail
            .Overlay
            .__bindgen_anon_2
            .__bindgen_anon_1
            .CurrentStackLocation;
        let parameters = &(*stack).Parameters.DeviceIoControl;
        super::DeviceIoControl {
            code: parameters.IoControlCode,
            input_length: parameters.InputBufferLength,
            output_length: parameters.OutputBufferLength,
            buffer: (*irp).AssociatedIrp.SystemBuffer.cast(),
        }
    }
}

// wdk-sys' bindgen blocklists the deprecated ExAllocatePoolWithTag; it is the fallback for kernels
// without ExAllocatePool2, so declare it here (ntoskrnl.lib, which wdk-sys links, exports it).
extern "system" {
    pub fn ExAllocatePoolWithTag(pool_type: i32, bytes: u64, tag: u32) -> *mut core::ffi::c_void;
}

/// Completes `irp` with `status` and `information` (sets `IoStatus`, then `IofCompleteRequest`).
///
/// # Safety
/// `irp` is an IRP owned by the caller (dispatched to it and not completed yet).
pub unsafe fn complete_irp(irp: *mut IRP, status: NTSTATUS, information: u64) {
    // SAFETY: the caller owns the IRP, so writing its IoStatus and completing it once is allowed.
    unsafe {
        (*irp).IoStatus.__bindgen_anon_1.Status = status;
        (*irp).IoStatus.Information = information;
        IofCompleteRequest(irp, super::IO_NO_INCREMENT);
    }
}
