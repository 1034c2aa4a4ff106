//! Processors hot-added while the load generator and cycles run, and an add that fails.

use kepoch_driver::nt::host::{Machine, MachineConfig, ProcessorReport};

use crate::common::*;

/// `STATUS_INSUFFICIENT_RESOURCES`.
const INSUFFICIENT_RESOURCES: i32 = 0xC000_009Au32 as i32;

fn processor(machine: &Machine, group: u16, number: u8) -> ProcessorReport {
    machine
        .processors()
        .into_iter()
        .find(|p| p.group == group && p.number == number)
        .expect("a processor slot")
}

/// The callback strategy: AddStart prepares the new processor, cycles send it messages only after
/// AddComplete (the emulation fails any DPC queued to it earlier), a failed add is rolled back.
fn hot_add_during_load(config: MachineConfig, prepared_by_callback: bool) {
    let machine = Machine::start(config);
    let driver = load(&machine);
    start_load(&driver, 20_000, 60, 0);
    wait_for(&driver, "cycles with messages", |s| {
        s.cycles >= 5 && s.messages >= 5
    });

    let index = machine.hot_add(0, 1).expect("hot-add of (0, 1)");
    assert_eq!(index, 4, "a hot-added processor gets the next index");
    let added = driver.stats();
    assert_eq!(added.active, 5);
    if prepared_by_callback {
        assert_eq!(added.hot_add_start, 5, "4 replayed + 1 live: {added:#?}");
        assert_eq!(added.hot_add_complete, 5);
        assert_eq!(added.cpus_prepared, 5);
    }

    // A load started now spreads over the group-0 processors, the new one included.
    stop_load(&driver);
    start_load(&driver, 20_000, 60, 0);
    let before = processor(&machine, 0, 1).messages;
    wait_for(&driver, "cycles visiting the hot-added processor", |_| {
        processor(&machine, 0, 1).messages > before + 3
    });

    // An add that fails after AddStart: AddFailure, the slot prepared for it is rolled back.
    let prepared = driver.stats().cpus_prepared;
    assert_eq!(
        machine.hot_add_failing(1, 0, INSUFFICIENT_RESOURCES),
        Err(INSUFFICIENT_RESOURCES)
    );
    let failed = driver.stats();
    assert_eq!(failed.active, 5);
    if prepared_by_callback {
        assert_eq!(failed.hot_add_failure, 1, "{failed:#?}");
        assert_eq!(
            failed.cpus_prepared, prepared,
            "the failed add's slot is released"
        );
    }
    assert_eq!(processor(&machine, 1, 0).index, None);

    // A second add while cycles run, in the other group.
    assert_eq!(machine.hot_add(1, 2), Ok(5));
    wait_for(&driver, "more cycles", |s| s.cycles > failed.cycles + 5);
    let stats = quiesce_and_unload(driver);
    assert!(stats.freed > 0);
    machine.finish();
}

#[test]
fn callback_strategy_prepares_hot_added_processors_and_messages_them_after_add_complete() {
    hot_add_during_load(machine_with_strategy(1), true);
}

#[test]
fn lazy_strategy_prepares_a_hot_added_processor_on_its_first_epoch() {
    hot_add_during_load(machine_with_strategy(0), false);
}

#[test]
fn callback_strategy_without_the_callback_api_falls_back_to_lazy_for_hot_added_processors() {
    hot_add_during_load(
        machine_with_strategy(1).missing("KeRegisterProcessorChangeCallback"),
        false,
    );
}
