//! The Win32 calls kepochctl needs (through `windows-sys`): the control device, the OS build and
//! processor counts here; the registry ([`registry`]), the Service Control Manager ([`service`]),
//! Ctrl-C ([`console`]) and the A/B's [`system::WinSystem`] in the submodules. Nothing else in
//! kepochctl calls Windows.

pub mod console;
pub mod registry;
pub mod service;
pub mod system;

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
    /// Opens the control device (read/write); `Err` says why, with a hint.
    pub fn open() -> Result<Device, String> {
        Device::open_raw().map_err(|error| {
            let hint = match error {
                ERROR_FILE_NOT_FOUND => " (is kepoch.sys running? `sc start kepoch`)",
                ERROR_ACCESS_DENIED => " (access denied: run from an elevated prompt)",
                _ => "",
            };
            format!("cannot open \\\\.\\kepoch: Win32 error {error}{hint}")
        })
    }

    /// Opens the control device (read/write); `Err` is the Win32 error.
    pub fn open_raw() -> Result<Device, u32> {
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
            return Err(unsafe { GetLastError() });
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

/// Active processors in all groups.
pub fn active_processors() -> u32 {
    // SAFETY: a plain query without pointers.
    unsafe { GetActiveProcessorCount(ALL_PROCESSOR_GROUPS) }
}

impl Device {
    /// IOCTL_GET_STATS, decoded (a version the tool does not know is an error naming both).
    pub fn stats(&self) -> Result<kepoch::Stats, String> {
        use kepoch_driver::ioctl::{self, StatsDecodeError};

        let mut buffer = vec![0u8; ioctl::STATS_SIZE];
        let written = match self.ioctl(ioctl::IOCTL_GET_STATS, &[], &mut buffer) {
            Ok(written) => written,
            // ERROR_MORE_DATA: a newer driver with a larger struct; the header tells.
            Err((windows_sys::Win32::Foundation::ERROR_MORE_DATA, written)) => written,
            Err((error, _)) => {
                return Err(format!("reading statistics failed: Win32 error {error}"))
            }
        };
        ioctl::decode_stats(&buffer[..written.min(buffer.len())]).map_err(|e| match e {
            StatsDecodeError::Truncated => "the driver returned a truncated statistics block".into(),
            StatsDecodeError::Version { version, size } => format!(
                "statistics version mismatch: driver has version {version} ({size} bytes), kepochctl expects {} ({} bytes); use the kepochctl built with this driver",
                kepoch::STATS_VERSION,
                ioctl::STATS_SIZE
            ),
        })
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
