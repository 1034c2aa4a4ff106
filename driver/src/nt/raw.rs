//! The project's own NT declarations (default backend): structs with the x64 layouts of
//! reference/nt-apis.md §1.6 (pinned in `super`), and `raw-dylib` imports from `ntoskrnl.exe`. Only the
//! fields the driver touches are named; the rest is opaque padding of the documented size.

use core::ffi::c_void;

use static_assertions::const_assert_eq;

/// `NTSTATUS`.
pub type NTSTATUS = i32;
/// `BOOLEAN`.
pub type BOOLEAN = u8;
/// `HANDLE`.
pub type HANDLE = *mut c_void;

/// `PROCESSOR_NUMBER`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PROCESSOR_NUMBER {
    /// Processor group.
    pub Group: u16,
    /// Group-relative number.
    pub Number: u8,
    /// Must be zero.
    pub Reserved: u8,
}

/// `UNICODE_STRING` (counted, not necessarily NUL-terminated).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UNICODE_STRING {
    /// Length in bytes, without terminator.
    pub Length: u16,
    /// Size of `Buffer` in bytes.
    pub MaximumLength: u16,
    /// UTF-16 text.
    pub Buffer: *mut u16,
}

/// `LARGE_INTEGER` (only the 64-bit view).
#[repr(C)]
#[derive(Clone, Copy)]
pub union LARGE_INTEGER {
    /// The value.
    pub QuadPart: i64,
}

/// `KDPC`: opaque, 0x40 bytes, initialised and used only by the Ke*Dpc routines.
#[repr(C, align(8))]
pub struct KDPC {
    _opaque: [u8; 0x40],
}

/// `KTIMER`: opaque, 0x40 bytes.
#[repr(C, align(8))]
pub struct KTIMER {
    _opaque: [u8; 0x40],
}

/// `KEVENT`: opaque (a `DISPATCHER_HEADER`), 0x18 bytes.
#[repr(C, align(8))]
pub struct KEVENT {
    _opaque: [u8; 0x18],
}

/// `IO_WORKITEM`: opaque, allocated by `IoAllocateWorkItem`.
#[repr(C)]
pub struct IO_WORKITEM {
    _opaque: [u8; 0],
}

/// `IO_STATUS_BLOCK`.
#[repr(C)]
pub struct IO_STATUS_BLOCK {
    /// `Status` (in a union with `Pointer`, hence the padding).
    pub Status: NTSTATUS,
    _pointer_high: u32,
    /// Bytes transferred or request-specific information.
    pub Information: u64,
}

/// `IRP`: `AssociatedIrp.SystemBuffer`, `IoStatus` and `Tail.Overlay.CurrentStackLocation`; the rest is
/// opaque.
#[repr(C)]
pub struct IRP {
    _head: [u8; 0x18],
    /// `AssociatedIrp.SystemBuffer`: the METHOD_BUFFERED buffer (input, then output).
    pub SystemBuffer: *mut c_void,
    _thread_list: [u8; 0x10],
    /// Completion status.
    pub IoStatus: IO_STATUS_BLOCK,
    _middle: [u8; 0xB8 - 0x40],
    /// `Tail.Overlay.CurrentStackLocation` (what `IoGetCurrentIrpStackLocation` returns).
    pub CurrentStackLocation: *mut IO_STACK_LOCATION,
    _tail: [u8; 0xD0 - 0xC0],
}

/// `IO_STACK_LOCATION` with the `Parameters.DeviceIoControl` view of its parameter union.
#[repr(C)]
pub struct IO_STACK_LOCATION {
    /// `IRP_MJ_*`.
    pub MajorFunction: u8,
    /// `IRP_MN_*`.
    pub MinorFunction: u8,
    /// `SL_*` flags.
    pub Flags: u8,
    /// `SL_*` control bits.
    pub Control: u8,
    _pad: u32,
    /// `Parameters.DeviceIoControl.OutputBufferLength`.
    pub OutputBufferLength: u32,
    _pad1: u32,
    /// `Parameters.DeviceIoControl.InputBufferLength` (POINTER_ALIGNMENT).
    pub InputBufferLength: u32,
    _pad2: u32,
    /// `Parameters.DeviceIoControl.IoControlCode` (POINTER_ALIGNMENT).
    pub IoControlCode: u32,
    _pad3: u32,
    /// `Parameters.DeviceIoControl.Type3InputBuffer`.
    pub Type3InputBuffer: *mut c_void,
    _tail: [u8; 0x48 - 0x28],
}

/// `SECURITY_DESCRIPTOR` (absolute form, x64): revision, control, then four pointers.
#[repr(C)]
pub struct SECURITY_DESCRIPTOR {
    _opaque: [u64; 5],
}

/// `CLIENT_ID`.
#[repr(C)]
pub struct CLIENT_ID {
    /// Process id.
    pub UniqueProcess: HANDLE,
    /// Thread id.
    pub UniqueThread: HANDLE,
}

/// `PKSTART_ROUTINE`: a system thread's start routine.
pub type PKSTART_ROUTINE = Option<unsafe extern "C" fn(context: *mut c_void)>;

/// `DEVICE_OBJECT`: fields up to `DeviceExtension`, then opaque.
#[repr(C)]
pub struct DEVICE_OBJECT {
    _head: [u8; 0x30],
    /// `DO_*` flags.
    pub Flags: u32,
    /// `FILE_*` characteristics.
    pub Characteristics: u32,
    _vpb: *mut c_void,
    /// The driver-defined extension (`DeviceExtensionSize` bytes, non-paged, zeroed).
    pub DeviceExtension: *mut c_void,
    _tail: [u8; 0x150 - 0x48],
}

/// `PDRIVER_UNLOAD`.
pub type PDRIVER_UNLOAD = Option<unsafe extern "C" fn(driver: *mut DRIVER_OBJECT)>;
/// `PDRIVER_DISPATCH`.
pub type PDRIVER_DISPATCH =
    Option<unsafe extern "C" fn(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS>;
/// `PKDEFERRED_ROUTINE`.
pub type PKDEFERRED_ROUTINE = Option<
    unsafe extern "C" fn(
        dpc: *mut KDPC,
        context: *mut c_void,
        argument1: *mut c_void,
        argument2: *mut c_void,
    ),
>;
/// `PIO_WORKITEM_ROUTINE`.
pub type PIO_WORKITEM_ROUTINE =
    Option<unsafe extern "C" fn(device: *mut DEVICE_OBJECT, context: *mut c_void)>;

/// `DRIVER_OBJECT`.
#[repr(C)]
pub struct DRIVER_OBJECT {
    _head: [u8; 0x08],
    /// First device object created by the driver.
    pub DeviceObject: *mut DEVICE_OBJECT,
    _middle: [u8; 0x68 - 0x10],
    /// Called before the image is unmapped.
    pub DriverUnload: PDRIVER_UNLOAD,
    /// IRP dispatch routines, indexed by `IRP_MJ_*` (28 entries).
    pub MajorFunction: [PDRIVER_DISPATCH; 28],
}

/// `OBJECT_ATTRIBUTES`.
#[repr(C)]
pub struct OBJECT_ATTRIBUTES {
    /// `size_of::<OBJECT_ATTRIBUTES>()`.
    pub Length: u32,
    /// Directory the name is relative to, or null.
    pub RootDirectory: HANDLE,
    /// Object name.
    pub ObjectName: *mut UNICODE_STRING,
    /// `OBJ_*` flags.
    pub Attributes: u32,
    /// Optional security descriptor.
    pub SecurityDescriptor: *mut c_void,
    /// Optional security quality of service.
    pub SecurityQualityOfService: *mut c_void,
}

/// `KEY_VALUE_PARTIAL_INFORMATION` (variable length; `Data` has `DataLength` bytes).
#[repr(C)]
pub struct KEY_VALUE_PARTIAL_INFORMATION {
    /// Unused.
    pub TitleIndex: u32,
    /// `REG_*` type.
    pub Type: u32,
    /// Bytes in `Data`.
    pub DataLength: u32,
    /// First byte of the data.
    pub Data: [u8; 1],
}
const_assert_eq!(core::mem::size_of::<KEY_VALUE_PARTIAL_INFORMATION>(), 16);
const_assert_eq!(core::mem::size_of::<IO_STATUS_BLOCK>(), 16);
const_assert_eq!(core::mem::offset_of!(IRP, SystemBuffer), 0x18);
const_assert_eq!(core::mem::offset_of!(IRP, CurrentStackLocation), 0xB8);
const_assert_eq!(
    core::mem::offset_of!(IO_STACK_LOCATION, OutputBufferLength),
    0x08
);
const_assert_eq!(
    core::mem::offset_of!(IO_STACK_LOCATION, InputBufferLength),
    0x10
);
const_assert_eq!(
    core::mem::offset_of!(IO_STACK_LOCATION, IoControlCode),
    0x18
);
const_assert_eq!(
    core::mem::offset_of!(IO_STACK_LOCATION, Type3InputBuffer),
    0x20
);

/// The parameters of an `IRP_MJ_DEVICE_CONTROL` request: `IoGetCurrentIrpStackLocation(irp)->
/// Parameters.DeviceIoControl` and `irp->AssociatedIrp.SystemBuffer`.
///
/// # Safety
/// `irp` is a valid IRP_MJ_DEVICE_CONTROL IRP dispatched to the caller.
pub unsafe fn device_io_control(irp: *mut IRP) -> super::DeviceIoControl {
    // SAFETY: per the caller the IRP and its current stack location are valid; plain field reads.
    unsafe {
        let stack = (*irp).CurrentStackLocation;
        super::DeviceIoControl {
            code: (*stack).IoControlCode,
            input_length: (*stack).InputBufferLength,
            output_length: (*stack).OutputBufferLength,
            buffer: (*irp).SystemBuffer.cast(),
        }
    }
}

// On other hosts the emulated kernel provides the same routines (`nt/host`).
#[cfg(not(target_os = "windows"))]
pub use super::host::routines::*;

// The routines are documented by Microsoft (DDI reference); reference/nt-apis.md §1 has the facts used.
#[cfg(target_os = "windows")]
#[allow(missing_docs)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    // processors
    pub fn KeGetCurrentProcessorNumberEx(number: *mut PROCESSOR_NUMBER) -> u32;
    pub fn KeQueryMaximumProcessorCountEx(group: u16) -> u32;
    pub fn KeQueryActiveProcessorCountEx(group: u16) -> u32;
    // DPCs
    pub fn KeInitializeDpc(dpc: *mut KDPC, routine: PKDEFERRED_ROUTINE, context: *mut c_void);
    pub fn KeSetTargetProcessorDpcEx(dpc: *mut KDPC, number: *mut PROCESSOR_NUMBER) -> NTSTATUS;
    pub fn KeInsertQueueDpc(
        dpc: *mut KDPC,
        argument1: *mut c_void,
        argument2: *mut c_void,
    ) -> BOOLEAN;
    pub fn KeFlushQueuedDpcs();
    pub fn KeSetImportanceDpc(dpc: *mut KDPC, importance: i32);
    // critical regions (normal kernel APCs off for the current thread)
    pub fn KeEnterCriticalRegion();
    pub fn KeLeaveCriticalRegion();
    // timers
    pub fn KeInitializeTimerEx(timer: *mut KTIMER, kind: i32);
    pub fn KeSetTimerEx(
        timer: *mut KTIMER,
        due_time: LARGE_INTEGER,
        period_ms: i32,
        dpc: *mut KDPC,
    ) -> BOOLEAN;
    pub fn KeCancelTimer(timer: *mut KTIMER) -> BOOLEAN;
    // events
    pub fn KeInitializeEvent(event: *mut KEVENT, kind: i32, state: BOOLEAN);
    pub fn KeSetEvent(event: *mut KEVENT, increment: i32, wait: BOOLEAN) -> i32;
    pub fn KeClearEvent(event: *mut KEVENT);
    pub fn KeWaitForSingleObject(
        object: *mut c_void,
        reason: i32,
        mode: i8,
        alertable: BOOLEAN,
        timeout: *mut LARGE_INTEGER,
    ) -> NTSTATUS;
    // pool
    pub fn ExAllocatePoolWithTag(pool_type: i32, bytes: u64, tag: u32) -> *mut c_void;
    pub fn ExFreePoolWithTag(block: *mut c_void, tag: u32);
    // work items
    pub fn IoAllocateWorkItem(device: *mut DEVICE_OBJECT) -> *mut IO_WORKITEM;
    pub fn IoFreeWorkItem(item: *mut IO_WORKITEM);
    pub fn IoQueueWorkItem(
        item: *mut IO_WORKITEM,
        routine: PIO_WORKITEM_ROUTINE,
        queue: i32,
        context: *mut c_void,
    );
    // devices and IRPs
    pub fn IoCreateDevice(
        driver: *mut DRIVER_OBJECT,
        extension_size: u32,
        name: *mut UNICODE_STRING,
        device_type: u32,
        characteristics: u32,
        exclusive: BOOLEAN,
        device: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
    pub fn IoDeleteDevice(device: *mut DEVICE_OBJECT);
    pub fn IoCreateSymbolicLink(link: *mut UNICODE_STRING, target: *mut UNICODE_STRING)
        -> NTSTATUS;
    pub fn IoDeleteSymbolicLink(link: *mut UNICODE_STRING) -> NTSTATUS;
    pub fn IofCompleteRequest(irp: *mut IRP, boost: i8);
    // security
    pub fn RtlCreateSecurityDescriptor(
        descriptor: *mut SECURITY_DESCRIPTOR,
        revision: u32,
    ) -> NTSTATUS;
    pub fn RtlCreateAcl(acl: *mut c_void, length: u32, revision: u32) -> NTSTATUS;
    pub fn RtlAddAccessAllowedAce(
        acl: *mut c_void,
        revision: u32,
        access: u32,
        sid: *mut c_void,
    ) -> NTSTATUS;
    pub fn RtlSetDaclSecurityDescriptor(
        descriptor: *mut SECURITY_DESCRIPTOR,
        present: BOOLEAN,
        dacl: *mut c_void,
        defaulted: BOOLEAN,
    ) -> NTSTATUS;
    pub fn ObOpenObjectByPointer(
        object: *mut c_void,
        attributes: u32,
        access_state: *mut c_void,
        access: u32,
        object_type: *mut c_void,
        mode: i8,
        handle: *mut HANDLE,
    ) -> NTSTATUS;
    pub fn ZwSetSecurityObject(
        handle: HANDLE,
        information: u32,
        descriptor: *mut SECURITY_DESCRIPTOR,
    ) -> NTSTATUS;
    // threads
    pub fn PsCreateSystemThread(
        handle: *mut HANDLE,
        access: u32,
        attributes: *mut OBJECT_ATTRIBUTES,
        process: HANDLE,
        client: *mut CLIENT_ID,
        routine: PKSTART_ROUTINE,
        context: *mut c_void,
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
    // registry
    pub fn ZwOpenKey(key: *mut HANDLE, access: u32, attributes: *mut OBJECT_ATTRIBUTES)
        -> NTSTATUS;
    pub fn ZwQueryValueKey(
        key: HANDLE,
        name: *mut UNICODE_STRING,
        class: i32,
        information: *mut c_void,
        length: u32,
        result_length: *mut u32,
    ) -> NTSTATUS;
    pub fn ZwClose(handle: HANDLE) -> NTSTATUS;
    // run-time resolution, panics
    pub fn MmGetSystemRoutineAddress(name: *mut UNICODE_STRING) -> *mut c_void;
    pub fn KeBugCheckEx(code: u32, p1: u64, p2: u64, p3: u64, p4: u64) -> !;
}

// hal.dll: forwarded to ntoskrnl on Windows 8 and later; Wine 8 implements it only in hal.dll.
#[cfg(target_os = "windows")]
#[allow(missing_docs)]
#[link(name = "hal.dll", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    pub fn KeQueryPerformanceCounter(frequency: *mut LARGE_INTEGER) -> LARGE_INTEGER;
}

#[cfg(target_os = "windows")]
#[allow(missing_docs)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "C" {
    pub fn DbgPrintEx(component: u32, level: u32, format: *const core::ffi::c_char, ...) -> u32;
}

// Code generation references these (slice copies, core::fmt, zeroing); the msvc compiler_builtins has
// no mem functions, ntoskrnl exports them (so do WDK drivers get them). Never called directly.
#[cfg(target_os = "windows")]
#[allow(dead_code)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "C" {
    fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8;
    fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32;
}

/// Completes `irp` with `status` and `information` (sets `IoStatus`, then `IofCompleteRequest`).
///
/// # Safety
/// `irp` is an IRP owned by the caller (dispatched to it and not completed yet).
pub unsafe fn complete_irp(irp: *mut IRP, status: NTSTATUS, information: u64) {
    // SAFETY: the caller owns the IRP, so writing its IoStatus and completing it once is allowed.
    unsafe {
        (*irp).IoStatus.Status = status;
        (*irp).IoStatus.Information = information;
        IofCompleteRequest(irp, super::IO_NO_INCREMENT);
    }
}
