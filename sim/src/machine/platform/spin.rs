//! The simulated machine's checks of the core's spin locks: who holds each one, recursive and
//! same-CPU acquisitions that can never succeed (a bugcheck), and parallel-mode spins past the limit.

use std::time::{Duration, Instant};

use kepoch::platform::Irql;

use super::super::report::{Bugcheck, ViolationKind};
use super::super::state::{irql_name, Ctx, LockHolder, SimPlatform};

/// The bugcheck of a spin that never ends at `irql`: the DPC watchdog fires at DISPATCH; below it NT
/// just hangs, and breaking in with a debugger is what would stop it.
fn spin_bugcheck_code(irql: Irql) -> (u32, &'static str) {
    if irql >= Irql::DISPATCH {
        Bugcheck::DPC_WATCHDOG_VIOLATION
    } else {
        Bugcheck::MANUALLY_INITIATED_CRASH
    }
}

impl SimPlatform {
    /// What the spin on `lock` by context `c` means, given its recorded holder: `Some((message,
    /// bugcheck code))` if it can never end — the holder is the spinner itself, or was preempted below
    /// DISPATCH on the spinner's CPU by a spinner at DISPATCH, or (deterministic mode, one context at
    /// a time) is any other context, which cannot run while the spinner spins.
    fn hopeless_spin(
        &self,
        c: &Ctx,
        lock: usize,
        holder: Option<&LockHolder>,
    ) -> Option<(String, (u32, &'static str))> {
        let sh = &*self.shared;
        let spinner = sh.describe_ctx(c);
        let code = spin_bugcheck_code(c.irql);
        let consequence = if c.irql >= Irql::DISPATCH {
            "on NT this is bugcheck 0x133 DPC_WATCHDOG_VIOLATION"
        } else {
            "on NT the spinning thread never gets the lock (the machine hangs)"
        };
        let Some(h) = holder else {
            return (!sh.is_parallel()).then(|| {
                (
                    format!(
                        "{spinner} spins on core spin lock {lock:#x}, which no known context holds \
                         (acquired without spin_lock_acquired) and nothing else can run in \
                         deterministic mode: {consequence}"
                    ),
                    code,
                )
            });
        };
        let held_by = sh.describe(h.kind, h.entry, h.cpu, h.irql);
        if h.serial == c.serial {
            return Some((
                format!(
                    "{spinner} spins on core spin lock {lock:#x}, which it already holds (acquired \
                     at IRQL {}): a recursive acquisition never succeeds; {consequence}",
                    irql_name(h.irql)
                ),
                code,
            ));
        }
        if h.cpu == c.cpu && h.irql < Irql::DISPATCH && c.irql >= Irql::DISPATCH {
            return Some((
                format!(
                    "{} on {} spins on core spin lock {lock:#x} held by {} preempted at IRQL {} on \
                     the same CPU: {consequence}",
                    sh.label(c.kind, c.entry),
                    sh.cpu_label(c.cpu),
                    sh.label(h.kind, h.entry),
                    irql_name(h.irql)
                ),
                code,
            ));
        }
        (!sh.is_parallel()).then(|| {
            (
                format!(
                    "{spinner} spins on core spin lock {lock:#x} held by {held_by}, which cannot run \
                     while the spinner spins (deterministic mode runs one context at a time and the \
                     holder is suspended below the spinner): {consequence}"
                ),
                code,
            )
        })
    }

    /// `spin_lock_acquired`: records the holder of core spin lock `lock` (the calling context);
    /// a lock already held or taken below DISPATCH is a violation.
    pub(super) fn record_spin_acquired(&self, lock: *const ()) {
        let sh = &*self.shared;
        let c = sh.ctx();
        let previous = {
            let mut locks = sh.spin_locks.lock();
            locks.acquisitions += 1;
            let holder = LockHolder {
                cpu: c.cpu,
                irql: c.irql,
                kind: c.kind,
                serial: c.serial,
                entry: c.entry,
                acquisition: locks.acquisitions,
            };
            locks.holders.insert(lock as usize, holder)
        };
        if let Some(h) = previous {
            sh.violation(
                ViolationKind::Exclusion,
                format!(
                    "core spin lock {:#x} acquired by {} while {} holds it",
                    lock as usize,
                    sh.describe_ctx(&c),
                    sh.describe(h.kind, h.entry, h.cpu, h.irql)
                ),
            );
        }
        if c.irql < Irql::DISPATCH {
            sh.violation(
                ViolationKind::SpinLockIrql,
                format!(
                    "core spin lock {:#x} acquired at IRQL {} in {} on {}: spin locks must be held \
                     at DISPATCH",
                    lock as usize,
                    irql_name(c.irql),
                    sh.label(c.kind, c.entry),
                    sh.cpu_label(c.cpu)
                ),
            );
            // The bug shape: a DPC arriving now on this CPU spins on the lock.
            self.preemption_point();
        }
    }

    /// `spin_lock_contended`: bugchecks a spin that can never end; in parallel mode watches the
    /// holding that blocks the spinner and bugchecks if it lasts past the configured limit.
    pub(super) fn watch_contended_spin(&self, lock: *const ()) {
        let sh = &*self.shared;
        if sh.is_halted() {
            sh.halted_wait("spin_lock_contended");
            return;
        }
        let c = sh.ctx();
        let holder = sh.spin_locks.lock().holders.get(&(lock as usize)).copied();
        if let Some((message, code)) = self.hopeless_spin(&c, lock as usize, holder.as_ref()) {
            sh.bugcheck(ViolationKind::Deadlock, code, message);
        }
        // Parallel mode: the holder runs on another thread. Watch this holding of the lock; if it lasts
        // past the limit, the spin never ends.
        let Some(h) = holder else { return };
        let limit = Duration::from_millis(sh.config.parallel_spin_limit_ms);
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            spins = spins.wrapping_add(1);
            if spins & 63 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let same = sh
                .spin_locks
                .lock()
                .holders
                .get(&(lock as usize))
                .is_some_and(|now| now.acquisition == h.acquisition);
            if !same {
                return;
            }
            if start.elapsed() > limit {
                sh.bugcheck(
                    ViolationKind::Deadlock,
                    spin_bugcheck_code(c.irql),
                    format!(
                        "{} spun on core spin lock {:#x} for {limit:?} while {} held it",
                        sh.describe_ctx(&c),
                        lock as usize,
                        sh.describe(h.kind, h.entry, h.cpu, h.irql)
                    ),
                );
            }
            sh.unwind_if_halted();
            std::thread::yield_now();
        }
    }

    /// `spin_lock_released`: forgets the holder; a release by another context than the holder's
    /// is a violation.
    pub(super) fn record_spin_released(&self, lock: *const ()) {
        let sh = &*self.shared;
        let c = sh.ctx();
        let holder = sh.spin_locks.lock().holders.remove(&(lock as usize));
        match holder {
            None => sh.violation(
                ViolationKind::Exclusion,
                format!(
                    "core spin lock {:#x} released by {}, but no context holds it",
                    lock as usize,
                    sh.describe_ctx(&c)
                ),
            ),
            Some(h) if h.serial != c.serial => sh.violation(
                ViolationKind::Exclusion,
                format!(
                    "core spin lock {:#x} released by {}, but {} acquired it",
                    lock as usize,
                    sh.describe_ctx(&c),
                    sh.describe(h.kind, h.entry, h.cpu, h.irql)
                ),
            ),
            Some(_) => {}
        }
    }
}
