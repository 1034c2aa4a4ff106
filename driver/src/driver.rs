//! `DriverEntry` / `DriverUnload` and the control device.
//!
//! Seams for the work that needs the core's `Domain`: [`DeviceState`] (in the device extension) is where
//! the domain, the registry configuration and the statistics go; IRP_MJ_DEVICE_CONTROL is not handled yet
//! (the I/O manager answers STATUS_INVALID_DEVICE_REQUEST).

use core::ptr::{self, NonNull};

use kepoch::platform::{LogLevel, Platform};

use crate::nt;
use crate::platform::{log_line, NtPlatform};
use crate::wide;

const DEVICE_NAME: &[u16] = wide!("\\Device\\kepoch");
const LINK_NAME: &[u16] = wide!("\\DosDevices\\kepoch");

/// Everything the driver owns, stored in the device extension of `\Device\kepoch` (non-paged, lives until
/// `IoDeleteDevice` in unload).
pub struct DeviceState {
    platform: NtPlatform,
}

/// A `UNICODE_STRING` over a static UTF-16 name. The kernel routines it is passed to only read it.
fn unicode(name: &'static [u16]) -> nt::UNICODE_STRING {
    let bytes = (name.len() * 2) as u16;
    nt::UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: name.as_ptr().cast_mut(),
    }
}

/// The body of `DriverEntry`.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL with its driver object.
pub unsafe fn driver_entry(
    driver: *mut nt::DRIVER_OBJECT,
    _registry_path: *mut nt::UNICODE_STRING,
) -> nt::NTSTATUS {
    // SAFETY: the I/O manager passes a valid driver object that we may fill in during DriverEntry.
    unsafe {
        (*driver).DriverUnload = Some(driver_unload);
        (*driver).MajorFunction[nt::IRP_MJ_CREATE] = Some(create_close);
        (*driver).MajorFunction[nt::IRP_MJ_CLOSE] = Some(create_close);
    }

    let mut device_name = unicode(DEVICE_NAME);
    let mut device: *mut nt::DEVICE_OBJECT = ptr::null_mut();
    // SAFETY: valid driver object and name; the extension is sized for DeviceState.
    let status = unsafe {
        nt::IoCreateDevice(
            driver,
            core::mem::size_of::<DeviceState>() as u32,
            &mut device_name,
            nt::FILE_DEVICE_UNKNOWN,
            nt::FILE_DEVICE_SECURE_OPEN,
            0,
            &mut device,
        )
    };
    let Some(device) = NonNull::new(device).filter(|_| status >= 0) else {
        log_line(
            LogLevel::Error,
            format_args!(
                "IoCreateDevice(\\Device\\kepoch) failed: 0x{:08X}",
                status as u32
            ),
        );
        return status;
    };

    let mut link_name = unicode(LINK_NAME);
    // SAFETY: both strings are valid for the call.
    let status = unsafe { nt::IoCreateSymbolicLink(&mut link_name, &mut device_name) };
    if status < 0 {
        log_line(
            LogLevel::Error,
            format_args!(
                "IoCreateSymbolicLink(\\DosDevices\\kepoch) failed: 0x{:08X}",
                status as u32
            ),
        );
        // SAFETY: the device was created above and nothing references it yet.
        unsafe { nt::IoDeleteDevice(device.as_ptr()) };
        return status;
    }

    // SAFETY: the device extension is DeviceState-sized, suitably aligned (pool) and ours; the device is
    // deleted only in unload, after the state has been dropped.
    let state = unsafe {
        let state = (*device.as_ptr()).DeviceExtension.cast::<DeviceState>();
        state.write(DeviceState {
            platform: NtPlatform::new(device),
        });
        &*state
    };

    let platform = &state.platform;
    let routines = platform.routines();
    platform.log(
        LogLevel::Info,
        format_args!(
            "loaded: processors max={} active={}; KeRegisterProcessorChangeCallback {}; ExAllocatePool2 {}; KeGetProcessorNumberFromIndex {}",
            platform.max_processor_count(),
            platform.active_processor_count(),
            if routines.has_processor_change_callback() { "resolved" } else { "missing" },
            if routines.has_allocate_pool2() { "resolved" } else { "missing (ExAllocatePoolWithTag fallback)" },
            if routines.has_processor_number_from_index() { "resolved" } else { "missing" },
        ),
    );
    nt::STATUS_SUCCESS
}

unsafe extern "C" fn driver_unload(driver: *mut nt::DRIVER_OBJECT) {
    // SAFETY: called once by the I/O manager at PASSIVE_LEVEL after all handles to our device are
    // closed; DriverEntry succeeded, so DeviceObject is our device with an initialised DeviceState.
    unsafe {
        let device = (*driver).DeviceObject;
        let mut link_name = unicode(LINK_NAME);
        nt::IoDeleteSymbolicLink(&mut link_name);
        if !device.is_null() {
            let state = (*device).DeviceExtension.cast::<DeviceState>();
            ptr::drop_in_place(state);
            nt::IoDeleteDevice(device);
        }
    }
    log_line(LogLevel::Info, format_args!("unloaded"));
}

/// IRP_MJ_CREATE / IRP_MJ_CLOSE: opening and closing the control device always succeeds (access is
/// decided by the device's security descriptor before the IRP reaches us).
unsafe extern "C" fn create_close(
    _device: *mut nt::DEVICE_OBJECT,
    irp: *mut nt::IRP,
) -> nt::NTSTATUS {
    // SAFETY: the I/O manager dispatched this IRP to us; we complete it exactly once.
    unsafe { nt::complete_irp(irp, nt::STATUS_SUCCESS, 0) };
    nt::STATUS_SUCCESS
}

/// Logs the panic and stops the machine with bug check [`nt::BUGCHECK_RUST_PANIC`]: continuing after a
/// broken invariant in kernel memory reclamation would risk silent corruption.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line, column) = info
        .location()
        .map_or(("?", 0, 0), |l| (l.file(), l.line(), l.column()));
    log_line(
        LogLevel::Error,
        format_args!("panic at {file}:{line}:{column}: {}", info.message()),
    );
    // SAFETY: KeBugCheckEx never returns; the parameters are plain values shown in the crash dump.
    unsafe {
        nt::KeBugCheckEx(
            nt::BUGCHECK_RUST_PANIC,
            file.as_ptr() as u64,
            file.len() as u64,
            u64::from(line),
            u64::from(column),
        )
    }
}
