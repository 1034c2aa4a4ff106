//! Load, statistics, load generator with cycles as DPCs on processor threads, unload.

use std::time::Duration;

use kepoch_driver::nt::host::Machine;

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
    let stats = quiesce_and_unload(driver);
    machine.finish();
    assert!(stats.freed > 0, "{stats:#?}");
}
