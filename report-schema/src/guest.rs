//! The document `kepochctl stats --json` writes: one result of the running strategy on a guest.

use kepoch::config::Strategy;
use kepoch::CallbackState;
use serde::{Deserialize, Serialize};

use crate::{AbRecord, CycleLatency, DurationUs, HotAdd, HotAddReplayed, Latency, SCHEMA_VERSION};

/// The usual name of a CPUID leaf 0x40000000 hypervisor vendor signature (trailing NULs ignored).
pub fn hypervisor_name(vendor: &str) -> &'static str {
    match vendor.trim_end_matches('\0') {
        "Microsoft Hv" => "Hyper-V",
        "KVMKVMKVM" => "KVM",
        "VMwareVMware" => "VMware",
        "TCGTCGTCGTCG" => "QEMU (TCG)",
        "XenVMMXenVMM" => "Xen",
        "VBoxVBoxVBox" => "VirtualBox",
        " lrpepyh vr" | "prl hyperv" => "Parallels",
        "bhyve bhyve " => "bhyve",
        "ACRNACRNACRN" => "ACRN",
        _ => "unknown",
    }
}

/// The name of a strategy's registry value, or `unknown-<value>`.
pub fn strategy_name(value: u32) -> String {
    Strategy::from_registry_value(value)
        .map_or_else(|| format!("unknown-{value}"), |s| s.name().to_string())
}

/// The name of a [`CallbackState`] value (`Stats::callback_state`), or `unknown`.
pub fn callback_state_name(value: u32) -> &'static str {
    match value {
        v if v == CallbackState::NotUsed as u32 => "not-used",
        v if v == CallbackState::Registered as u32 => "registered",
        v if v == CallbackState::ApiMissing as u32 => "api-missing",
        v if v == CallbackState::RegistrationFailed as u32 => "registration-failed",
        _ => "unknown",
    }
}

/// The hypervisor a guest runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hypervisor {
    /// CPUID leaf 0x40000000 vendor signature.
    pub vendor: String,
    /// Its usual name ([`hypervisor_name`]).
    pub name: String,
}

impl Hypervisor {
    /// From a raw vendor signature (trailing NULs dropped).
    pub fn from_vendor(raw: &str) -> Hypervisor {
        Hypervisor {
            vendor: raw.trim_end_matches('\0').to_string(),
            name: hypervisor_name(raw).to_string(),
        }
    }
}

/// Facts about the machine the driver runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// `major.minor.build` from `RtlGetVersion`.
    pub os_build: String,
    /// `GetActiveProcessorCount(ALL_PROCESSOR_GROUPS)`.
    pub active_processors: u32,
    /// `GetMaximumProcessorCount(ALL_PROCESSOR_GROUPS)`.
    pub max_processors: u32,
    /// Present when CPUID.1:ECX.31 (hypervisor present) is set.
    pub hypervisor: Option<Hypervisor>,
}

/// The `scenario` of a guest document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestScenario {
    /// Always `guest`.
    pub name: String,
    /// Always `guest`.
    pub source: String,
    /// What the document is.
    pub description: String,
    /// Processors the kernel reports as possible.
    pub max_reported: u32,
    /// Not known on a guest (`null`).
    pub active_at_boot: Option<u32>,
    /// The machine.
    pub guest: Guest,
}

/// One result read from kepoch.sys. Figures a running kernel cannot measure are `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // The fields are the report's keys and the driver's counters of the same name.
pub struct GuestResult {
    pub strategy: String,
    /// Always `guest`.
    pub source: String,
    /// 0 for `kepochctl stats --json`; the round (1-based) for `kepochctl ab`.
    pub round: u32,
    pub guest: Guest,
    pub loaded: bool,
    pub load_error: Option<String>,
    pub callback_state: String,
    pub config_warnings: u64,
    pub max_reported: u32,
    pub active: u32,
    pub cpus_prepared: u64,
    pub per_cpu_bytes: u64,
    pub prepare_at_dispatch: u64,
    pub prepare_passive: u64,
    pub prepare_failures: u64,
    pub fallback_uses: u64,
    pub first_enter_ns: Latency,
    pub enter_exit_ns: Latency,
    pub enters: u64,
    pub exits: u64,
    pub remote_exits: u64,
    pub cycles: u64,
    pub cycle_latency_us: CycleLatency,
    pub messages: u64,
    /// Not measured by the driver.
    pub messages_to_idle_cpus: Option<u64>,
    pub joins: u64,
    pub leaves: u64,
    pub retired: u64,
    pub freed: u64,
    pub pending_at_end: u64,
    /// A running kernel cannot tell leaks; the simulator and torture tests do.
    pub leaked: Option<u64>,
    pub leaked_readers: u64,
    /// A running kernel cannot tell use-after-free; the simulator and torture tests do.
    pub use_after_free: Option<u64>,
    pub double_retires: u64,
    pub stalls_reported: u64,
    /// Live hot-adds (driver `Stats` version 5 on; before, the replay at registration was counted
    /// here too).
    pub hot_add: HotAdd,
    /// The replay at registration (driver `Stats` version 5 on; absent in older documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_add_replayed: Option<HotAddReplayed>,
    pub work_items_run: u64,
    /// Duration of each visit, one DPC (driver `Stats` version 5 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpc_us: Option<DurationUs>,
    /// Items each visit freed (driver `Stats` version 5 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frees_per_visit: Option<Latency>,
    /// Visits that stopped at `MaxFreesPerVisit` (driver `Stats` version 5 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visits_cut_short: Option<u64>,
    pub global_epoch: u64,
    pub released_epoch: u64,
    /// `Stats::version` of the driver.
    pub stats_version: u32,
    /// How `kepochctl ab` ran the round (absent in `kepochctl stats --json` documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab: Option<AbRecord>,
}

/// `{"schema_version", "scenario", "results": [one result]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestDocument {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The guest facts.
    pub scenario: GuestScenario,
    /// One result: the running strategy.
    pub results: Vec<GuestResult>,
}

impl GuestDocument {
    /// The document of one result read on `result.guest`.
    pub fn new(result: GuestResult) -> GuestDocument {
        GuestDocument {
            schema_version: SCHEMA_VERSION,
            scenario: GuestScenario {
                name: "guest".into(),
                source: "guest".into(),
                description: "kepoch.sys counters read with kepochctl stats --json".into(),
                max_reported: result.max_reported,
                active_at_boot: None,
                guest: result.guest.clone(),
            },
            results: vec![result],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(hypervisor_name("KVMKVMKVM\0\0\0"), "KVM");
        assert_eq!(hypervisor_name("VMwareVMware"), "VMware");
        assert_eq!(hypervisor_name("something"), "unknown");
        assert_eq!(
            Hypervisor::from_vendor("Microsoft Hv\0").vendor,
            "Microsoft Hv"
        );
        assert_eq!(strategy_name(0), "lazy");
        assert_eq!(strategy_name(9), "unknown-9");
        assert_eq!(
            callback_state_name(CallbackState::ApiMissing as u32),
            "api-missing"
        );
        assert_eq!(callback_state_name(77), "unknown");
    }
}
