//! The emulated machine's configuration: topology, registry table, missing routines, fault injection,
//! deadlines and the adversarial timing knobs.

use std::format;
use std::string::{String, ToString};
use std::time::Duration;
use std::vec;
use std::vec::Vec;

use crate::nt::NTSTATUS;

/// Where the service keys are: `<SERVICES_KEY>\<service name>` is what the I/O manager passes to
/// `DriverEntry`.
pub const SERVICES_KEY: &str = "\\Registry\\Machine\\System\\CurrentControlSet\\Services";

/// One processor group: numbers `0..max` can exist, `active` are present at boot (sparse is fine).
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Processors the group can hold (`KeQueryMaximumProcessorCountEx(group)`).
    pub max: u8,
    /// Group-relative numbers present at boot.
    pub active: Vec<u8>,
}

/// A registry value under `Parameters`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryData {
    /// A `REG_DWORD`.
    Dword(u32),
    /// Any type and bytes (wrong types, malformed DWORDs).
    Raw {
        /// `REG_*`.
        reg_type: u32,
        /// The data.
        data: Vec<u8>,
    },
    /// `ZwQueryValueKey` fails with this status.
    QueryFails(NTSTATUS),
}

/// Everything about an emulated machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// The driver's service name (its key under [`SERVICES_KEY`]).
    pub service_name: String,
    /// Processor groups.
    pub groups: Vec<GroupConfig>,
    /// Values under `<service key>\Parameters`.
    pub parameters: Vec<(String, RegistryData)>,
    /// Whether the `Parameters` key exists.
    pub parameters_key: bool,
    /// Opening the service key fails with this status.
    pub service_key_fails: Option<NTSTATUS>,
    /// Routines `MmGetSystemRoutineAddress` does not find.
    pub missing_routines: Vec<String>,
    /// Pool allocation attempts (1-based, counted from boot) that fail: `(first, count)`.
    pub fail_allocations: Option<(u64, u64)>,
    /// Every pool allocation a processor-change callback makes while it handles a live AddStart
    /// fails (whatever else allocates meanwhile).
    pub fail_add_start_allocations: bool,
    /// The n-th (1-based) `PsCreateSystemThread` fails.
    pub fail_thread_creation: Option<u64>,
    /// `KeRegisterProcessorChangeCallback` returns null.
    pub fail_callback_registration: bool,
    /// Seed of every thread's migration choices.
    pub seed: u64,
    /// Longest any single wait of the emulation may take before the machine fails.
    pub wait_deadline: Duration,
    /// Longest a call into the driver (DriverEntry, an IRP, unload, a hot-add) may take.
    pub call_deadline: Duration,
    /// Each DPC is delivered between 0 and this long after it was queued (seeded): DPCs still queued
    /// when their memory is freed are found even when the driver's timing is lucky.
    pub dpc_latency: Duration,
    /// DPCs are not delivered until this long after boot (a processor that keeps DISPATCH busy).
    pub dpc_stall: Duration,
    /// How long a DPC is held up after it signals an event (it is interrupted there); a thread below
    /// DISPATCH that wakes a waiter may be held up this long too, until the woken thread blocked
    /// again or ended (it ran first).
    pub signal_delay: Duration,
    /// A DPC that runs longer than this fails the machine (NT's DPC watchdog, bug check 0x133), and
    /// the threads it preempted go on.
    pub dpc_watchdog: Duration,
    /// How long a hot-added processor runs before AddComplete is delivered.
    pub hot_add_window: Duration,
    /// A thread below DISPATCH migrates on one in this many scheduling points (every kernel call it
    /// makes), and is preempted by the thread it woke after one in this many `KeSetEvent` calls.
    pub migrate_one_in: u64,
    /// Error-level log lines containing one of these are expected.
    pub expected_errors: Vec<String>,
}

impl Default for MachineConfig {
    /// Two groups of four with two processors active in each (sparse numbers), so the maximum (8) is
    /// above the active count (4).
    fn default() -> Self {
        MachineConfig {
            service_name: "kepoch".to_string(),
            groups: vec![
                GroupConfig {
                    max: 4,
                    active: vec![0, 2],
                },
                GroupConfig {
                    max: 4,
                    active: vec![1, 3],
                },
            ],
            parameters: Vec::new(),
            parameters_key: true,
            service_key_fails: None,
            missing_routines: Vec::new(),
            fail_allocations: None,
            fail_add_start_allocations: false,
            fail_thread_creation: None,
            fail_callback_registration: false,
            seed: 1,
            wait_deadline: Duration::from_secs(20),
            call_deadline: Duration::from_secs(60),
            dpc_latency: Duration::from_micros(500),
            dpc_stall: Duration::ZERO,
            signal_delay: Duration::from_millis(1),
            dpc_watchdog: Duration::from_secs(10),
            hot_add_window: Duration::from_millis(5),
            migrate_one_in: 8,
            expected_errors: Vec::new(),
        }
    }
}

impl MachineConfig {
    /// The service key path `DriverEntry` gets.
    pub fn service_key(&self) -> String {
        format!("{SERVICES_KEY}\\{}", self.service_name)
    }

    /// Sets the driver's service name.
    pub fn service(mut self, name: &str) -> Self {
        self.service_name = name.to_string();
        self
    }

    /// Sets a registry value under `Parameters`.
    pub fn parameter(mut self, name: &str, data: RegistryData) -> Self {
        self.parameters.push((name.to_string(), data));
        self
    }

    /// Makes `MmGetSystemRoutineAddress(name)` return null.
    pub fn missing(mut self, name: &str) -> Self {
        self.missing_routines.push(name.to_string());
        self
    }

    /// Accepts error-level log lines containing `pattern`.
    pub fn expect_error(mut self, pattern: &str) -> Self {
        self.expected_errors.push(pattern.to_string());
        self
    }
}
