//! The Win32 calls kepochctl needs (through `windows-sys`): the control device, the OS build and
//! processor counts.

use kepoch_report::{Guest, Hypervisor};
use windows_sys::Wdk::System::SystemServices::RtlGetVersion;
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, ERROR_INVALID_PARAMETER,
    GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{CreateFileW, FILE_SHARE_NONE, OPEN_EXISTING};
use windows_sys::Win32::System::SystemInformation::OSVERSIONINFOW;
use windows_sys::Win32::System::Threading::{
    GetActiveProcessorCount, GetMaximumProcessorCount, ALL_PROCESSOR_GROUPS,
};
use windows_sys::Win32::System::IO::DeviceIoControl;

/// An open handle to `\\.\kepoch`.
pub struct Device {
    handle: HANDLE,
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
                FILE_SHARE_NONE,
                std::ptr::null(),
                OPEN_EXISTING,
                0,
                std::ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            // SAFETY: no arguments.
            let error = unsafe { GetLastError() };
            let hint = match error {
                ERROR_FILE_NOT_FOUND => " (is kepoch.sys running? `sc start kepoch`)",
                ERROR_ACCESS_DENIED => " (access denied: run from an elevated prompt)",
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
        let too_long = |len: usize| u32::try_from(len).map_err(|_| (ERROR_INVALID_PARAMETER, 0));
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
pub fn guest_info() -> Guest {
    let mut version = OSVERSIONINFOW {
        dwOSVersionInfoSize: std::mem::size_of::<OSVERSIONINFOW>() as u32,
        ..OSVERSIONINFOW::default()
    };
    // SAFETY: a sized OSVERSIONINFOW; RtlGetVersion fills it and cannot fail for this size.
    let status = unsafe { RtlGetVersion(&mut version) };
    let os_build = if status >= 0 {
        format!(
            "{}.{}.{}",
            version.dwMajorVersion, version.dwMinorVersion, version.dwBuildNumber
        )
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
    Guest {
        os_build,
        active_processors: active,
        max_processors: max,
        hypervisor: crate::hypervisor_vendor().map(|v| Hypervisor::from_vendor(&v)),
    }
}
