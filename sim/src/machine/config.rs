//! Machine configuration and the processor topology it implies.

use core::fmt;

use kepoch::platform::ProcessorNumber;

/// How the simulated firmware reports and numbers processors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Dense indexes `0..`; every CPU that ever runs has an index below `max_reported`.
    Accurate,
    /// `max_reported` is below the number of CPUs: CPUs with indexes `>= max_reported` run.
    UnderReport,
    /// CPUs spread round-robin over several partly populated groups; index = group * group_size + number.
    Sparse,
}

impl Firmware {
    /// Parses the scenario-file spelling (`accurate`, `under-report`, `sparse`).
    pub fn parse(text: &str) -> Option<Firmware> {
        match text {
            "accurate" => Some(Firmware::Accurate),
            "under-report" | "under_report" | "underreport" => Some(Firmware::UnderReport),
            "sparse" => Some(Firmware::Sparse),
            _ => None,
        }
    }

    /// The scenario-file spelling.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Accurate => "accurate",
            Firmware::UnderReport => "under-report",
            Firmware::Sparse => "sparse",
        }
    }
}

/// Shape of a simulated machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// What `max_processor_count()` returns.
    pub max_reported: u32,
    /// Processors running at boot.
    pub active_at_boot: u32,
    /// Processors per group (1..=64).
    pub group_size: u8,
    /// Numbering / reporting behaviour.
    pub firmware: Firmware,
    /// Processors that exist but are not started; they can be hot-added later.
    pub hot_add_slots: u32,
    /// Seed of every random choice of the machine (scheduling, timer CPU, task RNGs).
    pub seed: u64,
    /// 0 = never; N = every N-th allocation attempt fails.
    pub alloc_fail_every: u64,
    /// Whether processor-change registration exists (`KeRegisterProcessorChangeCallback`).
    pub callback_api_present: bool,
    /// Echo log lines to stderr as they are written.
    pub log_echo: bool,
    /// Deterministic mode: the chance, in percent (0..=100), that a platform call made below DISPATCH
    /// (raise, lower to below DISPATCH, allocate, message_send, event_signal, now_ns, log,
    /// current_processor, a spin lock acquired below DISPATCH) lets its CPU's queued DPCs and a due timer
    /// run nested at DISPATCH first, as an interrupt does on NT. Drawn only when something is queued or
    /// due, so it replays from the seed. 0 turns preemption off.
    pub nested_dpc_percent: u8,
    /// Parallel mode: a spin on a core spin lock whose holder keeps it this long (wall-clock
    /// milliseconds) is reported as a [`super::ViolationKind::Deadlock`] and halts the machine.
    pub parallel_spin_limit_ms: u64,
    /// Parallel mode: how long (wall-clock milliseconds) the stop of a run may wait for the task
    /// steps, waits and work items in progress to finish before it unwinds what is still blocked
    /// (each cut short with a violation).
    pub parallel_stop_limit_ms: u64,
}

/// Default of [`MachineConfig::nested_dpc_percent`].
pub const DEFAULT_NESTED_DPC_PERCENT: u8 = 50;
/// Default of [`MachineConfig::parallel_spin_limit_ms`].
pub const DEFAULT_PARALLEL_SPIN_LIMIT_MS: u64 = 5_000;
/// Default of [`MachineConfig::parallel_stop_limit_ms`].
pub const DEFAULT_PARALLEL_STOP_LIMIT_MS: u64 = 60_000;

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            max_reported: 4,
            active_at_boot: 4,
            group_size: 64,
            firmware: Firmware::Accurate,
            hot_add_slots: 0,
            seed: 1,
            alloc_fail_every: 0,
            callback_api_present: true,
            log_echo: false,
            nested_dpc_percent: DEFAULT_NESTED_DPC_PERCENT,
            parallel_spin_limit_ms: DEFAULT_PARALLEL_SPIN_LIMIT_MS,
            parallel_stop_limit_ms: DEFAULT_PARALLEL_STOP_LIMIT_MS,
        }
    }
}

/// A configuration that cannot describe a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid machine configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One physical processor slot: its fixed name and system-wide index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSlot {
    /// Group and group-relative number.
    pub number: ProcessorNumber,
    /// System-wide index.
    pub index: u32,
}

/// Upper bound on simulated processors (keeps configs from typos like 10^9 CPUs).
pub const MAX_SIM_CPUS: u32 = 4096;

impl MachineConfig {
    /// Total processors that can ever run: boot CPUs plus hot-add slots.
    pub fn total_cpus(&self) -> u32 {
        self.active_at_boot.saturating_add(self.hot_add_slots)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if !(1..=64).contains(&self.group_size) {
            return err(format!("group_size {} is not in 1..=64", self.group_size));
        }
        if self.active_at_boot == 0 {
            return err("active_at_boot must be at least 1".into());
        }
        if self.nested_dpc_percent > 100 {
            return err(format!(
                "nested_dpc_percent {} is not in 0..=100",
                self.nested_dpc_percent
            ));
        }
        if self.max_reported == 0 {
            return err("max_reported must be at least 1".into());
        }
        let total = self.total_cpus();
        if total > MAX_SIM_CPUS {
            return err(format!(
                "{total} processors exceed the simulator limit {MAX_SIM_CPUS}"
            ));
        }
        match self.firmware {
            Firmware::Accurate if total > self.max_reported => err(format!(
                "accurate firmware needs active_at_boot + hot_add_slots ({total}) <= max_reported ({})",
                self.max_reported
            )),
            Firmware::UnderReport if total <= self.max_reported => err(format!(
                "under-report firmware needs max_reported ({}) < active_at_boot + hot_add_slots ({total})",
                self.max_reported
            )),
            _ => Ok(()),
        }
    }

    /// The processor slots in the order they start: boot CPUs first, then hot-add slots
    /// (a hot-add always takes the first slot that is not running).
    ///
    /// * Accurate / UnderReport: slot `k` has index `k`, group `k / group_size`, number `k % group_size`.
    /// * Sparse: with `per = max(1, ceil(group_size / 2))` and `groups = max(2, ceil(total / per))`,
    ///   slot `k` is in group `k % groups` with number `k / groups`, and its index is
    ///   `group * group_size + number`. Every group is at most half populated (for `group_size >= 2`),
    ///   so indexes have gaps, and group 1 is used as soon as there are two CPUs.
    pub fn topology(&self) -> Result<Vec<CpuSlot>, ConfigError> {
        self.validate()?;
        let total = self.total_cpus();
        let gs = u32::from(self.group_size);
        let mut slots = Vec::with_capacity(total as usize);
        match self.firmware {
            Firmware::Accurate | Firmware::UnderReport => {
                for k in 0..total {
                    slots.push(CpuSlot {
                        number: ProcessorNumber::new((k / gs) as u16, (k % gs) as u8),
                        index: k,
                    });
                }
            }
            Firmware::Sparse => {
                let per = gs.div_ceil(2).max(1);
                let groups = total.div_ceil(per).max(2);
                if groups > u32::from(u16::MAX) {
                    return Err(ConfigError("too many processor groups".into()));
                }
                for k in 0..total {
                    let group = k % groups;
                    let number = k / groups;
                    slots.push(CpuSlot {
                        number: ProcessorNumber::new(group as u16, number as u8),
                        index: group * gs + number,
                    });
                }
            }
        }
        Ok(slots)
    }
}
