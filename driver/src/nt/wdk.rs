//! The WDK backend (feature `wdk`): the same names as `raw`, taken from `wdk-sys` (bindgen over the WDK
//! headers). It can only be built on a Windows host with the WDK (wdk-build refuses other hosts), so it
//! is deliberately a list of re-exports plus one accessor: everything else about the driver is shared
//! with the raw backend, which is built and checked on every host.

pub use wdk_sys::{
    BOOLEAN, DEVICE_OBJECT, DRIVER_OBJECT, HANDLE, IO_WORKITEM, IRP, KDPC, KEVENT,
    KEY_VALUE_PARTIAL_INFORMATION, KTIMER, LARGE_INTEGER, NTSTATUS, OBJECT_ATTRIBUTES,
    PDRIVER_DISPATCH, PDRIVER_UNLOAD, PIO_WORKITEM_ROUTINE, PKDEFERRED_ROUTINE, PROCESSOR_NUMBER,
    UNICODE_STRING,
};

pub use wdk_sys::ntddk::{
    DbgPrintEx, ExFreePoolWithTag, IoAllocateWorkItem, IoCreateDevice, IoCreateSymbolicLink,
    IoDeleteDevice, IoDeleteSymbolicLink, IoFreeWorkItem, IoQueueWorkItem, IofCompleteRequest,
    KeBugCheckEx, KeCancelTimer, KeClearEvent, KeFlushQueuedDpcs, KeGetCurrentProcessorNumberEx,
    KeInitializeDpc, KeInitializeEvent, KeInitializeTimerEx, KeInsertQueueDpc,
    KeQueryActiveProcessorCountEx, KeQueryMaximumProcessorCountEx, KeSetEvent,
    KeSetTargetProcessorDpcEx, KeSetTimerEx, KeWaitForSingleObject, MmGetSystemRoutineAddress,
    ZwClose, ZwOpenKey, ZwQueryValueKey,
};

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
