//! The cycle timer when there is nothing to reclaim (energy): its handler stops it once no
//! participant is left, through a passive work item (the handler cannot wait for itself); the next
//! retirement, flush or `synchronize` restarts it. PROTOCOL.md, "The idle timer", has the argument
//! that no retirement is left without cycles.

use super::*;

/// Where the cycle timer is. Changed only under `Domain::timer_mode`'s lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TimerMode {
    /// Armed: its handler runs every period.
    Running,
    /// Idle: the stopper work item is queued and will stop it.
    Stopping,
    /// A restart came while stopping: the stopper stops it and starts it again.
    Restarting,
    /// Stopped; the next retirement, flush or `synchronize` starts it.
    Stopped,
    /// Unload stops it for good: nothing starts it any more.
    Unloading,
}

impl<P: Platform> Domain<P> {
    pub(super) unsafe fn on_timer(context: *const ()) {
        // SAFETY: the timer is stopped before the domain goes away.
        let domain = unsafe { &*(context as *const Self) };
        // A cycle with no member sends no message: it only advances the epoch and folds in the
        // overflow slot.
        domain.drive_cycles(false);
        domain.stop_timer_if_idle();
    }

    /// The timer handler's last step, at DISPATCH: when no participant is left (so nothing is
    /// retired, no reader holds an epoch and no member waits for a visit), no `synchronize` waits and
    /// no cycle is asked for, queues the stopper. `timer_idle` is stored before the check, with a
    /// fence between (fence FT): a retirement either is seen by the check or sees the flag.
    fn stop_timer_if_idle(&self) {
        if self.sync_waiters.load(Ordering::Relaxed) != 0 {
            return; // the cheap answer of the common busy case; the check below decides
        }
        let mut mode = self.locked(&self.timer_mode);
        if *mode != TimerMode::Running {
            return;
        }
        self.timer_idle.store(true, Ordering::Relaxed);
        if !self.mutated(Mutation::IdleCheckNoFence) {
            fence(Ordering::SeqCst);
        }
        if self.sync_waiters.load(Ordering::Relaxed) != 0
            || self.cycle.requested.load(Ordering::SeqCst)
            || self.anyone_participates()
        {
            self.timer_idle.store(false, Ordering::Relaxed);
            return;
        }
        *mode = TimerMode::Stopping;
        // Counted like a work item: unload waits for it before it frees the domain.
        self.outstanding_work.fetch_add(1, Ordering::AcqRel);
        drop(mode);
        self.platform.passive_queue(self.timer_stopper());
    }

    /// Whether any slot or the overflow slot takes part in cycles. A participant that left has no
    /// reader and nothing retired, and a retirement joins first (ensure_joined).
    fn anyone_participates(&self) -> bool {
        {
            let registry = self.locked(&self.registry);
            let mut cursor = registry.head;
            while !cursor.is_null() {
                // SAFETY: registry slots are valid while the lock is held.
                let slot = unsafe { &*cursor };
                if slot.part.participating.load(Ordering::Relaxed) {
                    return true;
                }
                cursor = slot.next_registered.load(Ordering::Relaxed);
            }
        }
        self.locked(&self.overflow)
            .participating
            .load(Ordering::Relaxed)
    }

    /// The stopper work item, at PASSIVE on a system thread: stops the timer (waiting for a handler
    /// still running), then leaves it stopped, or starts it again if a restart came meanwhile.
    pub(super) unsafe fn on_timer_stopper(context: *const ()) {
        // SAFETY: counted in `outstanding_work`, which unload waits for before freeing the domain.
        let domain = unsafe { &*(context as *const Self) };
        domain.platform.timer_stop(domain.timer());
        {
            let mut mode = domain.locked(&domain.timer_mode);
            match *mode {
                TimerMode::Stopping => *mode = TimerMode::Stopped,
                TimerMode::Restarting => {
                    domain
                        .platform
                        .timer_start(domain.timer(), domain.config.cycle_period_us);
                    *mode = TimerMode::Running;
                }
                TimerMode::Running | TimerMode::Stopped | TimerMode::Unloading => {}
            }
        }
        // SAFETY: counted when queued; the last access to the domain.
        unsafe { Self::work_item_finished(context as *const Self) };
    }

    /// Starts the timer again if it stopped (or is stopping) for want of work: after a retirement,
    /// whose join fence FJ (or the overflow lock) orders its `participating` before this load of
    /// `timer_idle`, and from `flush` and `synchronize`. Any IRQL up to DISPATCH. The
    /// `timer-never-restarts` mutation skips it.
    pub(super) fn wake_timer(&self) {
        if !self.timer_idle.load(Ordering::Relaxed) || self.mutated(Mutation::TimerNeverRestarts) {
            return;
        }
        let mut mode = self.locked(&self.timer_mode);
        match *mode {
            TimerMode::Stopped => {
                self.platform
                    .timer_start(self.timer(), self.config.cycle_period_us);
                *mode = TimerMode::Running;
            }
            TimerMode::Stopping => *mode = TimerMode::Restarting,
            TimerMode::Running | TimerMode::Restarting | TimerMode::Unloading => return,
        }
        self.timer_idle.store(false, Ordering::Relaxed);
    }

    /// Unload's first step with the timer: nothing restarts it from here on (a stopper still queued
    /// finds `Unloading` and leaves it alone); unload then stops it itself.
    pub(super) fn timer_unloading(&self) {
        *self.locked(&self.timer_mode) = TimerMode::Unloading;
    }

    fn timer_stopper(&self) -> &P::PassiveWork {
        // SAFETY: initialised in `create` before the timer starts.
        unsafe { self.timer_stopper.assume_init_ref() }
    }
}
