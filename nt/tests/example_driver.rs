//! The example driver (`examples/minimal_driver/driver.rs`, only kepoch-nt's public API) on the emulated
//! kernel: DriverEntry creates its domain and runs the reader and the writer, readers at DISPATCH run
//! on several threads while the writer replaces the route, and unload leaves nothing (no pool block of
//! its tag, no DPC, no work item).
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

#[path = "../examples/minimal_driver/driver.rs"]
mod driver;

use kepoch_ntemu::{Machine, MachineConfig};

fn live_of_its_tag(machine: &Machine) -> usize {
    let tag = driver::POOL_TAG.value();
    machine
        .pool()
        .live_by_tag
        .iter()
        .find(|(t, _)| *t == tag)
        .map_or(0, |(_, blocks)| *blocks)
}

#[test]
fn driver_entry_reader_writer_and_unload_run_on_the_emulated_kernel() {
    let machine = Machine::start(MachineConfig::default().service("minimal_driver"));
    let loaded = machine.load(driver::driver_entry).expect("DriverEntry");
    assert!(
        machine.log().iter().any(|(_, line)| line.contains(
            "minimal driver loaded: the reader saw gateway Some(1), the writer published 2"
        )),
        "{:?}",
        machine.log()
    );
    assert!(
        live_of_its_tag(&machine) > 0,
        "its domain's blocks carry MinD"
    );
    assert_eq!(machine.call("reader", driver::reader), Some(2));

    // Readers on three threads while the writer publishes 3..=12: every lookup sees a published
    // route (the ones retired meanwhile are freed only after the readers left).
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    machine.call("readers", || {
                        (0..200)
                            .map(|_| driver::reader())
                            .all(|gateway| gateway.is_some_and(|g| (2..=12).contains(&g)))
                    })
                })
            })
            .collect();
        for gateway in 3..=12 {
            machine.call("writer", move || driver::writer(gateway));
        }
        for reader in readers {
            assert!(
                reader.join().expect("a reader thread"),
                "a reader saw no route"
            );
        }
    });
    assert_eq!(machine.call("reader", driver::reader), Some(12));

    loaded.unload();
    assert_eq!(live_of_its_tag(&machine), 0, "unload freed every block");
    assert!(machine
        .log()
        .iter()
        .any(|(_, line)| line.contains("minimal driver unloaded")));
    machine.finish();
}
