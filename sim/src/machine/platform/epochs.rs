//! The wait-inside-an-epoch check: the machine counts the guards each context (task, DPC, the
//! calling thread) holds, and a wait for a grace period by a context that holds one halts the machine
//! with a violation naming the waiter, instead of hanging until the run's deadline.

use kepoch::platform::Irql;

use super::super::report::{Bugcheck, ViolationKind};
use super::SimPlatform;

impl SimPlatform {
    /// The current context entered an epoch.
    pub(super) fn count_epoch_entered(&self) {
        let kind = self.shared.ctx().kind;
        *self.shared.guards_held.lock().entry(kind).or_insert(0) += 1;
    }

    /// The current context exited an epoch (a token entered by another context is not counted
    /// against this one below zero).
    pub(super) fn count_epoch_exited(&self) {
        let kind = self.shared.ctx().kind;
        let mut held = self.shared.guards_held.lock();
        if let Some(count) = held.get_mut(&kind) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&kind);
            }
        }
    }

    /// A wait for a grace period is about to start: if the waiting context holds a guard, the wait
    /// can never end (the grace period waits for that guard). Records the violation and halts.
    pub(super) fn check_wait_outside_epoch(&self, readers_here: &dyn Fn() -> u64) {
        let sh = &*self.shared;
        let c = sh.ctx();
        let held = sh.guards_held.lock().get(&c.kind).copied().unwrap_or(0);
        if held == 0 || c.irql != Irql::PASSIVE {
            // At DISPATCH the IRQL check has reported the call already.
            return;
        }
        sh.bugcheck(
            ViolationKind::WaitInsideEpoch,
            Bugcheck::MANUALLY_INITIATED_CRASH,
            format!(
                "{} waits for a grace period inside an epoch: it holds {held} guard(s) not yet \
                 dropped ({} reader(s) recorded on its processor), and the grace period waits for \
                 them; drop every guard before synchronize / wait_for_grace_period / \
                 callback_barrier",
                sh.describe_ctx(&c),
                readers_here()
            ),
        );
    }
}
