//! Stopping and starting the driver's service with bounded waits, and telling a driver that refuses to
//! load (a result of the A/B) from a machine that cannot start it (an environment failure).

use std::time::Duration;

use super::system::{code, GuestSystem, ServiceStatus, SysError};

/// How long to wait for the service and how often to look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceWait {
    /// Longest wait for a stop or a start.
    pub timeout: Duration,
    /// Time between two status queries.
    pub poll: Duration,
}

/// How a start ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// The service runs: the driver loaded.
    Running,
    /// The driver refused to load (DriverEntry failed): a result, not an error.
    Refused {
        /// The error `StartServiceW` returned, when it failed itself.
        start_error: Option<u32>,
        /// The status after the failed start (its exit codes).
        status: ServiceStatus,
    },
}

impl StartOutcome {
    /// `Ok` when running, else `Err` with `message(why)`.
    pub fn loaded_or(self, message: impl FnOnce(String) -> String) -> Result<(), String> {
        match self {
            StartOutcome::Running => Ok(()),
            refused => Err(message(refused.describe())),
        }
    }

    /// One line: `running`, or the refusal with its codes.
    pub fn describe(&self) -> String {
        match self {
            StartOutcome::Running => "running".into(),
            StartOutcome::Refused {
                start_error,
                status,
            } => {
                // The code first: report tables cut load errors short.
                let code = start_error.unwrap_or(status.win32_exit_code);
                let mut text = format!("refused to load (Win32 {code})");
                match start_error {
                    Some(e) => {
                        text += &format!("; StartServiceW failed with Win32 error {e}");
                        if !code::name(*e).is_empty() {
                            text += &format!(" ({})", code::name(*e));
                        }
                    }
                    None => text += "; the service stopped again after StartServiceW",
                }
                text += &format!(
                    "; service state {}, exit code {}, service-specific exit code {}",
                    status.state_name(),
                    status.win32_exit_code,
                    status.service_specific_exit_code
                );
                text
            }
        }
    }
}

/// What to tell the user about an environment error of a start.
pub fn start_hint(error: u32) -> &'static str {
    match error {
        code::SERVICE_DOES_NOT_EXIST => {
            "the kepoch service is not installed (install the package first: Install-KepochDriver or sc create kepoch type= kernel ...)"
        }
        code::INVALID_IMAGE_HASH => {
            "Windows did not accept the signature of kepoch.sys (is test signing on and kepoch.sys signed?)"
        }
        code::FILE_NOT_FOUND | code::PATH_NOT_FOUND => {
            "kepoch.sys is not where the service's ImagePath points"
        }
        code::ACCESS_DENIED => "access denied (run from an elevated prompt)",
        code::SERVICE_DISABLED => "the service is disabled (sc config kepoch start= demand)",
        code::SERVICE_REQUEST_TIMEOUT => "the service manager timed out starting the driver",
        code::SERVICE_MARKED_FOR_DELETE => "the service is marked for deletion (reboot)",
        code::DRIVER_BLOCKED => "Windows blocks this driver (driver block list or HVCI)",
        code::BAD_EXE_FORMAT => "kepoch.sys is not a valid image for this machine",
        _ => "the machine cannot start the driver",
    }
}

fn environment(e: &SysError) -> String {
    format!("{e}: {}", start_hint(e.code))
}

/// Polls the status until `done` holds or the timeout passes; returns the last status.
fn wait_for(
    sys: &mut dyn GuestSystem,
    wait: ServiceWait,
    done: impl Fn(&ServiceStatus) -> bool,
) -> Result<(bool, ServiceStatus), String> {
    let deadline = sys.now() + wait.timeout;
    loop {
        let status = sys.service_status().map_err(|e| environment(&e))?;
        if done(&status) {
            return Ok((true, status));
        }
        if sys.now() >= deadline {
            return Ok((false, status));
        }
        sys.sleep(wait.poll);
    }
}

/// Stops the service (if it runs) and waits until it is stopped.
pub fn stop(sys: &mut dyn GuestSystem, wait: ServiceWait) -> Result<(), String> {
    let status = sys.service_status().map_err(|e| environment(&e))?;
    if status.state == ServiceStatus::STOPPED {
        return Ok(());
    }
    if status.state != ServiceStatus::STOP_PENDING {
        match sys.stop_service() {
            Ok(()) => {}
            Err(e) if e.code == code::SERVICE_NOT_ACTIVE => {}
            Err(e) => return Err(environment(&e)),
        }
    }
    match wait_for(sys, wait, |s| s.state == ServiceStatus::STOPPED)? {
        (true, _) => Ok(()),
        (false, last) => Err(format!(
            "the kepoch service did not stop within {} s (state {}): the driver does not unload",
            wait.timeout.as_secs(),
            last.state_name()
        )),
    }
}

/// Starts the service and waits until it runs or has stopped again (the driver refused to load).
pub fn start(sys: &mut dyn GuestSystem, wait: ServiceWait) -> Result<StartOutcome, String> {
    match sys.start_service() {
        Ok(()) => {}
        Err(e) if e.code == code::SERVICE_ALREADY_RUNNING => {}
        Err(e) if code::is_environment_start_error(e.code) => return Err(environment(&e)),
        Err(e) => {
            let status = sys.service_status().map_err(|e| environment(&e))?;
            return Ok(StartOutcome::Refused {
                start_error: Some(e.code),
                status,
            });
        }
    }
    let (done, status) = wait_for(sys, wait, |s| {
        matches!(s.state, ServiceStatus::RUNNING | ServiceStatus::STOPPED)
    })?;
    if !done {
        return Err(format!(
            "the kepoch service did not reach RUNNING within {} s (state {})",
            wait.timeout.as_secs(),
            status.state_name()
        ));
    }
    if status.state == ServiceStatus::RUNNING {
        return Ok(StartOutcome::Running);
    }
    if code::is_environment_start_error(status.win32_exit_code) {
        return Err(environment(&SysError::new(
            "starting the kepoch service",
            status.win32_exit_code,
        )));
    }
    Ok(StartOutcome::Refused {
        start_error: None,
        status,
    })
}

/// Stops, then starts the service (the driver re-reads its registry values at load).
pub fn restart(sys: &mut dyn GuestSystem, wait: ServiceWait) -> Result<StartOutcome, String> {
    stop(sys, wait)?;
    start(sys, wait)
}
