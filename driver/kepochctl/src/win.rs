//! The Win32 calls kepochctl needs (the only FFI in the tool): the control device, the OS build and
//! processor counts.

use std::ffi::c_void;

use crate::report::GuestInfo;

type Handle = *mut c_void;

const GENERIC_READ: u32 = 0x8000_0000;
const GENERIC_WRITE: u32 = 0x4000_0000;
const OPEN_EXISTING: u32 = 3;
const INVALID_HANDLE_VALUE: Handle = usize::MAX as Handle;
const ALL_PROCESSOR_GROUPS: u16 = 0xFFFF;

#[repr(C)]
struct OsVersionInfoW {
    size: u32,
    major: u32,
    minor: u32,
    build: u32,
    platform: u32,
    csd: [u16; 128],
}

#[link(name = "kernel32")]
extern "system" {
    fn CreateFileW(
        name: *const u16,
        access: u32,
        share: u32,
        security: *mut c_void,
        disposition: u32,
        flags: u32,
        template: Handle,
    ) -> Handle;
    fn DeviceIoControl(
        device: Handle,
        code: u32,
        input: *const c_void,
        input_len: u32,
        output: *mut c_void,
        output_len: u32,
        returned: *mut u32,
        overlapped: *mut c_void,
    ) -> i32;
    fn CloseHandle(handle: Handle) -> i32;
    fn GetLastError() -> u32;
    fn GetActiveProcessorCount(group: u16) -> u32;
    fn GetMaximumProcessorCount(group: u16) -> u32;
}

#[link(name = "ntdll")]
extern "system" {
    fn RtlGetVersion(info: *mut OsVersionInfoW) -> i32;
}

/// An open handle to `\\.\kepoch`.
pub struct Device {
    handle: Handle,
}

impl Device {
    /// Opens the control device (read/write).
    pub fn open() -> Result<Device, String> {
        let name: Vec<u16> = r"\\.\kepoch".encode_utf16().chain([0]).collect();
        // SAFETY: NUL-terminated name; no security attributes or template.
        let handle = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                std::ptr::null_mut(),
                OPEN_EXISTING,
                0,
                std::ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            // SAFETY: no arguments.
            let error = unsafe { GetLastError() };
            let hint = match error {
                2 => " (is kepoch.sys running? `sc start kepoch`)",
                5 => " (access denied: run from an elevated prompt)",
                _ => "",
            };
            return Err(format!(
                "cannot open \\\\.\\kepoch: Win32 error {error}{hint}"
            ));
        }
        Ok(Device { handle })
    }

    /// `DeviceIoControl`: returns the bytes written to `output`, or the Win32 error with the bytes
    /// written anyway (ERROR_MORE_DATA returns data).
    pub fn ioctl(&self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, (u32, usize)> {
        let mut returned = 0u32;
        let too_long = |len: usize| u32::try_from(len).map_err(|_| (87u32, 0usize));
        let input_len = too_long(input.len())?;
        let output_len = too_long(output.len())?;
        // SAFETY: the buffers are valid for the lengths passed; synchronous call (no OVERLAPPED).
        let ok = unsafe {
            DeviceIoControl(
                self.handle,
                code,
                if input.is_empty() {
                    std::ptr::null()
                } else {
                    input.as_ptr().cast()
                },
                input_len,
                if output.is_empty() {
                    std::ptr::null_mut()
                } else {
                    output.as_mut_ptr().cast()
                },
                output_len,
                &mut returned,
                std::ptr::null_mut(),
            )
        };
        if ok != 0 {
            Ok(returned as usize)
        } else {
            // SAFETY: no arguments.
            Err((unsafe { GetLastError() }, returned as usize))
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: our handle, closed once.
        unsafe { CloseHandle(self.handle) };
    }
}

/// OS build, processor counts and hypervisor of this machine.
pub fn guest_info() -> GuestInfo {
    let mut version = OsVersionInfoW {
        size: std::mem::size_of::<OsVersionInfoW>() as u32,
        major: 0,
        minor: 0,
        build: 0,
        platform: 0,
        csd: [0; 128],
    };
    // SAFETY: a sized OSVERSIONINFOW; RtlGetVersion fills it and cannot fail for this size.
    let status = unsafe { RtlGetVersion(&mut version) };
    let os_build = if status >= 0 {
        format!("{}.{}.{}", version.major, version.minor, version.build)
    } else {
        "unknown".into()
    };
    // SAFETY: plain queries without pointers.
    let (active, max) = unsafe {
        (
            GetActiveProcessorCount(ALL_PROCESSOR_GROUPS),
            GetMaximumProcessorCount(ALL_PROCESSOR_GROUPS),
        )
    };
    GuestInfo {
        os_build,
        active_processors: active,
        max_processors: max,
        hypervisor_vendor: crate::hypervisor_vendor(),
    }
}
