//! Work items: retired blocks whose disposal runs a callback at PASSIVE, outside any epoch; cancel and
//! reschedule; the trampoline whose last access to the domain is its decrement (S8).

use super::*;

/// Bit of `Domain::outstanding_work` that unload sets while it waits for work items: the last work
/// item to finish then signals `work_idle` (like a rundown reference with a waiter).
const WORK_WAITER: u64 = 1 << 63;

/// A work item block: header, callback and the platform's passive work object.
#[repr(C)]
struct WorkBlock<P: Platform> {
    header: RetireHeader,
    /// Owners: the handle and, while scheduled, the domain.
    refs: AtomicU32,
    callback: fn(usize),
    context: usize,
    domain: *const Domain<P>,
    passive: MaybeUninit<P::PassiveWork>,
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

    /// Allocates a work item that runs `callback(context)` at PASSIVE once scheduled and safe.
    pub fn new_work_item(&self, callback: fn(usize), context: usize) -> Option<WorkItem<'_, P>> {
        let layout = Layout::new::<WorkBlock<P>>();
        let memory = self.platform.allocate(layout)?;
        let block = memory.as_ptr().cast::<WorkBlock<P>>();
        // SAFETY: fresh block of the right layout; the passive object is initialised in place.
        unsafe {
            block.write(WorkBlock {
                header: RetireHeader::new(dispose_work::<P>),
                refs: AtomicU32::new(1),
                callback,
                context,
                domain: self,
                passive: MaybeUninit::uninit(),
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
                ptr::drop_in_place(block);
                self.platform.free(memory, layout);
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
    /// waits for (at least). Refused (and counted) if it is already scheduled, and refused with
    /// [`RetireError::ForeignWorkItem`] if another domain made it. A cancelled item can be scheduled
    /// again at once.
    pub fn schedule_work(&self, item: &WorkItem<'_, P>) -> Result<u64, RetireError> {
        if !self.owns(item) {
            return Err(RetireError::ForeignWorkItem);
        }
        let block = item.block.as_ptr();
        // SAFETY: the handle keeps the block alive.
        let head = unsafe { &(*block).header };
        // Cancelled while its entry still waits in a retired list: arm it again. Disposing of that
        // entry retires it anew with a fresh stamp, so it still waits for everything retired before
        // this call; the domain's reference for the old schedule carries over.
        if let Ok(rmw) = LockedRmw::compare_exchange(
            &head.state,
            state::CANCELLED,
            state::RESCHEDULED,
            Ordering::Relaxed,
        ) {
            rmw.full_fence();
            return Ok(self.global_epoch.load(Ordering::Relaxed));
        }
        // SAFETY: the handle keeps the block alive; the domain takes a reference for the schedule.
        unsafe {
            (*block).refs.fetch_add(1, Ordering::AcqRel);
            let result = self.retire_header(block.cast(), state::LIVE);
            if result.is_err() {
                (*block).refs.fetch_sub(1, Ordering::AcqRel);
            }
            result
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
            (*block).header.state.store(state::LIVE, Ordering::Release);
            ((*block).callback)((*block).context);
            DomainCounters::add(&domain.counters.work_items_run, 1);
            domain.release_work(block);
            Self::work_item_finished(domain);
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
        // `new_work_item` allocated it with.
        unsafe {
            if (*block).refs.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.platform.passive_release((*block).passive.as_mut_ptr());
                ptr::drop_in_place(block);
                self.platform.free(
                    NonNull::new_unchecked(block.cast()),
                    Layout::new::<WorkBlock<P>>(),
                );
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
