//! What `kepochctl ab` adds to a guest result: the round as planned (the strategy it asked for and the
//! registry values it wrote), how the service start went, and the hot-adds it waited for.

use serde::{Deserialize, Serialize};

/// The registry values a round ran with (`null`: the value was left absent, the driver's default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_snake_case)] // The keys are the registry value names.
pub struct AbRegistry {
    /// `ActivationStrategy` (REG_DWORD 0/1/2).
    pub ActivationStrategy: u32,
    /// `IdleDeactivation`, when `--idle-deactivation` was given.
    pub IdleDeactivation: Option<u32>,
    /// `CyclePeriodMicroseconds`, when `--cycle-period-us` was given.
    pub CyclePeriodMicroseconds: Option<u32>,
}

/// The load of a round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbLoad {
    /// Operations per second over all threads.
    pub rate: u32,
    /// Run time in seconds.
    pub seconds: u32,
    /// Threads asked for (0: one per active processor).
    pub threads: u32,
}

/// Processors hot-added during a round, as the guest's active count saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbHotAdd {
    /// Processors the host announced (`--wait-hot-add` or the hot-add file); 0: none.
    pub requested: u32,
    /// Active processors when the load started.
    pub active_before: u32,
    /// Active processors when the stats were read.
    pub active_after: u32,
    /// Whether the active count grew by at least `requested` (and `requested` > 0).
    pub claimed: bool,
}

/// One round of one strategy as `kepochctl ab` ran it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbRecord {
    /// The round (1-based).
    pub round: u32,
    /// Position of this strategy in the round's (rotated) order, 0-based.
    pub position: u32,
    /// The strategy the tool wrote to the registry.
    pub strategy_requested: String,
    /// The strategy the driver reported in its statistics (`null` when it did not load).
    pub strategy_reported: Option<String>,
    /// `strategy_reported == strategy_requested` (`null` when the driver did not load). `false` marks
    /// a round that did not measure what was asked for.
    pub strategy_matches: Option<bool>,
    /// The registry values written for the round.
    pub registry: AbRegistry,
    /// The Win32 error of the failed service start (`StartServiceW` or the wait after it), if any.
    pub start_error: Option<u32>,
    /// `SERVICE_STATUS::dwWin32ExitCode` after a failed start.
    pub service_exit_code: Option<u32>,
    /// `SERVICE_STATUS::dwServiceSpecificExitCode` after a failed start.
    pub service_specific_exit_code: Option<u32>,
    /// The built-in load.
    pub load: AbLoad,
    /// Hot-adds waited for.
    pub hot_add: AbHotAdd,
}
