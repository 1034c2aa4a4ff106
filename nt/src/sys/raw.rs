//! The default backend: Microsoft's `windows-sys` (generated from the Windows metadata) for every
//! kernel routine and structure it provides correctly, and hand-written declarations only for the rest.
//!
//! From `windows-sys` (0.61, which imports through `windows-link`: `#[link(name = "ntoskrnl.exe",
//! kind = "raw-dylib", modifiers = "+verbatim")]` on Windows targets, so the driver links on any host
//! with rust-lld and no WDK):
//! - routines imported from `ntoskrnl.exe`: the `Ke*` DPC, timer, event, wait, processor, affinity and
//!   critical-region routines, `ExAllocatePoolWithTag`, `ExFreePoolWithTag`, the `Io*` work-item
//!   (`IoSizeofWorkItem`, `IoInitializeWorkItem`, `IoQueueWorkItemEx`, `IoUninitializeWorkItem`),
//!   device, symbolic-link and completion routines, `ObOpenObjectByPointer`, `PsCreateSystemThread`,
//!   `PsTerminateSystemThread`, `PsGetCurrentThreadId` (imported only by builds with the debug checks
//!   of guards per thread, `platform::guards`), `MmGetSystemRoutineAddress`, `KeBugCheckEx`; from
//!   `hal.dll`:
//!   `KeQueryPerformanceCounter` (forwarded to ntoskrnl on Windows 8 and later; Wine 8 implements it
//!   only in hal.dll);
//! - structures: `KDPC`, `KTIMER`, `KEVENT`, `IRP`, `IO_STATUS_BLOCK`, `DEVICE_OBJECT`,
//!   `DRIVER_OBJECT`, `OBJECT_ATTRIBUTES`, `UNICODE_STRING`, `PROCESSOR_NUMBER`, `CLIENT_ID`,
//!   `SECURITY_DESCRIPTOR`, `ACL`, `KEY_VALUE_PARTIAL_INFORMATION`, and the scalar and pointer types
//!   (`NTSTATUS`, `HANDLE`, `PIO_WORKITEM`, `PSECURITY_DESCRIPTOR`, `PSID`, the `DRIVER_DISPATCH` and
//!   `DRIVER_UNLOAD` callbacks; `BOOLEAN` is `bool`, `LARGE_INTEGER` is `i64`).
//!
//! Hand-written here, each for the reason given:
//! - `RtlCreateSecurityDescriptor`, `RtlCreateAcl`, `RtlAddAccessAllowedAce`,
//!   `RtlSetDaclSecurityDescriptor`, `ZwSetSecurityObject`, `ZwWaitForSingleObject`, `ZwOpenKey`,
//!   `ZwQueryValueKey`, `ZwClose` and `DbgPrintEx`: windows-sys links them to `ntdll.dll`, the user-mode
//!   DLL, and a driver that imports from ntdll fails to load. They are declared with windows-sys's exact
//!   signatures (the ABI test compares them) but imported from `ntoskrnl.exe`, which exports them;
//! - `memcpy`, `memmove`, `memset`, `memcmp`: not in windows-sys; code generation references them;
//! - [`IO_STACK_LOCATION`] (the `Parameters.DeviceIoControl` view): windows-sys drops the
//!   `POINTER_ALIGNMENT` of `InputBufferLength` and `IoControlCode`, so its offsets are wrong on x64
//!   (0x0C and 0x10 instead of 0x10 and 0x18; the ABI test pins that windows-sys still differs);
//! - [`KDEFERRED_ROUTINE`], [`IO_WORKITEM_ROUTINE_EX`], [`KSTART_ROUTINE`]: windows-sys's
//!   `PKDEFERRED_ROUTINE`, `PIO_WORKITEM_ROUTINE_EX` and `PKSTART_ROUTINE` have no parameters (the
//!   metadata lost them), so callbacks are written with these types and converted with
//!   [`deferred_routine`], [`work_item_routine_ex`] and [`start_routine`].
//!
//! The routines resolved at run time (`MmGetSystemRoutineAddress`) are `super`'s. On hosts other than
//! Windows the same declarations carry no `raw-dylib` link (windows-sys's are plain `extern` blocks
//! there too): the emulated kernel (crate `kepoch-ntemu`) exports the routines under their names,
//! with windows-sys's signatures (checked at compile time there), and a test that links it runs this
//! code on it.

use core::ffi::c_void;

use static_assertions::const_assert_eq;

pub use windows_sys::Wdk::Foundation::{
    DEVICE_OBJECT, DRIVER_DISPATCH, DRIVER_OBJECT, DRIVER_UNLOAD, IRP, KDPC, KEVENT,
    OBJECT_ATTRIBUTES, PIO_WORKITEM, PKDEFERRED_ROUTINE,
};
pub use windows_sys::Wdk::System::Registry::KEY_VALUE_INFORMATION_CLASS;
pub use windows_sys::Wdk::System::SystemServices::{
    KEY_VALUE_PARTIAL_INFORMATION, KTIMER, PIO_WORKITEM_ROUTINE_EX, PKSTART_ROUTINE,
};
pub use windows_sys::Win32::Foundation::{HANDLE, NTSTATUS, UNICODE_STRING};
pub use windows_sys::Win32::Security::{ACL, PSECURITY_DESCRIPTOR, PSID, SECURITY_DESCRIPTOR};
pub use windows_sys::Win32::System::Kernel::PROCESSOR_NUMBER;
pub use windows_sys::Win32::System::WindowsProgramming::CLIENT_ID;
pub use windows_sys::Win32::System::IO::IO_STATUS_BLOCK;

pub use windows_sys::Wdk::Storage::FileSystem::ObOpenObjectByPointer;
pub use windows_sys::Wdk::System::SystemServices::{
    ExAllocatePoolWithTag, ExFreePoolWithTag, IoCreateDevice, IoCreateSymbolicLink, IoDeleteDevice,
    IoDeleteSymbolicLink, IoInitializeWorkItem, IoQueueWorkItemEx, IoSizeofWorkItem,
    IoUninitializeWorkItem, IofCompleteRequest, KeBugCheckEx, KeCancelTimer, KeClearEvent,
    KeDelayExecutionThread, KeEnterCriticalRegion, KeFlushQueuedDpcs,
    KeGetCurrentProcessorNumberEx, KeInitializeDpc, KeInitializeEvent, KeInitializeTimerEx,
    KeInsertQueueDpc, KeLeaveCriticalRegion, KeQueryActiveProcessorCountEx,
    KeQueryActiveProcessors, KeQueryMaximumProcessorCountEx, KeQueryPerformanceCounter,
    KeRevertToUserAffinityThreadEx, KeSetEvent, KeSetImportanceDpc, KeSetSystemAffinityThreadEx,
    KeSetTargetProcessorDpcEx, KeSetTimerEx, KeWaitForSingleObject, MmGetSystemRoutineAddress,
    PsCreateSystemThread, PsGetCurrentThreadId, PsTerminateSystemThread,
};

/// `IO_STACK_LOCATION` with the `Parameters.DeviceIoControl` view of its parameter union (x64 layout:
/// the lengths after the first are `POINTER_ALIGNMENT`). Reached through
/// `IRP.Tail.Overlay.Anonymous2.Anonymous.CurrentStackLocation`, cast from windows-sys's type.
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
const_assert_eq!(core::mem::size_of::<IO_STACK_LOCATION>(), 0x48);
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

const_assert_eq!(core::mem::offset_of!(IRP, AssociatedIrp.SystemBuffer), 0x18);
const_assert_eq!(
    core::mem::offset_of!(IRP, Tail.Overlay.Anonymous2.Anonymous.CurrentStackLocation),
    0xB8
);

/// `KDEFERRED_ROUTINE` (wdm.h): a DPC's routine, with the parameters windows-sys's
/// `PKDEFERRED_ROUTINE` lacks.
pub type KDEFERRED_ROUTINE = unsafe extern "system" fn(
    dpc: *mut KDPC,
    context: *mut c_void,
    argument1: *mut c_void,
    argument2: *mut c_void,
);
/// `IO_WORKITEM_ROUTINE_EX` (wdm.h): the routine of a work item queued with `IoQueueWorkItemEx`; it
/// gets the item's object (a driver or device object) and the item.
pub type IO_WORKITEM_ROUTINE_EX =
    unsafe extern "system" fn(io_object: *mut c_void, context: *mut c_void, item: PIO_WORKITEM);
/// `KSTART_ROUTINE` (wdm.h): a system thread's start routine.
pub type KSTART_ROUTINE = unsafe extern "system" fn(context: *mut c_void);

/// windows-sys's (parameterless) pointer type of a callback whose real type is the argument's.
type Erased = unsafe extern "system" fn();

/// `routine` as the `PKDEFERRED_ROUTINE` that `KeInitializeDpc` takes.
pub fn deferred_routine(routine: KDEFERRED_ROUTINE) -> PKDEFERRED_ROUTINE {
    // SAFETY: both are function pointers of the same size; the kernel (or the emulation, which converts
    // back) calls it with KDEFERRED_ROUTINE's parameters, never through the parameterless type.
    Some(unsafe { core::mem::transmute::<KDEFERRED_ROUTINE, Erased>(routine) })
}

/// `routine` as the `PIO_WORKITEM_ROUTINE_EX` that `IoQueueWorkItemEx` takes.
pub fn work_item_routine_ex(routine: IO_WORKITEM_ROUTINE_EX) -> PIO_WORKITEM_ROUTINE_EX {
    // SAFETY: as in `deferred_routine`; called with IO_WORKITEM_ROUTINE_EX's parameters.
    Some(unsafe { core::mem::transmute::<IO_WORKITEM_ROUTINE_EX, Erased>(routine) })
}

/// `routine` as the `PKSTART_ROUTINE` that `PsCreateSystemThread` takes.
pub fn start_routine(routine: KSTART_ROUTINE) -> PKSTART_ROUTINE {
    // SAFETY: as in `deferred_routine`; called with KSTART_ROUTINE's parameter.
    Some(unsafe { core::mem::transmute::<KSTART_ROUTINE, Erased>(routine) })
}

/// The parameters of an `IRP_MJ_DEVICE_CONTROL` request: `IoGetCurrentIrpStackLocation(irp)->
/// Parameters.DeviceIoControl` and `irp->AssociatedIrp.SystemBuffer`.
///
/// # Safety
/// `irp` is a valid IRP_MJ_DEVICE_CONTROL IRP dispatched to the caller.
pub unsafe fn device_io_control(irp: *mut IRP) -> super::DeviceIoControl {
    // SAFETY: per the caller the IRP and its current stack location are valid; plain field reads (the
    // union members are the ones the I/O manager sets for a buffered device-control request).
    unsafe {
        let stack = (*irp)
            .Tail
            .Overlay
            .Anonymous2
            .Anonymous
            .CurrentStackLocation
            .cast::<IO_STACK_LOCATION>();
        super::DeviceIoControl {
            code: (*stack).IoControlCode,
            input_length: (*stack).InputBufferLength,
            output_length: (*stack).OutputBufferLength,
            buffer: (*irp).AssociatedIrp.SystemBuffer.cast(),
        }
    }
}

/// Completes `irp` with `status` and `information` (sets `IoStatus`, then `IofCompleteRequest`).
///
/// # Safety
/// `irp` is an IRP owned by the caller (dispatched to it and not completed yet).
pub unsafe fn complete_irp(irp: *mut IRP, status: NTSTATUS, information: u64) {
    // SAFETY: the caller owns the IRP, so writing its IoStatus and completing it once is allowed.
    unsafe {
        (*irp).IoStatus.Anonymous.Status = status;
        (*irp).IoStatus.Information = information as usize;
        IofCompleteRequest(irp, super::IO_NO_INCREMENT);
    }
}

/// `KeBugCheckEx`, which never returns (windows-sys declares it without `-> !`).
///
/// # Safety
/// None beyond stopping the machine; `unsafe` like the routine.
pub unsafe fn bug_check(code: u32, parameters: [usize; 4]) -> ! {
    let [p1, p2, p3, p4] = parameters;
    // SAFETY: plain values shown in the crash dump.
    unsafe { KeBugCheckEx(code, p1, p2, p3, p4) };
    // Not reached: KeBugCheckEx is DECLSPEC_NORETURN (the emulated one parks the thread).
    loop {
        core::hint::spin_loop();
    }
}

/// `PsGetCurrentThreadId`: the id of the current thread (`CLIENT_ID.UniqueThread`), unique among
/// the threads alive. Any IRQL; in a DPC it is the id of the thread the DPC interrupted (0 for the
/// idle threads, which all share that id).
pub fn current_thread_id() -> usize {
    // SAFETY: no arguments; callable at any IRQL.
    unsafe { PsGetCurrentThreadId() as usize }
}

// windows-sys links these to ntdll.dll (see the module documentation); same signatures, from ntoskrnl.
// The routines are documented by Microsoft (DDI reference). On other hosts, plain declarations that the
// emulated kernel's exports resolve.
#[allow(missing_docs)]
#[cfg_attr(
    target_os = "windows",
    link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
)]
extern "system" {
    // security
    pub fn RtlCreateSecurityDescriptor(
        securitydescriptor: PSECURITY_DESCRIPTOR,
        revision: u32,
    ) -> NTSTATUS;
    pub fn RtlCreateAcl(acl: *mut ACL, acllength: u32, aclrevision: u32) -> NTSTATUS;
    pub fn RtlAddAccessAllowedAce(
        acl: *mut ACL,
        acerevision: u32,
        accessmask: u32,
        sid: PSID,
    ) -> NTSTATUS;
    pub fn RtlSetDaclSecurityDescriptor(
        securitydescriptor: PSECURITY_DESCRIPTOR,
        daclpresent: bool,
        dacl: *const ACL,
        dacldefaulted: bool,
    ) -> NTSTATUS;
    pub fn ZwSetSecurityObject(
        handle: HANDLE,
        securityinformation: u32,
        securitydescriptor: PSECURITY_DESCRIPTOR,
    ) -> NTSTATUS;
    // threads
    pub fn ZwWaitForSingleObject(handle: HANDLE, alertable: bool, timeout: *const i64) -> NTSTATUS;
    // registry
    pub fn ZwOpenKey(
        keyhandle: *mut HANDLE,
        desiredaccess: u32,
        objectattributes: *const OBJECT_ATTRIBUTES,
    ) -> NTSTATUS;
    pub fn ZwQueryValueKey(
        keyhandle: HANDLE,
        valuename: *const UNICODE_STRING,
        keyvalueinformationclass: KEY_VALUE_INFORMATION_CLASS,
        keyvalueinformation: *mut c_void,
        length: u32,
        resultlength: *mut u32,
    ) -> NTSTATUS;
    pub fn ZwClose(handle: HANDLE) -> NTSTATUS;
}

#[cfg(target_os = "windows")]
#[allow(missing_docs)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "C" {
    pub fn DbgPrintEx(componentid: u32, level: u32, format: windows_sys::core::PCSTR, ...) -> u32;
}

// The emulated kernel's `DbgPrintEx` takes the one argument of the `"%s"` format the driver uses (a C
// variadic function cannot be defined on stable Rust); the call sites are the same.
#[cfg(not(target_os = "windows"))]
#[allow(missing_docs)]
extern "C" {
    pub fn DbgPrintEx(
        componentid: u32,
        level: u32,
        format: windows_sys::core::PCSTR,
        text: *const u8,
    ) -> u32;
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
