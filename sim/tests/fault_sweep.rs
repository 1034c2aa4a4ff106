//! Fault-injection sweep, "fail each unique stack once": every distinct call path that allocates
//! through the simulated platform is made to fail, one path per run, in small deterministic torture
//! scenarios of every strategy (with hot-adds where the strategy takes them).
//!
//! Pass 1 runs the scenario with a hook that captures a backtrace at every allocation attempt and
//! normalises it to the chain of function names inside `kepoch` / `kepoch_sim` (allocator internals
//! dropped, no line numbers, no hashes). Symbolising is slow, so the hook first takes the raw return
//! addresses (glibc `backtrace`, cheap) and symbolises (`std::backtrace`) only stacks it has not seen. Pass 2 runs it once per distinct path with the **first**
//! attempt on that path failing (later attempts on the same path succeed), so the run goes on past the
//! failure and shows how the system recovers. Every run must end with a clean load error (and nothing
//! allocated) or run to the end with a fallback; readers keep entering (`enter` cannot fail), nothing
//! leaks (the allocator holds no live block after unload) and there is no violation.

use kepoch::{Mutations, Strategy};
use kepoch_sim::machine::{AllocRequest, FaultHook};
use kepoch_sim::torture::{run_with, Mode, RunOptions, RunOutcome, RunSpec, Workloads};
use std::backtrace::Backtrace;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Raw return addresses of the current stack (innermost 64 frames).
fn raw_stack() -> Vec<usize> {
    let mut frames = [std::ptr::null_mut::<libc::c_void>(); 64];
    // SAFETY: `frames` has room for 64 entries, the size passed.
    let n = unsafe { libc::backtrace(frames.as_mut_ptr(), frames.len() as libc::c_int) };
    frames[..n.max(0) as usize]
        .iter()
        .map(|&p| p as usize)
        .collect()
}

/// The call path of the current allocation: function names inside the project, innermost first.
/// Cached by raw stack.
fn call_path() -> String {
    static CACHE: Mutex<BTreeMap<Vec<usize>, String>> = Mutex::new(BTreeMap::new());
    let key = raw_stack();
    if let Some(path) = CACHE.lock().unwrap().get(&key) {
        return path.clone();
    }
    let path = symbolised_path();
    CACHE.lock().unwrap().insert(key, path.clone());
    path
}

fn symbolised_path() -> String {
    let trace = Backtrace::force_capture().to_string();
    let mut frames: Vec<String> = Vec::new();
    for line in trace.lines() {
        let line = line.trim();
        // Frame lines are `N: symbol`; location lines are `at file:line`.
        let Some((number, symbol)) = line.split_once(": ") else {
            continue;
        };
        if number.parse::<u32>().is_err() {
            continue;
        }
        let symbol = strip_hash(symbol);
        let ours = symbol.starts_with("kepoch::")
            || symbol.starts_with("kepoch_sim::")
            || symbol.starts_with("<kepoch");
        let allocator = symbol.contains("kepoch_sim::machine::alloc::")
            || symbol.contains("as kepoch::platform::Platform>::allocate");
        if ours && !allocator && frames.last() != Some(&symbol) {
            frames.push(symbol);
        }
    }
    frames.join(" < ")
}

fn strip_hash(symbol: &str) -> String {
    match symbol.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            head.to_string()
        }
        _ => symbol.to_string(),
    }
}

/// A short name for a path: its three innermost frames, without module prefixes.
fn short(path: &str) -> String {
    path.split(" < ")
        .take(3)
        .map(|f| {
            let f = f.trim_end_matches("::{{closure}}");
            f.rsplit("::")
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("::")
        })
        .collect::<Vec<_>>()
        .join(" < ")
}

fn spec(strategy: Strategy, hot_add_rate: u32, seed: u64) -> RunSpec {
    RunSpec {
        strategy,
        seed,
        mode: Mode::Deterministic,
        duration_us: 2_000,
        hot_add_rate,
        mutations: Mutations::NONE,
    }
}

fn run_hooked(spec: &RunSpec, hook: FaultHook) -> RunOutcome {
    run_with(
        spec,
        &RunOptions {
            alloc_fault_hook: Some(hook),
            // The overflow workload fails allocations of its own; here only the swept path fails.
            workloads: Workloads {
                overflow: false,
                ..Workloads::ALL
            },
            ..RunOptions::default()
        },
    )
}

/// Pass 1: every distinct allocation path and how often it allocated.
fn enumerate(spec: &RunSpec) -> BTreeMap<String, u64> {
    let paths = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let seen = paths.clone();
    let outcome = run_hooked(
        spec,
        Arc::new(move |_: &AllocRequest| {
            *seen.lock().unwrap().entry(call_path()).or_default() += 1;
            false
        }),
    );
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
    let paths = paths.lock().unwrap().clone();
    paths
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Result {
    LoadError,
    Fallback,
    Ran,
}

/// Pass 2 for one path: its first attempt fails.
fn fail_path(spec: &RunSpec, target: &str) -> (Result, String) {
    let fired = Arc::new(AtomicBool::new(false));
    let hook_fired = fired.clone();
    let target_path = target.to_string();
    let outcome = run_hooked(
        spec,
        Arc::new(move |_: &AllocRequest| {
            if hook_fired.load(Ordering::Relaxed) || call_path() != target_path {
                return false;
            }
            hook_fired.store(true, Ordering::Relaxed);
            true
        }),
    );
    assert!(
        fired.load(Ordering::Relaxed),
        "path not reached in pass 2: {target}"
    );
    let v = &outcome.violations;
    if v.len() == 1 && v[0].starts_with("load failed: ") {
        return (Result::LoadError, v[0].clone());
    }
    assert!(v.is_empty(), "failing {target}:\n{v:#?}");
    let s = &outcome.stats;
    assert!(s.reads > 0 && s.cycles > 0, "readers did not run: {s:?}");
    if s.prepare_failures > 0 || s.fallback_uses > 0 {
        (
            Result::Fallback,
            format!(
                "{} preparation failure(s), {} overflow use(s)",
                s.prepare_failures, s.fallback_uses
            ),
        )
    } else {
        (
            Result::Ran,
            format!("{} retires, {} reads", s.retires, s.reads),
        )
    }
}

#[test]
fn every_allocation_path_fails_once_cleanly() {
    let scenarios = [
        ("eager", Strategy::Eager, 0),
        ("lazy+hot-add", Strategy::Lazy, 1_000),
        ("callback", Strategy::Callback, 0),
        ("callback+hot-add", Strategy::Callback, 1_000),
    ];
    let mut total = 0;
    let mut by_result: BTreeMap<String, u32> = BTreeMap::new();
    let only = std::env::var("FAULT_SWEEP_ONLY").ok();
    for (name, strategy, hot_add_rate) in scenarios {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let spec = spec(strategy, hot_add_rate, 3);
        let paths = enumerate(&spec);
        println!(
            "fault sweep [{name}]: {} distinct allocation path(s)",
            paths.len()
        );
        assert!(!paths.is_empty());
        for (k, (path, count)) in paths.iter().enumerate() {
            if only.is_some() {
                eprintln!("  path {k:2}: {path}");
            }
            let (result, detail) = fail_path(&spec, path);
            println!(
                "  path {k:2} ({count:4} allocs) {:<60} -> {result:?}: {detail}",
                short(path)
            );
            *by_result.entry(format!("{result:?}")).or_default() += 1;
            total += 1;
        }
    }
    println!("fault sweep: failed {total} distinct allocation path(s): {by_result:?}");
}
