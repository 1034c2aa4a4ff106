//! The structure layouts, constants and IOCTL codes the driver defines, as C `_Static_assert`s against
//! the DDK headers' own definitions: each line pairs a value computed from the Rust side with the C
//! expression that must equal it.

use core::mem::{align_of, offset_of, size_of};

use kepoch::platform::ProcessorChange;
use kepoch_driver::ioctl::{self, status};
use kepoch_driver::support::WellKnownSid;
use kepoch_nt::sys::{self as nt, irql};

/// One assertion: the C expression, the value the Rust side has, and what it is.
pub struct Check {
    /// C expression (compared as `long long`).
    pub c: String,
    /// The Rust side's value.
    pub rust: i128,
    /// Shown when the assertion fails.
    pub what: String,
}

/// `size`, `align` and field offsets of a Rust struct against a C type. Fields are
/// `RustField => "C.member.path"`.
macro_rules! layout {
    ($out:ident, $rust:ty, $c:literal, [$($($field:ident).+ => $member:literal),* $(,)?]) => {{
        $out.push(Check {
            c: padded_size($c),
            rust: padded_rust_size($c, size_of::<$rust>()) as i128,
            what: format!("size of {} (Rust {})", $c, stringify!($rust)),
        });
        $out.push(Check {
            c: format!("_Alignof({})", $c),
            rust: align_of::<$rust>() as i128,
            what: format!("alignment of {} (Rust {})", $c, stringify!($rust)),
        });
        $($out.push(Check {
            c: format!("offsetof({}, {})", $c, $member),
            rust: offset_of!($rust, $($field).+) as i128,
            what: format!("offset of {}.{} (Rust {}::{})", $c, $member, stringify!($rust), stringify!($($field).+)),
        });)*
    }};
}

/// Types mingw-w64 and windows-sys declare with a smaller alignment than the WDK: (C type, WDK
/// alignment, why). Their size is compared rounded up to the WDK's alignment on both sides.
pub const PADDED: &[(&str, usize, &str)] = &[(
    "DEVICE_OBJECT",
    16,
    "the WDK declares _DEVICE_OBJECT DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT): 328 bytes of fields \
     padded to 0x150; mingw-w64 and windows-sys omit the alignment (328 bytes, 8-aligned); the driver \
     never allocates or embeds one",
)];

/// The Rust size, rounded up like [`padded_size`] rounds the C one.
fn padded_rust_size(c: &str, size: usize) -> usize {
    match PADDED.iter().find(|(name, _, _)| *name == c) {
        Some((_, align, _)) => size.div_ceil(*align) * align,
        None => size,
    }
}

/// `sizeof(c)`, rounded up to the WDK's alignment for the [`PADDED`] types.
fn padded_size(c: &str) -> String {
    match PADDED.iter().find(|(name, _, _)| *name == c) {
        Some((_, align, _)) => format!("((sizeof({c}) + {align} - 1) / {align} * {align})"),
        None => format!("sizeof({c})"),
    }
}

/// The WDK alignment a pointee's size is rounded to (1 unless listed in [`PADDED`]).
pub fn pointee_rounding(rust_name: &str) -> usize {
    PADDED
        .iter()
        .find(|(name, _, _)| *name == rust_name)
        .map_or(1, |(_, align, _)| *align)
}

/// Constants: `rust_value => "C expression"`.
macro_rules! constants {
    ($out:ident, [$($rust:expr => $c:literal),* $(,)?]) => {{
        $($out.push(Check {
            c: $c.to_string(),
            rust: ($rust) as i128,
            what: format!("{} (Rust {})", $c, stringify!($rust)),
        });)*
    }};
}

/// Every layout the driver relies on.
pub fn layouts() -> Vec<Check> {
    let mut out = Vec::new();
    layout!(out, nt::PROCESSOR_NUMBER, "PROCESSOR_NUMBER", [Group => "Group", Number => "Number", Reserved => "Reserved"]);
    layout!(out, nt::UNICODE_STRING, "UNICODE_STRING", [Length => "Length", MaximumLength => "MaximumLength", Buffer => "Buffer"]);
    // windows-sys passes LARGE_INTEGER as i64.
    out.push(Check {
        c: "sizeof(LARGE_INTEGER)".into(),
        rust: size_of::<i64>() as i128,
        what: "size of LARGE_INTEGER (Rust i64)".into(),
    });
    // Storage the driver embeds and only the Ke* routines touch: size and alignment matter.
    layout!(out, nt::KDPC, "KDPC", [DeferredRoutine => "DeferredRoutine", DeferredContext => "DeferredContext"]);
    layout!(out, nt::KTIMER, "KTIMER", []);
    layout!(out, nt::KEVENT, "KEVENT", [Header => "Header"]);
    layout!(out, nt::SECURITY_DESCRIPTOR, "SECURITY_DESCRIPTOR", [
        Revision => "Revision",
        Control => "Control",
        Owner => "Owner",
        Group => "Group",
        Sacl => "Sacl",
        Dacl => "Dacl",
    ]);
    layout!(out, nt::ACL, "ACL", [AclRevision => "AclRevision", AclSize => "AclSize", AceCount => "AceCount"]);
    layout!(out, nt::IO_STATUS_BLOCK, "IO_STATUS_BLOCK", [Anonymous.Status => "Status", Information => "Information"]);
    layout!(out, nt::IRP, "IRP", [
        AssociatedIrp.SystemBuffer => "AssociatedIrp.SystemBuffer",
        IoStatus => "IoStatus",
        Tail.Overlay.Anonymous2.Anonymous.CurrentStackLocation => "Tail.Overlay.CurrentStackLocation",
    ]);
    layout!(out, nt::IO_STACK_LOCATION, "IO_STACK_LOCATION", [
        MajorFunction => "MajorFunction",
        MinorFunction => "MinorFunction",
        Flags => "Flags",
        Control => "Control",
        OutputBufferLength => "Parameters.DeviceIoControl.OutputBufferLength",
        InputBufferLength => "Parameters.DeviceIoControl.InputBufferLength",
        IoControlCode => "Parameters.DeviceIoControl.IoControlCode",
        Type3InputBuffer => "Parameters.DeviceIoControl.Type3InputBuffer",
    ]);
    layout!(out, nt::CLIENT_ID, "CLIENT_ID", [UniqueProcess => "UniqueProcess", UniqueThread => "UniqueThread"]);
    layout!(out, nt::DEVICE_OBJECT, "DEVICE_OBJECT", [
        NextDevice => "NextDevice",
        Flags => "Flags",
        Characteristics => "Characteristics",
        DeviceExtension => "DeviceExtension",
    ]);
    layout!(out, nt::DRIVER_OBJECT, "DRIVER_OBJECT", [
        DeviceObject => "DeviceObject",
        DriverUnload => "DriverUnload",
        MajorFunction => "MajorFunction",
    ]);
    out.push(Check {
        c: "sizeof(((DRIVER_OBJECT *)0)->MajorFunction) / sizeof(PDRIVER_DISPATCH)".into(),
        rust: 28,
        what: "entries of DRIVER_OBJECT.MajorFunction (IRP_MJ_MAXIMUM_FUNCTION + 1, Rust [_; 28])"
            .into(),
    });
    layout!(out, nt::OBJECT_ATTRIBUTES, "OBJECT_ATTRIBUTES", [
        Length => "Length",
        RootDirectory => "RootDirectory",
        ObjectName => "ObjectName",
        Attributes => "Attributes",
        SecurityDescriptor => "SecurityDescriptor",
        SecurityQualityOfService => "SecurityQualityOfService",
    ]);
    layout!(out, nt::KEY_VALUE_PARTIAL_INFORMATION, "KEY_VALUE_PARTIAL_INFORMATION", [
        TitleIndex => "TitleIndex",
        Type => "Type",
        DataLength => "DataLength",
        Data => "Data",
    ]);
    layout!(out, nt::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, "KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT", [
        State => "State",
        NtNumber => "NtNumber",
        Status => "Status",
        ProcNumber => "ProcNumber",
    ]);
    // support::WellKnownSid is a SID with room for two sub-authorities; support::dacl_size counts an
    // 8-byte ACL header and ACEs whose SID starts at +8.
    out.push(Check {
        c: "offsetof(SID, SubAuthority)".into(),
        rust: 8,
        what: "SID.SubAuthority (WellKnownSid)".into(),
    });
    out.push(Check {
        c: "sizeof(SID) + sizeof(ULONG)".into(),
        rust: size_of::<WellKnownSid>() as i128,
        what: "SID with two sub-authorities (WellKnownSid)".into(),
    });
    out.push(Check {
        c: "sizeof(ACL)".into(),
        rust: 8,
        what: "ACL header (support::dacl_size)".into(),
    });
    out.push(Check {
        c: "offsetof(ACCESS_ALLOWED_ACE, SidStart)".into(),
        rust: 8,
        what: "ACCESS_ALLOWED_ACE.SidStart (support::dacl_size)".into(),
    });
    out
}

/// Every constant and IOCTL code the driver defines.
pub fn constants() -> Vec<Check> {
    let mut out = Vec::new();
    constants!(out, [
        nt::STATUS_SUCCESS => "STATUS_SUCCESS",
        nt::ALL_PROCESSOR_GROUPS => "ALL_PROCESSOR_GROUPS",
        nt::KE_PROCESSOR_CHANGE_ADD_EXISTING => "KE_PROCESSOR_CHANGE_ADD_EXISTING",
        nt::NON_PAGED_POOL_NX => "NonPagedPoolNx",
        nt::NOTIFICATION_EVENT => "NotificationEvent",
        nt::SYNCHRONIZATION_EVENT => "SynchronizationEvent",
        nt::NOTIFICATION_TIMER => "NotificationTimer",
        nt::EXECUTIVE => "Executive",
        nt::KERNEL_MODE => "KernelMode",
        nt::DELAYED_WORK_QUEUE => "DelayedWorkQueue",
        nt::FILE_DEVICE_UNKNOWN => "FILE_DEVICE_UNKNOWN",
        nt::FILE_DEVICE_SECURE_OPEN => "FILE_DEVICE_SECURE_OPEN",
        nt::IRP_MJ_CREATE => "IRP_MJ_CREATE",
        nt::IRP_MJ_CLOSE => "IRP_MJ_CLOSE",
        nt::IRP_MJ_DEVICE_CONTROL => "IRP_MJ_DEVICE_CONTROL",
        nt::OBJ_CASE_INSENSITIVE => "OBJ_CASE_INSENSITIVE",
        nt::OBJ_KERNEL_HANDLE => "OBJ_KERNEL_HANDLE",
        nt::KEY_READ => "KEY_READ",
        nt::KEY_VALUE_PARTIAL_INFORMATION_CLASS => "KeyValuePartialInformation",
        nt::REG_DWORD => "REG_DWORD",
        nt::REG_DWORD => "REG_DWORD",
        nt::STATUS_OBJECT_NAME_NOT_FOUND => "STATUS_OBJECT_NAME_NOT_FOUND",
        nt::STATUS_BUFFER_OVERFLOW => "STATUS_BUFFER_OVERFLOW",
        nt::STATUS_TIMEOUT => "STATUS_TIMEOUT",
        nt::SECURITY_DESCRIPTOR_REVISION => "SECURITY_DESCRIPTOR_REVISION",
        nt::ACL_REVISION => "ACL_REVISION",
        nt::FILE_ALL_ACCESS => "FILE_ALL_ACCESS",
        nt::WRITE_DAC => "WRITE_DAC",
        nt::DACL_SECURITY_INFORMATION => "DACL_SECURITY_INFORMATION",
        nt::PROTECTED_DACL_SECURITY_INFORMATION => "PROTECTED_DACL_SECURITY_INFORMATION",
        nt::THREAD_ALL_ACCESS => "THREAD_ALL_ACCESS",
        nt::IO_NO_INCREMENT => "IO_NO_INCREMENT",
        nt::DPFLTR_IHVDRIVER_ID => "DPFLTR_IHVDRIVER_ID",
        nt::DPFLTR_ERROR_LEVEL => "DPFLTR_ERROR_LEVEL",
        nt::DPFLTR_WARNING_LEVEL => "DPFLTR_WARNING_LEVEL",
        nt::DPFLTR_INFO_LEVEL => "DPFLTR_INFO_LEVEL",
        nt::MANUALLY_INITIATED_CRASH => "MANUALLY_INITIATED_CRASH",
        irql::PASSIVE_LEVEL => "PASSIVE_LEVEL",
        irql::DISPATCH_LEVEL => "DISPATCH_LEVEL",
        kepoch_nt::pool::POOL_ALIGNMENT => "MEMORY_ALLOCATION_ALIGNMENT",
        ioctl::FILE_DEVICE_UNKNOWN => "FILE_DEVICE_UNKNOWN",
        ioctl::METHOD_BUFFERED => "METHOD_BUFFERED",
        ioctl::FILE_READ_ACCESS => "FILE_READ_ACCESS",
        ioctl::FILE_WRITE_ACCESS => "FILE_WRITE_ACCESS",
        ioctl::IOCTL_GET_STATS => "CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS)",
        ioctl::IOCTL_RESET_STATS => "CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_BUFFERED, FILE_WRITE_ACCESS)",
        ioctl::IOCTL_LOAD_START => "CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_BUFFERED, FILE_WRITE_ACCESS)",
        ioctl::IOCTL_LOAD_STOP => "CTL_CODE(FILE_DEVICE_UNKNOWN, 0x803, METHOD_BUFFERED, FILE_WRITE_ACCESS)",
        ioctl::IOCTL_SYNC => "CTL_CODE(FILE_DEVICE_UNKNOWN, 0x804, METHOD_BUFFERED, FILE_WRITE_ACCESS)",
        status::SUCCESS => "STATUS_SUCCESS",
        status::BUFFER_OVERFLOW => "STATUS_BUFFER_OVERFLOW",
        status::INFO_LENGTH_MISMATCH => "STATUS_INFO_LENGTH_MISMATCH",
        status::INVALID_PARAMETER => "STATUS_INVALID_PARAMETER",
        status::INVALID_DEVICE_REQUEST => "STATUS_INVALID_DEVICE_REQUEST",
        status::BUFFER_TOO_SMALL => "STATUS_BUFFER_TOO_SMALL",
        status::DEVICE_BUSY => "STATUS_DEVICE_BUSY",
        kepoch::platform::Status::INVALID_PARAMETER.0 => "STATUS_INVALID_PARAMETER",
        kepoch::platform::Status::INSUFFICIENT_RESOURCES.0 => "STATUS_INSUFFICIENT_RESOURCES",
        kepoch::platform::Status::NOT_SUPPORTED.0 => "STATUS_NOT_SUPPORTED",
    ]);
    // The notification states kepoch_nt::platform::processor_change_from_nt decodes.
    for (c, wanted) in [
        ("KeProcessorAddStartNotify", ProcessorChange::AddStart),
        ("KeProcessorAddCompleteNotify", ProcessorChange::AddComplete),
        (
            "KeProcessorAddFailureNotify",
            ProcessorChange::AddFailure(kepoch::platform::Status(7)),
        ),
    ] {
        let value = (0..16)
            .find(|&state| kepoch_nt::platform::processor_change_from_nt(state, 7) == Some(wanted))
            .expect("a state value for every notification");
        out.push(Check {
            c: c.into(),
            rust: i128::from(value),
            what: format!("{c} (kepoch_nt::platform::processor_change_from_nt)"),
        });
    }
    // The I/O manager copies back output only for success and warning statuses: the error statuses the
    // decoder answers with must be errors (severity 3), the overflow a warning (severity 2).
    for (name, value) in [
        ("STATUS_BUFFER_OVERFLOW", status::BUFFER_OVERFLOW),
        ("STATUS_DEVICE_BUSY", status::DEVICE_BUSY),
    ] {
        out.push(Check {
            c: format!("NT_WARNING({name})"),
            rust: i128::from(value as u32 >> 30 == 2),
            what: format!("{name} is a warning"),
        });
    }
    out
}

/// What mingw-w64 does not define, pinned to Microsoft's documented values (DDI pages
/// `nf-wdm-exallocatepool2` and "POOL_FLAGS"): ExAllocatePool2 (Windows 10 2004) postdates the headers.
/// Each entry is also checked to be still absent, so that it moves to [`constants`] once mingw has it.
pub const PINNED: &[(&str, u64, &str)] = &[
    (
        "POOL_FLAG_NON_PAGED",
        nt::POOL_FLAG_NON_PAGED,
        "0x40: DDI POOL_FLAGS (wdm.h of WDK 10.0.19041)",
    ),
    (
        "POOL_FLAG_UNINITIALIZED",
        nt::POOL_FLAG_UNINITIALIZED,
        "0x2: DDI POOL_FLAGS (wdm.h of WDK 10.0.19041)",
    ),
];

/// The values [`PINNED`] must have (Microsoft's documentation).
pub fn pinned_values_are_documented() {
    assert_eq!(nt::POOL_FLAG_NON_PAGED, 0x40);
    assert_eq!(nt::POOL_FLAG_UNINITIALIZED, 0x2);
}

/// What windows-sys gets wrong, so that the driver declares it itself (`nt/src/sys/raw.rs`): C expressions
/// that must *differ* from windows-sys's value. Once windows-sys is fixed the assertion fails and the
/// hand-written declaration can go.
pub fn windows_sys_differences() -> Vec<Check> {
    use windows_sys::Wdk::Foundation::IO_STACK_LOCATION;
    let mut out = Vec::new();
    for (c, rust, field) in [
        (
            "offsetof(IO_STACK_LOCATION, Parameters.DeviceIoControl.InputBufferLength)",
            offset_of!(
                IO_STACK_LOCATION,
                Parameters.DeviceIoControl.InputBufferLength
            ),
            "InputBufferLength",
        ),
        (
            "offsetof(IO_STACK_LOCATION, Parameters.DeviceIoControl.IoControlCode)",
            offset_of!(IO_STACK_LOCATION, Parameters.DeviceIoControl.IoControlCode),
            "IoControlCode",
        ),
    ] {
        out.push(Check {
            c: c.into(),
            rust: rust as i128,
            what: format!(
                "windows-sys's IO_STACK_LOCATION.Parameters.DeviceIoControl.{field} matches the DDK now: \
                 use windows-sys's IO_STACK_LOCATION instead of nt/src/sys/raw.rs' own"
            ),
        });
    }
    out
}
