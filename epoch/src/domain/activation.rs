//! Preparing per-CPU state: the lazy path at first use (at DISPATCH, on the processor itself), the
//! `callback` strategy (AddStart prepares, AddComplete makes ready, AddFailure rolls back) and `eager`.

use super::*;

impl<P: Platform> Domain<P> {
    /// Allocates, initialises and publishes the slot of `processor`: routable if `ready`, else pending
    /// until AddComplete. Returns the slot (an existing one if another path prepared it first and it
    /// suits the caller) or `None` when the allocation or the binding failed.
    fn prepare_slot(
        &self,
        processor: ProcessorNumber,
        ready: bool,
        participating: bool,
    ) -> Option<*mut Slot<P>> {
        let layout = Layout::new::<Slot<P>>();
        let Some(memory) = self.platform.allocate(layout) else {
            DomainCounters::add(&self.counters.prepare_failures, 1);
            return None;
        };
        let slot = memory.as_ptr().cast::<Slot<P>>();
        // Built in place, field by field (a slot is several cache lines; the message stays
        // uninitialised for `message_init` below).
        // SAFETY: fresh allocation of `Slot<P>`'s layout; each field is written once, through raw
        // pointers to the fields. The one reference, to `part`, is taken after `write_idle` has
        // initialised that field; no reference to the whole slot exists before it is published.
        unsafe {
            let part = ptr::addr_of_mut!((*slot).part);
            Participant::write_idle(part);
            if participating {
                let part = &*part;
                part.participating.store(true, Ordering::Relaxed);
                let epoch = self.global_epoch();
                part.local_epoch.store(epoch, Ordering::Relaxed);
                part.readers.open(epoch);
            }
            ptr::addr_of_mut!((*slot).ready).write(AtomicBool::new(ready));
            ptr::addr_of_mut!((*slot).processor).write(processor);
            ptr::addr_of_mut!((*slot).domain).write(self);
            ptr::addr_of_mut!((*slot).next_in_cycle).write(AtomicPtr::new(ptr::null_mut()));
            ptr::addr_of_mut!((*slot).next_registered).write(AtomicPtr::new(ptr::null_mut()));
        }
        let handler = Handler {
            func: Self::on_message,
            context: slot as *const (),
        };
        // SAFETY: the message lives inside the slot, which never moves until it is freed after
        // `message_release`.
        let bound = unsafe {
            self.platform
                .message_init((*slot).message.as_mut_ptr(), processor, handler)
        };
        if bound.is_err() {
            // SAFETY: the slot was never published.
            unsafe { self.platform.free(memory, layout) };
            DomainCounters::add(&self.counters.prepare_failures, 1);
            return None;
        }
        let mut registry = self.locked(&self.registry);
        match self.table.insert(&self.platform, processor, slot, !ready) {
            Ok((Entry::Empty, group_bytes)) => {
                // SAFETY: `slot` is ours and now published; the registry lock is held.
                unsafe {
                    (*slot)
                        .next_registered
                        .store(registry.head, Ordering::Relaxed)
                };
                registry.head = slot;
                registry.count_prepared(&self.counters, 1, (layout.size() + group_bytes) as i64);
                drop(registry);
                Some(slot)
            }
            Ok((existing, group_bytes)) => {
                registry.count_prepared(&self.counters, 0, group_bytes as i64);
                drop(registry);
                // SAFETY: our slot was never published.
                unsafe { self.discard_slot(slot) };
                // A lazy preparation may only use a routable slot; AddStart's finds any slot enough.
                match existing {
                    Entry::Ready(existing) => Some(existing),
                    Entry::Pending(existing) if !ready => Some(existing),
                    _ => None,
                }
            }
            Err(_) => {
                drop(registry);
                // SAFETY: our slot was never published.
                unsafe { self.discard_slot(slot) };
                DomainCounters::add(&self.counters.prepare_failures, 1);
                None
            }
        }
    }

    /// Whether `processor` may get a routable slot: with the notifications registered, only once its
    /// AddComplete was seen (replayed at registration for the processors already running). Code can
    /// run on a processor between AddStart and AddComplete (PROTOCOL.md, "Hot-add window"); it uses
    /// the overflow slot there. The `prepare-in-add-window` mutation skips this check.
    fn add_completed(&self, processor: ProcessorNumber) -> bool {
        self.callback_state() != CallbackState::Registered
            || self.mutated(Mutation::PrepareInAddWindow)
            || self.completed.get(processor)
    }

    /// Releases the message of an unpublished or unpublishable slot and frees it.
    ///
    /// # Safety
    /// No other processor can reach `slot`.
    unsafe fn discard_slot(&self, slot: *mut Slot<P>) {
        // SAFETY: per the caller; the message was initialised and was never sent.
        unsafe {
            self.platform.message_release((*slot).message.as_mut_ptr());
            ptr::drop_in_place(slot);
            self.platform.free(
                NonNull::new_unchecked(slot.cast()),
                Layout::new::<Slot<P>>(),
            );
        }
    }

    /// `eager`: prepare every index below the reported maximum, failing like the original design.
    pub(super) fn prepare_eager(&self) -> Result<(), LoadError> {
        for index in 0..self.platform.max_processor_count() {
            let processor = self
                .platform
                .processor_number_from_index(index)
                .map_err(|status| LoadError {
                    status,
                    reason: LoadFailure::ProcessorIndex(index),
                })?;
            if self.prepare_slot(processor, true, true).is_none() {
                return Err(LoadError {
                    status: Status::INSUFFICIENT_RESOURCES,
                    reason: LoadFailure::Prepare(index),
                });
            }
            DomainCounters::add(&self.counters.prepare_passive, 1);
        }
        Ok(())
    }

    /// `callback` and `lazy`: register for processor-change notifications (`callback` prepares there;
    /// both learn which processors completed their add), or run without them.
    pub(super) fn register_callback(&self) {
        self.registering.store(true, Ordering::Relaxed);
        // SAFETY: the domain outlives the registration: shutdown deregisters first.
        let result = unsafe {
            self.platform.processor_change_register(
                Self::on_processor_change,
                self as *const Self as *const (),
            )
        };
        self.registering.store(false, Ordering::Relaxed);
        let state = match result {
            Ok(Some(handle)) => {
                self.callback_handle
                    .store(handle.as_ptr(), Ordering::Release);
                CallbackState::Registered
            }
            Ok(None) => {
                self.platform.log(
                    LogLevel::Warning,
                    format_args!(
                        "kepoch: KeRegisterProcessorChangeCallback is missing; running as lazy (no processor can be hot-added on such a system)"
                    ),
                );
                CallbackState::ApiMissing
            }
            Err(status) => {
                self.platform.log(
                    LogLevel::Warning,
                    format_args!("kepoch: processor-change registration failed with {status}; running as lazy, and a processor hot-added from now on may be messaged before its AddComplete"),
                );
                CallbackState::RegistrationFailed
            }
        };
        self.callback_state.store(state as u32, Ordering::Relaxed);
    }

    /// Processor-change notification (PASSIVE/APC, never concurrent with itself). Never vetoes.
    unsafe fn on_processor_change(
        context: *const (),
        change: ProcessorChange,
        processor: CurrentProcessor,
    ) -> Status {
        // SAFETY: registered with the domain as context; deregistered before the domain goes away.
        let domain = unsafe { &*(context as *const Self) };
        domain
            .platform
            .verify_irql("processor-change callback", IrqlRule::BelowDispatch);
        let number = processor.number;
        // The replay at registration runs on the registering thread, inside the register call.
        let replay = domain.registering.load(Ordering::Relaxed);
        let counters = &domain.counters;
        let count = |replayed: &AtomicU64, live: &AtomicU64| {
            DomainCounters::add(if replay { replayed } else { live }, 1);
        };
        match change {
            ProcessorChange::AddStart => {
                count(&counters.replayed_add_start, &counters.hot_add_start);
                if domain.config.strategy == Strategy::Callback
                    && domain.table.entry(number).slot().is_none()
                {
                    // The `route-before-complete` mutation makes the slot ready and participating
                    // here, before the processor runs: cycles would message it too early.
                    let early = domain.mutated(Mutation::RouteBeforeComplete);
                    match domain.prepare_slot(number, early, early) {
                        Some(_) => DomainCounters::add(&domain.counters.prepare_passive, 1),
                        None => {
                            domain.platform.log(
                                LogLevel::Warning,
                                format_args!("kepoch: preparing processor {number} at AddStart failed; it will use the lazy path after its AddComplete"),
                            );
                            // The `veto-on-prepare-failure` mutation refuses the add instead.
                            if domain.mutated(Mutation::VetoOnPrepareFailure) {
                                return Status::INSUFFICIENT_RESOURCES;
                            }
                        }
                    }
                }
            }
            ProcessorChange::AddComplete => {
                count(&counters.replayed_add_complete, &counters.hot_add_complete);
                domain.completed.set(number, true);
                let registry = domain.locked(&domain.registry);
                if let Entry::Pending(slot) = domain.table.entry(number) {
                    // SAFETY: a published slot; pending slots are freed only under the registry
                    // lock, which we hold.
                    let slot = unsafe { &*slot };
                    slot.ready.store(true, Ordering::Release);
                    domain.table.make_routable(number);
                    // The `activate-remote` mutation joins the slot here, on the notification thread,
                    // instead of on the processor's own first epoch use.
                    if domain.mutated(Mutation::ActivateRemote) {
                        domain.join(&slot.part);
                    }
                }
                drop(registry);
            }
            ProcessorChange::AddFailure(_) => {
                count(&counters.replayed_add_failure, &counters.hot_add_failure);
                domain.completed.set(number, false);
                domain.roll_back(number);
            }
        }
        Status::SUCCESS
    }

    /// Undoes the AddStart preparation of `processor` if it is still pending.
    fn roll_back(&self, processor: ProcessorNumber) {
        let mut registry = self.locked(&self.registry);
        let Entry::Pending(slot) = self.table.entry(processor) else {
            return;
        };
        self.table.remove(processor);
        // SAFETY: registry links are valid slots; we hold the lock.
        unsafe {
            let next = (*slot).next_registered.load(Ordering::Relaxed);
            if registry.head == slot {
                registry.head = next;
            } else {
                let mut cursor = registry.head;
                while !cursor.is_null() {
                    let following = (*cursor).next_registered.load(Ordering::Relaxed);
                    if following == slot {
                        (*cursor).next_registered.store(next, Ordering::Relaxed);
                        break;
                    }
                    cursor = following;
                }
            }
        }
        registry.count_prepared(
            &self.counters,
            -1,
            -(Layout::new::<Slot<P>>().size() as i64),
        );
        drop(registry);
        // A pending slot was never handed out by `lookup` (code that ran on the processor since its
        // AddStart used the overflow slot) and never had readers, items or messages.
        // SAFETY: unpublished above; nothing else refers to it.
        unsafe { self.discard_slot(slot) };
    }

    /// Lazy preparation of the current processor's slot, at DISPATCH on that processor. `None`: use
    /// the overflow slot (`eager`, unload, a failed allocation retried next cycle, or a processor that
    /// has not completed its add).
    pub(super) fn prepare_here(&self, processor: ProcessorNumber) -> Option<*mut Slot<P>> {
        self.platform
            .verify_irql("lazy preparation", IrqlRule::Dispatch);
        if self.config.strategy == Strategy::Eager || self.shutting_down.load(Ordering::Relaxed) {
            return None;
        }
        if !self.add_completed(processor) {
            return None;
        }
        if self.prepare_retry_epoch.load(Ordering::Relaxed)
            > self.global_epoch.load(Ordering::Relaxed)
        {
            return None;
        }
        match self.prepare_slot(processor, true, false) {
            Some(slot) => {
                DomainCounters::add(&self.counters.prepare_at_dispatch, 1);
                Some(slot)
            }
            None => {
                // Do not retry before the next cycle: a failing allocation must not tax every enter.
                self.prepare_retry_epoch.store(
                    self.global_epoch.load(Ordering::Relaxed) + 1,
                    Ordering::Relaxed,
                );
                // Log the 1st, 2nd, 4th, 8th… failure: persistent failures must not flood the log.
                let failures = self.counters.prepare_failures.load(Ordering::Relaxed);
                if !failures.is_power_of_two() {
                    return None;
                }
                self.platform.log(
                    LogLevel::Warning,
                    format_args!("kepoch: preparing processor {processor} at DISPATCH failed ({failures} failures so far); using the overflow slot"),
                );
                None
            }
        }
    }
}
