//! Work items: retired blocks whose disposal runs a callback at PASSIVE, outside any epoch; cancel and
//! reschedule; the trampoline whose last access to the domain is its decrement (S8).

use super::*;

/// Bit of `Domain::outstanding_work` that unload sets while it waits for work items: the last work
/// item to finish then signals `work_idle` (like a rundown reference with a waiter).
const WORK_WAITER: u64 = 1 << 63;

/// The part of a work item block that does not depend on its callback's type: header, references,
/// how to run and destroy the block, and the platform's passive work object.
#[repr(C)]
struct WorkBlock<P: Platform> {
    header: RetireHeader,
    /// Owners: the handle and, while scheduled, the domain.
    refs: AtomicU32,
    /// Calls the callback stored after this common part.
    run: unsafe fn(*mut WorkBlock<P>),
    /// Drops the callback and frees the whole block with the layout it was allocated with.
    destroy: unsafe fn(*mut WorkBlock<P>, &P),
    domain: *const Domain<P>,
    /// The barrier phase it was last queued in (written before the queue, read when it runs).
    phase: AtomicU8,
    passive: MaybeUninit<P::PassiveWork>,
}

/// A work item block with its callback `F` (a closure owning its context) after the common part.
#[repr(C)]
struct TypedWorkBlock<P: Platform, F> {
    common: WorkBlock<P>,
    callback: F,
}

/// Runs the callback of a block made by [`Domain::work_item`] with `F`.
///
/// # Safety
/// `block` starts a live `TypedWorkBlock<P, F>`.
unsafe fn run_typed<P: Platform, F: Fn()>(block: *mut WorkBlock<P>) {
    // SAFETY: per the caller; only the callback field is borrowed, shared.
    unsafe { ((*block.cast::<TypedWorkBlock<P, F>>()).callback)() }
}

/// Drops the callback of a block made by [`Domain::work_item`] with `F` and frees the block.
///
/// # Safety
/// `block` starts a `TypedWorkBlock<P, F>` allocated on `platform` that nobody uses any more.
unsafe fn destroy_typed<P: Platform, F>(block: *mut WorkBlock<P>, platform: &P) {
    let typed = block.cast::<TypedWorkBlock<P, F>>();
    // SAFETY: per the caller: the last owner drops the block's fields and frees it with its layout.
    unsafe {
        ptr::drop_in_place(typed);
        platform.free(
            NonNull::new_unchecked(typed.cast()),
            Layout::new::<TypedWorkBlock<P, F>>(),
        );
    }
}

/// Where a work item that cannot be scheduled again is (see [`RetireError::AlreadyScheduled`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkState {
    /// Scheduled and waiting for the readers that were inside when it was scheduled to exit.
    WaitingForGracePeriod,
    /// Handed to a passive thread, about to run.
    Queued,
}

impl fmt::Display for WorkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkState::WaitingForGracePeriod => "waiting for a grace period",
            WorkState::Queued => "queued to run at PASSIVE_LEVEL",
        })
    }
}

/// A work item that runs at PASSIVE, outside any epoch, once everything retired before it was scheduled
/// is safe. Dropping the handle does not cancel a scheduled run.
pub struct WorkItem<'d, P: Platform> {
    block: NonNull<WorkBlock<P>>,
    domain: &'d Domain<P>,
}

// SAFETY: the handle only touches the block through atomics and the domain, which is Sync.
unsafe impl<P: Platform> Send for WorkItem<'_, P> {}

impl<P: Platform> Drop for WorkItem<'_, P> {
    fn drop(&mut self) {
        // SAFETY: the handle holds one reference to a live block.
        unsafe { self.domain.release_work(self.block.as_ptr()) };
    }
}

impl<P: Platform> Domain<P> {
    /// Disposes of a released work item: hands it to a passive thread; if it was cancelled and
    /// scheduled again, retires it again with a fresh stamp; if cancelled, returns it to idle and
    /// drops the domain's reference.
    fn dispose_work_block(&self, block: *mut WorkBlock<P>) {
        // SAFETY: the domain's reference keeps the block alive until released below or after it ran.
        let head = unsafe { &(*block).header };
        loop {
            let (from, to) = match head.state.load(Ordering::Acquire) {
                state::RETIRED => (state::RETIRED, state::QUEUED),
                // The `reschedule-keeps-stamp` mutation runs a rescheduled item on its old entry's
                // release, as if the first schedule's stamp covered the second.
                state::RESCHEDULED if self.mutated(Mutation::RescheduleKeepsStamp) => {
                    (state::RESCHEDULED, state::QUEUED)
                }
                state::RESCHEDULED => (state::RESCHEDULED, state::RETIRED),
                _ => (state::CANCELLED, state::LIVE),
            };
            let Ok(rmw) = LockedRmw::compare_exchange(&head.state, from, to, Ordering::Acquire)
            else {
                continue; // cancelled or rescheduled meanwhile
            };
            match to {
                state::QUEUED => {
                    self.outstanding_work.fetch_add(1, Ordering::AcqRel);
                    let phase = self.count_in_current_phase();
                    // SAFETY: the domain's reference keeps the block alive; the queue below
                    // publishes the phase to the run.
                    unsafe { (*block).phase.store(phase as u8, Ordering::Relaxed) };
                    // SAFETY: the block holds the domain's reference until the work runs.
                    self.platform
                        .passive_queue(unsafe { (*block).passive.assume_init_ref() });
                }
                // SAFETY: the block is live (the domain's reference), RETIRED by us and in no list.
                state::RETIRED => unsafe {
                    self.link_retired(block.cast(), rmw);
                },
                // SAFETY: the domain held one reference for the schedule.
                _ => unsafe { self.release_work(block) },
            }
            return;
        }
    }

    /// Allocates a work item that runs `callback(context)` at PASSIVE once scheduled and safe. A
    /// typed context needs no cast: see [`Domain::work_item`].
    pub fn new_work_item(&self, callback: fn(usize), context: usize) -> Option<WorkItem<'_, P>> {
        self.work_item(move || callback(context))
    }

    /// Allocates a work item that runs `callback` at PASSIVE, outside any epoch, each time it is
    /// scheduled (with [`Domain::schedule_work`]) and everything retired before is safe. The
    /// closure owns its context, typed: it is dropped with the item (when the handle is dropped and
    /// no schedule is pending, or at unload). `None` if the allocation fails. Any IRQL up to
    /// DISPATCH.
    ///
    /// ```
    /// # use kepoch::{Config, Domain};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let runs = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&runs);
    /// let item = domain
    ///     .work_item(move || {
    ///         counter.fetch_add(1, Ordering::SeqCst);
    ///     })
    ///     .expect("memory");
    /// domain.schedule_work(&item).expect("not scheduled yet");
    /// domain.callback_barrier(); // waits until it has run
    /// assert_eq!(runs.load(Ordering::SeqCst), 1);
    /// ```
    ///
    /// The callback may run on another thread after the caller returned, so what it captures must
    /// be `Send + Sync + 'static` (a reference to a local is refused):
    ///
    /// ```compile_fail,E0597
    /// # use kepoch::{Config, Domain};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let local = 5u32;
    /// let seen = &local;
    /// let item = domain.work_item(move || assert_eq!(*seen, 5));
    /// ```
    ///
    /// ```compile_fail,E0277
    /// # use kepoch::{Config, Domain};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let shared = std::rc::Rc::new(5u32); // not Send
    /// let item = domain.work_item(move || assert_eq!(*shared, 5));
    /// ```
    pub fn work_item<F>(&self, callback: F) -> Option<WorkItem<'_, P>>
    where
        F: Fn() + Send + Sync + 'static,
    {
        let layout = Layout::new::<TypedWorkBlock<P, F>>();
        let memory = self.platform.allocate(layout)?;
        let typed = memory.as_ptr().cast::<TypedWorkBlock<P, F>>();
        let block = typed.cast::<WorkBlock<P>>();
        // SAFETY: fresh block of the right layout; the passive object is initialised in place.
        unsafe {
            typed.write(TypedWorkBlock {
                common: WorkBlock {
                    header: RetireHeader::new(dispose_work::<P>),
                    refs: AtomicU32::new(1),
                    run: run_typed::<P, F>,
                    destroy: destroy_typed::<P, F>,
                    domain: self,
                    phase: AtomicU8::new(0),
                    passive: MaybeUninit::uninit(),
                },
                callback,
            });
            let handler = Handler {
                func: Self::on_work,
                context: block as *const (),
            };
            if self
                .platform
                .passive_init((*block).passive.as_mut_ptr(), handler)
                .is_err()
            {
                destroy_typed::<P, F>(block, &self.platform);
                return None;
            }
        }
        Some(WorkItem {
            block: NonNull::new(block)?,
            domain: self,
        })
    }

    /// Whether `item` was made by this domain: its block names the domain its trampoline accounts
    /// to, so only that domain may schedule or cancel it (the `foreign-work-item` mutation accepts
    /// any).
    fn owns(&self, item: &WorkItem<'_, P>) -> bool {
        ptr::eq(item.domain, self) || self.mutated(Mutation::ForeignWorkItem)
    }

    /// Schedules `item` to run once everything retired before this call is safe; returns the epoch it
    /// waits for (at least). Refused (and counted) with [`RetireError::AlreadyScheduled`], naming
    /// where the item is, if it is scheduled and has not started running, and with
    /// [`RetireError::ForeignWorkItem`] if another domain made it. A cancelled item, or one whose
    /// callback is running, can be scheduled again at once. Any IRQL up to DISPATCH.
    pub fn schedule_work(&self, item: &WorkItem<'_, P>) -> Result<u64, RetireError> {
        if !self.owns(item) {
            return Err(RetireError::ForeignWorkItem);
        }
        let block = item.block.as_ptr();
        // SAFETY: the handle keeps the block alive.
        let head = unsafe { &(*block).header };
        loop {
            // Cancelled while its entry still waits in a retired list: arm it again. Disposing of
            // that entry retires it anew with a fresh stamp, so it still waits for everything
            // retired before this call; the domain's reference for the old schedule carries over.
            if let Ok(rmw) = LockedRmw::compare_exchange(
                &head.state,
                state::CANCELLED,
                state::RESCHEDULED,
                Ordering::Relaxed,
            ) {
                rmw.full_fence();
                return Ok(self.global_epoch.load(Ordering::Relaxed));
            }
            // SAFETY: the handle keeps the block alive; the domain takes a reference for the
            // schedule.
            let outcome = unsafe {
                (*block).refs.fetch_add(1, Ordering::AcqRel);
                let outcome = self.retire_header_from(block.cast(), state::LIVE);
                if outcome.is_err() {
                    (*block).refs.fetch_sub(1, Ordering::AcqRel);
                }
                outcome
            };
            let seen = match outcome {
                Ok(stamp) => return Ok(stamp),
                Err(seen) => seen,
            };
            let scheduled = match seen {
                state::CANCELLED | state::LIVE => continue, // changed under us: try again
                state::QUEUED => WorkState::Queued,
                _ => WorkState::WaitingForGracePeriod,
            };
            DomainCounters::add(&self.counters.double_retires, 1);
            return Err(RetireError::AlreadyScheduled(scheduled));
        }
    }

    /// Cancels a scheduled work item that has not been handed to a passive thread yet. Returns whether
    /// it was cancelled (it will then not run). An item of another domain is never scheduled here:
    /// it is left alone and the answer is `false`.
    pub fn cancel_work(&self, item: &WorkItem<'_, P>) -> bool {
        if !self.owns(item) {
            return false;
        }
        // SAFETY: the handle keeps the block alive.
        let header = unsafe { &(*item.block.as_ptr()).header };
        [state::RETIRED, state::RESCHEDULED]
            .into_iter()
            .any(|from| {
                header
                    .state
                    .compare_exchange(from, state::CANCELLED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
    }

    /// Passive-level trampoline of a work item.
    unsafe fn on_work(context: *const ()) {
        let block = context as *mut WorkBlock<P>;
        // SAFETY: the domain's reference keeps the block alive until `release_work` below.
        unsafe {
            let domain = &*(*block).domain;
            // Read before the item can be scheduled (and queued) again, below.
            let phase = usize::from((*block).phase.load(Ordering::Relaxed));
            (*block).header.state.store(state::LIVE, Ordering::Release);
            ((*block).run)(block);
            DomainCounters::add(&domain.counters.work_items_run, 1);
            domain.release_work(block);
            // A barrier waiting for this phase wakes (it re-checks the count: a spurious signal
            // costs it a look).
            if domain.work_in_phase[phase].fetch_sub(1, Ordering::AcqRel) == 1 {
                domain.platform.event_signal(domain.cycle_done());
            }
            Self::work_item_finished(domain);
        }
    }

    /// Waits until every work item scheduled before the call has finished running (or was
    /// cancelled). PASSIVE only, outside any epoch, and never from a work item's callback (it would
    /// wait for itself). Returns at once during unload, which runs what is left itself. Callbacks
    /// scheduled meanwhile may make it wait for them too, never forever.
    ///
    /// Typical use: before freeing what callbacks still use (a driver's per-device state).
    ///
    /// ```
    /// # use kepoch::{Config, Domain};
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let done = Arc::new(AtomicBool::new(false));
    /// let flag = Arc::clone(&done);
    /// let item = domain
    ///     .work_item(move || flag.store(true, Ordering::SeqCst))
    ///     .expect("memory");
    /// domain.schedule_work(&item).expect("schedule");
    /// drop(item); // a scheduled item still runs
    /// domain.callback_barrier();
    /// assert!(done.load(Ordering::SeqCst));
    /// ```
    pub fn callback_barrier(&self) {
        self.platform
            .verify_irql("Domain::callback_barrier", IrqlRule::Passive);
        self.platform
            .synchronize_called(&|| self.readers_on_current_processor());
        // Everything scheduled before is disposed of: queued (and counted in a phase) or run. A
        // second grace period covers items cancelled and scheduled again, which the first one's
        // disposal retired anew. The `barrier-without-grace-period` mutation skips both.
        if !self.mutated(Mutation::BarrierWithoutGracePeriod) {
            self.synchronize();
            self.synchronize();
        }
        // Counted like a `synchronize` waiter: the timer keeps running, and each cycle's signal
        // wakes the loop below even when another waiter reset the event.
        self.sync_waiters.fetch_add(1, Ordering::SeqCst);
        // Every item queued before now is counted in the phase of the current generation (or of
        // an earlier one): the round that leaves this generation must complete. The
        // `barrier-joins-round-in-progress` mutation settles for the round in progress, which
        // leaves the current generation uncovered when one is.
        let target = if self.mutated(Mutation::BarrierJoinsRoundInProgress) {
            self.work_rounds_done.load(Ordering::SeqCst) + 1
        } else {
            self.work_phase.load(Ordering::SeqCst) + 1
        };
        loop {
            self.platform.event_reset(self.cycle_done());
            fence(Ordering::SeqCst);
            if self.advance_barrier_round(target) {
                break;
            }
            if self.shutting_down.load(Ordering::Relaxed) {
                // Unload may wait on the same event: give the signal back.
                self.platform.event_signal(self.cycle_done());
                break;
            }
            self.wake_timer();
            #[cfg(test)]
            self.barrier_round_waits.fetch_add(1, Ordering::SeqCst);
            self.platform.event_wait(self.cycle_done());
        }
        self.sync_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Moves the barrier rounds on as far as they can go without waiting: starts a round when
    /// none is in progress, completes the one in progress once its phase is drained. Any barrier
    /// does either, so a barrier never waits for another barrier's thread, only for callbacks.
    /// True once `target` rounds are complete.
    fn advance_barrier_round(&self, target: u64) -> bool {
        loop {
            let done = self.work_rounds_done.load(Ordering::SeqCst);
            if done >= target {
                return true;
            }
            if self.work_phase.load(Ordering::SeqCst) == done {
                // No round in progress: start round `done`. Items queued from now on count in
                // the other phase.
                let _ = self.work_phase.compare_exchange(
                    done,
                    done + 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                continue;
            }
            // Round `done` is in progress: it completes when its phase is drained.
            if self.work_in_phase[(done & 1) as usize].load(Ordering::SeqCst) != 0 {
                return false;
            }
            let _ = self.work_rounds_done.compare_exchange(
                done,
                done + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// Unit tests: what a barrier on another processor does while nothing of its round is queued:
    /// starts the next round and completes it. True if it did both.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn run_an_empty_barrier_round(&self) -> bool {
        self.advance_barrier_round(self.work_phase.load(Ordering::SeqCst) + 1)
    }

    /// Counts a work item about to be queued in the current barrier phase and returns the phase.
    /// The generation is read again after the count: if a round started meanwhile, the count moves
    /// to the new phase. So either the count came before the round's start, and the round's check
    /// of its phase sees it, or the item is counted in the next generation, which the next round
    /// drains.
    fn count_in_current_phase(&self) -> usize {
        loop {
            let generation = self.work_phase.load(Ordering::SeqCst);
            let phase = (generation & 1) as usize;
            #[cfg(test)]
            self.between_phase_read_and_count.run();
            self.work_in_phase[phase].fetch_add(1, Ordering::SeqCst);
            if self.mutated(Mutation::QueuePhaseNoRecheck)
                || self.work_phase.load(Ordering::SeqCst) == generation
            {
                return phase;
            }
            // A barrier that saw this count waits for it: wake it when it was the last.
            if self.work_in_phase[phase].fetch_sub(1, Ordering::AcqRel) == 1 {
                self.platform.event_signal(self.cycle_done());
            }
        }
    }

    /// The end of a queued work item (or of the timer stopper): the decrement of
    /// `outstanding_work` is its last access to the domain unless unload waits for it (the waiter
    /// bit): unload then cannot go on before the signal. Everything needed to decide is read before
    /// the decrement.
    ///
    /// # Safety
    /// The caller was counted in `outstanding_work` and touches `domain` no more once this is
    /// called (a raw pointer: unload may free the domain during this call).
    pub(super) unsafe fn work_item_finished(domain: *const Self) {
        // SAFETY: per the caller, the domain is alive until the decrement below.
        let domain = unsafe { &*domain };
        let signal_at_zero = domain.mutated(Mutation::WorkSignalAfterCount);
        let before = domain.outstanding_work.fetch_sub(1, Ordering::AcqRel);
        let signal = if signal_at_zero {
            before & !WORK_WAITER == 1
        } else {
            before == WORK_WAITER | 1
        };
        if signal {
            domain.platform.event_signal(domain.work_idle());
        }
    }

    /// Drops one reference to a work block, freeing it with the last.
    ///
    /// # Safety
    /// The caller owns one reference.
    unsafe fn release_work(&self, block: *mut WorkBlock<P>) {
        // SAFETY: per the caller; the last reference frees the block with the layout
        // `work_item` allocated it with (its `destroy` knows it).
        unsafe {
            if (*block).refs.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.platform.passive_release((*block).passive.as_mut_ptr());
                ((*block).destroy)(block, &self.platform);
            }
        }
    }

    /// Waits until no work item is queued or running. Sets the waiter bit first, so the last work
    /// item to finish signals `work_idle`; one that finishes without seeing the bit touches nothing
    /// of the domain after its decrement. Only unload queues work items meanwhile (its drains), and
    /// not while it waits here. PASSIVE.
    pub(super) fn wait_for_work_items(&self) {
        loop {
            self.platform.event_reset(self.work_idle());
            let before = self
                .outstanding_work
                .fetch_or(WORK_WAITER, Ordering::AcqRel);
            if before & !WORK_WAITER != 0 {
                self.platform.event_wait(self.work_idle());
            }
            let after = self
                .outstanding_work
                .fetch_and(!WORK_WAITER, Ordering::AcqRel);
            if after & !WORK_WAITER == 0 {
                return;
            }
        }
    }
}

/// Disposes of a released work block (the header function of every work item).
unsafe fn dispose_work<P: Platform>(header: *mut RetireHeader, domain: *const ()) {
    // SAFETY: `domain` is the block's domain and the header starts a `WorkBlock<P>`.
    unsafe { (*(domain as *const Domain<P>)).dispose_work_block(header.cast()) }
}
