//! Domains with the driver's own pool tags and work-item owners, two at once, and the DPC-delivery
//! probe.

use std::sync::atomic::Ordering;
use std::time::Duration;

use kepoch_nt::{DpcDelivery, NtPlatform};
use kepoch_ntemu::{Machine, MachineConfig};

use crate::common::*;

fn live(machine: &Machine, tag: &[u8; 4]) -> usize {
    let value = u32::from_le_bytes(*tag);
    machine
        .pool()
        .live_by_tag
        .iter()
        .find(|(t, _)| *t == value)
        .map_or(0, |(_, blocks)| *blocks)
}

#[test]
fn a_domain_with_its_own_tag_and_driver_object_work_items_runs_and_leaves_nothing() {
    let machine = Machine::start(MachineConfig::default().service("testdrv"));
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let domain = borrowable(create(&machine, settings(tag(b"Tst1"), driver_owner())));
    assert!(
        live(&machine, b"Tst1") > 0,
        "the domain's blocks carry its tag"
    );
    assert_eq!(live(&machine, b"Epch"), 0, "no block of kepoch.sys's tag");
    exercise(&machine, domain, 0);
    assert!(WORK_RUNS[0].load(Ordering::SeqCst) > 0);
    let stats = stats(&machine, domain);
    assert_eq!(stats.work_items_run, 1, "{stats:#?}");
    assert_eq!(stats.freed, stats.retired, "{stats:#?}");
    // SAFETY: every machine call borrowing it returned.
    drop_domain(&machine, unsafe { reclaim(domain) });
    assert_eq!(
        live(&machine, b"Tst1"),
        0,
        "the domain freed every block of its tag"
    );
    driver.unload();
    machine.finish();
}

#[test]
fn two_domains_at_once_with_different_tags_and_owners_stay_apart() {
    let machine = Machine::start(MachineConfig::default());
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let first = borrowable(create(&machine, settings(tag(b"DomA"), driver_owner())));
    let second = borrowable(create(&machine, settings(tag(b"DomB"), device_owner())));
    let (a, b) = (live(&machine, b"DomA"), live(&machine, b"DomB"));
    assert!(a > 0 && b > 0, "{a} {b}");
    exercise(&machine, first, 0);
    exercise(&machine, second, 1);
    // Each domain counts only its own readers and work.
    for domain in [first, second] {
        let stats = stats(&machine, domain);
        assert_eq!(stats.work_items_run, 1, "{stats:#?}");
        assert_eq!(stats.enters, stats.exits, "{stats:#?}");
        // Its two values and its work item, nothing of the other domain.
        assert_eq!(stats.retired, 3, "{stats:#?}");
        assert_eq!(stats.freed, 3, "{stats:#?}");
    }
    // Dropping one leaves the other working.
    // SAFETY: every machine call borrowing them returned.
    drop_domain(&machine, unsafe { reclaim(first) });
    assert_eq!(live(&machine, b"DomA"), 0);
    // B keeps its blocks (more at times: its idle timer's stopper while one is queued).
    assert!(live(&machine, b"DomB") >= b);
    exercise(&machine, second, 1);
    // SAFETY: as above.
    drop_domain(&machine, unsafe { reclaim(second) });
    driver.unload();
    machine.finish();
}

#[test]
fn the_probe_binds_slots_where_dpcs_run_and_refuses_them_where_they_do_not() {
    for (stall, delivered) in [(Duration::ZERO, true), (Duration::from_secs(2), false)] {
        let machine = Machine::start(MachineConfig {
            dpc_stall: stall,
            ..MachineConfig::default()
        });
        let driver = machine.load(driver_entry).expect("DriverEntry");
        let probing = kepoch_nt::Settings {
            dpc_delivery: DpcDelivery::Probe { milliseconds: 100 },
            ..settings(tag(b"Prob"), driver_owner())
        };
        let domain = borrowable(create(&machine, probing));
        assert_eq!(domain.platform().dpcs_delivered(), delivered);
        let warned = machine
            .log()
            .iter()
            .any(|(_, line)| line.contains("DPCs queued to a processor are not delivered"));
        assert_eq!(warned, !delivered);
        // Without DPC delivery (Wine) the platform refuses work items, so only the reader and the
        // writer run there.
        if delivered {
            exercise(&machine, domain, 0);
        }
        let stats = stats(&machine, domain);
        assert_eq!(stats.cpus_prepared > 0, delivered, "{stats:#?}");
        // SAFETY: every machine call borrowing it returned.
        drop_domain(&machine, unsafe { reclaim(domain) });
        driver.unload();
        machine.finish();
    }
}

#[test]
fn a_platform_dropped_after_a_probe_that_gave_up_waits_for_its_dpc() {
    // DPCs held up past the probe: the platform drops (Domain::create fails on the allocation after
    // the probe's block) while its probe DPC is still queued; it must flush before freeing it.
    let machine = Machine::start(
        MachineConfig {
            dpc_stall: Duration::from_secs(1),
            // 1: the device; 2: the probe's block; 3 on: the table of the debug checks (they go
            // off without it) and the domain.
            fail_allocations: Some((3, u64::MAX / 2)),
            ..MachineConfig::default()
        }
        .service("testdrv"),
    );
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let failed = machine.call("a domain without memory", || {
        let probing = kepoch_nt::Settings {
            dpc_delivery: DpcDelivery::Probe { milliseconds: 50 },
            ..settings(tag(b"Prob"), driver_owner())
        };
        // SAFETY: PASSIVE; the driver object outlives the platform.
        let platform = unsafe { NtPlatform::new(probing) }.expect("the probe's block");
        assert!(!platform.dpcs_delivered());
        kepoch::Domain::create(platform, kepoch::config::Config::default()).is_err()
    });
    assert!(failed);
    driver.unload();
    machine.finish();
}
