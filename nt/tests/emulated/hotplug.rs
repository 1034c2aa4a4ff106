//! A processor hot-added under a domain of the callback strategy is prepared in its notifications.

use kepoch_ntemu::{Machine, MachineConfig};

use crate::common::*;

#[test]
fn a_hot_added_processor_is_prepared_and_joins_the_cycles() {
    let machine = Machine::start(MachineConfig::default());
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let domain = borrowable(create(&machine, settings(tag(b"HotA"), driver_owner())));
    let before = stats(&machine, domain);
    // Group 0 has numbers 0 and 2 active of 4.
    machine.hot_add(0, 1).expect("the hot-add");
    let after = stats(&machine, domain);
    assert_eq!(after.hot_add_start, before.hot_add_start + 1, "{after:#?}");
    assert_eq!(
        after.hot_add_complete,
        before.hot_add_complete + 1,
        "{after:#?}"
    );
    assert_eq!(after.cpus_prepared, before.cpus_prepared + 1, "{after:#?}");
    exercise(&machine, domain, 0);
    // SAFETY: every machine call borrowing it returned.
    drop_domain(&machine, unsafe { reclaim(domain) });
    driver.unload();
    machine.finish();
}
