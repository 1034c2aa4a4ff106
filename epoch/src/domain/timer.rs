//! The cycle timer when there is nothing to reclaim (energy): its handler stops it once no
//! participant is left, through a passive work item (the handler cannot wait for itself); the next
//! retirement, flush or `synchronize` restarts it. PROTOCOL.md, "The idle timer", has the argument
//! that no retirement is left without cycles.
//!
//! The stopper work item is allocated when the timer goes idle and released by its own routine
//! (as `IoFreeWorkItem` may be called from the work routine), before the routine's last access to the
//! domain: unload, which waits for it like any work item, never releases a work item whose routine
//! may still be running.

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

/// One stop of the idle timer: its work item and the domain, in a block of the domain's allocator.
struct TimerStopper<P: Platform> {
    work: MaybeUninit<P::PassiveWork>,
    domain: *const Domain<P>,
}

impl<P: Platform> Domain<P> {
    pub(super) unsafe fn on_timer(context: *const ()) {
        // SAFETY: the timer is stopped before the domain goes away.
        let domain = unsafe { &*(context as *const Self) };
        // A cycle with no member sends no message: it only advances the epoch and folds in the
        // overflow slot.
        domain.drive_cycles(false, None);
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
        let Some(stopper) = self.new_timer_stopper() else {
            // No memory for the stopper: the timer keeps running and tries again next period.
            self.timer_idle.store(false, Ordering::Relaxed);
            return;
        };
        *mode = TimerMode::Stopping;
        // Counted like a work item: unload waits for it before it frees the domain.
        self.outstanding_work.fetch_add(1, Ordering::AcqRel);
        drop(mode);
        // SAFETY: initialised by `new_timer_stopper`; queued once, released by its own routine.
        self.platform
            .passive_queue(unsafe { (*stopper.as_ptr()).work.assume_init_ref() });
    }

    /// Allocates and initialises a stopper, or `None` when memory or the work item is missing.
    fn new_timer_stopper(&self) -> Option<NonNull<TimerStopper<P>>> {
        let layout = Layout::new::<TimerStopper<P>>();
        let block = self.platform.allocate(layout)?.cast::<TimerStopper<P>>();
        let raw = block.as_ptr();
        // SAFETY: a fresh block of the stopper's layout; the work item is initialised in place and
        // stays there until its routine releases it.
        unsafe {
            ptr::addr_of_mut!((*raw).domain).write(self);
            let handler = Handler {
                func: Self::on_timer_stopper,
                context: raw as *const (),
            };
            let work = ptr::addr_of_mut!((*raw).work).cast::<P::PassiveWork>();
            if self.platform.passive_init(work, handler).is_err() {
                self.platform.free(block.cast(), layout);
                return None;
            }
        }
        Some(block)
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
    unsafe fn on_timer_stopper(context: *const ()) {
        let stopper = context as *mut TimerStopper<P>;
        // SAFETY: the block lives until this routine frees it below; its domain is counted in
        // `outstanding_work`, which unload waits for before freeing the domain.
        let domain = unsafe { &*(*stopper).domain };
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
        // SAFETY: the stopper's own routine releases its item (it is not queued, and the platform
        // touches it no more once the routine runs) and frees the block; nothing else refers to it.
        unsafe {
            domain
                .platform
                .passive_release(ptr::addr_of_mut!((*stopper).work).cast());
            domain.platform.free(
                NonNull::new_unchecked(stopper.cast()),
                Layout::new::<TimerStopper<P>>(),
            );
        }
        // SAFETY: counted when queued; the last access to the domain.
        unsafe { Self::work_item_finished(domain) };
    }

    /// Starts the timer again if it stopped (or is stopping) for want of work: after a retirement,
    /// whose join fence FJ (or the overflow lock) orders its `participating` before this load of
    /// `timer_idle`, and from `flush` and `synchronize`. Any IRQL up to DISPATCH. The
    /// `timer-never-restarts` mutation skips it.
    #[inline]
    pub(super) fn wake_timer(&self) {
        if self.timer_idle.load(Ordering::Relaxed) {
            self.restart_idle_timer();
        }
    }

    /// [`Domain::wake_timer`] once `timer_idle` was seen set: restarts the timer under its lock.
    #[cold]
    #[inline(never)]
    fn restart_idle_timer(&self) {
        if self.mutated(Mutation::TimerNeverRestarts) {
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
}
