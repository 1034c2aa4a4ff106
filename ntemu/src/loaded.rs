//! The loaded driver as the I/O manager and user mode drive it: open/close, IOCTLs through the dispatch
//! routine, and `DriverUnload` followed by the checks of an unloaded image.

use std::string::String;
use std::sync::Mutex;
use std::vec;
use std::vec::Vec;

use super::io::{dispatch, IoctlResult, Request};
use super::machine::{Machine, Shared};
use crate::nt::{DRIVER_OBJECT, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, NTSTATUS};

/// The loaded driver, driven the way the I/O manager and user mode do.
pub struct Driver<'m> {
    machine: &'m Machine,
    object: *mut DRIVER_OBJECT,
    /// Handles open on the control device.
    open: Mutex<u32>,
}

impl<'m> Driver<'m> {
    /// The driver whose DriverEntry succeeded with `object`.
    pub(super) fn new(machine: &'m Machine, object: *mut DRIVER_OBJECT) -> Self {
        Driver {
            machine,
            object,
            open: Mutex::new(0),
        }
    }

    fn send(&self, what: &str, request: Request) -> IoctlResult {
        let kernel = self.machine.kernel.clone();
        let driver = Shared(self.object);
        self.machine.call(what, move || {
            let driver = driver;
            dispatch(&kernel, driver.0, &request)
        })
    }

    fn irp(major: usize, code: u32, input: &[u8], output_length: u32, buffer: bool) -> Request {
        Request {
            major,
            code,
            input: input.to_vec(),
            output_length,
            buffer,
        }
    }

    /// `CreateFile` on the driver's device: IRP_MJ_CREATE.
    pub fn open(&self) -> NTSTATUS {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.send("IRP_MJ_CREATE", Self::irp(IRP_MJ_CREATE, 0, &[], 0, false))
            .status
    }

    /// `CloseHandle`: IRP_MJ_CLOSE.
    pub fn close(&self) -> NTSTATUS {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.send("IRP_MJ_CLOSE", Self::irp(IRP_MJ_CLOSE, 0, &[], 0, false))
            .status
    }

    /// `DeviceIoControl(code, input, output_length)` through the driver's dispatch routine.
    pub fn ioctl(&self, code: u32, input: &[u8], output_length: u32) -> IoctlResult {
        let irp = Self::irp(IRP_MJ_DEVICE_CONTROL, code, input, output_length, true);
        self.send("IRP_MJ_DEVICE_CONTROL", irp)
    }

    /// Like [`Driver::ioctl`], but returns the failures the emulated kernel recorded (and clears them)
    /// instead of panicking: tests of the I/O manager's own checks.
    pub fn try_ioctl(
        &self,
        code: u32,
        input: &[u8],
        output_length: u32,
    ) -> Result<IoctlResult, Vec<String>> {
        let kernel = self.machine.kernel.clone();
        let driver = Shared(self.object);
        let request = Self::irp(IRP_MJ_DEVICE_CONTROL, code, input, output_length, true);
        self.machine.try_call("IRP_MJ_DEVICE_CONTROL", move || {
            let driver = driver;
            dispatch(&kernel, driver.0, &request)
        })
    }

    /// An IOCTL whose IRP has lengths but no `SystemBuffer` (what a METHOD_NEITHER or a forged request
    /// looks like to a METHOD_BUFFERED handler).
    pub fn ioctl_without_buffer(
        &self,
        code: u32,
        input_length: u32,
        output_length: u32,
    ) -> IoctlResult {
        let input = vec![0u8; input_length as usize];
        let irp = Self::irp(IRP_MJ_DEVICE_CONTROL, code, &input, output_length, false);
        self.send("IRP_MJ_DEVICE_CONTROL", irp)
    }

    /// `sc stop`: calls DriverUnload at PASSIVE, then unloads the image and checks that nothing of the
    /// driver is left running, queued or registered.
    pub fn unload(self) {
        assert_eq!(
            *self.open.lock().unwrap_or_else(|p| p.into_inner()),
            0,
            "unload with handles open"
        );
        let driver = Shared(self.object);
        self.machine.call_driver("DriverUnload", move || {
            let driver = driver;
            // SAFETY: DriverEntry succeeded and set DriverUnload; called once at PASSIVE with no handle
            // open, as the I/O manager does.
            unsafe {
                let unload = (*driver.0)
                    .DriverUnload
                    .expect("DriverEntry set DriverUnload");
                unload(driver.0);
            }
        });
        self.machine.image_unloaded("after DriverUnload returned");
        self.machine.check("DriverUnload");
    }
}
