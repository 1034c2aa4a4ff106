//! A fake Windows for the A/B tests: a registry key, a service whose driver loads per its registry
//! values (or refuses), a control device and a virtual clock (no test waits for real time).

use std::collections::BTreeMap;
use std::time::Duration;

use kepoch::Stats;
use kepoch_driver::ioctl::LoadRequest;
use kepoch_report::Guest;

use super::system::{code, GuestSystem, RegValue, ServiceStatus, SysError};

/// The fake machine; every field is a knob of a test.
#[derive(Debug)]
pub struct Fake {
    /// Whether the kepoch service exists.
    pub installed: bool,
    /// Whether the Parameters key exists.
    pub key_exists: bool,
    /// The Parameters key refuses access (ERROR_ACCESS_DENIED).
    pub key_denied: bool,
    /// The values of the Parameters key.
    pub values: BTreeMap<String, RegValue>,
    /// The service's status.
    pub status: ServiceStatus,
    /// The ActivationStrategy value the running driver loaded with.
    pub loaded_with: Option<u32>,
    /// Registry values of ActivationStrategy for which StartServiceW fails with `refuse_code`.
    pub refuse: Vec<u32>,
    /// The Win32 error of such a refusal.
    pub refuse_code: u32,
    /// Start failures that are the machine's (577, ...).
    pub start_error: Option<u32>,
    /// The service never leaves START_PENDING.
    pub start_hangs: bool,
    /// The driver reports this strategy value whatever it loaded with.
    pub reports: Option<u32>,
    /// IOCTL_GET_STATS fails once it has succeeded this many times.
    pub read_stats_fails_after: Option<u32>,
    /// IOCTL_GET_STATS calls that succeeded.
    pub stats_reads: u32,
    /// The virtual clock (advanced by `sleep` only).
    pub clock: Duration,
    /// Ctrl-C at this time.
    pub interrupt_at: Option<Duration>,
    /// Active processors.
    pub active: u32,
    /// (time, processors added).
    pub hot_add_at: Option<(Duration, u32)>,
    /// Every call that changes something, in order.
    pub log: Vec<String>,
}

impl Default for Fake {
    fn default() -> Fake {
        Fake {
            installed: true,
            key_exists: true,
            key_denied: false,
            values: BTreeMap::new(),
            status: ServiceStatus {
                state: ServiceStatus::STOPPED,
                ..ServiceStatus::default()
            },
            loaded_with: None,
            refuse: Vec::new(),
            refuse_code: 87,
            start_error: None,
            start_hangs: false,
            reports: None,
            read_stats_fails_after: None,
            stats_reads: 0,
            clock: Duration::ZERO,
            interrupt_at: None,
            active: 2,
            hot_add_at: None,
            log: Vec::new(),
        }
    }
}

impl Fake {
    fn running(&self, what: &str) -> Result<(), SysError> {
        if self.status.state == ServiceStatus::RUNNING {
            Ok(())
        } else {
            Err(SysError::new(what, code::FILE_NOT_FOUND))
        }
    }

    fn key(&self, what: &str) -> Result<(), SysError> {
        if self.key_denied {
            return Err(SysError::new(what, code::ACCESS_DENIED));
        }
        if !self.key_exists {
            return Err(SysError::new(what, code::FILE_NOT_FOUND));
        }
        Ok(())
    }

    /// Whether any value or the service was changed (the log holds writes only).
    pub fn touched(&self) -> bool {
        !self.log.is_empty()
    }
}

impl GuestSystem for Fake {
    fn open_parameters(&mut self) -> Result<bool, SysError> {
        if self.key_denied {
            return Err(SysError::new(
                "RegCreateKeyExW(Parameters)",
                code::ACCESS_DENIED,
            ));
        }
        if self.key_exists {
            return Ok(false);
        }
        self.key_exists = true;
        self.log.push("create key".into());
        Ok(true)
    }

    fn read_value(&mut self, name: &str) -> Result<Option<RegValue>, SysError> {
        self.key(&format!("RegQueryValueExW({name})"))?;
        Ok(self.values.get(name).cloned())
    }

    fn write_value(&mut self, name: &str, value: &RegValue) -> Result<(), SysError> {
        self.key(&format!("RegSetValueExW({name})"))?;
        self.log.push(format!("set {name}={:?}", value.as_dword()));
        self.values.insert(name.into(), value.clone());
        Ok(())
    }

    fn delete_value(&mut self, name: &str) -> Result<(), SysError> {
        self.key(&format!("RegDeleteValueW({name})"))?;
        self.log.push(format!("delete {name}"));
        self.values.remove(name);
        Ok(())
    }

    fn delete_parameters(&mut self) -> Result<(), SysError> {
        self.log.push("delete key".into());
        self.key_exists = false;
        Ok(())
    }

    fn service_status(&mut self) -> Result<ServiceStatus, SysError> {
        if !self.installed {
            return Err(SysError::new(
                "OpenServiceW(kepoch)",
                code::SERVICE_DOES_NOT_EXIST,
            ));
        }
        Ok(self.status)
    }

    fn stop_service(&mut self) -> Result<(), SysError> {
        self.running("ControlService(kepoch, SERVICE_CONTROL_STOP)")
            .map_err(|e| SysError::new(e.what, code::SERVICE_NOT_ACTIVE))?;
        self.log.push("stop".into());
        self.status.state = ServiceStatus::STOPPED;
        self.loaded_with = None;
        Ok(())
    }

    fn start_service(&mut self) -> Result<(), SysError> {
        let what = "StartServiceW(kepoch)";
        if self.status.state == ServiceStatus::RUNNING {
            return Err(SysError::new(what, code::SERVICE_ALREADY_RUNNING));
        }
        self.log.push("start".into());
        if let Some(e) = self.start_error {
            return Err(SysError::new(what, e));
        }
        if self.start_hangs {
            self.status.state = ServiceStatus::START_PENDING;
            return Ok(());
        }
        let value = self
            .values
            .get("ActivationStrategy")
            .and_then(RegValue::as_dword)
            .filter(|v| *v <= 2)
            .unwrap_or(1);
        if self.refuse.contains(&value) {
            self.status = ServiceStatus {
                state: ServiceStatus::STOPPED,
                win32_exit_code: self.refuse_code,
                service_specific_exit_code: 0,
            };
            return Err(SysError::new(what, self.refuse_code));
        }
        self.status = ServiceStatus {
            state: ServiceStatus::RUNNING,
            ..ServiceStatus::default()
        };
        self.loaded_with = Some(value);
        Ok(())
    }

    fn reset_stats(&mut self) -> Result<(), SysError> {
        self.running("reset")
    }

    fn start_load(&mut self, request: LoadRequest) -> Result<(), SysError> {
        self.running("load start")?;
        self.log
            .push(format!("load {}/s {} s", request.rate, request.seconds));
        Ok(())
    }

    fn stop_load(&mut self) -> Result<(), SysError> {
        self.running("load stop")
    }

    fn sync(&mut self) -> Result<(), SysError> {
        self.running("sync")
    }

    fn read_stats(&mut self) -> Result<Box<Stats>, String> {
        if self.read_stats_fails_after == Some(self.stats_reads) {
            return Err("reading statistics failed: Win32 error 31".into());
        }
        self.running("stats").map_err(|e| e.to_string())?;
        self.stats_reads += 1;
        let mut stats = Box::new(Stats {
            strategy: self.reports.or(self.loaded_with).unwrap_or(1),
            enters: 100 + u64::from(self.clock.as_millis() as u32),
            exits: 100,
            ..Stats::default()
        });
        stats.first_enter_ns.record(700);
        Ok(stats)
    }

    fn guest(&mut self) -> Guest {
        Guest {
            os_build: "10.0.20348".into(),
            active_processors: self.active,
            max_processors: 8,
            hypervisor: None,
        }
    }

    fn active_processors(&mut self) -> u32 {
        if let Some((at, n)) = self.hot_add_at {
            if self.clock >= at {
                self.hot_add_at = None;
                self.active += n;
            }
        }
        self.active
    }

    fn now(&mut self) -> Duration {
        self.clock
    }

    fn sleep(&mut self, duration: Duration) {
        self.clock += duration;
    }

    fn interrupted(&self) -> bool {
        self.interrupt_at.is_some_and(|at| self.clock >= at)
    }
}
