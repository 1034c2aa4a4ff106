//! A deliberately broken driver whose IOCTL handler reports more output bytes than it wrote: the
//! emulated I/O manager hands it a poisoned (not zeroed) system buffer and fails the request whose
//! `IoStatus.Information` covers bytes the driver never wrote. The same driver reporting exactly what
//! it wrote passes.

use core::sync::atomic::{AtomicU64, Ordering};

use kepoch_nt::sys::{self as nt, DEVICE_OBJECT, DRIVER_OBJECT, IRP, NTSTATUS, UNICODE_STRING};
use kepoch_ntemu::{Machine, MachineConfig};

/// Bytes the handler writes at the start of the output buffer.
const WRITTEN: usize = 8;
/// What the handler reports in `IoStatus.Information`.
static REPORTED: AtomicU64 = AtomicU64::new(WRITTEN as u64);
/// Any METHOD_BUFFERED code: the handler answers every IOCTL the same way.
const CODE: u32 = kepoch_driver::ioctl::IOCTL_GET_STATS;

/// `\Device\overreport`, UTF-16.
fn device_name() -> Vec<u16> {
    "\\Device\\overreport".encode_utf16().collect()
}

unsafe fn overreporting_driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *mut UNICODE_STRING,
) -> NTSTATUS {
    let mut name = device_name();
    let bytes = (name.len() * 2) as u16;
    let unicode = UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: name.as_mut_ptr(),
    };
    let mut device: *mut DEVICE_OBJECT = core::ptr::null_mut();
    // SAFETY: the I/O manager's driver object, a valid name and output pointer; PASSIVE (DriverEntry).
    unsafe {
        let status = nt::IoCreateDevice(
            driver,
            0,
            &unicode,
            nt::FILE_DEVICE_UNKNOWN,
            0,
            false,
            &mut device,
        );
        if status < 0 {
            return status;
        }
        (*driver).DriverUnload = Some(unload);
        (*driver).MajorFunction[nt::IRP_MJ_DEVICE_CONTROL] = Some(write_eight_bytes);
    }
    0
}

unsafe extern "system" fn unload(driver: *const DRIVER_OBJECT) {
    // SAFETY: the device DriverEntry created, deleted once at unload.
    unsafe { nt::IoDeleteDevice((*driver).DeviceObject) };
}

/// Writes `WRITTEN` bytes of output and completes with `REPORTED` as `Information`.
unsafe extern "system" fn write_eight_bytes(
    _device: *const DEVICE_OBJECT,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: an IRP_MJ_DEVICE_CONTROL IRP the I/O manager dispatched to us; the test sends an output
    // length of at least WRITTEN bytes, so the system buffer holds them; completed once.
    unsafe {
        let params = nt::device_io_control(irp);
        core::ptr::write_bytes(params.buffer, 0x11, WRITTEN);
        nt::complete_irp(irp, 0, REPORTED.load(Ordering::Relaxed));
    }
    0
}

#[test]
fn an_ioctl_reporting_more_output_than_it_wrote_is_caught() {
    let machine = Machine::start(MachineConfig::default());
    let driver = machine
        .load(overreporting_driver_entry)
        .expect("the broken driver loads");
    // Reports exactly what it wrote: passes, and the caller gets those bytes.
    REPORTED.store(WRITTEN as u64, Ordering::Relaxed);
    let honest = driver
        .try_ioctl(CODE, &[], 64)
        .expect("an honest report passes");
    assert_eq!(honest.output, vec![0x11; WRITTEN]);
    // Reports 64 bytes after writing 8: the 56 it never wrote would be pool contents at the caller.
    REPORTED.store(64, Ordering::Relaxed);
    let failures = driver
        .try_ioctl(CODE, &[], 64)
        .expect_err("an over-report must be caught");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("bytes [8..64] of the system buffer were never written")),
        "{failures:?}"
    );
    driver.unload();
    machine.finish();
}
