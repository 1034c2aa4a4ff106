//! The SPEC §6 JSON of a guest and the plain-text table (host-testable).

use std::fmt::Write;

use kepoch::config::Strategy;
use kepoch::stats::LatencyHistogram;
use kepoch::{CallbackState, Stats};

/// Facts about the machine the driver runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestInfo {
    /// `major.minor.build` from `RtlGetVersion`.
    pub os_build: String,
    /// `GetActiveProcessorCount(ALL_PROCESSOR_GROUPS)`.
    pub active_processors: u32,
    /// `GetMaximumProcessorCount(ALL_PROCESSOR_GROUPS)`.
    pub max_processors: u32,
    /// CPUID leaf 0x40000000 vendor, when CPUID.1:ECX.31 (hypervisor present) is set.
    pub hypervisor_vendor: Option<String>,
}

/// The usual name of a hypervisor vendor signature.
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

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn strategy_name(value: u32) -> String {
    Strategy::from_registry_value(value)
        .map_or_else(|| format!("unknown-{value}"), |s| s.name().to_string())
}

fn callback_state_name(value: u32) -> &'static str {
    match value {
        v if v == CallbackState::NotUsed as u32 => "not-used",
        v if v == CallbackState::Registered as u32 => "registered",
        v if v == CallbackState::ApiMissing as u32 => "api-missing",
        v if v == CallbackState::RegistrationFailed as u32 => "registration-failed",
        _ => "unknown",
    }
}

/// Version of the SPEC §6 JSON this tool writes (the same as `kepoch-sim ab --json`): 2 added
/// `schema_version`, rounds and sample counts, and the `hist` of every latency.
pub const SCHEMA_VERSION: u32 = 2;

/// The non-empty buckets of a histogram as `[[value, count], ...]`, values divided by `scale`.
fn hist_json(histogram: &LatencyHistogram, scale: f64) -> String {
    let points: Vec<String> = histogram
        .points()
        .map(|(v, n)| {
            if scale == 1.0 {
                format!("[{v}, {n}]")
            } else {
                format!("[{}, {n}]", v as f64 / scale)
            }
        })
        .collect();
    format!("[{}]", points.join(", "))
}

/// `p50`, `p99`, `max`, `count` (within 0.79 %, from the log-linear histogram) and the `hist`.
fn percentiles(histogram: &LatencyHistogram) -> String {
    let s = histogram.summary();
    if s.count == 0 {
        return "{\"p50\": null, \"p99\": null, \"max\": null, \"count\": 0, \"hist\": []}".into();
    }
    format!(
        "{{\"p50\": {}, \"p99\": {}, \"max\": {}, \"count\": {}, \"hist\": {}}}",
        s.p50,
        s.p99,
        s.max,
        s.count,
        hist_json(histogram, 1.0)
    )
}

/// Cycle latency in microseconds (`p50`, `p99`, `count`, `hist`), from the core's nanosecond
/// histogram.
fn cycle_latency_us(histogram: &LatencyHistogram) -> String {
    let s = histogram.summary();
    if s.count == 0 {
        return "{\"p50\": null, \"p99\": null, \"count\": 0, \"hist\": []}".into();
    }
    format!(
        "{{\"p50\": {:.3}, \"p99\": {:.3}, \"count\": {}, \"hist\": {}}}",
        s.p50 as f64 / 1e3,
        s.p99 as f64 / 1e3,
        s.count,
        hist_json(histogram, 1e3)
    )
}

/// `kepochctl stats --json`: `{"scenario": {...}, "results": [ {...} ]}` with one result (the running
/// strategy), `"source": "guest"` and the guest facts. Figures the driver does not measure are `null`.
pub fn stats_json(stats: &Stats, guest: &GuestInfo) -> String {
    let hypervisor = match &guest.hypervisor_vendor {
        Some(vendor) => format!(
            "{{\"vendor\": {}, \"name\": {}}}",
            json_string(vendor.trim_end_matches('\0')),
            json_string(hypervisor_name(vendor))
        ),
        None => "null".into(),
    };
    let guest_json = format!(
        "{{\"os_build\": {}, \"active_processors\": {}, \"max_processors\": {}, \"hypervisor\": {}}}",
        json_string(&guest.os_build),
        guest.active_processors,
        guest.max_processors,
        hypervisor
    );
    let mut r = String::new();
    let mut field = |name: &str, value: String| {
        if !r.is_empty() {
            r.push_str(",\n      ");
        }
        let _ = write!(r, "{}: {}", json_string(name), value);
    };
    field("strategy", json_string(&strategy_name(stats.strategy)));
    field("source", json_string("guest"));
    field("round", "0".into());
    field("guest", guest_json.clone());
    field("loaded", "true".into());
    field("load_error", "null".into());
    field(
        "callback_state",
        json_string(callback_state_name(stats.callback_state)),
    );
    field("config_warnings", stats.config_warnings.to_string());
    field("max_reported", stats.max_reported.to_string());
    field("active", stats.active.to_string());
    field("cpus_prepared", stats.cpus_prepared.to_string());
    field("per_cpu_bytes", stats.per_cpu_bytes.to_string());
    field("prepare_at_dispatch", stats.prepare_at_dispatch.to_string());
    field("prepare_passive", stats.prepare_passive.to_string());
    field("prepare_failures", stats.prepare_failures.to_string());
    field("fallback_uses", stats.fallback_uses.to_string());
    field("first_enter_ns", percentiles(&stats.first_enter_ns));
    field("enter_exit_ns", percentiles(&stats.enter_exit_ns));
    field("enters", stats.enters.to_string());
    field("exits", stats.exits.to_string());
    field("remote_exits", stats.remote_exits.to_string());
    field("cycles", stats.cycles.to_string());
    field(
        "cycle_latency_us",
        cycle_latency_us(&stats.cycle_latency_ns),
    );
    field("messages", stats.messages.to_string());
    field("messages_to_idle_cpus", "null".into());
    field("joins", stats.joins.to_string());
    field("leaves", stats.leaves.to_string());
    field("retired", stats.retired.to_string());
    field("freed", stats.freed.to_string());
    field("pending_at_end", stats.pending.to_string());
    // A running kernel cannot tell leaks or use-after-free; the simulator and torture tests do.
    field("leaked", "null".into());
    field("leaked_readers", stats.leaked_readers.to_string());
    field("use_after_free", "null".into());
    field("double_retires", stats.double_retires.to_string());
    field("stalls_reported", stats.stalls_reported.to_string());
    field(
        "hot_add",
        format!(
            "{{\"start\": {}, \"complete\": {}, \"failure\": {}, \"vetoed\": {}}}",
            stats.hot_add_start,
            stats.hot_add_complete,
            stats.hot_add_failure,
            stats.hot_add_vetoed
        ),
    );
    field("work_items_run", stats.work_items_run.to_string());
    field("global_epoch", stats.global_epoch.to_string());
    field("released_epoch", stats.released_epoch.to_string());
    field("stats_version", stats.version.to_string());
    format!(
        "{{\n  \"schema_version\": {SCHEMA_VERSION},\n  \"scenario\": {{\"name\": \"guest\", \"source\": \"guest\", \"description\": {}, \"max_reported\": {}, \"active_at_boot\": null, \"guest\": {}}},\n  \"results\": [\n    {{\n      {}\n    }}\n  ]\n}}\n",
        json_string("kepoch.sys counters read with kepochctl stats --json"),
        stats.max_reported,
        guest_json,
        r
    )
}

/// `kepochctl stats`: the main figures as text.
pub fn stats_table(stats: &Stats) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<22} {value}");
    };
    line("strategy", strategy_name(stats.strategy));
    line("callback", callback_state_name(stats.callback_state).into());
    line("config warnings", stats.config_warnings.to_string());
    line(
        "processors",
        format!("max {} active {}", stats.max_reported, stats.active),
    );
    line(
        "cpus prepared",
        format!("{} ({} bytes)", stats.cpus_prepared, stats.per_cpu_bytes),
    );
    line(
        "prepared",
        format!(
            "{} at DISPATCH, {} at PASSIVE, {} failed",
            stats.prepare_at_dispatch, stats.prepare_passive, stats.prepare_failures
        ),
    );
    line("fallback uses", stats.fallback_uses.to_string());
    line(
        "enters / exits",
        format!(
            "{} / {} ({} remote)",
            stats.enters, stats.exits, stats.remote_exits
        ),
    );
    line(
        "retired / freed",
        format!(
            "{} / {} ({} pending)",
            stats.retired, stats.freed, stats.pending
        ),
    );
    line(
        "cycles / messages",
        format!("{} / {}", stats.cycles, stats.messages),
    );
    line(
        "joins / leaves",
        format!("{} / {}", stats.joins, stats.leaves),
    );
    line("stalls reported", stats.stalls_reported.to_string());
    line(
        "hot-add",
        format!(
            "start {} complete {} failure {}",
            stats.hot_add_start, stats.hot_add_complete, stats.hot_add_failure
        ),
    );
    for (name, h) in [
        ("first enter ns", &stats.first_enter_ns),
        ("enter/exit ns", &stats.enter_exit_ns),
    ] {
        let s = h.summary();
        line(
            name,
            format!("p50 {} p99 {} max {} (n={})", s.p50, s.p99, s.max, s.count),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kepoch::STATS_VERSION;

    fn guest(vendor: Option<&str>) -> GuestInfo {
        GuestInfo {
            os_build: "10.0.20348".into(),
            active_processors: 4,
            max_processors: 64,
            hypervisor_vendor: vendor.map(str::to_string),
        }
    }

    #[test]
    fn json_is_valid_and_carries_the_schema_fields() {
        let mut stats = Stats {
            version: STATS_VERSION,
            strategy: 0,
            callback_state: CallbackState::NotUsed as u32,
            config_warnings: 1,
            max_reported: 64,
            active: 4,
            retired: 10,
            freed: 7,
            pending: 3,
            ..Stats::default()
        };
        stats.enter_exit_ns.record(250);
        stats.cycle_latency_ns.record(2000);
        let text = stats_json(&stats, &guest(Some("Microsoft Hv")));
        let value: serde_json::Value = serde_json::from_str(&text).expect(&text);
        let result = &value["results"][0];
        assert_eq!(value["scenario"]["source"], "guest");
        assert_eq!(result["source"], "guest");
        assert_eq!(result["strategy"], "lazy");
        assert_eq!(result["loaded"], true);
        assert!(result["load_error"].is_null());
        assert_eq!(result["config_warnings"], 1);
        assert_eq!(result["pending_at_end"], 3);
        assert_eq!(value["schema_version"], SCHEMA_VERSION);
        assert_eq!(result["enter_exit_ns"]["p50"], 250);
        assert_eq!(result["enter_exit_ns"]["count"], 1);
        assert_eq!(result["enter_exit_ns"]["hist"][0][1], 1);
        let v = result["enter_exit_ns"]["hist"][0][0].as_f64().unwrap();
        assert!((v - 250.0).abs() <= 250.0 / 128.0, "{v}");
        assert_eq!(result["cycle_latency_us"]["hist"][0][0], 2.0);
        assert!(result["first_enter_ns"]["p50"].is_null());
        assert_eq!(result["guest"]["os_build"], "10.0.20348");
        assert_eq!(result["guest"]["hypervisor"]["name"], "Hyper-V");
        for key in [
            "cpus_prepared",
            "per_cpu_bytes",
            "prepare_at_dispatch",
            "prepare_failures",
            "fallback_uses",
            "cycles",
            "cycle_latency_us",
            "messages",
            "messages_to_idle_cpus",
            "retired",
            "freed",
            "leaked",
            "use_after_free",
            "stalls_reported",
            "hot_add",
        ] {
            assert!(result.get(key).is_some(), "missing {key}");
        }
        let bare = stats_json(&stats, &guest(None));
        let value: serde_json::Value = serde_json::from_str(&bare).unwrap();
        assert!(value["results"][0]["guest"]["hypervisor"].is_null());
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        let odd = guest(Some("x\"y\0\0\0"));
        let text = stats_json(&Stats::default(), &odd);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["results"][0]["guest"]["hypervisor"]["vendor"], "x\"y");
        assert_eq!(value["results"][0]["strategy"], "lazy");
    }

    #[test]
    fn hypervisor_names() {
        assert_eq!(hypervisor_name("KVMKVMKVM\0\0\0"), "KVM");
        assert_eq!(hypervisor_name("VMwareVMware"), "VMware");
        assert_eq!(hypervisor_name("something"), "unknown");
    }

    #[test]
    fn table_mentions_the_strategy() {
        let stats = Stats {
            strategy: 1,
            callback_state: CallbackState::ApiMissing as u32,
            ..Stats::default()
        };
        let table = stats_table(&stats);
        assert!(table.contains("callback"));
        assert!(table.contains("api-missing"));
    }
}
