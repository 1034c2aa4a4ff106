//! The hot path: entering and exiting epochs on a processor's own slot, joining the cycle, migrated
//! exits, and the shared overflow slot that makes enter never fail (S2).

use super::*;
use crate::readers::EntryIndex;

impl<P: Platform> Domain<P> {
    /// Enters an epoch: until the guard drops, nothing retired after this call is freed.
    /// Never fails (`PROTOCOL.md`, S2). Nested guards are fine.
    #[inline]
    pub fn enter(&self) -> Guard<'_, P> {
        // SAFETY: the guard borrows the domain and exits exactly once.
        Guard::new(self, unsafe { self.enter_raw() })
    }

    /// Enters an epoch and returns the token to exit it with; for callers that cannot hold a borrow
    /// (a simulated task, a driver's per-request context).
    ///
    /// # Safety
    /// The token must be passed to [`Domain::exit_raw`] of this domain exactly once, before the domain
    /// is dropped.
    #[inline]
    pub unsafe fn enter_raw(&self) -> RawGuard {
        let previous = self.platform.raise_to_dispatch();
        let current = self.platform.current_processor();
        let slot = self.table.lookup(current.number);
        // SAFETY: a published slot stays valid for the domain's life (rollback only removes slots that
        // were never ready). A participating slot is ready: only the owner joins, after it found the
        // slot routable (a routable entry's slot is ready, see `enter_slow`) or prepared it ready
        // (or the slot was created ready and participating, `eager`), and `ready` is never cleared.
        let token = match unsafe { slot.as_ref() } {
            Some(owned) if owned.part.participating.load(Ordering::Relaxed) => {
                self.platform.verify_slot_owner("enter", owned.processor);
                // SAFETY: `slot` is the published slot `owned` refers to.
                unsafe { Self::enter_owned(slot, current.index) }
            }
            _ => self.enter_slow(current, slot),
        };
        self.platform.lower_irql(previous);
        self.platform.epoch_entered();
        token
    }

    /// Records a reader in the current processor's own slot, which participates: its newest reader
    /// entry was opened for `local_epoch` when that was set (join, visit). At DISPATCH on the slot's
    /// processor, whose system-wide index is `home`. The token's participant pointer is derived
    /// from `slot` itself (not from a reference to the field), so that the exit may reach the whole
    /// slot from it (`Slot::of_participant`).
    ///
    /// # Safety
    /// `slot` is a published, ready slot (valid for the domain's life).
    #[inline(always)]
    unsafe fn enter_owned(slot: *const Slot<P>, home: u32) -> RawGuard {
        // SAFETY: per the caller; a field of a live slot.
        let part = unsafe { ptr::addr_of!((*slot).part) };
        // SAFETY: as above.
        let entry = unsafe { &*part }.readers.enter_newest();
        RawGuard::new(part, Some(home), entry)
    }

    /// Joins the cycle if `part` is not in it. Called by the participant's owner only.
    #[inline]
    pub(super) fn ensure_joined(&self, part: &Participant) {
        if !part.participating.load(Ordering::Relaxed) {
            self.join(part);
        }
    }

    /// Enter on a processor without a usable slot: prepare one (`lazy`, `callback` fallback) or use the
    /// shared overflow slot. At DISPATCH.
    /// Also the first enter of a prepared slot that is not in the cycle (yet, or since it left).
    #[cold]
    #[inline(never)]
    fn enter_slow(&self, current: CurrentProcessor, slot: *mut Slot<P>) -> RawGuard {
        let slot = if slot.is_null() {
            self.prepare_here(current.number).filter(|&prepared| {
                // SAFETY: a published slot (prepared just now or earlier), valid for the domain's
                // life.
                unsafe { &*prepared }.ready.load(Ordering::Acquire)
            })
        } else {
            // A routable entry's slot is ready: AddComplete stores `ready` (release) before it makes
            // the entry routable, a slot prepared ready is published routable, and the lookup
            // acquires the entry. So a first enter does not load `ready`'s cache line (debug builds
            // check the claim).
            // SAFETY: a published slot, valid for the domain's life.
            debug_assert!(unsafe { &*slot }.ready.load(Ordering::Acquire));
            Some(slot)
        };
        if let Some(slot) = slot {
            // SAFETY: a published slot, valid for the domain's life.
            let owned = unsafe { &*slot };
            self.platform
                .verify_slot_owner("enter (join)", owned.processor);
            self.ensure_joined(&owned.part);
            // SAFETY: published and ready, as above.
            return unsafe { Self::enter_owned(slot, current.index) };
        }
        let overflow = self.locked(&self.overflow);
        // Overflow readers take the global epoch itself: they may come from any processor. The cycle
        // folds them in under the lock, so only the reader's own fence matters here: like the fence
        // of `join`, it orders the reader's pointer loads after the epoch it entered.
        let epoch = if overflow.participating.load(Ordering::Relaxed) {
            let epoch = self.global_epoch.load(Ordering::Relaxed);
            if !self.mutated(Mutation::OverflowEnterNoFence) {
                fence(Ordering::SeqCst);
            }
            epoch
        } else {
            self.join(&overflow);
            overflow.local_epoch.load(Ordering::Relaxed)
        };
        let entry = overflow.readers.enter(epoch);
        DomainCounters::add(&self.counters.fallback_uses, 1);
        RawGuard::new(&*overflow, None, entry)
    }

    /// The owner of `part` puts it back into the cycle: store `participating`, load the global epoch,
    /// full fence. The fence pairs with the cycle's fence between publish and snapshot and with the
    /// retirement fence: either a cycle's snapshot sees this participant, or every object that cycle
    /// can release was unlinked where the readers that follow see it (PROTOCOL.md, "Joining": no
    /// fence is needed between the store and the load).
    pub(super) fn join(&self, part: &Participant) {
        part.participating.store(true, Ordering::Relaxed);
        let epoch = self.global_epoch.load(Ordering::Relaxed);
        if !self.mutated(Mutation::JoinNoFence) {
            fence(Ordering::SeqCst);
        }
        part.local_epoch.store(epoch, Ordering::Relaxed);
        part.readers.open(epoch);
        ParticipantCounters::bump(&part.counters.joins);
        part.mark_joined();
    }

    /// Exits the epoch entered by `token`, on whatever processor the caller now runs.
    ///
    /// # Safety
    /// `token` came from [`Domain::enter_raw`] of this domain and was not exited yet.
    #[inline]
    pub unsafe fn exit_raw(&self, token: RawGuard) {
        // SAFETY: per the caller.
        unsafe { self.exit_token(&token) }
    }

    /// [`Domain::exit_raw`] by reference (the guard's drop). The fast path: the reader exits on the
    /// processor it entered on, whose slot holds it; no table lookup, the token says where it is.
    ///
    /// # Safety
    /// As for [`Domain::exit_raw`]; `token` is not used again.
    #[inline]
    pub(crate) unsafe fn exit_token(&self, token: &RawGuard) {
        let previous = self.platform.raise_to_dispatch();
        let current = self.platform.current_processor();
        if token.is_home(current.index) {
            // SAFETY: the token's participant is the `part` of a live slot (an overflow token is
            // never home; slots with readers are never freed), the slot of this processor: the one
            // `enter_raw` found for it here, and a processor's published, ready slot is never
            // replaced.
            let slot = unsafe { Slot::<P>::of_participant(token.participant) };
            self.platform.verify_slot_owner("exit", slot.processor);
            let part = &slot.part;
            if !self.mutated(Mutation::LostExit) {
                part.readers.exit_local(token.entry());
            }
        } else {
            // SAFETY: per the caller. The token's parts go in registers: a reference would make the
            // hot path store the token to the stack on every exit.
            unsafe { self.exit_elsewhere(token.participant, token.entry(), token.is_overflow()) };
        }
        self.platform.lower_irql(previous);
        self.platform.epoch_exited();
    }

    /// A migrated reader's exit, or an exit of the overflow slot (`overflow`), of the reader counted
    /// in `entry` of `participant`. At DISPATCH.
    ///
    /// # Safety
    /// As for [`Domain::exit_raw`], for the token these parts came from.
    #[cold]
    #[inline(never)]
    unsafe fn exit_elsewhere(
        &self,
        participant: *const Participant,
        entry: EntryIndex,
        overflow: bool,
    ) {
        if overflow {
            let overflow = self.locked(&self.overflow);
            overflow.readers.exit_local(entry);
            return;
        }
        let ordering = if self.mutated(Mutation::RemoteExitRelaxed) {
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        // SAFETY: the token points into a live slot (slots with readers are never freed).
        let part = unsafe { &*participant };
        part.readers.exit_remote(entry, ordering);
        DomainCounters::add(&self.counters.remote_exits, 1);
    }
}
