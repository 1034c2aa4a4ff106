//! The binding facade: the only place with raw NT declarations.
//!
//! Two backends provide the same names (the C names):
//! - `raw`: Microsoft's `windows-sys` (routines imported with `raw-dylib` from `ntoskrnl.exe` and
//!   `hal.dll` through `windows-link`, and its structures), plus the few declarations windows-sys gets
//!   wrong for a driver (listed in `raw.rs`), so the driver links on any host with rust-lld and no WDK.
//!   The WDK build (feature `wdk`) uses the same bindings and differs only in the link, which
//!   `wdk-build` configures: no second set of declarations that only a WDK host could compile;
//! - any 64-bit host other than Windows: the same declarations without the `raw-dylib` link (what
//!   windows-sys does there), resolved when a test links the emulated kernel (crate `kepoch-ntemu`,
//!   which exports these routines under their own names); IRQL is the emulated thread's
//!   (`irql_emulated.rs` in place of `irql.rs`).
//!
//! Shared by all: numeric constants, IRQL access through CR8 (what the WDK headers inline on x64), and
//! the routines resolved at run time with `MmGetSystemRoutineAddress` (they must never be imported:
//! older kernels and Wine lack them, and an unresolved import fails the load).
//!
//! Everything above this module (the platform, the embedding driver) uses safe wrappers or documented
//! `unsafe`.
#![allow(non_camel_case_types, non_snake_case, clippy::upper_case_acronyms)]

#[cfg_attr(not(target_os = "windows"), path = "irql_emulated.rs")]
pub mod irql;

mod raw;
pub use raw::*;

use core::ffi::c_void;

use static_assertions::{assert_eq_align, assert_eq_size, const_assert_eq};

// ---- constants (values of the WDK headers, checked against mingw-w64's by `tests/abi`; identical on
// both backends) ----

/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: NTSTATUS = 0;
/// `ALL_PROCESSOR_GROUPS` for the `Ke*ProcessorCountEx` queries.
pub const ALL_PROCESSOR_GROUPS: u16 = 0xFFFF;
/// `KE_PROCESSOR_CHANGE_ADD_EXISTING`: replay AddStart/AddComplete for running processors.
pub const KE_PROCESSOR_CHANGE_ADD_EXISTING: u32 = 1;
/// `POOL_FLAG_UNINITIALIZED` (ExAllocatePool2).
pub const POOL_FLAG_UNINITIALIZED: u64 = 0x2;
/// `POOL_FLAG_NON_PAGED` (ExAllocatePool2).
pub const POOL_FLAG_NON_PAGED: u64 = 0x40;
/// `NonPagedPoolNx` (`POOL_TYPE`, ExAllocatePoolWithTag).
pub const NON_PAGED_POOL_NX: i32 = 512;
/// `NotificationEvent` (`EVENT_TYPE`).
pub const NOTIFICATION_EVENT: i32 = 0;
/// `NotificationTimer` (`TIMER_TYPE`).
pub const NOTIFICATION_TIMER: i32 = 0;
/// `Executive` (`KWAIT_REASON`).
pub const EXECUTIVE: i32 = 0;
/// `KernelMode` (`KPROCESSOR_MODE`).
pub const KERNEL_MODE: i8 = 0;
/// `DelayedWorkQueue` (`WORK_QUEUE_TYPE`).
pub const DELAYED_WORK_QUEUE: i32 = 1;
/// `FILE_DEVICE_UNKNOWN`.
pub const FILE_DEVICE_UNKNOWN: u32 = 0x22;
/// `FILE_DEVICE_SECURE_OPEN`: the device's security descriptor also guards opens of names below it.
pub const FILE_DEVICE_SECURE_OPEN: u32 = 0x100;
/// `IRP_MJ_CREATE`.
pub const IRP_MJ_CREATE: usize = 0;
/// `IRP_MJ_CLOSE`.
pub const IRP_MJ_CLOSE: usize = 2;
/// `IRP_MJ_DEVICE_CONTROL`.
pub const IRP_MJ_DEVICE_CONTROL: usize = 14;
/// `SynchronizationEvent` (`EVENT_TYPE`): auto-reset, wakes one waiter.
pub const SYNCHRONIZATION_EVENT: i32 = 1;
/// `OBJ_CASE_INSENSITIVE`.
pub const OBJ_CASE_INSENSITIVE: u32 = 0x40;
/// `OBJ_KERNEL_HANDLE`: the handle lives in the system process's table, unreachable from user mode.
pub const OBJ_KERNEL_HANDLE: u32 = 0x200;
/// `KEY_READ`.
pub const KEY_READ: u32 = 0x2_0019;
/// `KeyValuePartialInformation` (`KEY_VALUE_INFORMATION_CLASS`).
pub const KEY_VALUE_PARTIAL_INFORMATION_CLASS: i32 = 2;
/// `REG_DWORD`.
pub const REG_DWORD: u32 = 4;
/// `STATUS_OBJECT_NAME_NOT_FOUND`: a registry key or value does not exist.
pub const STATUS_OBJECT_NAME_NOT_FOUND: NTSTATUS = 0xC000_0034u32 as i32;
/// `STATUS_BUFFER_OVERFLOW`: partial data returned (the fixed part of a registry query is valid).
pub const STATUS_BUFFER_OVERFLOW: NTSTATUS = 0x8000_0005u32 as i32;
/// `STATUS_TIMEOUT` from a wait.
pub const STATUS_TIMEOUT: NTSTATUS = 0x102;
/// `SECURITY_DESCRIPTOR_REVISION`.
pub const SECURITY_DESCRIPTOR_REVISION: u32 = 1;
/// `ACL_REVISION`.
pub const ACL_REVISION: u32 = 2;
/// `FILE_ALL_ACCESS`: what `GENERIC_ALL` maps to for file and device objects.
pub const FILE_ALL_ACCESS: u32 = 0x001F_01FF;
/// `WRITE_DAC`.
pub const WRITE_DAC: u32 = 0x0004_0000;
/// `DACL_SECURITY_INFORMATION`.
pub const DACL_SECURITY_INFORMATION: u32 = 0x4;
/// `PROTECTED_DACL_SECURITY_INFORMATION`: sets SE_DACL_PROTECTED (the `P` of `D:P(...)`).
pub const PROTECTED_DACL_SECURITY_INFORMATION: u32 = 0x8000_0000;
/// `THREAD_ALL_ACCESS`.
pub const THREAD_ALL_ACCESS: u32 = 0x001F_FFFF;
/// `IO_NO_INCREMENT`.
pub const IO_NO_INCREMENT: i8 = 0;
/// `DPFLTR_IHVDRIVER_ID`: the DbgPrintEx component for third-party drivers.
pub const DPFLTR_IHVDRIVER_ID: u32 = 77;
/// `DPFLTR_ERROR_LEVEL`.
pub const DPFLTR_ERROR_LEVEL: u32 = 0;
/// `DPFLTR_WARNING_LEVEL`.
pub const DPFLTR_WARNING_LEVEL: u32 = 1;
/// `DPFLTR_INFO_LEVEL`.
pub const DPFLTR_INFO_LEVEL: u32 = 3;
/// `MANUALLY_INITIATED_CRASH` (bugcodes.h): the bug check of kepoch-nt's debug check of a wait for
/// a grace period inside an epoch (`platform::guards`).
pub const MANUALLY_INITIATED_CRASH: u32 = 0xE2;
/// Bug check code of a Rust panic in kepoch.sys ("RPNC", the value wdk-panic uses too).
pub const BUGCHECK_RUST_PANIC: u32 = 0x5250_4E43;

/// What [`device_io_control`] reads from an `IRP_MJ_DEVICE_CONTROL` IRP.
#[derive(Clone, Copy, Debug)]
pub struct DeviceIoControl {
    /// `IoControlCode`.
    pub code: u32,
    /// `InputBufferLength`.
    pub input_length: u32,
    /// `OutputBufferLength`.
    pub output_length: u32,
    /// `SystemBuffer` (METHOD_BUFFERED: `max(input, output)` bytes, input first); may be null when both
    /// lengths are 0.
    pub buffer: *mut u8,
}

// ---- routines resolved at run time (never imported) ----

/// `KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT` (wdm.h, NTDDI >= WIN7).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
    /// `KE_PROCESSOR_CHANGE_NOTIFY_STATE`: 0 AddStart, 1 AddComplete, 2 AddFailure.
    pub State: u32,
    /// System-wide index of the processor.
    pub NtNumber: u32,
    /// Failure status (AddFailure only).
    pub Status: NTSTATUS,
    /// Group and group-relative number.
    pub ProcNumber: PROCESSOR_NUMBER,
}
assert_eq_size!(KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, [u8; 16]);
assert_eq_align!(KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, u32);
const_assert_eq!(
    core::mem::offset_of!(KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, Status),
    8
);
const_assert_eq!(
    core::mem::offset_of!(KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, ProcNumber),
    12
);

/// `PROCESSOR_CALLBACK_FUNCTION`.
pub type ProcessorCallbackFn = unsafe extern "system" fn(
    context: *mut c_void,
    change: *mut KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    operation_status: *mut NTSTATUS,
);
/// `KeRegisterProcessorChangeCallback`.
pub type KeRegisterProcessorChangeCallbackFn = unsafe extern "system" fn(
    callback: ProcessorCallbackFn,
    context: *mut c_void,
    flags: u32,
) -> *mut c_void;
/// `KeDeregisterProcessorChangeCallback`.
pub type KeDeregisterProcessorChangeCallbackFn = unsafe extern "system" fn(handle: *mut c_void);
/// `ExAllocatePool2` (Windows 10 2004+).
pub type ExAllocatePool2Fn =
    unsafe extern "system" fn(flags: u64, bytes: usize, tag: u32) -> *mut c_void;
/// `KeGetProcessorNumberFromIndex`.
pub type KeGetProcessorNumberFromIndexFn =
    unsafe extern "system" fn(index: u32, number: *mut PROCESSOR_NUMBER) -> NTSTATUS;

// ---- layouts shared by both backends (the backend modules pin their own structs) ----

assert_eq_size!(PROCESSOR_NUMBER, [u8; 4]);
assert_eq_align!(PROCESSOR_NUMBER, u16);
assert_eq_size!(UNICODE_STRING, [u8; 16]);
assert_eq_size!(KDPC, [u8; 0x40]);
assert_eq_size!(KTIMER, [u8; 0x40]);
assert_eq_size!(KEVENT, [u8; 0x18]);
assert_eq_size!(DRIVER_OBJECT, [u8; 0x150]);
// The WDK's DEVICE_OBJECT is DECLSPEC_ALIGN(16) (0x150 bytes); windows-sys and mingw-w64 omit the
// alignment (0x148). The driver never allocates or embeds one, so only the field offsets matter.
assert_eq_size!(IRP, [u8; 0xD0]);
assert_eq_size!(OBJECT_ATTRIBUTES, [u8; 0x30]);
assert_eq_size!(IO_STACK_LOCATION, [u8; 0x48]);
assert_eq_size!(SECURITY_DESCRIPTOR, [u8; 0x28]);

const_assert_eq!(core::mem::offset_of!(UNICODE_STRING, Buffer), 8);
const_assert_eq!(core::mem::offset_of!(DRIVER_OBJECT, DeviceObject), 0x08);
const_assert_eq!(core::mem::offset_of!(DRIVER_OBJECT, DriverUnload), 0x68);
const_assert_eq!(core::mem::offset_of!(DRIVER_OBJECT, MajorFunction), 0x70);
const_assert_eq!(core::mem::offset_of!(DEVICE_OBJECT, Flags), 0x30);
const_assert_eq!(core::mem::offset_of!(DEVICE_OBJECT, DeviceExtension), 0x40);
const_assert_eq!(core::mem::offset_of!(IRP, IoStatus), 0x30);

const_assert_eq!(core::mem::offset_of!(OBJECT_ATTRIBUTES, ObjectName), 0x10);
const_assert_eq!(core::mem::offset_of!(OBJECT_ATTRIBUTES, Attributes), 0x18);
