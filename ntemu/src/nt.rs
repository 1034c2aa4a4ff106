//! The emulated kernel's view of the NT ABI: Microsoft's `windows-sys` structures and types, the
//! constants of the WDK headers the emulation interprets, and the few declarations windows-sys gets
//! wrong for a driver (callback types without their parameters, `IO_STACK_LOCATION`'s x64 offsets).
//! A driver built for the emulation declares the same layouts on its side; the layouts are pinned
//! here at compile time, and drivers' own ABI tests compare theirs with the WDK's.
#![allow(non_camel_case_types, non_snake_case, clippy::upper_case_acronyms)]

use core::ffi::c_void;

use static_assertions::const_assert_eq;

pub use windows_sys::Wdk::Foundation::{
    DEVICE_OBJECT, DRIVER_OBJECT, IRP, KDPC, KEVENT, OBJECT_ATTRIBUTES, PIO_WORKITEM,
    PKDEFERRED_ROUTINE,
};
pub use windows_sys::Wdk::System::Registry::KEY_VALUE_INFORMATION_CLASS;
pub use windows_sys::Wdk::System::SystemServices::{
    KEY_VALUE_PARTIAL_INFORMATION, KTIMER, PIO_WORKITEM_ROUTINE, PIO_WORKITEM_ROUTINE_EX,
    PKSTART_ROUTINE,
};
pub use windows_sys::Win32::Foundation::{HANDLE, NTSTATUS, UNICODE_STRING};
pub use windows_sys::Win32::Security::{ACL, PSECURITY_DESCRIPTOR, PSID, SECURITY_DESCRIPTOR};
pub use windows_sys::Win32::System::Kernel::PROCESSOR_NUMBER;
pub use windows_sys::Win32::System::WindowsProgramming::CLIENT_ID;

#[cfg(test)]
pub(crate) use crate::routines::*;

/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u8 = 2;
/// `ALL_PROCESSOR_GROUPS`.
pub const ALL_PROCESSOR_GROUPS: u16 = 0xFFFF;
/// `KE_PROCESSOR_CHANGE_ADD_EXISTING`: replay AddStart/AddComplete for running processors.
pub const KE_PROCESSOR_CHANGE_ADD_EXISTING: u32 = 1;
/// `POOL_FLAG_UNINITIALIZED` (ExAllocatePool2).
pub const POOL_FLAG_UNINITIALIZED: u64 = 0x2;
/// `POOL_FLAG_NON_PAGED` (ExAllocatePool2).
pub const POOL_FLAG_NON_PAGED: u64 = 0x40;
/// `NonPagedPoolNx` (`POOL_TYPE`).
pub const NON_PAGED_POOL_NX: i32 = 512;
/// `NotificationEvent` (`EVENT_TYPE`).
pub const NOTIFICATION_EVENT: i32 = 0;
/// `SynchronizationEvent` (`EVENT_TYPE`).
pub const SYNCHRONIZATION_EVENT: i32 = 1;
/// `NotificationTimer` (`TIMER_TYPE`).
pub const NOTIFICATION_TIMER: i32 = 0;
/// `IRP_MJ_CREATE`.
pub const IRP_MJ_CREATE: usize = 0;
/// `IRP_MJ_CLOSE`.
pub const IRP_MJ_CLOSE: usize = 2;
/// `IRP_MJ_DEVICE_CONTROL`.
pub const IRP_MJ_DEVICE_CONTROL: usize = 14;
/// `OBJ_KERNEL_HANDLE`.
pub const OBJ_KERNEL_HANDLE: u32 = 0x200;
/// `KEY_READ`.
#[cfg(test)]
pub const KEY_READ: u32 = 0x2_0019;
/// `KeyValuePartialInformation` (`KEY_VALUE_INFORMATION_CLASS`).
pub const KEY_VALUE_PARTIAL_INFORMATION_CLASS: i32 = 2;
/// `REG_DWORD`.
pub const REG_DWORD: u32 = 4;
/// `STATUS_OBJECT_NAME_NOT_FOUND`.
pub const STATUS_OBJECT_NAME_NOT_FOUND: NTSTATUS = 0xC000_0034u32 as i32;
/// `STATUS_BUFFER_OVERFLOW`: partial data returned.
pub const STATUS_BUFFER_OVERFLOW: NTSTATUS = 0x8000_0005u32 as i32;
/// `STATUS_TIMEOUT` from a wait.
pub const STATUS_TIMEOUT: NTSTATUS = 0x102;
/// `STATUS_INVALID_DEVICE_REQUEST`: what the I/O manager completes an IRP with when the driver has
/// no dispatch routine for its major function.
pub const STATUS_INVALID_DEVICE_REQUEST: NTSTATUS = 0xC000_0010u32 as i32;
/// `SECURITY_DESCRIPTOR_REVISION`.
pub const SECURITY_DESCRIPTOR_REVISION: u32 = 1;
/// `ACL_REVISION`.
pub const ACL_REVISION: u32 = 2;
/// `PROTECTED_DACL_SECURITY_INFORMATION`.
pub const PROTECTED_DACL_SECURITY_INFORMATION: u32 = 0x8000_0000;
/// `DPFLTR_ERROR_LEVEL`.
pub const DPFLTR_ERROR_LEVEL: u32 = 0;

/// `KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT` (wdm.h).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
    /// 0 AddStart, 1 AddComplete, 2 AddFailure.
    pub State: u32,
    /// System-wide index of the processor.
    pub NtNumber: u32,
    /// Failure status (AddFailure only).
    pub Status: NTSTATUS,
    /// Group and group-relative number.
    pub ProcNumber: PROCESSOR_NUMBER,
}
const_assert_eq!(
    core::mem::size_of::<KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT>(),
    16
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

/// `IO_STACK_LOCATION` with the `Parameters.DeviceIoControl` view (x64 offsets; windows-sys's
/// misses the `POINTER_ALIGNMENT` of two fields).
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
    /// `Parameters.DeviceIoControl.InputBufferLength`.
    pub InputBufferLength: u32,
    _pad2: u32,
    /// `Parameters.DeviceIoControl.IoControlCode`.
    pub IoControlCode: u32,
    _pad3: u32,
    /// `Parameters.DeviceIoControl.Type3InputBuffer`.
    pub Type3InputBuffer: *mut c_void,
    _tail: [u8; 0x48 - 0x28],
}
const_assert_eq!(core::mem::size_of::<IO_STACK_LOCATION>(), 0x48);
const_assert_eq!(
    core::mem::offset_of!(IO_STACK_LOCATION, InputBufferLength),
    0x10
);
const_assert_eq!(
    core::mem::offset_of!(IO_STACK_LOCATION, IoControlCode),
    0x18
);

/// `KDEFERRED_ROUTINE` (wdm.h): a DPC's routine with its parameters.
pub type KDEFERRED_ROUTINE = unsafe extern "system" fn(
    dpc: *mut KDPC,
    context: *mut c_void,
    argument1: *mut c_void,
    argument2: *mut c_void,
);
/// `IO_WORKITEM_ROUTINE` (wdm.h): what `IoQueueWorkItem` calls.
pub type IO_WORKITEM_ROUTINE =
    unsafe extern "system" fn(device: *mut DEVICE_OBJECT, context: *mut c_void);
/// `IO_WORKITEM_ROUTINE_EX` (wdm.h): what `IoQueueWorkItemEx` calls, with the item's object (a
/// driver or device object) and the item.
pub type IO_WORKITEM_ROUTINE_EX =
    unsafe extern "system" fn(object: *mut c_void, context: *mut c_void, item: PIO_WORKITEM);
/// `KSTART_ROUTINE` (wdm.h).
pub type KSTART_ROUTINE = unsafe extern "system" fn(context: *mut c_void);

/// `THREAD_ALL_ACCESS`.
#[cfg(test)]
pub const THREAD_ALL_ACCESS: u32 = 0x001F_FFFF;
/// `KernelMode` (`KPROCESSOR_MODE`).
#[cfg(test)]
pub const KERNEL_MODE: i8 = 0;
/// `Executive` (`KWAIT_REASON`).
#[cfg(test)]
pub const EXECUTIVE: i32 = 0;

/// `routine` as windows-sys's parameterless `PKSTART_ROUTINE` (tests create threads with it).
#[cfg(test)]
pub fn start_routine(routine: KSTART_ROUTINE) -> PKSTART_ROUTINE {
    // SAFETY: as in `deferred_routine`; called with KSTART_ROUTINE's parameter.
    Some(unsafe { core::mem::transmute::<KSTART_ROUTINE, unsafe extern "system" fn()>(routine) })
}

/// `routine` as windows-sys's parameterless `PKDEFERRED_ROUTINE` (tests queue DPCs with it).
#[cfg(test)]
pub fn deferred_routine(routine: KDEFERRED_ROUTINE) -> PKDEFERRED_ROUTINE {
    // SAFETY: both are function pointers of the same size; the emulation converts it back before
    // calling it with KDEFERRED_ROUTINE's parameters.
    Some(unsafe { core::mem::transmute::<KDEFERRED_ROUTINE, unsafe extern "system" fn()>(routine) })
}
