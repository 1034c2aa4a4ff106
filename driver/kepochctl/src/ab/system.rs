//! The Windows side of `kepochctl ab` as a trait: the service's `Parameters` key, the Service Control
//! Manager and the control device. `win::WinSystem` implements it with windows-sys; the tests use a
//! fake, so the A/B logic runs on any host.

use std::fmt;
use std::time::Duration;

use kepoch::Stats;
use kepoch_driver::ioctl::LoadRequest;
use kepoch_report::Guest;

/// Win32 error codes the A/B logic tells apart.
pub mod code {
    /// ERROR_FILE_NOT_FOUND (also: a registry value or key that does not exist).
    pub const FILE_NOT_FOUND: u32 = 2;
    /// ERROR_PATH_NOT_FOUND.
    pub const PATH_NOT_FOUND: u32 = 3;
    /// ERROR_ACCESS_DENIED.
    pub const ACCESS_DENIED: u32 = 5;
    /// ERROR_BAD_EXE_FORMAT.
    pub const BAD_EXE_FORMAT: u32 = 193;
    /// ERROR_INVALID_IMAGE_HASH: the image's signature was not accepted.
    pub const INVALID_IMAGE_HASH: u32 = 577;
    /// ERROR_SERVICE_REQUEST_TIMEOUT.
    pub const SERVICE_REQUEST_TIMEOUT: u32 = 1053;
    /// ERROR_SERVICE_ALREADY_RUNNING.
    pub const SERVICE_ALREADY_RUNNING: u32 = 1056;
    /// ERROR_SERVICE_DISABLED.
    pub const SERVICE_DISABLED: u32 = 1058;
    /// ERROR_SERVICE_DOES_NOT_EXIST.
    pub const SERVICE_DOES_NOT_EXIST: u32 = 1060;
    /// ERROR_SERVICE_NOT_ACTIVE.
    pub const SERVICE_NOT_ACTIVE: u32 = 1062;
    /// ERROR_SERVICE_MARKED_FOR_DELETE.
    pub const SERVICE_MARKED_FOR_DELETE: u32 = 1072;
    /// ERROR_DRIVER_BLOCKED.
    pub const DRIVER_BLOCKED: u32 = 1275;

    /// The usual name of a Win32 error code, for messages.
    pub fn name(code: u32) -> &'static str {
        match code {
            FILE_NOT_FOUND => "ERROR_FILE_NOT_FOUND",
            PATH_NOT_FOUND => "ERROR_PATH_NOT_FOUND",
            ACCESS_DENIED => "ERROR_ACCESS_DENIED",
            31 => "ERROR_GEN_FAILURE",
            50 => "ERROR_NOT_SUPPORTED",
            87 => "ERROR_INVALID_PARAMETER",
            BAD_EXE_FORMAT => "ERROR_BAD_EXE_FORMAT",
            INVALID_IMAGE_HASH => "ERROR_INVALID_IMAGE_HASH",
            1052 => "ERROR_INVALID_SERVICE_CONTROL",
            SERVICE_REQUEST_TIMEOUT => "ERROR_SERVICE_REQUEST_TIMEOUT",
            SERVICE_ALREADY_RUNNING => "ERROR_SERVICE_ALREADY_RUNNING",
            SERVICE_DISABLED => "ERROR_SERVICE_DISABLED",
            SERVICE_DOES_NOT_EXIST => "ERROR_SERVICE_DOES_NOT_EXIST",
            SERVICE_NOT_ACTIVE => "ERROR_SERVICE_NOT_ACTIVE",
            1066 => "ERROR_SERVICE_SPECIFIC_ERROR",
            SERVICE_MARKED_FOR_DELETE => "ERROR_SERVICE_MARKED_FOR_DELETE",
            DRIVER_BLOCKED => "ERROR_DRIVER_BLOCKED",
            _ => "",
        }
    }

    /// Whether a failed service start points at the machine rather than at the driver's own refusal
    /// (the image is missing, not signed, blocked or disabled; the service manager timed out; access).
    pub fn is_environment_start_error(code: u32) -> bool {
        matches!(
            code,
            FILE_NOT_FOUND
                | PATH_NOT_FOUND
                | ACCESS_DENIED
                | BAD_EXE_FORMAT
                | INVALID_IMAGE_HASH
                | SERVICE_REQUEST_TIMEOUT
                | SERVICE_DISABLED
                | SERVICE_DOES_NOT_EXIST
                | SERVICE_MARKED_FOR_DELETE
                | DRIVER_BLOCKED
        )
    }
}

/// A failed Windows call: what was done and its Win32 error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysError {
    /// What failed, e.g. `RegSetValueExW(ActivationStrategy)`.
    pub what: String,
    /// The Win32 error.
    pub code: u32,
}

impl SysError {
    /// A failure of `what` with `code`.
    pub fn new(what: impl Into<String>, code: u32) -> SysError {
        SysError {
            what: what.into(),
            code,
        }
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match code::name(self.code) {
            "" => write!(f, "{} failed: Win32 error {}", self.what, self.code),
            name => write!(
                f,
                "{} failed: Win32 error {} ({name})",
                self.what, self.code
            ),
        }
    }
}

/// A registry value as stored: its type and raw bytes (restored exactly as found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegValue {
    /// `REG_DWORD` (4), `REG_SZ` (1), ...
    pub kind: u32,
    /// The data.
    pub data: Vec<u8>,
}

impl RegValue {
    /// REG_DWORD type code.
    pub const REG_DWORD: u32 = 4;

    /// A REG_DWORD.
    pub fn dword(value: u32) -> RegValue {
        RegValue {
            kind: Self::REG_DWORD,
            data: value.to_le_bytes().to_vec(),
        }
    }

    /// The value when it is a REG_DWORD.
    pub fn as_dword(&self) -> Option<u32> {
        match (self.kind, <[u8; 4]>::try_from(self.data.as_slice())) {
            (Self::REG_DWORD, Ok(bytes)) => Some(u32::from_le_bytes(bytes)),
            _ => None,
        }
    }
}

/// The service's state as the Service Control Manager reports it (`SERVICE_STATUS_PROCESS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStatus {
    /// `dwCurrentState`: 1 stopped, 2 start pending, 3 stop pending, 4 running, ...
    pub state: u32,
    /// `dwWin32ExitCode`.
    pub win32_exit_code: u32,
    /// `dwServiceSpecificExitCode`.
    pub service_specific_exit_code: u32,
}

impl ServiceStatus {
    /// SERVICE_STOPPED.
    pub const STOPPED: u32 = 1;
    /// SERVICE_START_PENDING.
    pub const START_PENDING: u32 = 2;
    /// SERVICE_STOP_PENDING.
    pub const STOP_PENDING: u32 = 3;
    /// SERVICE_RUNNING.
    pub const RUNNING: u32 = 4;

    /// The state's name.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            Self::STOPPED => "STOPPED",
            Self::START_PENDING => "START_PENDING",
            Self::STOP_PENDING => "STOP_PENDING",
            Self::RUNNING => "RUNNING",
            5 => "CONTINUE_PENDING",
            6 => "PAUSE_PENDING",
            7 => "PAUSED",
            _ => "UNKNOWN",
        }
    }
}

/// What `kepochctl ab` needs from Windows. Every call is bounded by the implementation (no call
/// waits for the service; the caller polls [`GuestSystem::service_status`]).
pub trait GuestSystem {
    /// Opens the service's `Parameters` key for reading and writing, creating it when missing;
    /// `Ok(true)` when it was created.
    fn open_parameters(&mut self) -> Result<bool, SysError>;
    /// Reads a value of the `Parameters` key (`None`: absent).
    fn read_value(&mut self, name: &str) -> Result<Option<RegValue>, SysError>;
    /// Writes a value of the `Parameters` key.
    fn write_value(&mut self, name: &str, value: &RegValue) -> Result<(), SysError>;
    /// Deletes a value of the `Parameters` key (absent already is success).
    fn delete_value(&mut self, name: &str) -> Result<(), SysError>;
    /// Deletes the (empty) `Parameters` key.
    fn delete_parameters(&mut self) -> Result<(), SysError>;
    /// The service's status; `Err` with ERROR_SERVICE_DOES_NOT_EXIST when it is not installed.
    fn service_status(&mut self) -> Result<ServiceStatus, SysError>;
    /// Asks the service to stop (`ControlService(SERVICE_CONTROL_STOP)`); not running is success.
    fn stop_service(&mut self) -> Result<(), SysError>;
    /// `StartServiceW`: `Err` carries the error a refused start returned.
    fn start_service(&mut self) -> Result<(), SysError>;
    /// IOCTL_RESET_STATS.
    fn reset_stats(&mut self) -> Result<(), SysError>;
    /// IOCTL_LOAD_START.
    fn start_load(&mut self, request: LoadRequest) -> Result<(), SysError>;
    /// IOCTL_LOAD_STOP.
    fn stop_load(&mut self) -> Result<(), SysError>;
    /// IOCTL_SYNC.
    fn sync(&mut self) -> Result<(), SysError>;
    /// IOCTL_GET_STATS, decoded.
    fn read_stats(&mut self) -> Result<Box<Stats>, String>;
    /// OS build, processor counts and hypervisor.
    fn guest(&mut self) -> Guest;
    /// Active processors now (all groups).
    fn active_processors(&mut self) -> u32;
    /// Time since an arbitrary start (monotonic).
    fn now(&mut self) -> Duration;
    /// Sleeps (short: the caller slices long waits to notice Ctrl-C).
    fn sleep(&mut self, duration: Duration);
    /// Whether Ctrl-C (or Ctrl-Break) was pressed.
    fn interrupted(&self) -> bool;
}
