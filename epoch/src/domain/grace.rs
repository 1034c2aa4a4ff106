//! Waiting for grace periods: `synchronize`, polled grace periods (a token, a non-blocking query, a
//! blocking wait) and the "inside an epoch here" debug check that every wait reports through
//! [`Platform::synchronize_called`].

use super::*;

impl<P: Platform> Domain<P> {
    /// Blocks until everything retired before the call has been disposed of. PASSIVE only, outside any
    /// epoch (waiting inside one would wait for itself; the user-mode platform and the simulator
    /// report that). Called from a work item while the domain unloads, it returns without waiting:
    /// cycles have stopped and unload itself disposes of everything retired, after that work item
    /// returns — so such a callback must not free what a destructor of an item it retired still
    /// uses.
    pub fn synchronize(&self) {
        self.platform
            .verify_irql("Domain::synchronize", IrqlRule::Passive);
        self.wait_for_epoch(self.grace_period().0);
    }

    /// A polled grace period: a token naming everything retired before this call. Cheap (a fence
    /// and a load) and callable at any IRQL; ask [`Domain::grace_period_elapsed`] later whether all
    /// of it has been disposed of, or wait with [`Domain::wait_for_grace_period`] at PASSIVE.
    ///
    /// ```
    /// # use kepoch::{Config, Domain};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let object = domain.alloc(7u32).expect("memory");
    /// // SAFETY: never published: no reader can reach it.
    /// unsafe { domain.retire(object) }.expect("retired once");
    /// let token = domain.grace_period(); // e.g. at DISPATCH_LEVEL, in a DPC
    /// if !domain.grace_period_elapsed(token) {
    ///     domain.wait_for_grace_period(token); // later, at PASSIVE_LEVEL
    /// }
    /// assert!(domain.grace_period_elapsed(token));
    /// ```
    pub fn grace_period(&self) -> GracePeriod {
        // Pairs with fence FW: a retirement before this call is stamped at or below the epoch read
        // here.
        fence(Ordering::SeqCst);
        GracePeriod(self.global_epoch.load(Ordering::SeqCst))
    }

    /// Whether everything retired before `token` was taken has been disposed of. Never blocks; when
    /// the answer is no, it makes sure the cycle timer runs, so that the answer turns to yes without
    /// a flush. Any IRQL up to DISPATCH.
    pub fn grace_period_elapsed(&self, token: GracePeriod) -> bool {
        // The `poll-on-released-epoch` mutation answers from the released epoch, which is
        // published before the next cycle's visits dispose of per-processor items.
        let done = if self.mutated(Mutation::PollOnReleasedEpoch) {
            self.released_epoch.load(Ordering::Acquire)
        } else {
            self.freed_through.load(Ordering::Acquire)
        };
        if done >= token.0 {
            return true;
        }
        self.wake_timer();
        false
    }

    /// Blocks until [`Domain::grace_period_elapsed`] is true for `token`. PASSIVE only, outside any
    /// epoch, like [`Domain::synchronize`] (which is this with a token taken on entry).
    pub fn wait_for_grace_period(&self, token: GracePeriod) {
        self.platform
            .verify_irql("Domain::wait_for_grace_period", IrqlRule::Passive);
        self.wait_for_epoch(token.0);
    }

    /// Waits until every item stamped at or below `target` has been disposed of (PASSIVE).
    fn wait_for_epoch(&self, target: u64) {
        self.platform
            .synchronize_called(&|| self.readers_on_current_processor());
        // While this count is not zero the timer does not stop (`timer.rs`): the waits below may
        // need its cycles.
        self.sync_waiters.fetch_add(1, Ordering::SeqCst);
        self.synchronize_waiting(target);
        self.sync_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// [`Domain::wait_for_epoch`] while counted in `sync_waiters`.
    fn synchronize_waiting(&self, target: u64) {
        // Ask for cycles back to back only while they make progress; when one released nothing (a
        // reader holds the oldest epoch), wait for the timer's next cycle instead of spinning.
        let mut progressing = true;
        loop {
            let before = self.progress();
            if before.1 >= target {
                return;
            }
            self.platform.event_reset(self.cycle_done());
            // Unload may be waiting on the same event (for the cycle in flight) and will run no
            // cycle any more: give the signal back and stop. The fence orders this check after the
            // reset, against unload's store, fence and signal.
            fence(Ordering::SeqCst);
            if self.shutting_down.load(Ordering::Relaxed) {
                self.platform.event_signal(self.cycle_done());
                return;
            }
            if progressing {
                self.flush();
            }
            if self.freed_through.load(Ordering::Acquire) >= target {
                return;
            }
            // After the fence above, which follows the count of this waiter: either the timer's
            // idle check sees the waiter, or this sees the timer idle and restarts it.
            self.wake_timer();
            self.platform.event_wait(self.cycle_done());
            progressing = self.progress() != before;
        }
    }

    /// Whether a reader recorded on the current processor has not exited (the overflow slot's
    /// readers belong to no processor and are not counted). Where a thread is its processor (the
    /// user-mode platform) or at DISPATCH_LEVEL (nothing else runs there), that is whether the
    /// caller is inside an epoch: a debug check before a wait. Any IRQL up to DISPATCH.
    ///
    /// ```
    /// # use kepoch::{Config, Domain};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// assert!(!domain.inside_epoch_here());
    /// let guard = domain.enter();
    /// assert!(domain.inside_epoch_here());
    /// drop(guard);
    /// assert!(!domain.inside_epoch_here());
    /// ```
    pub fn inside_epoch_here(&self) -> bool {
        self.readers_on_current_processor() != 0
    }

    /// Readers recorded in the current processor's slot that have not exited (0 without a slot; the
    /// overflow slot's readers are not counted: they belong to no processor). For
    /// [`Platform::synchronize_called`]. Any IRQL up to DISPATCH.
    pub(super) fn readers_on_current_processor(&self) -> u64 {
        let previous = self.platform.raise_to_dispatch();
        let current = self.platform.current_processor();
        let slot = self.table.lookup(current.number);
        // SAFETY: a published slot stays valid for the domain's life; at DISPATCH on its processor we
        // are its owner, which may read its reader table.
        let readers = unsafe { slot.as_ref() }.map_or(0, |slot| {
            self.platform
                .verify_slot_owner("synchronize (readers here)", slot.processor);
            slot.part.readers.active_readers()
        });
        self.platform.lower_irql(previous);
        readers
    }

    /// (released epoch, freed-through epoch): what a cycle can advance.
    fn progress(&self) -> (u64, u64) {
        (
            self.released_epoch.load(Ordering::Acquire),
            self.freed_through.load(Ordering::Acquire),
        )
    }
}

/// A polled grace period (see [`Domain::grace_period`]): names everything retired before it was
/// taken. Tokens of one domain are ordered: a later token's grace period ends no earlier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GracePeriod(u64);
