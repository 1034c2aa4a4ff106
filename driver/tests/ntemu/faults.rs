//! Fault injection: every pool allocation of a load failed in turn, DPC delivery held up past the
//! driver's probe, DriverEntry failing after the probe.

use std::time::Duration;

use kepoch_driver::driver::driver_entry;
use kepoch_ntemu::{Machine, MachineConfig, RegistryData};

use crate::common::*;

/// Allocation attempts of a clean load with a short load run and unload.
fn attempts_of_a_clean_run() -> u64 {
    let machine = Machine::start(MachineConfig::default());
    let driver = load(&machine);
    quiesce_and_unload(driver);
    machine.finish().attempts
}

#[test]
fn each_allocation_of_load_and_unload_failing_in_turn_leaks_nothing() {
    let attempts = attempts_of_a_clean_run();
    assert!(attempts >= 5, "{attempts}");
    for failing in 1..=attempts + 2 {
        let config = MachineConfig {
            fail_allocations: Some((failing, 1)),
            ..MachineConfig::default()
        }
        // The driver logs the allocation it could not make (device, domain or a slot).
        .expect_error("fail");
        let machine = Machine::start(config);
        match machine.load(driver_entry) {
            Ok(driver) => {
                assert_eq!(driver.open(), 0);
                start_load(&driver, 5_000, 30, 0);
                wait_for(&driver, "enters", |s| s.enters > 50);
                quiesce_and_unload(driver);
            }
            Err(status) => assert!(status < 0),
        }
        let pool = machine.finish();
        assert_eq!(pool.failed, u64::from(failing <= pool.attempts));
    }
}

#[test]
fn a_probe_dpc_delivered_after_the_probe_gave_up_is_flushed_by_unload() {
    // DPCs are held up for 2 s: the driver's 500 ms probe concludes they are not delivered (as on
    // Wine) and uses the overflow slot; its probe DPC is still queued when unload runs.
    let config = MachineConfig {
        dpc_stall: Duration::from_secs(2),
        ..MachineConfig::default()
    };
    let machine = Machine::start(config);
    let driver = load(&machine);
    let stats = driver.stats();
    assert_eq!(
        stats.cpus_prepared, 0,
        "no per-CPU slot without DPC delivery"
    );
    start_load(&driver, 2_000, 30, 0);
    wait_for(&driver, "overflow enters", |s| s.fallback_uses > 10);
    quiesce_and_unload(driver);
    machine.finish();
}

#[test]
fn driver_entry_failing_after_the_probe_leaves_no_dpc_queued() {
    // With delivery held up, the probe's DPC is still queued when DriverEntry fails after it: eager
    // refusing max > active (the domain's teardown), or every allocation after the device object and
    // the probe's block failing (the domain never exists: the platform drops in Domain::create): the
    // platform must flush before it frees the probe and the image goes away.
    let held_up = || MachineConfig {
        dpc_stall: Duration::from_secs(2),
        ..MachineConfig::default()
    };
    let eager = MachineConfig {
        parameters: vec![("ActivationStrategy".into(), RegistryData::Dword(2))],
        ..held_up()
    };
    let no_memory = MachineConfig {
        fail_allocations: Some((3, u64::MAX / 2)),
        ..held_up()
    };
    for config in [eager, no_memory] {
        let machine = Machine::start(config.expect_error("load failed"));
        assert!(machine.load(driver_entry).is_err());
        machine.finish();
    }
}
