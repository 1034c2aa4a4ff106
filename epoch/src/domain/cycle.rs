//! The reclamation cycle: the only code that builds and walks the ring. Start (publish the epoch,
//! fence, snapshot), visit (on each member at DISPATCH), finish (fold in the overflow slot, publish the
//! released epoch), chained iteratively; `flush` asks for cycles (the waits are in `grace.rs`).

use super::*;

/// State of the single in-flight reclamation cycle.
pub(super) struct Cycle {
    pub(super) in_flight: AtomicBool,
    pub(super) requested: AtomicBool,
    /// Epoch the in-flight cycle published.
    epoch: AtomicU64,
    /// Oldest reader epoch seen so far by the in-flight cycle.
    oldest: AtomicU64,
    /// Released epoch when the in-flight cycle started: visits free up to it.
    release_at_start: AtomicU64,
    /// `now_ns` when the in-flight cycle published its epoch.
    started_ns: AtomicU64,
    /// Oldest stamp of a released item that a visit of the in-flight cycle (or its overflow step)
    /// left in a list at the `max_frees_per_visit` bound or its time budget (`u64::MAX`: none):
    /// `freed_through` must stay below it.
    leftover_stamp: AtomicU64,
}

impl Cycle {
    /// No cycle in flight, none requested.
    pub(super) fn new() -> Self {
        Cycle {
            in_flight: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            epoch: AtomicU64::new(1),
            oldest: AtomicU64::new(u64::MAX),
            release_at_start: AtomicU64::new(0),
            started_ns: AtomicU64::new(0),
            leftover_stamp: AtomicU64::new(u64::MAX),
        }
    }
}

/// A visit's free loop reads the work clock once per this many frees, to keep to `visit_budget_us`.
const FREES_PER_CLOCK_CHECK: u64 = 32;

/// Cycles one call of `drive_cycles` may chain before it leaves the next to the timer or a flush.
const MAX_CHAINED_CYCLES: u32 = 8;

/// What [`Domain::start_cycle`] did.
enum CycleStart {
    /// The first member's message is queued; the last visit finishes the cycle.
    Sent,
    /// The ring is empty: the caller finishes the cycle at once.
    EmptyRing,
    /// A cycle is in flight elsewhere (it will run another) or unload began.
    NotStarted,
}

impl<P: Platform> Domain<P> {
    /// Runs cycles on this processor until one is in flight with messages out, none is requested,
    /// or another processor owns the cycle. `finishing`: the caller ends the cycle in flight (its
    /// last visit). `started`: when the caller's DPC began (work clock), for the visit budget;
    /// `None` (a flush, the timer): when the first cycle to finish here does. Iterative, so a flush
    /// storm cannot grow the stack (L3). At DISPATCH.
    pub(super) fn drive_cycles(&self, mut finishing: bool, started: Option<WorkInstant>) {
        let mut chained = 0;
        let mut started = started;
        loop {
            if finishing {
                let started = *started.get_or_insert_with(|| self.platform.work_clock());
                let (again, spent) = self.finish_cycle(started);
                if !again {
                    return;
                }
                // The `recursive-chaining` mutation chains the next cycle by recursion, as the first
                // version did.
                if self.mutated(Mutation::RecursiveChaining) {
                    return self.drive_cycles(false, Some(started));
                }
                // Bounded in time too: a DPC must not run cycles for as long as other processors
                // keep flushing (DPC watchdog), nor past its budget. The request stays for the next
                // timer tick or flush.
                chained += 1;
                if chained == MAX_CHAINED_CYCLES || spent {
                    self.cycle.requested.store(true, Ordering::SeqCst);
                    return;
                }
            }
            match self.start_cycle() {
                CycleStart::EmptyRing => finishing = true,
                CycleStart::Sent | CycleStart::NotStarted => return,
            }
        }
    }

    /// Starts a cycle unless one is in flight (then asks it to run another when it ends) or unload
    /// began. At DISPATCH.
    fn start_cycle(&self) -> CycleStart {
        self.platform
            .verify_irql("reclamation cycle start", IrqlRule::Dispatch);
        // The `start-ignores-unload` mutation skips both checks of `shutting_down`.
        let unload_checked = !self.mutated(Mutation::StartIgnoresUnload);
        if unload_checked && self.shutting_down.load(Ordering::Relaxed) {
            return CycleStart::NotStarted;
        }
        while self
            .cycle
            .in_flight
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            self.cycle.requested.store(true, Ordering::SeqCst);
            // The owner may have finished between the CAS and the store without seeing the
            // request: then take the cycle ourselves instead of losing it.
            if self.cycle.in_flight.load(Ordering::SeqCst) {
                return CycleStart::NotStarted;
            }
        }
        // Unload stores `shutting_down`, fences, then waits while `in_flight` is set. Re-checking
        // after owning `in_flight` (store buffering, fence against fence) means a cycle either is
        // seen by unload or sees unload: none can start after unload found no cycle in flight.
        if unload_checked && !self.mutated(Mutation::StartWithoutShutdownRecheck) {
            fence(Ordering::SeqCst);
            if self.shutting_down.load(Ordering::Relaxed) {
                self.cycle.in_flight.store(false, Ordering::SeqCst);
                self.platform.event_signal(self.cycle_done());
                return CycleStart::NotStarted;
            }
        }
        self.cycle.requested.store(false, Ordering::SeqCst);
        self.cycle.leftover_stamp.store(u64::MAX, Ordering::Relaxed);
        self.cycle
            .started_ns
            .store(self.platform.now_ns(), Ordering::Relaxed);
        self.cycle.release_at_start.store(
            self.released_epoch.load(Ordering::Acquire),
            Ordering::Relaxed,
        );
        // Publish the new epoch, then snapshot the ring (see `join`). The `cycle-snapshot-before-
        // publish` mutation swaps the two steps.
        let (epoch, first) = if self.mutated(Mutation::CycleSnapshotFirst) {
            let first = self.snapshot_ring();
            (self.publish_epoch(), first)
        } else {
            let epoch = self.publish_epoch();
            (epoch, self.snapshot_ring())
        };
        self.cycle.epoch.store(epoch, Ordering::Relaxed);
        self.cycle.oldest.store(epoch, Ordering::Relaxed);
        match NonNull::new(first) {
            Some(first) => {
                // SAFETY: `first` is a member slot with a bound message.
                let message = unsafe { first.as_ref().message.assume_init_ref() };
                self.platform.message_send(message);
                CycleStart::Sent
            }
            None => CycleStart::EmptyRing,
        }
    }

    /// Advances the global epoch for a new cycle. The fence after it pairs with the first fence of
    /// `join`: the snapshot that follows sees every participant that joined before it.
    fn publish_epoch(&self) -> u64 {
        let epoch = self.global_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.mutated(Mutation::CycleNoFence) {
            fence(Ordering::SeqCst);
        }
        epoch
    }

    /// Threads the members of the next cycle through `next_in_cycle` and returns the first: every
    /// ready slot with `participating` set. Membership of the cycle is fixed here: joins from now on
    /// belong to the next cycle.
    fn snapshot_ring(&self) -> *mut Slot<P> {
        let registry = self.locked(&self.registry);
        let mut first: *mut Slot<P> = ptr::null_mut();
        let mut cursor = registry.head;
        while !cursor.is_null() {
            // SAFETY: registry slots are valid while the lock is held, and members stay valid for the
            // cycle (only never-ready slots are ever removed, and those never participate).
            let slot = unsafe { &*cursor };
            let joined = slot.part.take_joined_mark();
            let skip_joiner = joined && self.mutated(Mutation::ReleaseWhileJoining);
            if slot.part.participating.load(Ordering::Relaxed)
                && slot.ready.load(Ordering::Acquire)
                && !skip_joiner
            {
                slot.next_in_cycle.store(first, Ordering::Relaxed);
                first = cursor;
            }
            cursor = slot.next_registered.load(Ordering::Relaxed);
        }
        first
    }

    /// The per-CPU visit: runs at DISPATCH on the slot's processor.
    pub(super) unsafe fn on_message(context: *const ()) {
        let slot_ptr = context as *mut Slot<P>;
        // SAFETY: messages are only sent to member slots, which outlive the cycle.
        let slot = unsafe { &*slot_ptr };
        let domain = Self::of_slot(slot);
        domain
            .platform
            .verify_irql("reclamation cycle visit", IrqlRule::Dispatch);
        domain
            .platform
            .verify_slot_owner("reclamation cycle visit", slot.processor);
        let part = &slot.part;
        let started = domain.platform.work_clock();
        ParticipantCounters::bump(&part.counters.messages);
        let epoch = domain.cycle.epoch.load(Ordering::Acquire);

        // Free what the previous cycle released, at most `max_frees_per_visit` items and for at
        // most `visit_budget_us`: the rest waits for the next visit, and another cycle is asked for
        // at once.
        let released = domain.cycle.release_at_start.load(Ordering::Relaxed);
        let frees = domain.free_released(&part.retired, released, &part.counters.freed, started);

        part.local_epoch.store(epoch, Ordering::Relaxed);
        part.readers.open(epoch);
        let oldest = if domain.mutated(Mutation::SkipReaderScan) {
            None
        } else {
            part.readers.oldest_active_epoch()
        };
        if let Some(oldest) = oldest {
            domain.check_stall(part, oldest, epoch, Some(slot.processor));
            if oldest < domain.cycle.oldest.load(Ordering::Relaxed) {
                domain.cycle.oldest.store(oldest, Ordering::Relaxed);
            }
        }

        let idle =
            oldest.is_none() && part.readers.active_readers() == 0 && part.retired.is_empty();
        if idle && domain.config.idle_deactivation && domain.config.strategy != Strategy::Eager {
            part.participating.store(false, Ordering::SeqCst);
            ParticipantCounters::bump(&part.counters.leaves);
            // The `change-ring-in-flight` mutation lets a leaving processor unlink itself from the
            // ring of the cycle in flight: the traversal then ends here.
            if domain.mutated(Mutation::ChangeRingInFlight) {
                slot.next_in_cycle.store(ptr::null_mut(), Ordering::Relaxed);
            }
        }

        match NonNull::new(slot.next_in_cycle.load(Ordering::Relaxed)) {
            // SAFETY: ring members are valid slots with bound messages.
            Some(next) => domain
                .platform
                .message_send(unsafe { next.as_ref().message.assume_init_ref() }),
            None => domain.drive_cycles(true, Some(started)),
        }
        // The whole DPC, the last visit's end of the cycle included. The domain outlives this
        // call although the cycle may have ended: unload waits for the messages queued before it
        // calls `flush_messages`, and this visit's was (Microsoft documents that every DPC queued
        // before `KeFlushQueuedDpcs` is called has run to completion when it returns).
        domain.record_visit(started, frees);
    }

    /// Disposes of the items of `list` released at `released`, at most `max_frees_per_visit` of
    /// them (0: all) and only while the visit that began at `started` (work clock) is within
    /// `visit_budget_us`, counting each in `freed`; if released items are left, asks for another
    /// cycle (the visit that frees them comes with it). Returns how many it freed. At DISPATCH, by
    /// the list's owner.
    fn free_released(
        &self,
        list: &RetiredList,
        released: u64,
        freed: &AtomicU64,
        started: WorkInstant,
    ) -> u64 {
        let mut count = 0;
        while self.may_free_more(count, started) {
            let Some(item) = list.pop_released(released) else {
                return count;
            };
            ParticipantCounters::bump(freed);
            self.dispose(item);
            count += 1;
        }
        if let Some(stamp) = list.oldest_released(released) {
            self.left_released(stamp);
        }
        count
    }

    /// Whether a DPC that began at `started` (work clock) and freed `count` items so far may free
    /// another: below `max_frees_per_visit` (0: no bound) and, read every `FREES_PER_CLOCK_CHECK`
    /// frees, within `visit_budget_us`. The one bound of a visit and of the overflow step.
    fn may_free_more(&self, count: u64, started: WorkInstant) -> bool {
        let limit = u64::from(self.config.max_frees_per_visit);
        if limit != 0 && count >= limit {
            return false;
        }
        // The clock is read every few frees only: on some platforms it is a system call.
        !(count != 0 && count.is_multiple_of(FREES_PER_CLOCK_CHECK) && self.budget_spent(started))
    }

    /// Whether the DPC that began at `started` (work clock) has used up `visit_budget_us` (never,
    /// with no budget).
    fn budget_spent(&self, started: WorkInstant) -> bool {
        let budget_ns = u64::from(self.config.visit_budget_us) * 1_000;
        budget_ns != 0 && started.work_ns_until(self.platform.work_clock()) >= budget_ns
    }

    /// Moves up to `most` items of the overflow list released at `release` into `batch`, counting
    /// them as freed. Under the overflow lock. Returns how many it moved.
    fn take_overflow_released(
        overflow: &Participant,
        release: u64,
        most: u64,
        batch: &RetiredList,
    ) -> u64 {
        let mut taken = 0;
        while taken < most {
            let Some(item) = overflow.retired.pop_released(release) else {
                break;
            };
            // SAFETY: the item left the overflow list; the batch owns it now.
            unsafe { batch.push(item, release) };
            ParticipantCounters::bump(&overflow.counters.freed);
            taken += 1;
        }
        taken
    }

    /// A visit (or the overflow step) stopped at a bound with a released item stamped `stamp`
    /// left: ask for another cycle at once, and keep `freed_through` below the item.
    fn left_released(&self, stamp: u64) {
        self.cycle
            .leftover_stamp
            .fetch_min(stamp, Ordering::Relaxed);
        self.cycle.requested.store(true, Ordering::SeqCst);
        DomainCounters::add(&self.counters.visits_cut_short, 1);
    }

    /// Records one visit's duration (its work since `started`, [`Platform::work_clock`]) and the
    /// items it freed.
    fn record_visit(&self, started: WorkInstant, frees: u64) {
        let took = started.work_ns_until(self.platform.work_clock());
        let mut visits = self.locked(self.visits());
        visits.duration_ns.record(took);
        visits.frees.record(frees);
    }

    /// The domain a slot belongs to: every slot's message context chain leads back here.
    fn of_slot(slot: &Slot<P>) -> &Self {
        // SAFETY: a slot is created by its domain and freed before it.
        unsafe { &*slot.domain }
    }

    /// Reports a reader that holds reclamation back for too long (once per stalled epoch).
    fn check_stall(
        &self,
        part: &Participant,
        oldest: u64,
        epoch: u64,
        processor: Option<ProcessorNumber>,
    ) {
        let held = epoch.saturating_sub(oldest);
        if held < self.config.stall_threshold_cycles
            || part.stall_reported.load(Ordering::Relaxed) == oldest
        {
            return;
        }
        part.stall_reported.store(oldest, Ordering::Relaxed);
        DomainCounters::add(&self.counters.stalls_reported, 1);
        match processor {
            Some(processor) => self.platform.log(
                LogLevel::Warning,
                format_args!(
                    "kepoch: a reader on processor {processor} has held epoch {oldest} for {held} cycles; reclamation is blocked behind it"
                ),
            ),
            None => self.platform.log(
                LogLevel::Warning,
                format_args!(
                    "kepoch: a reader in the overflow slot has held epoch {oldest} for {held} cycles; reclamation is blocked behind it"
                ),
            ),
        }
    }

    /// Ends the in-flight cycle: accounts for the overflow slot, publishes the released epoch and
    /// wakes waiters. Returns whether another cycle was asked for meanwhile, and whether the DPC
    /// that began at `started` (work clock) has spent its budget (read while the cycle is still in
    /// flight, so that no flush can start another one from inside the reading). At DISPATCH.
    fn finish_cycle(&self, started: WorkInstant) -> (bool, bool) {
        let epoch = self.cycle.epoch.load(Ordering::Relaxed);
        let mut oldest = self.cycle.oldest.load(Ordering::Relaxed);
        let freed_before = self.cycle.release_at_start.load(Ordering::Relaxed);

        // The overflow's released items are taken out under the lock in batches of at most
        // `FREES_PER_CLOCK_CHECK` and disposed of outside it (a drop may retire, which takes the
        // lock), at most `max_frees_per_visit` of them and within the DPC's budget, as a visit.
        let limit = u64::from(self.config.max_frees_per_visit);
        let batch_size = |taken: u64| {
            if limit == 0 {
                FREES_PER_CLOCK_CHECK
            } else {
                FREES_PER_CLOCK_CHECK.min(limit - taken)
            }
        };
        let batch = RetiredList::new();
        let release;
        // Items asked for and moved by the last take, and moved in all.
        let (mut asked, mut last);
        {
            let overflow = self.locked(&self.overflow);
            overflow.local_epoch.store(epoch, Ordering::Relaxed);
            let overflow_oldest = if self.mutated(Mutation::SkipReaderScan) {
                None
            } else {
                overflow.readers.oldest_active_epoch()
            };
            if let Some(o) = overflow_oldest {
                self.check_stall(&overflow, o, epoch, None);
                oldest = oldest.min(o);
            }
            // Never below the previous cycle's: a processor that joined while that cycle ran can
            // be counted at an epoch from before it, though nothing it can see is stamped that
            // early (PROTOCOL.md, "The released epoch only grows").
            release = (oldest - 1).max(freed_before);
            asked = batch_size(0);
            last = Self::take_overflow_released(&overflow, release, asked, &batch);
            if overflow_oldest.is_none()
                && overflow.retired.is_empty()
                && overflow.participating.load(Ordering::Relaxed)
            {
                overflow.participating.store(false, Ordering::SeqCst);
            }
        }
        let mut taken = last;
        loop {
            while let Some(item) = batch.pop_released(u64::MAX) {
                self.dispose(item);
            }
            if last < asked {
                // The list had no more released items (later retirements are stamped above
                // `release`).
                break;
            }
            let overflow = self.locked(&self.overflow);
            // `taken` is a whole number of batches here (or the limit): the clock is read.
            if !self.may_free_more(taken, started) {
                if let Some(stamp) = overflow.retired.oldest_released(release) {
                    self.left_released(stamp);
                }
                break;
            }
            asked = batch_size(taken);
            last = Self::take_overflow_released(&overflow, release, asked, &batch);
            taken += last;
        }

        self.released_epoch.store(release, Ordering::Release);
        // Everything stamped at or below `freed_through` has been disposed of (grace periods,
        // `synchronize` and the barrier rely on it): not so for items a visit left at its bound.
        // Leftovers are stamped above the previous `freed_through` (everything at or below it was
        // disposed of), so this never goes back.
        let leftover = self.cycle.leftover_stamp.load(Ordering::Relaxed);
        let freed = if self.mutated(Mutation::FreedThroughIgnoresLeftovers) {
            freed_before
        } else {
            freed_before.min(leftover.saturating_sub(1))
        };
        self.freed_through.store(freed, Ordering::Release);
        DomainCounters::add(&self.counters.cycles, 1);
        let took = self
            .platform
            .now_ns()
            .saturating_sub(self.cycle.started_ns.load(Ordering::Relaxed));
        self.locked(&self.cycle_latency).record(took);
        let spent = self.budget_spent(started);
        self.cycle.in_flight.store(false, Ordering::SeqCst);
        self.platform.event_signal(self.cycle_done());
        (self.cycle.requested.swap(false, Ordering::SeqCst), spent)
    }

    /// Asks for a cycle soon without waiting (a flush hint), and restarts the cycle timer if it
    /// stopped for want of work. Any IRQL up to DISPATCH.
    pub fn flush(&self) {
        self.wake_timer();
        self.cycle.requested.store(true, Ordering::SeqCst);
        let previous = self.platform.raise_to_dispatch();
        self.drive_cycles(false, None);
        self.platform.lower_irql(previous);
    }
}
