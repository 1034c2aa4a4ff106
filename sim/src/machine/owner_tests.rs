//! The slot-owner check: a slot used as its owner's on the owner is fine, on another processor
//! (of another group with the same number, too) it is a [`ViolationKind::SlotOwner`].

use kepoch::platform::{Platform, ProcessorNumber};

use super::*;

#[test]
fn a_slot_used_on_another_processor_is_reported_naming_both() {
    let m = Machine::new(MachineConfig {
        max_reported: 4,
        active_at_boot: 4,
        group_size: 2,
        ..MachineConfig::default()
    })
    .expect("valid config");
    let owner = ProcessorNumber::new(1, 0);
    // Index 2 is (1, 0): its own slot.
    m.with_cpu(2, || m.platform().verify_slot_owner("enter", owner));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    // Index 0 is (0, 0): same number, another group.
    m.with_cpu(0, || m.platform().verify_slot_owner("enter", owner));
    let violations = m.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].kind, ViolationKind::SlotOwner);
    assert!(
        violations[0].message.contains("enter by ")
            && violations[0].message.contains("CPU 0 (0:0)")
            && violations[0]
                .message
                .ends_with("used the slot of processor 1:0"),
        "{}",
        violations[0].message
    );
}
