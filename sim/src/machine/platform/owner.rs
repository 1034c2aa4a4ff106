//! The slot-owner check: the core uses a processor's per-CPU slot as that processor's own only on
//! that processor (at DISPATCH there, so its plain stores need no lock). A slot found under another
//! processor's (group, number) breaks that at its first use, which this reports, deterministically,
//! whatever the schedule.

use kepoch::platform::ProcessorNumber;

use super::super::report::ViolationKind;
use super::super::state::SimPlatform;

impl SimPlatform {
    /// `Platform::verify_slot_owner`: records a [`ViolationKind::SlotOwner`] when the caller does
    /// not run on `owner`. No preemption point: the check must not change the schedule.
    pub(super) fn check_slot_owner(&self, routine: &str, owner: ProcessorNumber) {
        let sh = &*self.shared;
        let c = sh.ctx();
        let here = sh.slots[c.cpu].number;
        if here != owner {
            sh.violation(
                ViolationKind::SlotOwner,
                format!(
                    "{routine} by {} used the slot of processor {owner}",
                    sh.describe_ctx(&c)
                ),
            );
        }
    }
}
