//! What the loads of a round add up to, and the round's result (a JSON object).
//!
//! Messages are accounted per load and per CPU: a CPU is idle in a load if the workload ran no epoch
//! code on it during that load, and the messages delivered to it during that load count as messages to
//! an idle CPU. Hot-add notifications come from the core's counters, which keep the live hot-adds
//! apart from the replay at registration for processors that were already running; the machine's
//! own events cross-check the live counts.

use super::bootstrap::Dist;
use crate::machine::{Counters, CpuStatus, Machine};
use hdrhistogram::Histogram;
use kepoch::stats::{LatencyHistogram, Stats};
use kepoch::CallbackState;
use kepoch_report::{HotAdd, Latency, Samples};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

/// Messages delivered so far to each processor slot (the machine's per-CPU delivery counters).
pub(super) fn delivered(machine: &Machine) -> Vec<u64> {
    machine
        .report()
        .cpus
        .iter()
        .map(|c| c.messages_delivered)
        .collect()
}

/// One processor's messages over a round.
#[derive(Clone, Copy, Default)]
struct CpuAccount {
    /// Delivered during loads in which the workload ran no epoch code on it.
    while_idle: u64,
    /// Loads in which it ran and the workload ran epoch code on it.
    loads_used: u32,
    /// Loads in which it ran (part of the load at least) and the workload ran no epoch code on it.
    loads_idle: u32,
}

/// What one load saw, for its accounting when it ends.
pub(super) struct LoadRecord {
    /// Messages delivered per slot when the load began.
    pub(super) before: Vec<u64>,
    /// `(ms since the round began, messages delivered per slot)` taken while the load ran.
    pub(super) samples: Vec<(u64, Vec<u64>)>,
    /// Messages delivered per slot after the unload.
    pub(super) after: Vec<u64>,
    /// Per slot: whether the workload ran epoch code on it.
    pub(super) used: Vec<bool>,
    /// Per slot: whether the processor was running at the end of the load.
    pub(super) running: Vec<bool>,
    /// Milliseconds since the round began when the load ended.
    pub(super) end_ms: u64,
    /// Simulated milliseconds the workload ran.
    pub(super) ran_ms: u64,
    /// How the domain registered for processor-change notifications.
    pub(super) callback_state: CallbackState,
    /// The machine's counters right after the load (registration included).
    pub(super) at_registration: Counters,
    /// The machine's counters when the domain's statistics were read at the end.
    pub(super) at_end: Counters,
}

/// What the loads of a round add up to.
#[derive(Default)]
pub(super) struct Round {
    /// Simulated time at which the round began.
    pub(super) origin_us: u64,
    /// Loads that ran.
    pub(super) lifetimes: u32,
    pub(super) first: Vec<u64>,
    pub(super) enter_exit: Option<Histogram<u64>>,
    pub(super) cycle: Box<LatencyHistogram>,
    /// Duration and frees of every visit (one DPC), over the round's loads.
    pub(super) visits: Box<LatencyHistogram>,
    pub(super) frees: Box<LatencyHistogram>,
    sums: HashMap<&'static str, u64>,
    pub(super) cpus_prepared: u64,
    pub(super) per_cpu_bytes: u64,
    pub(super) bytes_at_load: u64,
    pub(super) pending_at_end: u64,
    pub(super) leaked: usize,
    pub(super) used: HashSet<u32>,
    pub(super) violations: Vec<String>,
    /// Load attempts that failed after the first load (each retried).
    pub(super) reload_errors: Vec<String>,
    /// Why the round ran fewer loads than planned, if it did.
    pub(super) shortened: Option<String>,
    /// Simulated milliseconds the workload ran over all loads.
    pub(super) ran_ms: u64,
    /// `[ms since the round began, messages delivered so far to CPUs idle in their load]`.
    idle_series: Vec<(u64, u64)>,
    messages_to_idle: u64,
    cpus: Vec<CpuAccount>,
    loads: Vec<Value>,
    pub(super) callback_state: Option<CallbackState>,
}

impl Round {
    /// A round that began at simulated time `origin_us`.
    pub(super) fn new(origin_us: u64) -> Round {
        Round {
            origin_us,
            ..Round::default()
        }
    }

    /// Adds `n` to the sum `key`.
    pub(super) fn add(&mut self, key: &'static str, n: u64) {
        *self.sums.entry(key).or_default() += n;
    }

    fn sum(&self, key: &str) -> u64 {
        self.sums.get(key).copied().unwrap_or(0)
    }

    /// Adds the core's counters of one load. The core counts the notifications of live hot-adds
    /// apart from the replay at registration; the machine's own events while the domain was
    /// registered must agree with its live counts (a round violation otherwise).
    pub(super) fn add_stats(&mut self, stats: &Stats, load: &LoadRecord) -> Value {
        let (start, complete, failure) = (
            stats.hot_add_start,
            stats.hot_add_complete,
            stats.hot_add_failure,
        );
        if load.callback_state == CallbackState::Registered {
            let (a, b) = (&load.at_registration, &load.at_end);
            let seen = (
                b.hot_add_start.saturating_sub(a.hot_add_start),
                b.hot_add_complete.saturating_sub(a.hot_add_complete),
                b.hot_add_failure.saturating_sub(a.hot_add_failure),
            );
            if seen != (start, complete, failure) {
                self.violations.push(format!(
                    "the core counted live hot-add notifications (start, complete, failure) {:?}, the machine delivered {seen:?} while the domain was registered",
                    (start, complete, failure)
                ));
            }
        }
        let replayed_start = stats.replayed_add_start;
        let replayed_complete = stats.replayed_add_complete;
        for (key, n) in [
            ("prepare_at_dispatch", stats.prepare_at_dispatch),
            ("prepare_passive", stats.prepare_passive),
            ("prepare_failures", stats.prepare_failures),
            ("fallback_uses", stats.fallback_uses),
            ("enters", stats.enters),
            ("remote_exits", stats.remote_exits),
            ("cycles", stats.cycles),
            ("core_messages", stats.messages),
            ("joins", stats.joins),
            ("leaves", stats.leaves),
            ("retired", stats.retired),
            ("freed", stats.freed),
            ("stalls_reported", stats.stalls_reported),
            ("hot_add_start", start),
            ("hot_add_complete", complete),
            ("hot_add_failure", failure),
            ("hot_add_vetoed", stats.hot_add_vetoed),
            ("replayed_start", replayed_start),
            ("replayed_complete", replayed_complete),
            ("visits_cut_short", stats.visits_cut_short),
        ] {
            self.add(key, n);
        }
        self.cycle.merge(&stats.cycle_latency_ns);
        self.visits.merge(&stats.visit_ns);
        self.frees.merge(&stats.frees_per_visit);
        self.cpus_prepared = self.cpus_prepared.max(stats.cpus_prepared);
        self.per_cpu_bytes = self.per_cpu_bytes.max(stats.per_cpu_bytes);
        self.pending_at_end = stats.pending;
        json!({
            "hot_add": to_json(HotAdd { start, complete, failure, vetoed: stats.hot_add_vetoed }),
            "hot_add_replayed": {"start": replayed_start, "complete": replayed_complete},
        })
    }

    /// Accounts the messages of one load (`load_no` counts from 1) and records its summary; `extra`
    /// (an object) is merged into it.
    pub(super) fn close_load(
        &mut self,
        load_no: u32,
        slots: &[u32],
        load: &LoadRecord,
        extra: Value,
    ) {
        if self.cpus.len() < slots.len() {
            self.cpus.resize(slots.len(), CpuAccount::default());
        }
        let idle: Vec<usize> = (0..slots.len())
            .filter(|&p| load.running[p] && !load.used[p])
            .collect();
        let since = |now: &[u64], p: usize| {
            now.get(p)
                .copied()
                .unwrap_or(0)
                .saturating_sub(load.before.get(p).copied().unwrap_or(0))
        };
        let earlier = self.messages_to_idle;
        for (t, now) in &load.samples {
            let n: u64 = idle.iter().map(|&p| since(now, p)).sum();
            self.idle_series.push((*t, earlier + n));
        }
        let mut to_idle = 0;
        for p in 0..slots.len() {
            let account = &mut self.cpus[p];
            if load.used[p] {
                account.loads_used += 1;
            } else if load.running[p] {
                let n = since(&load.after, p);
                account.loads_idle += 1;
                account.while_idle += n;
                to_idle += n;
            }
        }
        self.messages_to_idle += to_idle;
        self.idle_series.push((load.end_ms, self.messages_to_idle));
        let messages: u64 = (0..slots.len()).map(|p| since(&load.after, p)).sum();
        let mut summary = json!({
            "load": load_no,
            "ran_ms": load.ran_ms,
            "idle_cpus": idle.iter().map(|&p| slots[p]).collect::<Vec<_>>(),
            "messages": messages,
            "messages_to_idle_cpus": to_idle,
        });
        if let (Some(s), Value::Object(extra)) = (summary.as_object_mut(), extra) {
            s.extend(extra);
        }
        self.loads.push(summary);
    }

    /// The round's result (report figures plus the lab's own), with the machine's final report.
    pub(super) fn result(&self, machine: &Machine, head: Value, planned_ms: u64) -> Value {
        let report = machine.report();
        let slots = machine.slots();
        let mut cpu_messages = Vec::new();
        let mut idle_cpus = Vec::new();
        for (p, cpu) in report.cpus.iter().enumerate() {
            if cpu.status != CpuStatus::Running && cpu.messages_delivered == 0 {
                continue;
            }
            let a = self.cpus.get(p).copied().unwrap_or_default();
            if a.loads_used == 0 && a.loads_idle > 0 {
                idle_cpus.push(cpu.index);
            }
            cpu_messages.push(json!({
                "index": cpu.index,
                "group": slots[p].number.group,
                "number": slots[p].number.number,
                "messages": cpu.messages_delivered,
                "messages_while_idle": a.while_idle,
                "loads_used": a.loads_used,
                "loads_idle": a.loads_idle,
            }));
        }
        let messages: u64 = report.cpus.iter().map(|c| c.messages_delivered).sum();
        let n = |key: &str| self.sum(key);
        let alloc = machine.alloc_stats();
        let mut v = head;
        let figures = json!({
            "lifetimes": self.lifetimes,
            "callback_state": self.callback_state.map(|s| kepoch_report::callback_state_name(s as u32)),
            "cpus_prepared": self.cpus_prepared,
            "per_cpu_bytes": self.per_cpu_bytes,
            "alloc_bytes_at_load": self.bytes_at_load,
            "alloc_peak_bytes": alloc.peak_bytes,
            "alloc_failed": alloc.failed,
            "prepare_at_dispatch": n("prepare_at_dispatch"),
            "prepare_passive": n("prepare_passive"),
            "prepare_failures": n("prepare_failures"),
            "fallback_uses": n("fallback_uses"),
            "first_enter_ns": samples_json(&self.first),
            "enter_exit_ns": hdr_json(self.enter_exit.as_ref()),
        });
        let counts = json!({
            "enters": n("enters"),
            "remote_exits": n("remote_exits"),
            "cycles": n("cycles"),
            "cycle_latency_us": to_json(kepoch_report::CycleLatency::from_ns_histogram(&self.cycle)),
            "dpc_us": to_json(kepoch_report::DurationUs::from_ns_histogram(&self.visits)),
            "frees_per_visit": to_json(kepoch_report::Latency::from_histogram(&self.frees)),
            "visits_cut_short": n("visits_cut_short"),
            "messages": messages,
            "core_messages": n("core_messages"),
            "messages_to_idle_cpus": self.messages_to_idle,
            "idle_cpus": idle_cpus,
            "cpu_messages": cpu_messages,
            "idle_messages": self.idle_series,
            "cpus_used": self.used.len(),
            "joins": n("joins"),
            "leaves": n("leaves"),
            "retired": n("retired"),
            "freed": n("freed"),
            "pending_at_end": self.pending_at_end,
            "leaked": self.leaked,
            "use_after_free": n("use_after_free"),
            "reads": n("reads"),
            "stalls_reported": n("stalls_reported"),
            "hot_add": to_json(HotAdd {
                start: n("hot_add_start"),
                complete: n("hot_add_complete"),
                failure: n("hot_add_failure"),
                vetoed: n("hot_add_vetoed"),
            }),
            "hot_add_replayed": {"start": n("replayed_start"), "complete": n("replayed_complete")},
            "cpus_added": report.counters.hot_add_complete,
        });
        let run = json!({
            "loads": self.loads,
            "violations": self.violations,
            "failed_loads": self.reload_errors.len(),
            "reload_errors": self.reload_errors,
            "planned_ms": planned_ms,
            "ran_ms": self.ran_ms,
            "shortened": self.shortened,
        });
        for part in [figures, counts, run] {
            if let (Some(v), Value::Object(part)) = (v.as_object_mut(), part) {
                v.extend(part);
            }
        }
        v
    }
}

/// Exact quantiles of samples (nearest rank), with the samples.
fn samples_json(samples: &[u64]) -> Value {
    let d = Dist::from_samples(&samples.iter().map(|&v| v as f64).collect::<Vec<_>>());
    to_json(Samples {
        p50: d.quantile(0.5),
        p99: d.quantile(0.99),
        max: d.max(),
        count: samples.len() as u64,
        samples: samples.to_vec(),
    })
}

/// Quantiles of an HDR histogram, with its non-empty buckets as `[value, count]`.
fn hdr_json(h: Option<&Histogram<u64>>) -> Value {
    let latency = match h.filter(|h| !h.is_empty()) {
        None => Latency::default(),
        Some(h) => Latency {
            p50: Some(h.value_at_quantile(0.5)),
            p99: Some(h.value_at_quantile(0.99)),
            max: Some(h.max()),
            count: h.len(),
            hist: h
                .iter_recorded()
                .map(|v| {
                    (
                        h.median_equivalent(v.value_iterated_to()),
                        v.count_at_value(),
                    )
                })
                .collect(),
        },
    };
    to_json(latency)
}

/// A schema value as JSON (the lab's results are JSON objects; see the module documentation).
fn to_json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
