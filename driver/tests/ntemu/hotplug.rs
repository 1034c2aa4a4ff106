//! Processors hot-added while the load generator and cycles run, and an add that fails.

use std::time::Duration;

use kepoch_ntemu::{Machine, MachineConfig, ProcessorReport};

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
        assert_eq!(
            (added.replayed_add_start, added.hot_add_start),
            (4, 1),
            "4 replayed + 1 live: {added:#?}"
        );
        assert_eq!(
            (added.replayed_add_complete, added.hot_add_complete),
            (4, 1)
        );
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

// ---- Epoch code on a processor between AddStart and AddComplete/AddFailure (PROTOCOL.md, "Hot-add
// window") ------------------------------------------------------------------------------------------------

/// Lets one test thread hot-add (which blocks for the whole AddStart → window → AddComplete sequence)
/// while another sends IOCTLs: the machine's state is behind its own locks; only its bookkeeping of
/// driver objects is not `Sync`, and `hot_add`/`ioctl` do not touch it.
struct AcrossThreads<'a>(&'a Machine);
// SAFETY: test-only; see above.
unsafe impl Sync for AcrossThreads<'_> {}

/// Hot-adds (0, 1) with a long window between the processor starting and AddComplete, and starts the
/// load generator inside that window: `KeQueryActiveProcessors` already includes the running processor,
/// so one load thread is pinned to it and runs epoch code there before AddComplete. Unloads at the end
/// and returns the last statistics.
fn epoch_code_on_a_processor_before_its_add_complete(config: MachineConfig) -> kepoch::Stats {
    let machine = Machine::start(MachineConfig {
        hot_add_window: Duration::from_millis(1500),
        ..config
    });
    let driver = load(&machine);
    let shared = AcrossThreads(&machine);
    std::thread::scope(|scope| {
        let adder = scope.spawn(|| {
            let shared = &shared;
            shared.0.hot_add(0, 1)
        });
        std::thread::sleep(Duration::from_millis(300));
        start_load(&driver, 20_000, 1, 0);
        let index = adder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        assert_eq!(index, Ok(4));
    });
    let stats = quiesce_and_unload(driver);
    machine.finish();
    stats
}

/// With the callback strategy, when AddStart's preparation fails (the processor is left to the lazy
/// path), code on the processor before its AddComplete must still use the overflow slot: the lazy path
/// prepares a routable slot only after AddComplete (PROTOCOL.md, "Hot-add window"), so no cycle queues a
/// DPC to the processor early.
#[test]
fn callback_strategy_does_not_message_a_processor_prepared_lazily_before_add_complete() {
    let stats = epoch_code_on_a_processor_before_its_add_complete(MachineConfig {
        fail_add_start_allocations: true,
        ..machine_with_strategy(1)
    });
    assert_eq!(
        stats.prepare_failures, 1,
        "AddStart's preparation was the one that failed"
    );
}

/// The same with the lazy strategy, which registers for the notifications to learn when a processor's
/// add completed.
#[test]
fn lazy_strategy_does_not_message_a_processor_before_add_complete() {
    epoch_code_on_a_processor_before_its_add_complete(machine_with_strategy(0));
}

/// Control for the two tests above: with its AddStart preparation in place, the callback strategy keeps
/// the running-but-not-complete processor on the overflow slot and sends it nothing (passes).
#[test]
fn callback_strategy_with_its_add_start_preparation_waits_for_add_complete() {
    let stats = epoch_code_on_a_processor_before_its_add_complete(machine_with_strategy(1));
    assert!(
        stats.fallback_uses > 0,
        "the load thread on the new processor ran epoch code before AddComplete (overflow slot)"
    );
}

/// The add fails after the processor started and ran the driver's load threads: AddFailure frees the
/// slot prepared at AddStart (which no code on the processor held: it used the overflow slot), no DPC is
/// ever queued to the processor, cycles and `synchronize` go on without it, and a retry of the same
/// processor works. For both strategies that register (lazy only listens).
#[test]
fn an_add_failing_after_epoch_code_ran_on_the_processor_rolls_back_and_a_retry_works() {
    for strategy in [1, 0] {
        let machine = Machine::start(MachineConfig {
            hot_add_window: Duration::from_millis(1500),
            ..machine_with_strategy(strategy)
        });
        let driver = load(&machine);
        let prepared = driver.stats().cpus_prepared;
        let shared = AcrossThreads(&machine);
        std::thread::scope(|scope| {
            let adder = scope.spawn(|| {
                let shared = &shared;
                shared
                    .0
                    .hot_add_failing_after_start(0, 1, INSUFFICIENT_RESOURCES)
            });
            std::thread::sleep(Duration::from_millis(300));
            start_load(&driver, 20_000, 1, 0);
            std::thread::sleep(Duration::from_millis(300));
            stop_load(&driver);
            let outcome = adder
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            assert_eq!(outcome, Err(INSUFFICIENT_RESOURCES));
        });
        let failed = driver.stats();
        assert!(
            failed.fallback_uses > 0,
            "strategy {strategy}: the load ran on the processor inside its window (overflow slot)"
        );
        assert_eq!(failed.hot_add_failure, 1, "strategy {strategy}");
        // Callback prepared the running processors at load; lazy prepares those the load ran on. Neither
        // keeps a slot for the processor that failed.
        if strategy == 1 {
            assert_eq!(failed.cpus_prepared, prepared, "strategy {strategy}");
        }
        assert!(
            failed.cpus_prepared <= u64::from(failed.active),
            "strategy {strategy}: {} prepared, {} active",
            failed.cpus_prepared,
            failed.active
        );
        sync(&driver);
        assert_eq!(processor(&machine, 0, 1).messages, 0, "strategy {strategy}");
        assert_eq!(
            machine.hot_add(0, 1),
            Ok(4),
            "strategy {strategy}: the retry"
        );
        start_load(&driver, 20_000, 60, 0);
        wait_for(
            &driver,
            "cycles visiting the processor added on retry",
            |_| processor(&machine, 0, 1).messages > 3,
        );
        quiesce_and_unload(driver);
        machine.finish();
    }
}
