//! The kepoch service through the Service Control Manager (OpenSCManagerW, OpenServiceW,
//! QueryServiceStatusEx, ControlService, StartServiceW).

use windows_sys::Win32::Foundation::GetLastError;
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, ControlService, OpenSCManagerW, OpenServiceW, QueryServiceStatusEx,
    StartServiceW, SC_HANDLE, SC_MANAGER_CONNECT, SC_STATUS_PROCESS_INFO, SERVICE_CONTROL_STOP,
    SERVICE_QUERY_STATUS, SERVICE_START, SERVICE_STATUS, SERVICE_STATUS_PROCESS, SERVICE_STOP,
};

use crate::ab::system::{ServiceStatus, SysError};

struct Handle(SC_HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a handle we opened, closed once.
        unsafe { CloseServiceHandle(self.0) };
    }
}

fn last_error() -> u32 {
    // SAFETY: no arguments.
    unsafe { GetLastError() }
}

/// An open handle to the kepoch service (query, start, stop).
pub struct Service {
    service: Handle,
    _manager: Handle,
}

impl Service {
    /// Opens the service; ERROR_SERVICE_DOES_NOT_EXIST when it is not installed.
    pub fn open() -> Result<Service, SysError> {
        // SAFETY: local machine, default database.
        let manager =
            unsafe { OpenSCManagerW(std::ptr::null(), std::ptr::null(), SC_MANAGER_CONNECT) };
        if manager.is_null() {
            return Err(SysError::new("OpenSCManagerW", last_error()));
        }
        let manager = Handle(manager);
        let name: Vec<u16> = "kepoch".encode_utf16().chain([0]).collect();
        // SAFETY: an open manager handle and a NUL-terminated name.
        let service = unsafe {
            OpenServiceW(
                manager.0,
                name.as_ptr(),
                SERVICE_QUERY_STATUS | SERVICE_START | SERVICE_STOP,
            )
        };
        if service.is_null() {
            return Err(SysError::new("OpenServiceW(kepoch)", last_error()));
        }
        Ok(Service {
            service: Handle(service),
            _manager: manager,
        })
    }

    /// QueryServiceStatusEx(SC_STATUS_PROCESS_INFO).
    pub fn status(&self) -> Result<ServiceStatus, SysError> {
        let mut status = SERVICE_STATUS_PROCESS::default();
        let mut needed = 0u32;
        // SAFETY: the buffer is a SERVICE_STATUS_PROCESS of the size passed.
        let ok = unsafe {
            QueryServiceStatusEx(
                self.service.0,
                SC_STATUS_PROCESS_INFO,
                (&mut status as *mut SERVICE_STATUS_PROCESS).cast(),
                std::mem::size_of::<SERVICE_STATUS_PROCESS>() as u32,
                &mut needed,
            )
        };
        if ok == 0 {
            return Err(SysError::new("QueryServiceStatusEx(kepoch)", last_error()));
        }
        Ok(ServiceStatus {
            state: status.dwCurrentState,
            win32_exit_code: status.dwWin32ExitCode,
            service_specific_exit_code: status.dwServiceSpecificExitCode,
        })
    }

    /// ControlService(SERVICE_CONTROL_STOP).
    pub fn stop(&self) -> Result<(), SysError> {
        let mut status = SERVICE_STATUS::default();
        // SAFETY: an open service handle; `status` receives the state.
        let ok = unsafe { ControlService(self.service.0, SERVICE_CONTROL_STOP, &mut status) };
        if ok == 0 {
            return Err(SysError::new(
                "ControlService(kepoch, SERVICE_CONTROL_STOP)",
                last_error(),
            ));
        }
        Ok(())
    }

    /// StartServiceW without arguments.
    pub fn start(&self) -> Result<(), SysError> {
        // SAFETY: an open service handle, no arguments.
        let ok = unsafe { StartServiceW(self.service.0, 0, std::ptr::null()) };
        if ok == 0 {
            return Err(SysError::new("StartServiceW(kepoch)", last_error()));
        }
        Ok(())
    }
}
