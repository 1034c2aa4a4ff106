//! Unload (`PROTOCOL.md`, S8): deregister, stop cycles, wait for work items and drain until nothing is left,
//! free every slot.

use super::*;

impl<P: Platform> Domain<P> {
    /// `PROTOCOL.md` S8, in this order: deregister the processor-change callback; stop cycles (the timer, then
    /// the cycle in flight, then every message); then, until a pass finds nothing, wait for work
    /// items and dispose of everything retired (a work callback or a destructor may retire more);
    /// then free every slot. PASSIVE only; no reader may still be inside an epoch, but work items
    /// may still run and retire.
    pub(super) fn shutdown(&self) {
        self.platform.verify_irql("unload", IrqlRule::Passive);
        let handle = self.callback_handle.swap(ptr::null_mut(), Ordering::AcqRel);
        if let Some(handle) = NonNull::new(handle) {
            // SAFETY: registered in `create`, deregistered once here.
            unsafe { self.platform.processor_change_deregister(handle) };
        }
        // From here no cycle starts (see `start_cycle`), retirements go to the overflow list and no
        // slot is prepared, so the drains below own every per-CPU list.
        self.shutting_down.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.timer_unloading();
        self.platform.timer_stop(self.timer());
        if !self.mutated(Mutation::UnloadSkipCycleWait) {
            while self.cycle.in_flight.load(Ordering::Relaxed) {
                self.platform.event_reset(self.cycle_done());
                if !self.cycle.in_flight.load(Ordering::SeqCst) {
                    break;
                }
                self.platform.event_wait(self.cycle_done());
            }
        }
        // A work item blocked in `synchronize` may have taken the signal unload waited for; wake it
        // so it sees `shutting_down` and returns.
        self.platform.event_signal(self.cycle_done());
        self.platform.flush_messages();

        if self.mutated(Mutation::UnloadDrainOnce) {
            self.drain_pass(true);
            self.wait_for_work_items();
        } else {
            let mut first = true;
            loop {
                self.wait_for_work_items();
                let disposed = self.drain_pass(first);
                first = false;
                if disposed == 0 {
                    break;
                }
            }
        }

        let mut cursor = mem::replace(&mut self.locked(&self.registry).head, ptr::null_mut());
        while !cursor.is_null() {
            // SAFETY: unlinked from the registry; no cycle, message or work item refers to it any more.
            unsafe {
                let next = (*cursor).next_registered.load(Ordering::Relaxed);
                self.platform
                    .message_release((*cursor).message.as_mut_ptr());
                ptr::drop_in_place(cursor);
                self.platform.free(
                    NonNull::new_unchecked(cursor.cast()),
                    Layout::new::<Slot<P>>(),
                );
                cursor = next;
            }
        }
        self.table.free_groups(&self.platform);
        // SAFETY: stopped above; no handler can run any more (a stopper of the idle timer is a
        // counted work item, and none is left; it released its own item).
        unsafe { self.platform.timer_release(self.timer.as_ptr().cast_mut()) };
    }

    /// One unload pass, run while no work item is queued or running: first detach every item retired
    /// so far, from every slot and the overflow slot, then dispose of them outside every lock. Work
    /// items queued by those disposals run meanwhile and may retire again (into the overflow list):
    /// what they retire waits for the next pass, which first waits for them, so nothing is freed
    /// while a reader among them may still hold it. Reports readers still inside on the first pass,
    /// before anything runs. Returns how many items it disposed of.
    fn drain_pass(&self, report_readers: bool) -> u64 {
        let previous = self.platform.raise_to_dispatch();
        let detached = RetiredList::new();
        let detach = |part: &Participant| {
            while let Some(item) = part.retired.pop_released(u64::MAX) {
                // SAFETY: the item left its participant's list; the local list owns it now.
                unsafe { detached.push(item, u64::MAX) };
                ParticipantCounters::bump(&part.counters.freed);
            }
        };
        let mut cursor = self.locked(&self.registry).head;
        while !cursor.is_null() {
            // SAFETY: slots stay registered until the end of unload, and the registry no longer
            // changes: notifications are deregistered and no slot is prepared while unloading.
            let slot = unsafe { &*cursor };
            if report_readers {
                self.report_leaked_readers(&slot.part, Some(slot.processor));
            }
            detach(&slot.part);
            cursor = slot.next_registered.load(Ordering::Relaxed);
        }
        {
            let overflow = self.locked(&self.overflow);
            if report_readers {
                self.report_leaked_readers(&overflow, None);
            }
            detach(&overflow);
        }
        let mut disposed = 0;
        while let Some(item) = detached.pop_released(u64::MAX) {
            self.dispose(item);
            disposed += 1;
        }
        self.platform.lower_irql(previous);
        disposed
    }

    /// Counts and logs readers of `part` that never exited (unload).
    fn report_leaked_readers(&self, part: &Participant, processor: Option<ProcessorNumber>) {
        let leaked = part.readers.active_readers_seen_elsewhere();
        if leaked == 0 {
            return;
        }
        DomainCounters::add(&self.counters.leaked_readers, leaked);
        match processor {
            Some(p) => self.platform.log(
                LogLevel::Error,
                format_args!("kepoch: {leaked} reader(s) on processor {p} still inside an epoch at unload"),
            ),
            None => self.platform.log(
                LogLevel::Error,
                format_args!("kepoch: {leaked} reader(s) in the overflow slot still inside an epoch at unload"),
            ),
        }
    }
}
