//! The options of `kepochctl ab`, their validation and the round plan (which strategy runs when).

use std::path::PathBuf;

use clap::{value_parser, Args};
use kepoch::config::Strategy;
use kepoch_driver::ioctl::{limits, LoadRequest};

/// Most rounds `ab` accepts.
pub const MAX_ROUNDS: u32 = 1000;
/// Longest wait for hot-adds after the load ended, in seconds.
pub const MAX_HOT_ADD_TIMEOUT: u32 = 3600;

/// `kepochctl ab` options.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
pub struct AbArgs {
    /// Rounds, 1..=1000; every round runs every strategy once, in an order rotated by one each round.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = value_parser!(u32).range(1..=i64::from(MAX_ROUNDS)))]
    pub rounds: u32,
    /// Strategies, comma-separated, each once: lazy, callback, eager.
    #[arg(long, value_name = "LIST", default_value = "lazy,callback,eager", value_parser = parse_strategies)]
    pub strategies: StrategyList,
    /// Directory for the guest files (round-NN-STRATEGY.json); created when missing, must be writable.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Load: operations per second over all threads, 1..=10000000.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = value_parser!(u32).range(i64::from(limits::MIN_RATE)..=i64::from(limits::MAX_RATE)))]
    pub rate: u32,
    /// Load: seconds per round and strategy, 1..=3600.
    #[arg(long, value_name = "S", default_value_t = 30, value_parser = value_parser!(u32).range(i64::from(limits::MIN_SECONDS)..=i64::from(limits::MAX_SECONDS)))]
    pub seconds: u32,
    /// Load threads, 0..=64; 0 = one per active processor.
    #[arg(long, value_name = "T", default_value_t = 0, value_parser = value_parser!(u32).range(0..=i64::from(limits::MAX_THREADS)))]
    pub threads: u32,
    /// Registry IdleDeactivation for every round (0 or 1); absent: left as found.
    #[arg(long, value_name = "0|1", value_parser = value_parser!(u32).range(0..=1))]
    pub idle_deactivation: Option<u32>,
    /// Registry CyclePeriodMicroseconds for every round, 1..=4294967295 (the driver clamps it);
    /// absent: left as found.
    #[arg(long = "cycle-period-us", value_name = "US", value_parser = value_parser!(u32).range(1..))]
    pub cycle_period_us: Option<u32>,
    /// Processors the host hot-adds during each round's load: the round waits until the active count
    /// grew by N (at most --hot-add-timeout seconds after the load ended).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = value_parser!(u32).range(0..=4096))]
    pub wait_hot_add: u32,
    /// A file the host writes during a round with the number of processors it hot-adds (overrides
    /// --wait-hot-add once it exists; the tool deletes it after each round).
    #[arg(long, value_name = "FILE")]
    pub hot_add_file: Option<PathBuf>,
    /// Longest wait for announced hot-adds after the load ended, 0..=3600 seconds.
    #[arg(long, value_name = "S", default_value_t = 120, value_parser = value_parser!(u32).range(0..=i64::from(MAX_HOT_ADD_TIMEOUT)))]
    pub hot_add_timeout: u32,
    /// Longest wait for the service to stop or start, 1..=600 seconds.
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = value_parser!(u32).range(1..=600))]
    pub service_timeout: u32,
}

/// The strategies of an A/B, in the order given, each once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrategyList(pub Vec<Strategy>);

/// Parses `lazy,callback,eager` (names or registry values 0, 1, 2); unknown names, duplicates and an
/// empty list are refused with a message naming the culprit.
pub fn parse_strategies(text: &str) -> Result<StrategyList, String> {
    let mut list = Vec::new();
    for part in text.split(',') {
        let name = part.trim();
        if name.is_empty() {
            return Err("an empty strategy name (expected lazy, callback, eager)".into());
        }
        let strategy = Strategy::from_name(&name.to_ascii_lowercase())
            .or_else(|| name.parse().ok().and_then(Strategy::from_registry_value))
            .ok_or_else(|| {
                format!("unknown strategy '{name}' (expected lazy, callback, eager or 0, 1, 2)")
            })?;
        if list.contains(&strategy) {
            return Err(format!("strategy '{}' is listed twice", strategy.name()));
        }
        list.push(strategy);
    }
    Ok(StrategyList(list))
}

impl AbArgs {
    /// The strategies of round `round` (1-based): the list rotated left by `round - 1`, so each
    /// strategy runs first, second, ... equally often and drift of the machine hits all alike.
    pub fn order(&self, round: u32) -> Vec<Strategy> {
        let list = &self.strategies.0;
        if list.is_empty() {
            return Vec::new();
        }
        let shift = (round.saturating_sub(1) as usize) % list.len();
        list[shift..]
            .iter()
            .chain(&list[..shift])
            .copied()
            .collect()
    }

    /// The load request of every round.
    pub fn load(&self) -> LoadRequest {
        LoadRequest {
            rate: self.rate,
            seconds: self.seconds,
            threads: self.threads,
        }
    }

    /// The registry values a round of `strategy` writes, by name, in writing order.
    pub fn values(&self, strategy: Strategy) -> Vec<(&'static str, u32)> {
        let mut values = vec![(ACTIVATION_STRATEGY, strategy.registry_value())];
        if let Some(v) = self.idle_deactivation {
            values.push((IDLE_DEACTIVATION, v));
        }
        if let Some(v) = self.cycle_period_us {
            values.push((CYCLE_PERIOD, v));
        }
        values
    }

    /// The names of the values the A/B writes (the ones it must restore).
    pub fn touched_values(&self) -> Vec<&'static str> {
        self.values(Strategy::Callback)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }
}

/// Registry value `ActivationStrategy`.
pub const ACTIVATION_STRATEGY: &str = "ActivationStrategy";
/// Registry value `IdleDeactivation`.
pub const IDLE_DEACTIVATION: &str = "IdleDeactivation";
/// Registry value `CyclePeriodMicroseconds`.
pub const CYCLE_PERIOD: &str = "CyclePeriodMicroseconds";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(strategies: &str) -> AbArgs {
        AbArgs {
            rounds: 3,
            strategies: parse_strategies(strategies).unwrap(),
            out: PathBuf::from("out"),
            rate: 1000,
            seconds: 1,
            threads: 0,
            idle_deactivation: None,
            cycle_period_us: None,
            wait_hot_add: 0,
            hot_add_file: None,
            hot_add_timeout: 0,
            service_timeout: 60,
        }
    }

    #[test]
    fn the_order_rotates_by_one_each_round() {
        use Strategy::*;
        let a = args("lazy,callback,eager");
        assert_eq!(a.order(1), vec![Lazy, Callback, Eager]);
        assert_eq!(a.order(2), vec![Callback, Eager, Lazy]);
        assert_eq!(a.order(3), vec![Eager, Lazy, Callback]);
        assert_eq!(a.order(4), a.order(1));
        // Every strategy takes every position equally often over a multiple of the list's length.
        for strategy in Strategy::ALL {
            let positions: Vec<usize> = (1..=3)
                .map(|r| a.order(r).iter().position(|s| *s == strategy).unwrap())
                .collect();
            let mut sorted = positions.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2], "{strategy:?}: {positions:?}");
        }
        assert_eq!(args("eager").order(7), vec![Eager]);
    }

    #[test]
    fn strategy_lists_accept_names_and_values_and_refuse_the_rest() {
        use Strategy::*;
        assert_eq!(
            parse_strategies("Eager, 0").unwrap(),
            StrategyList(vec![Eager, Lazy])
        );
        for (bad, needle) in [
            ("lazy,fast", "unknown strategy 'fast'"),
            ("3", "unknown strategy '3'"),
            ("", "an empty strategy name"),
            ("lazy,,eager", "an empty strategy name"),
            ("lazy,0", "strategy 'lazy' is listed twice"),
        ] {
            let e = parse_strategies(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn values_written_follow_the_options() {
        let mut a = args("lazy");
        assert_eq!(a.values(Strategy::Eager), vec![(ACTIVATION_STRATEGY, 2)]);
        a.idle_deactivation = Some(0);
        a.cycle_period_us = Some(500);
        assert_eq!(
            a.values(Strategy::Lazy),
            vec![
                (ACTIVATION_STRATEGY, 0),
                (IDLE_DEACTIVATION, 0),
                (CYCLE_PERIOD, 500)
            ]
        );
        assert_eq!(
            a.touched_values(),
            vec![ACTIVATION_STRATEGY, IDLE_DEACTIVATION, CYCLE_PERIOD]
        );
        assert!(a.load().validate().is_ok());
    }
}
