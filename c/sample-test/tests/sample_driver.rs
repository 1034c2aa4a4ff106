//! The C sample driver on the emulated kernel: DriverEntry, one worker thread per processor reading
//! at PASSIVE and (nested) at DISPATCH while writers publish and free routes, two processors
//! hot-added during the run, a scheduled and a cancelled work item, unload — with the emulated
//! kernel's Verifier-style checks (IRQL, pool leaks and tags, DPCs and work items after unload).
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use std::time::{Duration, Instant};

use kepoch_c_sample_test::{counters, driver_entry, Counters};
use kepoch_ntemu::{Machine, MachineConfig};

/// Waits until `done` holds for the sample's counters; a hang detector, not a timing condition.
fn wait_for(machine: &Machine, what: &str, done: impl Fn(&Counters) -> bool) -> Counters {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = counters();
        if done(&now) {
            return now;
        }
        let failures = machine.take_failures();
        assert!(
            failures.is_empty(),
            "while waiting for {what}: {failures:?}"
        );
        assert!(
            Instant::now() < deadline,
            "{what}: no progress in 120 s ({now:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn live_blocks(machine: &Machine, tag: &[u8; 4]) -> usize {
    let tag = u32::from_le_bytes(*tag);
    machine
        .pool()
        .live_by_tag
        .iter()
        .find(|(t, _)| *t == tag)
        .map_or(0, |(_, blocks)| *blocks)
}

#[test]
fn the_c_sample_runs_on_the_emulated_kernel_through_two_hot_adds() {
    let machine = Machine::start(MachineConfig::default().service("kepoch_c_sample"));
    let loaded = machine.load(driver_entry).expect("DriverEntry");
    assert!(machine
        .log()
        .iter()
        .any(|(_, line)| line.contains("kepoch_c_sample: loaded")));
    let before = wait_for(&machine, "the first reads and writes", |c| {
        c.reads >= 200 && c.writes >= 100
    });

    let active = machine.processors().iter().filter(|p| p.complete).count();
    let first = machine.hot_add(0, 1).expect("hot-add of processor 0:1");
    let second = machine.hot_add(1, 0).expect("hot-add of processor 1:0");
    assert_ne!(first, second);
    assert_eq!(
        machine.processors().iter().filter(|p| p.complete).count(),
        active + 2
    );
    let after = wait_for(&machine, "reads and writes after the hot-adds", |c| {
        c.reads >= before.reads + 4000 && c.writes >= before.writes + 2000
    });
    assert_eq!(after.bad_reads, 0, "a reader saw a freed route: {after:?}");
    assert!(
        live_blocks(&machine, b"Samp") > 0,
        "the published route is a block of the sample's own tag"
    );
    assert!(after.cache_aligned > 0, "{after:?}");

    loaded.unload();
    let last = counters();
    assert_eq!(last.bad_reads, 0, "{last:?}");
    assert_eq!(
        last.work_items_run, 1,
        "the scheduled item ran once, the cancelled one never"
    );
    let summary = machine
        .log()
        .into_iter()
        .find(|(_, line)| line.contains("kepoch_c_sample: unloading"))
        .expect("the unload summary");
    assert!(summary.1.contains(", bad reads 0,"), "{summary:?}");
    assert!(machine
        .log()
        .iter()
        .any(|(_, line)| line.contains("kepoch_c_sample: unloaded")));
    assert_eq!(
        live_blocks(&machine, b"Samp"),
        0,
        "every route was released"
    );
    assert_eq!(
        live_blocks(&machine, b"KepE"),
        0,
        "the domain left nothing behind"
    );
    machine.finish();
}
