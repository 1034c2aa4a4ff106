//! [`GuestSystem`] on Windows: the registry, the Service Control Manager and the control device.

use std::time::{Duration, Instant};

use kepoch::Stats;
use kepoch_driver::ioctl::{self, LoadRequest};
use kepoch_report::Guest;

use super::registry::{self, ParamsKey};
use super::service::Service;
use super::{console, Device};
use crate::ab::system::{GuestSystem, RegValue, ServiceStatus, SysError};

/// The real machine. The device handle is opened on first use and closed before the service stops
/// (an open handle keeps the driver from unloading).
pub struct WinSystem {
    key: Option<ParamsKey>,
    service: Option<Service>,
    device: Option<Device>,
    started: Instant,
}

impl WinSystem {
    /// Installs the Ctrl-C handler; opens nothing yet.
    pub fn new() -> WinSystem {
        console::install();
        WinSystem {
            key: None,
            service: None,
            device: None,
            started: Instant::now(),
        }
    }

    fn key(&mut self, what: &str) -> Result<&ParamsKey, SysError> {
        if self.key.is_none() {
            self.key = Some(ParamsKey::open_or_create()?.0);
        }
        self.key.as_ref().ok_or_else(|| SysError::new(what, 6))
    }

    fn service(&mut self) -> Result<&Service, SysError> {
        if self.service.is_none() {
            self.service = Some(Service::open()?);
        }
        self.service
            .as_ref()
            .ok_or_else(|| SysError::new("OpenServiceW(kepoch)", 6))
    }

    fn device(&mut self) -> Result<&Device, SysError> {
        if self.device.is_none() {
            self.device =
                Some(Device::open_raw().map_err(|e| SysError::new(r"CreateFileW(\\.\kepoch)", e))?);
        }
        self.device
            .as_ref()
            .ok_or_else(|| SysError::new(r"CreateFileW(\\.\kepoch)", 6))
    }

    fn ioctl(&mut self, code: u32, input: &[u8], what: &str) -> Result<(), SysError> {
        self.device()?
            .ioctl(code, input, &mut [])
            .map(|_| ())
            .map_err(|(error, _)| SysError::new(what, error))
    }
}

impl GuestSystem for WinSystem {
    fn open_parameters(&mut self) -> Result<bool, SysError> {
        let (key, created) = ParamsKey::open_or_create()?;
        self.key = Some(key);
        Ok(created)
    }

    fn read_value(&mut self, name: &str) -> Result<Option<RegValue>, SysError> {
        self.key(name)?.read(name)
    }

    fn write_value(&mut self, name: &str, value: &RegValue) -> Result<(), SysError> {
        self.key(name)?.write(name, value)
    }

    fn delete_value(&mut self, name: &str) -> Result<(), SysError> {
        self.key(name)?.delete(name)
    }

    fn delete_parameters(&mut self) -> Result<(), SysError> {
        self.key = None;
        registry::delete_key()
    }

    fn service_status(&mut self) -> Result<ServiceStatus, SysError> {
        self.service()?.status()
    }

    fn stop_service(&mut self) -> Result<(), SysError> {
        self.device = None;
        self.service()?.stop()
    }

    fn start_service(&mut self) -> Result<(), SysError> {
        self.device = None;
        self.service()?.start()
    }

    fn reset_stats(&mut self) -> Result<(), SysError> {
        self.ioctl(ioctl::IOCTL_RESET_STATS, &[], "reset (IOCTL_RESET_STATS)")
    }

    fn start_load(&mut self, request: LoadRequest) -> Result<(), SysError> {
        self.ioctl(
            ioctl::IOCTL_LOAD_START,
            &request.encode(),
            "load start (IOCTL_LOAD_START)",
        )
    }

    fn stop_load(&mut self) -> Result<(), SysError> {
        self.ioctl(ioctl::IOCTL_LOAD_STOP, &[], "load stop (IOCTL_LOAD_STOP)")
    }

    fn sync(&mut self) -> Result<(), SysError> {
        self.ioctl(ioctl::IOCTL_SYNC, &[], "sync (IOCTL_SYNC)")
    }

    fn read_stats(&mut self) -> Result<Box<Stats>, String> {
        let device = self.device().map_err(|e| e.to_string())?;
        device.stats().map(Box::new)
    }

    fn guest(&mut self) -> Guest {
        super::guest_info()
    }

    fn active_processors(&mut self) -> u32 {
        super::active_processors()
    }

    fn now(&mut self) -> Duration {
        self.started.elapsed()
    }

    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn interrupted(&self) -> bool {
        console::interrupted()
    }
}
