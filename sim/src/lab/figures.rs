//! The figures of the report: where each sits in a round result, how rounds combine into it
//! (pooled quantile, median or sum), and whether strategies are compared on it.

use super::bootstrap::Statistic;

/// How a figure is read from a round and combined over rounds.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    /// Key in the JSON (`first_enter_ns.p50`).
    pub key: &'static str,
    /// Row label of the table (with the unit).
    pub label: &'static str,
    /// Where the figure sits in a round result.
    pub path: &'static [&'static str],
    /// How rounds combine.
    pub stat: Statistic,
    /// Compared between strategies (interval and verdict).
    pub compared: bool,
}

const fn fig(
    key: &'static str,
    label: &'static str,
    path: &'static [&'static str],
    stat: Statistic,
    compared: bool,
) -> Figure {
    Figure {
        key,
        label,
        path,
        stat,
        compared,
    }
}

use Statistic::{Median, Quantile, Sum};

/// Every numeric figure, in table order.
pub const FIGURES: &[Figure] = &[
    fig(
        "cpus_prepared",
        "CPUs prepared",
        &["cpus_prepared"],
        Median,
        true,
    ),
    fig(
        "per_cpu_bytes",
        "per-CPU memory (bytes)",
        &["per_cpu_bytes"],
        Median,
        true,
    ),
    fig(
        "prepare_at_dispatch",
        "prepared at DISPATCH, hot path (count)",
        &["prepare_at_dispatch"],
        Median,
        true,
    ),
    fig(
        "prepare_failures",
        "preparation failures (count)",
        &["prepare_failures"],
        Median,
        false,
    ),
    fig(
        "fallback_uses",
        "overflow fallback uses (count)",
        &["fallback_uses"],
        Median,
        false,
    ),
    fig(
        "first_enter_ns.p50",
        "first enter p50 (ns)",
        &["first_enter_ns", "p50"],
        Quantile(0.5),
        true,
    ),
    fig(
        "first_enter_ns.p99",
        "first enter p99 (ns)",
        &["first_enter_ns", "p99"],
        Quantile(0.99),
        true,
    ),
    fig(
        "first_enter_ns.max",
        "first enter max (ns)",
        &["first_enter_ns", "max"],
        Quantile(1.0),
        false,
    ),
    fig(
        "enter_exit_ns.p50",
        "enter+exit p50 (ns)",
        &["enter_exit_ns", "p50"],
        Quantile(0.5),
        true,
    ),
    fig(
        "enter_exit_ns.p99",
        "enter+exit p99 (ns)",
        &["enter_exit_ns", "p99"],
        Quantile(0.99),
        false,
    ),
    fig(
        "enter_exit_ns.max",
        "enter+exit max (ns)",
        &["enter_exit_ns", "max"],
        Quantile(1.0),
        false,
    ),
    fig("cycles", "cycles (count)", &["cycles"], Median, false),
    fig(
        "cycle_latency_us.p50",
        "cycle latency p50 (us)",
        &["cycle_latency_us", "p50"],
        Quantile(0.5),
        true,
    ),
    fig(
        "cycle_latency_us.p99",
        "cycle latency p99 (us)",
        &["cycle_latency_us", "p99"],
        Quantile(0.99),
        false,
    ),
    fig(
        "dpc_us.p50",
        "DPC (visit) duration p50 (us)",
        &["dpc_us", "p50"],
        Quantile(0.5),
        true,
    ),
    fig(
        "dpc_us.p99",
        "DPC (visit) duration p99 (us)",
        &["dpc_us", "p99"],
        Quantile(0.99),
        false,
    ),
    fig(
        "dpc_us.max",
        "DPC (visit) duration max (us)",
        &["dpc_us", "max"],
        Quantile(1.0),
        false,
    ),
    fig(
        "frees_per_visit.p99",
        "frees per visit p99 (count)",
        &["frees_per_visit", "p99"],
        Quantile(0.99),
        false,
    ),
    fig(
        "frees_per_visit.max",
        "frees per visit max (count)",
        &["frees_per_visit", "max"],
        Quantile(1.0),
        false,
    ),
    fig(
        "visits_cut_short",
        "visits cut short (MaxFreesPerVisit or 50 us) (count)",
        &["visits_cut_short"],
        Sum,
        false,
    ),
    fig(
        "messages",
        "messages, DPCs delivered (count)",
        &["messages"],
        Median,
        false,
    ),
    fig(
        "messages_to_idle_cpus",
        "messages to idle CPUs (count)",
        &["messages_to_idle_cpus"],
        Median,
        true,
    ),
    fig("retired", "retired (objects)", &["retired"], Median, false),
    fig("freed", "freed (objects)", &["freed"], Median, false),
    fig(
        "pending_at_end",
        "pending at end (objects)",
        &["pending_at_end"],
        Median,
        false,
    ),
    fig(
        "leaked",
        "leaked after unload (blocks, all rounds)",
        &["leaked"],
        Sum,
        false,
    ),
    fig(
        "use_after_free",
        "use-after-free (reads, all rounds)",
        &["use_after_free"],
        Sum,
        false,
    ),
    fig(
        "stalls_reported",
        "stalls reported (count)",
        &["stalls_reported"],
        Median,
        false,
    ),
    fig(
        "hot_add.start",
        "hot-added: AddStart (count)",
        &["hot_add", "start"],
        Median,
        false,
    ),
    fig(
        "hot_add.complete",
        "hot-added: AddComplete (count)",
        &["hot_add", "complete"],
        Median,
        false,
    ),
    fig(
        "hot_add.failure",
        "hot-added: AddFailure (count)",
        &["hot_add", "failure"],
        Median,
        false,
    ),
    fig(
        "hot_add.vetoed",
        "hot-added: vetoed (count)",
        &["hot_add", "vetoed"],
        Median,
        false,
    ),
    fig(
        "hot_add_replayed.start",
        "replayed at registration: AddStart (count)",
        &["hot_add_replayed", "start"],
        Median,
        false,
    ),
    fig(
        "hot_add_replayed.complete",
        "replayed at registration: AddComplete (count)",
        &["hot_add_replayed", "complete"],
        Median,
        false,
    ),
];
