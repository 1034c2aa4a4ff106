//! Load, statistics, load generator with cycles as DPCs on processor threads, unload.

use std::time::Duration;

use kepoch_ntemu::{Machine, MachineConfig, RegistryData};

use crate::common::*;

#[test]
fn cycles_run_as_dpcs_on_several_processors_of_two_groups_and_unload_leaves_nothing() {
    let machine = Machine::start(machine_with_strategy(1));
    let driver = load(&machine);
    let before = driver.stats();
    assert_eq!(before.max_reported, 8);
    assert_eq!(before.active, 4);
    start_load(&driver, 20_000, 5, 0);
    let running = wait_for(&driver, "cycles with messages", |s| {
        s.cycles >= 20 && s.messages >= 20
    });
    assert!(running.enters > 0);
    std::thread::sleep(Duration::from_millis(100));
    let busy: Vec<_> = machine
        .processors()
        .into_iter()
        .filter(|p| p.dpcs > 0)
        .collect();
    assert!(
        busy.len() >= 2,
        "DPCs ran on fewer than two processors: {busy:?}"
    );
    // Cycle messages are MediumHigh, so a busy remote processor takes each at once instead of at its
    // next clock tick; the one Medium message is DriverEntry's delivery probe.
    // Threads below DISPATCH were interrupted by DPCs on their processors at kernel calls.
    let preemptions: u64 = machine.processors().iter().map(|p| p.preemptions).sum();
    assert!(preemptions > 0, "{:?}", machine.processors());
    let slow: u64 = machine.processors().iter().map(|p| p.slow_messages).sum();
    assert!(
        slow <= 1,
        "messages below MediumHighImportance: {:?}",
        machine.processors()
    );
    let stats = quiesce_and_unload(driver);
    // Every driver call stayed within its kernel stack (a deeper one fails the machine); both kinds
    // were measured.
    let stacks = machine.stacks();
    println!(
        "deepest stack use: {stacks:?}; processors: {:?}",
        machine.processors()
    );
    assert!(stacks.thread > 0 && stacks.dpc > 0, "{stacks:?}");
    assert!(stacks.thread <= stacks.limit && stacks.dpc <= stacks.limit);
    machine.finish();
    assert!(stats.freed > 0, "{stats:#?}");
}

#[test]
fn unload_while_the_load_generator_and_cycles_run_leaves_nothing_running_or_allocated() {
    for seed in 1..=20 {
        // Processors never leave the cycle when idle, so cycles are in flight when unload comes.
        let machine = Machine::start(MachineConfig {
            seed,
            ..machine_with_strategy(1).parameter("IdleDeactivation", RegistryData::Dword(0))
        });
        let driver = load(&machine);
        start_load(&driver, 50_000, 30, 0);
        wait_for(&driver, "cycles with messages", |s| {
            s.cycles >= 10 && s.messages >= 10
        });
        assert_eq!(driver.close(), 0);
        // DriverUnload stops the load threads, then the domain stops the timer, waits for the cycle
        // in flight, flushes the messages and frees everything, with cycles still arriving.
        driver.unload();
        let pool = machine.finish();
        assert!(pool.frees > 100, "{pool:?}");
    }
}
