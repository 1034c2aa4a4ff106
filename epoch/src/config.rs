//! Configuration of a domain: the activation strategy and the cycle parameters, and the pure
//! function that turns registry-like input into a configuration plus warnings.

use crate::mutation::Mutations;
use core::fmt;

/// When and where a processor's per-CPU state is prepared (the strategy table of the crate documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Prepared on that processor's first epoch use, at DISPATCH, once its add completed (it listens
    /// to processor-change notifications for that). Memory O(processors ever used).
    Lazy,
    /// Prepared in processor-change notifications (replay at registration, AddStart on hot-add);
    /// falls back to `Lazy` when the API is missing, registration fails or a preparation fails.
    Callback,
    /// Every index below the reported maximum prepared at load; refuses to load where the platform
    /// cannot resolve an index (max > active), like the original design.
    Eager,
}

impl Strategy {
    /// Every strategy, in registry-value order.
    pub const ALL: [Strategy; 3] = [Strategy::Lazy, Strategy::Callback, Strategy::Eager];

    /// The `ActivationStrategy` registry value of this strategy.
    pub fn registry_value(self) -> u32 {
        match self {
            Strategy::Lazy => 0,
            Strategy::Callback => 1,
            Strategy::Eager => 2,
        }
    }

    /// The strategy for a registry value, if it is one.
    pub fn from_registry_value(value: u32) -> Option<Strategy> {
        match value {
            0 => Some(Strategy::Lazy),
            1 => Some(Strategy::Callback),
            2 => Some(Strategy::Eager),
            _ => None,
        }
    }

    /// Lower-case name used in logs, reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Lazy => "lazy",
            Strategy::Callback => "callback",
            Strategy::Eager => "eager",
        }
    }

    /// The strategy with this name.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Smallest accepted `CyclePeriodMicroseconds`: below this the timer would dominate a CPU.
pub const MIN_CYCLE_PERIOD_US: u32 = 100;
/// Largest accepted `CyclePeriodMicroseconds` (1 s): beyond it garbage would pile up.
pub const MAX_CYCLE_PERIOD_US: u32 = 1_000_000;
/// Default `CyclePeriodMicroseconds`.
pub const DEFAULT_CYCLE_PERIOD_US: u32 = 1_000;
/// Default number of cycles a reader may hold back reclamation before it is reported as stalled.
pub const DEFAULT_STALL_THRESHOLD_CYCLES: u64 = 1_000;
/// Default `MaxFreesPerVisit`: a visit (one DPC) frees at most this many items. At the pool's
/// usual 50–100 ns per free that is well under Microsoft's 100 µs guidance for a DPC.
pub const DEFAULT_MAX_FREES_PER_VISIT: u32 = 256;
/// Smallest accepted non-zero `MaxFreesPerVisit` (smaller values are clamped up to it).
pub const MIN_MAX_FREES_PER_VISIT: u32 = 16;
/// Largest accepted `MaxFreesPerVisit` (larger values are clamped down to it).
pub const MAX_MAX_FREES_PER_VISIT: u32 = 1_000_000;
/// Default time budget of a visit's DPC: half of Microsoft's 100 µs guidance for a DPC, so that the
/// work that is not checked against it (the reader scan, forwarding the cycle, up to 31 frees
/// between two clock readings) fits in the rest. A visit, and the end of a cycle that frees the
/// overflow slot's items in the same DPC, stop freeing once the DPC's work clock says the budget is
/// spent, even below `MaxFreesPerVisit`.
pub const DEFAULT_VISIT_BUDGET_US: u32 = 50;

/// The visit time budget that goes with a `MaxFreesPerVisit` setting: the default, or none when the
/// setting is 0 (no bound at all, for measurements). The registry and the C API have one knob.
pub fn visit_budget_for(max_frees_per_visit: u32) -> u32 {
    if max_frees_per_visit == 0 {
        0
    } else {
        DEFAULT_VISIT_BUDGET_US
    }
}

/// Everything a domain needs to know at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Activation strategy.
    pub strategy: Strategy,
    /// `true`: a processor with no readers and nothing retired leaves the cycle (`PROTOCOL.md`, S4).
    /// Ignored by `Eager`, which keeps every processor in every cycle.
    pub idle_deactivation: bool,
    /// Period of the reclamation timer.
    pub cycle_period_us: u32,
    /// A reader holding back reclamation for this many cycles is reported once as stalled.
    pub stall_threshold_cycles: u64,
    /// A visit frees at most this many released items and leaves the rest to the next visit (it
    /// asks for another cycle at once), so one DPC's free loop stays short; 0: no count bound (for
    /// measuring what the bound buys; `visit_budget_us` is a separate field here, while the
    /// registry's and the C API's 0 turn both off, see [`visit_budget_for`]). Unload frees
    /// everything regardless.
    pub max_frees_per_visit: u32,
    /// A visit stops freeing once it has run this long by [`crate::platform::Platform::work_clock`]
    /// (checked every few frees) and leaves the rest to the next visit, like the count bound; 0: no
    /// time bound. The registry has no value of its own for it: `MaxFreesPerVisit = 0` turns both
    /// bounds off.
    pub visit_budget_us: u32,
    /// Known bugs to re-introduce (honoured only with the `mutations` feature).
    pub mutations: Mutations,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            strategy: Strategy::Callback,
            idle_deactivation: true,
            cycle_period_us: DEFAULT_CYCLE_PERIOD_US,
            stall_threshold_cycles: DEFAULT_STALL_THRESHOLD_CYCLES,
            max_frees_per_visit: DEFAULT_MAX_FREES_PER_VISIT,
            visit_budget_us: DEFAULT_VISIT_BUDGET_US,
            mutations: Mutations::NONE,
        }
    }
}

impl Config {
    /// The default configuration with another strategy.
    pub fn with_strategy(strategy: Strategy) -> Self {
        Config {
            strategy,
            ..Config::default()
        }
    }
}

/// A registry value as the driver read it: absent, a DWORD, or some other type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryValue {
    /// The value does not exist: use the default silently.
    Missing,
    /// A REG_DWORD.
    Dword(u32),
    /// Any other registry type (the REG_* type code): use the default and warn.
    WrongType(u32),
}

/// Which registry value a warning is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `ActivationStrategy`.
    ActivationStrategy,
    /// `IdleDeactivation`.
    IdleDeactivation,
    /// `CyclePeriodMicroseconds`.
    CyclePeriodMicroseconds,
    /// `MaxFreesPerVisit`.
    MaxFreesPerVisit,
}

impl Setting {
    /// The registry value name.
    pub fn value_name(self) -> &'static str {
        match self {
            Setting::ActivationStrategy => "ActivationStrategy",
            Setting::IdleDeactivation => "IdleDeactivation",
            Setting::CyclePeriodMicroseconds => "CyclePeriodMicroseconds",
            Setting::MaxFreesPerVisit => "MaxFreesPerVisit",
        }
    }

    /// The range a DWORD of this setting is clamped to, for settings that clamp.
    pub fn clamp_range(self) -> Option<(u32, u32)> {
        match self {
            Setting::CyclePeriodMicroseconds => Some((MIN_CYCLE_PERIOD_US, MAX_CYCLE_PERIOD_US)),
            Setting::MaxFreesPerVisit => Some((MIN_MAX_FREES_PER_VISIT, MAX_MAX_FREES_PER_VISIT)),
            Setting::ActivationStrategy | Setting::IdleDeactivation => None,
        }
    }
}

/// Why a registry value was not used as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigWarning {
    /// The value has a type other than REG_DWORD; the default was used.
    WrongType {
        /// Which value.
        setting: Setting,
        /// Its REG_* type code.
        reg_type: u32,
    },
    /// The DWORD is not one of the accepted values; the default was used.
    OutOfRange {
        /// Which value.
        setting: Setting,
        /// What the registry held.
        value: u32,
    },
    /// The DWORD was outside the documented range and was clamped to it.
    Clamped {
        /// Which value.
        setting: Setting,
        /// What the registry held.
        value: u32,
        /// What is used instead.
        used: u32,
    },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConfigWarning::WrongType { setting, reg_type } => write!(
                f,
                "registry value {} has type {} instead of REG_DWORD; using the default",
                setting.value_name(),
                reg_type
            ),
            ConfigWarning::OutOfRange { setting, value } => write!(
                f,
                "registry value {} = {} is not an accepted value; using the default",
                setting.value_name(),
                value
            ),
            ConfigWarning::Clamped {
                setting,
                value,
                used,
            } => {
                let (min, max) = setting.clamp_range().unwrap_or((used, used));
                write!(
                    f,
                    "registry value {} = {} is outside {}..={}; using {}",
                    setting.value_name(),
                    value,
                    min,
                    max,
                    used
                )
            }
        }
    }
}

/// The registry values of `Services\kepoch\Parameters`, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistryInput {
    /// `ActivationStrategy`.
    pub activation_strategy: RegistryValue,
    /// `IdleDeactivation`.
    pub idle_deactivation: RegistryValue,
    /// `CyclePeriodMicroseconds`.
    pub cycle_period_us: RegistryValue,
    /// `MaxFreesPerVisit`.
    pub max_frees_per_visit: RegistryValue,
}

/// At most one warning per setting.
pub type ConfigWarnings = [Option<ConfigWarning>; 4];

/// Turns registry input into a configuration. Never fails: a missing value means the default; a
/// value of the wrong type or out of range means the default (or the clamped value) plus a warning.
pub fn select_config(input: &RegistryInput) -> (Config, ConfigWarnings) {
    let defaults = Config::default();
    let mut warnings: ConfigWarnings = [None; 4];

    let strategy = match input.activation_strategy {
        RegistryValue::Missing => defaults.strategy,
        RegistryValue::Dword(v) => Strategy::from_registry_value(v).unwrap_or_else(|| {
            warnings[0] = Some(ConfigWarning::OutOfRange {
                setting: Setting::ActivationStrategy,
                value: v,
            });
            defaults.strategy
        }),
        RegistryValue::WrongType(t) => {
            warnings[0] = Some(ConfigWarning::WrongType {
                setting: Setting::ActivationStrategy,
                reg_type: t,
            });
            defaults.strategy
        }
    };

    let idle_deactivation = match input.idle_deactivation {
        RegistryValue::Missing => defaults.idle_deactivation,
        RegistryValue::Dword(0) => false,
        RegistryValue::Dword(1) => true,
        RegistryValue::Dword(v) => {
            warnings[1] = Some(ConfigWarning::OutOfRange {
                setting: Setting::IdleDeactivation,
                value: v,
            });
            defaults.idle_deactivation
        }
        RegistryValue::WrongType(t) => {
            warnings[1] = Some(ConfigWarning::WrongType {
                setting: Setting::IdleDeactivation,
                reg_type: t,
            });
            defaults.idle_deactivation
        }
    };

    let cycle_period_us = match input.cycle_period_us {
        RegistryValue::Missing => defaults.cycle_period_us,
        RegistryValue::Dword(v) => {
            let used = v.clamp(MIN_CYCLE_PERIOD_US, MAX_CYCLE_PERIOD_US);
            if used != v {
                warnings[2] = Some(ConfigWarning::Clamped {
                    setting: Setting::CyclePeriodMicroseconds,
                    value: v,
                    used,
                });
            }
            used
        }
        RegistryValue::WrongType(t) => {
            warnings[2] = Some(ConfigWarning::WrongType {
                setting: Setting::CyclePeriodMicroseconds,
                reg_type: t,
            });
            defaults.cycle_period_us
        }
    };

    // 0 turns the bound off (documented, for measurements); other values are clamped.
    let max_frees_per_visit = match input.max_frees_per_visit {
        RegistryValue::Missing => defaults.max_frees_per_visit,
        RegistryValue::Dword(0) => 0,
        RegistryValue::Dword(v) => {
            let used = v.clamp(MIN_MAX_FREES_PER_VISIT, MAX_MAX_FREES_PER_VISIT);
            if used != v {
                warnings[3] = Some(ConfigWarning::Clamped {
                    setting: Setting::MaxFreesPerVisit,
                    value: v,
                    used,
                });
            }
            used
        }
        RegistryValue::WrongType(t) => {
            warnings[3] = Some(ConfigWarning::WrongType {
                setting: Setting::MaxFreesPerVisit,
                reg_type: t,
            });
            defaults.max_frees_per_visit
        }
    };

    let visit_budget_us = visit_budget_for(max_frees_per_visit);
    let config = Config {
        strategy,
        idle_deactivation,
        cycle_period_us,
        max_frees_per_visit,
        visit_budget_us,
        ..defaults
    };
    (config, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(a: RegistryValue, i: RegistryValue, c: RegistryValue) -> RegistryInput {
        RegistryInput {
            activation_strategy: a,
            idle_deactivation: i,
            cycle_period_us: c,
            max_frees_per_visit: RegistryValue::Missing,
        }
    }

    fn frees(value: RegistryValue) -> RegistryInput {
        RegistryInput {
            max_frees_per_visit: value,
            ..input(
                RegistryValue::Missing,
                RegistryValue::Missing,
                RegistryValue::Missing,
            )
        }
    }

    #[test]
    fn max_frees_per_visit_is_clamped_zero_turns_the_bound_off_and_a_wrong_type_warns() {
        let cases = [
            (RegistryValue::Missing, DEFAULT_MAX_FREES_PER_VISIT, None),
            (RegistryValue::Dword(0), 0, None),
            (RegistryValue::Dword(1000), 1000, None),
            (
                RegistryValue::Dword(3),
                MIN_MAX_FREES_PER_VISIT,
                Some("registry value MaxFreesPerVisit = 3 is outside 16..=1000000; using 16"),
            ),
            (
                RegistryValue::Dword(u32::MAX),
                MAX_MAX_FREES_PER_VISIT,
                Some("registry value MaxFreesPerVisit = 4294967295 is outside 16..=1000000; using 1000000"),
            ),
            (
                RegistryValue::WrongType(REG_SZ),
                DEFAULT_MAX_FREES_PER_VISIT,
                Some("registry value MaxFreesPerVisit has type 1 instead of REG_DWORD; using the default"),
            ),
        ];
        for (value, used, warning) in cases {
            let (config, warnings) = select_config(&frees(value));
            assert_eq!(config.max_frees_per_visit, used, "{value:?}");
            let budget = if used == 0 {
                0
            } else {
                DEFAULT_VISIT_BUDGET_US
            };
            assert_eq!(config.visit_budget_us, budget, "{value:?}");
            let text = warnings[3].map(|w| std::string::ToString::to_string(&w));
            assert_eq!(text.as_deref(), warning, "{value:?}");
            assert!(warnings[..3].iter().all(Option::is_none));
        }
    }

    const REG_SZ: u32 = 1;

    #[test]
    fn missing_values_mean_defaults_without_warnings() {
        let (config, warnings) = select_config(&input(
            RegistryValue::Missing,
            RegistryValue::Missing,
            RegistryValue::Missing,
        ));
        assert_eq!(config, Config::default());
        assert_eq!(config.strategy, Strategy::Callback);
        assert!(warnings.iter().all(Option::is_none));
    }

    #[test]
    fn every_valid_strategy_value_selects_its_strategy() {
        for strategy in Strategy::ALL {
            let value = RegistryValue::Dword(strategy.registry_value());
            let (config, warnings) = select_config(&input(
                value,
                RegistryValue::Missing,
                RegistryValue::Missing,
            ));
            assert_eq!(config.strategy, strategy);
            assert!(warnings.iter().all(Option::is_none));
        }
    }

    #[test]
    fn out_of_range_and_wrong_type_fall_back_with_a_warning() {
        let (config, warnings) = select_config(&input(
            RegistryValue::Dword(7),
            RegistryValue::Dword(3),
            RegistryValue::WrongType(REG_SZ),
        ));
        assert_eq!(config, Config::default());
        assert_eq!(
            warnings[0],
            Some(ConfigWarning::OutOfRange {
                setting: Setting::ActivationStrategy,
                value: 7
            })
        );
        assert_eq!(
            warnings[1],
            Some(ConfigWarning::OutOfRange {
                setting: Setting::IdleDeactivation,
                value: 3
            })
        );
        assert_eq!(
            warnings[2],
            Some(ConfigWarning::WrongType {
                setting: Setting::CyclePeriodMicroseconds,
                reg_type: REG_SZ
            })
        );
        let (config, warnings) = select_config(&input(
            RegistryValue::WrongType(REG_SZ),
            RegistryValue::Missing,
            RegistryValue::Missing,
        ));
        assert_eq!(config.strategy, Strategy::Callback);
        assert!(matches!(warnings[0], Some(ConfigWarning::WrongType { .. })));
    }

    #[test]
    fn cycle_period_is_clamped_to_the_documented_range() {
        let (config, warnings) = select_config(&input(
            RegistryValue::Missing,
            RegistryValue::Dword(0),
            RegistryValue::Dword(5),
        ));
        assert!(!config.idle_deactivation);
        assert_eq!(config.cycle_period_us, MIN_CYCLE_PERIOD_US);
        assert!(matches!(
            warnings[2],
            Some(ConfigWarning::Clamped {
                used: MIN_CYCLE_PERIOD_US,
                ..
            })
        ));
        let (config, _) = select_config(&input(
            RegistryValue::Missing,
            RegistryValue::Missing,
            RegistryValue::Dword(u32::MAX),
        ));
        assert_eq!(config.cycle_period_us, MAX_CYCLE_PERIOD_US);
    }
}
