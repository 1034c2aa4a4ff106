//! Scenarios of the A/B lab: the TOML format, the built-in scenarios, command-line overrides
//! and the checks that turn contradictory input into one clear message.

use super::limits::{read_text_file, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MAX_SCENARIO_BYTES};
use super::table::clip;
use crate::machine::{Firmware, MachineConfig, MAX_SIM_CPUS};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest run a scenario may ask for (ten minutes).
pub const MAX_DURATION_MS: u64 = 600_000;

/// One hot-add event of a scenario.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HotAdd {
    /// Simulated time after load, in milliseconds.
    pub at_ms: u64,
    /// Processors added (one AddStart/AddComplete pair each).
    pub count: u32,
    /// `true`: AddStart is followed by AddFailure.
    #[serde(default)]
    pub fail: bool,
}

/// The load a scenario runs on the machine.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Run time of one round of one strategy, in milliseconds (wall clock in parallel mode).
    #[serde(default = "default_duration_ms")]
    pub duration_ms: u64,
    /// Reader tasks per busy CPU.
    #[serde(default = "default_readers")]
    pub readers_per_cpu: u32,
    /// Retirements per busy CPU per millisecond.
    #[serde(default = "default_retire_rate")]
    pub retire_per_ms: u32,
    /// Running CPUs that never run epoch code.
    #[serde(default)]
    pub idle_cpus: u32,
    /// `> 0`: one reader stays inside its epoch this long.
    #[serde(default)]
    pub stall_reader_ms: u64,
    /// `> 0`: every N-th platform allocation fails.
    #[serde(default)]
    pub alloc_fail_every: u64,
    /// Driver loads per round: the round's `duration_ms` is split into this many lifetimes (load, run,
    /// unload on the same machine), each giving every busy CPU a new first enter.
    #[serde(default = "default_reloads")]
    pub reloads: u32,
    /// `> 0`: every this many milliseconds each writer retires `burst_size` more objects at once
    /// (a driver tearing down a table).
    #[serde(default)]
    pub burst_every_ms: u64,
    /// Objects of one burst per busy CPU.
    #[serde(default)]
    pub burst_size: u32,
    /// The domain's `max_frees_per_visit` (the registry's `MaxFreesPerVisit`; 0 = no bound);
    /// absent: the default.
    #[serde(default)]
    pub max_frees_per_visit: Option<u32>,
}

fn default_reloads() -> u32 {
    1
}

fn default_duration_ms() -> u64 {
    2_000
}

fn default_readers() -> u32 {
    2
}

fn default_retire_rate() -> u32 {
    20
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            duration_ms: default_duration_ms(),
            readers_per_cpu: default_readers(),
            retire_per_ms: default_retire_rate(),
            idle_cpus: 0,
            stall_reader_ms: 0,
            alloc_fail_every: 0,
            reloads: default_reloads(),
            burst_every_ms: 0,
            burst_size: 0,
            max_frees_per_visit: None,
        }
    }
}

fn default_group_size() -> u32 {
    64
}

fn default_firmware() -> String {
    "accurate".into()
}

fn default_seed() -> u64 {
    1
}

/// A scenario: the machine, its hot-add schedule and the workload (the TOML keys are the fields below).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Free text.
    #[serde(default)]
    pub name: String,
    /// One line: the real situation it models.
    #[serde(default)]
    pub description: String,
    /// What `KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS)` returns.
    pub max_reported: u32,
    /// Processors running at load.
    pub active_at_boot: u32,
    /// Processors per group (1..=64).
    #[serde(default = "default_group_size")]
    pub group_size: u32,
    /// `accurate`, `under-report` or `sparse`.
    #[serde(default = "default_firmware")]
    pub firmware: String,
    /// Seed of the machine and of every task.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Hot-add events.
    #[serde(default)]
    pub hot_add: Vec<HotAdd>,
    /// The load.
    #[serde(default)]
    pub workload: Workload,
}

/// Bad scenario input: one line, for exit code 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError(pub String);

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

fn err<T>(message: String) -> Result<T, ScenarioError> {
    Err(ScenarioError(message))
}

use super::builtins::BUILTINS;

/// Name of the scenario `kepoch-sim ab` runs without arguments.
pub const DEFAULT_SCENARIO: &str = "hyperv-maxproc";

/// Names of the built-in scenarios, in listing order.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// Every built-in scenario, parsed.
pub fn builtins() -> Result<Vec<Scenario>, ScenarioError> {
    BUILTINS
        .iter()
        .map(|b| parse(b.text, &format!("built-in scenario {}", b.name)))
        .collect()
}

/// The built-in scenario called `name`.
pub fn builtin(name: &str) -> Option<Result<Scenario, ScenarioError>> {
    BUILTINS
        .iter()
        .find(|b| b.name == name)
        .map(|b| parse(b.text, &format!("built-in scenario {}", b.name)))
}

/// 1-based line of byte offset `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Parses scenario TOML; `origin` names the source in messages. Unknown keys, missing keys and type
/// errors are reported with the key and the line.
/// Free text (`name`, `description`) longer than [`MAX_NAME_CHARS`] or [`MAX_DESCRIPTION_CHARS`] is
/// cut, and made one line, so that it cannot flood the output.
pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
    match toml::from_str::<Scenario>(text) {
        Ok(mut scenario) => {
            scenario.name = clip(&scenario.name, MAX_NAME_CHARS);
            scenario.description = clip(&scenario.description, MAX_DESCRIPTION_CHARS);
            Ok(scenario)
        }
        Err(error) => {
            let message = error.message().trim().replace('\n', " ");
            match error.span() {
                Some(span) => err(format!(
                    "{origin}, line {}: {message}",
                    line_of(text, span.start)
                )),
                None => err(format!("{origin}: {message}")),
            }
        }
    }
}

/// Loads `spec`: a built-in name, or a path to a TOML file (anything ending in `.toml` or containing
/// a path separator, or an existing file).
pub fn load(spec: &str) -> Result<Scenario, ScenarioError> {
    if let Some(scenario) = builtin(spec) {
        return scenario;
    }
    let path = std::path::Path::new(spec);
    let looks_like_file = spec.ends_with(".toml") || spec.contains('/') || path.is_file();
    if !looks_like_file {
        return err(format!(
            "unknown scenario `{spec}`; built-in scenarios: {} (or give a path to a .toml file)",
            builtin_names().join(", ")
        ));
    }
    let text = read_text_file(path, MAX_SCENARIO_BYTES, "scenario file").map_err(ScenarioError)?;
    let mut scenario = parse(&text, &format!("scenario file {spec}"))?;
    if scenario.name.trim().is_empty() {
        let stem = path
            .file_stem()
            .map_or_else(|| spec.to_string(), |s| s.to_string_lossy().into_owned());
        scenario.name = clip(&stem, MAX_NAME_CHARS);
    }
    Ok(scenario)
}

/// Parses a `--hot-add` value: `COUNT@MS`, optionally `COUNT@MS:fail`.
pub fn parse_hot_add(text: &str) -> Result<HotAdd, String> {
    let (body, fail) = match text.strip_suffix(":fail") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let (count, at) = body
        .split_once('@')
        .ok_or_else(|| format!("expected COUNT@MS (e.g. 2@100, or 1@300:fail), got `{text}`"))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("bad processor count `{count}` in `{text}`"))?;
    let at_ms: u64 = at
        .trim()
        .parse()
        .map_err(|_| format!("bad time `{at}` in `{text}` (milliseconds)"))?;
    Ok(HotAdd { at_ms, count, fail })
}

/// Values given on the command line, each replacing the scenario's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--max-reported`.
    pub max_reported: Option<u32>,
    /// `--active`.
    pub active: Option<u32>,
    /// `--group-size`.
    pub group_size: Option<u32>,
    /// `--hot-add` (repeatable): replaces the scenario's whole schedule.
    pub hot_add: Vec<HotAdd>,
    /// `--firmware`.
    pub firmware: Option<String>,
    /// `--duration-ms`.
    pub duration_ms: Option<u64>,
    /// `--seed`.
    pub seed: Option<u64>,
}

impl Scenario {
    /// Applies command-line overrides.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = o.max_reported {
            self.max_reported = v;
        }
        if let Some(v) = o.active {
            self.active_at_boot = v;
        }
        if let Some(v) = o.group_size {
            self.group_size = v;
        }
        if !o.hot_add.is_empty() {
            self.hot_add = o.hot_add.clone();
        }
        if let Some(v) = &o.firmware {
            self.firmware = v.clone();
        }
        if let Some(v) = o.duration_ms {
            self.workload.duration_ms = v;
        }
        if let Some(v) = o.seed {
            self.seed = v;
        }
    }

    /// The firmware mode.
    pub fn firmware_mode(&self) -> Result<Firmware, ScenarioError> {
        Firmware::parse(&self.firmware).ok_or_else(|| {
            ScenarioError(format!(
                "unknown firmware `{}`; expected accurate, under-report or sparse",
                self.firmware
            ))
        })
    }

    /// Hot-add slots the machine needs: every successful add takes a slot for good; failed adds
    /// reuse one free slot.
    pub fn hot_add_slots(&self) -> u32 {
        let ok: u32 = self
            .hot_add
            .iter()
            .filter(|h| !h.fail)
            .fold(0u32, |sum, h| sum.saturating_add(h.count));
        let any_fail = self.hot_add.iter().any(|h| h.fail && h.count > 0);
        ok.saturating_add(u32::from(any_fail))
    }

    /// Checks the scenario for values that cannot describe a run or contradict each other.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let firmware = self.firmware_mode()?;
        let w = &self.workload;
        if !(1..=64).contains(&self.group_size) {
            return err(format!("group_size {} is not in 1..=64", self.group_size));
        }
        if self.active_at_boot == 0 {
            return err("active_at_boot (--active) must be at least 1".into());
        }
        if self.max_reported == 0 {
            return err("max_reported (--max-reported) must be at least 1".into());
        }
        let total = self.active_at_boot.saturating_add(self.hot_add_slots());
        if total > MAX_SIM_CPUS {
            return err(format!(
                "{total} processors (active {} + hot-added {}) exceed the simulator limit {MAX_SIM_CPUS}",
                self.active_at_boot,
                self.hot_add_slots()
            ));
        }
        match firmware {
            Firmware::Accurate if self.active_at_boot > self.max_reported => {
                return err(format!(
                    "active_at_boot {} is above max_reported {} with accurate firmware; use firmware under-report (--firmware under-report) to model firmware that reports fewer processors than run",
                    self.active_at_boot, self.max_reported
                ));
            }
            Firmware::Accurate if total > self.max_reported => {
                return err(format!(
                    "{} running + {} hot-added processors exceed max_reported {} with accurate firmware; raise max_reported or use firmware under-report",
                    self.active_at_boot,
                    self.hot_add_slots(),
                    self.max_reported
                ));
            }
            Firmware::UnderReport if total <= self.max_reported => {
                return err(format!(
                    "under-report firmware needs max_reported ({}) below the processors that run ({total}); use accurate firmware or lower max_reported",
                    self.max_reported
                ));
            }
            _ => {}
        }
        if w.duration_ms == 0 || w.duration_ms > MAX_DURATION_MS {
            return err(format!(
                "workload.duration_ms (--duration-ms) {} is not in 1..={MAX_DURATION_MS}",
                w.duration_ms
            ));
        }
        if w.readers_per_cpu == 0 || w.readers_per_cpu > 64 {
            return err(format!(
                "workload.readers_per_cpu {} is not in 1..=64",
                w.readers_per_cpu
            ));
        }
        if w.retire_per_ms > 10_000 {
            return err(format!(
                "workload.retire_per_ms {} is above 10000",
                w.retire_per_ms
            ));
        }
        if (w.burst_every_ms == 0) != (w.burst_size == 0) || w.burst_size > 100_000 {
            return err(format!(
                "workload.burst_every_ms {} and workload.burst_size {} must both be 0 or both set (burst_size at most 100000)",
                w.burst_every_ms, w.burst_size
            ));
        }
        if let Some(limit) = w.max_frees_per_visit {
            let (min, max) = (
                kepoch::config::MIN_MAX_FREES_PER_VISIT,
                kepoch::config::MAX_MAX_FREES_PER_VISIT,
            );
            if limit != 0 && !(min..=max).contains(&limit) {
                return err(format!(
                    "workload.max_frees_per_visit {limit} is neither 0 (no bound) nor in {min}..={max}"
                ));
            }
        }
        if w.idle_cpus >= self.active_at_boot {
            return err(format!(
                "workload.idle_cpus {} leaves no busy CPU among {} running",
                w.idle_cpus, self.active_at_boot
            ));
        }
        if !(1..=100).contains(&w.reloads) || u64::from(w.reloads) * 10 > w.duration_ms {
            return err(format!(
                "workload.reloads {} is not in 1..=100 with at least 10 ms per load ({} ms per round)",
                w.reloads, w.duration_ms
            ));
        }
        let lifetime_ms = w.duration_ms / u64::from(w.reloads);
        if w.stall_reader_ms >= lifetime_ms {
            return err(format!(
                "workload.stall_reader_ms {} must be shorter than one load's run ({} ms: duration_ms {} / reloads {})",
                w.stall_reader_ms, lifetime_ms, w.duration_ms, w.reloads
            ));
        }
        for h in &self.hot_add {
            if h.count == 0 {
                return err(format!("hot-add at {} ms adds 0 processors", h.at_ms));
            }
            if h.at_ms >= w.duration_ms {
                return err(format!(
                    "hot-add of {} at {} ms is not before the end of the run ({} ms)",
                    h.count, h.at_ms, w.duration_ms
                ));
            }
        }
        self.check_host_plan()?;
        let machine = self.machine_config()?;
        machine.validate().map_err(|e| ScenarioError(e.to_string()))
    }

    /// The simulated machine of this scenario.
    pub fn machine_config(&self) -> Result<MachineConfig, ScenarioError> {
        Ok(MachineConfig {
            max_reported: self.max_reported,
            active_at_boot: self.active_at_boot,
            group_size: u8::try_from(self.group_size).unwrap_or(64),
            firmware: self.firmware_mode()?,
            hot_add_slots: self.hot_add_slots(),
            seed: self.seed,
            alloc_fail_every: 0,
            callback_api_present: true,
            log_echo: false,
            ..MachineConfig::default()
        })
    }
}

#[cfg(test)]
mod tests;
