//! The epoch domain: global epoch, participants, the reclamation cycle, activation strategies and
//! shutdown. See `PROTOCOL.md` next to this crate for the protocol and why it is safe.

use crate::config::{Config, Strategy};
use crate::deferred::{state, RetireHeader, RetiredList};
use crate::guard::{Guard, RawGuard};
use crate::mutation::Mutation;
use crate::participant::{Participant, Slot};
use crate::platform::{
    CurrentProcessor, Handler, IrqlRule, LogLevel, Platform, ProcessorChange, ProcessorNumber,
    Status,
};
use crate::spin::{SpinGuard, SpinLock};
use crate::stats::{
    CallbackState, DomainCounters, LatencyHistogram, ParticipantCounters, Stats, STATS_VERSION,
};
use crate::sync::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use crate::table::SlotTable;
use core::alloc::Layout;
use core::fmt;
use core::mem::{self, ManuallyDrop, MaybeUninit};
use core::ops::Deref;
use core::ptr::{self, NonNull};

/// Why a domain could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The NTSTATUS `DriverEntry` returns.
    pub status: Status,
    /// What failed.
    pub reason: LoadFailure,
}

/// The step of the load that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadFailure {
    /// Allocating the domain, its timer or its events failed.
    Resources,
    /// `eager`: `KeGetProcessorNumberFromIndex` failed for this index (max > active).
    ProcessorIndex(u32),
    /// `eager`: preparing the slot of this index failed.
    Prepare(u32),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            LoadFailure::Resources => write!(f, "allocating the epoch domain failed: {}", self.status),
            LoadFailure::ProcessorIndex(index) => write!(
                f,
                "eager: KeGetProcessorNumberFromIndex({index}) failed with {} (reported maximum exceeds active processors)",
                self.status
            ),
            LoadFailure::Prepare(index) => {
                write!(f, "eager: preparing processor index {index} failed with {}", self.status)
            }
        }
    }
}

/// Why a retirement was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireError {
    /// The item was already retired (or the work item is already scheduled).
    AlreadyRetired,
}

/// Bit of `Domain::outstanding_work` that unload sets while it waits for work items: the last work
/// item to finish then signals `work_idle` (like a rundown reference with a waiter).
const WORK_WAITER: u64 = 1 << 63;

/// Where a reader sits: a prepared processor's slot or the shared overflow slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The slot of this processor.
    Processor(ProcessorNumber),
    /// The shared overflow slot (processors without a usable slot).
    Overflow,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Processor(p) => write!(f, "processor {p}"),
            Holder::Overflow => f.write_str("the overflow slot"),
        }
    }
}

/// What holds reclamation back: a diagnosis for stall reports and failing tortures. A racy snapshot
/// (readers keep entering and exiting while it is taken); never used for reclamation itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holdback {
    /// The global epoch.
    pub global_epoch: u64,
    /// The newest released epoch.
    pub released_epoch: u64,
    /// The participant with the oldest active reader and that reader's epoch, if any reader is
    /// inside.
    pub oldest_reader: Option<(Holder, u64)>,
    /// Items retired and not yet disposed of.
    pub pending: u64,
}

/// State of the single in-flight reclamation cycle.
struct Cycle<P: Platform> {
    in_flight: AtomicBool,
    requested: AtomicBool,
    /// Epoch the in-flight cycle published.
    epoch: AtomicU64,
    /// Oldest reader epoch seen so far by the in-flight cycle.
    oldest: AtomicU64,
    /// Released epoch when the in-flight cycle started: visits free up to it.
    release_at_start: AtomicU64,
    /// `now_ns` when the in-flight cycle published its epoch.
    started_ns: AtomicU64,
    first: AtomicPtr<Slot<P>>,
}

/// What [`Domain::start_cycle`] did.
enum CycleStart {
    /// The first member's message is queued; the last visit finishes the cycle.
    Sent,
    /// The ring is empty: the caller finishes the cycle at once.
    EmptyRing,
    /// A cycle is in flight elsewhere (it will run another) or unload began.
    NotStarted,
}

/// All prepared slots, for building cycle rings and for teardown.
struct Registry<P: Platform> {
    head: *mut Slot<P>,
}

// SAFETY: the registry only holds pointers to slots owned by the domain; it is reached under its lock.
unsafe impl<P: Platform> Send for Registry<P> {}

/// Per-CPU epoch-based reclamation over a platform `P`. Create with [`Domain::create`].
#[repr(C, align(64))]
pub struct Domain<P: Platform> {
    global_epoch: AtomicU64,
    released_epoch: AtomicU64,
    /// Every item stamped at or below this has been disposed of.
    freed_through: AtomicU64,
    cycle: Cycle<P>,
    table: SlotTable<P>,
    registry: SpinLock<Registry<P>>,
    overflow: SpinLock<Participant>,
    counters: DomainCounters,
    cycle_latency: SpinLock<LatencyHistogram>,
    config: Config,
    callback_state: AtomicU32,
    callback_handle: AtomicPtr<()>,
    shutting_down: AtomicBool,
    /// Epoch before which a failed lazy preparation is not retried (keeps DISPATCH cheap under
    /// memory pressure).
    prepare_retry_epoch: AtomicU64,
    outstanding_work: AtomicU64,
    platform: ManuallyDrop<P>,
    timer: MaybeUninit<P::Timer>,
    cycle_done: MaybeUninit<P::Event>,
    work_idle: MaybeUninit<P::Event>,
}

// SAFETY: all shared state is atomics, spin-locked or platform objects that are Send + Sync.
unsafe impl<P: Platform> Sync for Domain<P> {}
// SAFETY: as above; the domain owns its slots.
unsafe impl<P: Platform> Send for Domain<P> {}

/// Owner of a [`Domain`]: dereferences to it; dropping it shuts the domain down (SPEC S8).
pub struct DomainBox<P: Platform> {
    domain: NonNull<Domain<P>>,
}

// SAFETY: the box is the unique owner of a Sync + Send domain.
unsafe impl<P: Platform> Send for DomainBox<P> {}
// SAFETY: shared access goes through `&Domain`, which is Sync.
unsafe impl<P: Platform> Sync for DomainBox<P> {}

impl<P: Platform> Deref for DomainBox<P> {
    type Target = Domain<P>;
    fn deref(&self) -> &Domain<P> {
        // SAFETY: the domain lives until the box drops.
        unsafe { self.domain.as_ref() }
    }
}

impl<P: Platform> Drop for DomainBox<P> {
    fn drop(&mut self) {
        let domain = self.domain.as_ptr();
        // SAFETY: we own the domain; no guard can outlive the box (guards borrow it), and shutdown
        // stops every platform callback before the memory is released.
        unsafe {
            (*domain).shutdown();
            let platform = ManuallyDrop::take(&mut (*domain).platform);
            ptr::drop_in_place(domain);
            platform.free(self.domain.cast(), Layout::new::<Domain<P>>());
        }
    }
}

/// Byte offset of the value in a block from [`Domain::alloc`]: the header, padded to a cache line.
const fn value_offset<T>() -> usize {
    let align = if mem::align_of::<T>() > 64 {
        mem::align_of::<T>()
    } else {
        64
    };
    let header = mem::size_of::<RetireHeader>();
    header.div_ceil(align) * align
}

/// Layout of a block holding a header and a `T`.
fn block_layout<T>() -> Layout {
    let align = mem::align_of::<T>().max(64);
    let size = value_offset::<T>() + mem::size_of::<T>();
    // Size and alignment come from real types; the alignment is a power of two.
    Layout::from_size_align(size, align).unwrap_or(Layout::new::<RetireHeader>())
}

/// Drops the `T` of a memory block and frees the block.
unsafe fn dispose_object<T, P: Platform>(header: *mut RetireHeader, domain: *const ()) {
    // SAFETY: `header` starts a block made by `Domain::alloc::<T>` of `domain`, retired and released:
    // no reader can reach it any more.
    unsafe {
        let layout = (*header).layout;
        let value = header.cast::<u8>().add(value_offset::<T>()).cast::<T>();
        ptr::drop_in_place(value);
        let domain = &*(domain as *const Domain<P>);
        domain
            .platform
            .free(NonNull::new_unchecked(header.cast()), layout);
    }
}

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
    /// Creates a domain: prepares per-CPU state as the strategy says, registers for processor-change
    /// notifications (`callback`), starts the cycle timer and logs one line. PASSIVE only.
    pub fn create(platform: P, config: Config) -> Result<DomainBox<P>, LoadError> {
        platform.verify_irql("Domain::create", IrqlRule::Passive);
        let resources = LoadError {
            status: Status::INSUFFICIENT_RESOURCES,
            reason: LoadFailure::Resources,
        };
        let Some(memory) = platform.allocate(Layout::new::<Domain<P>>()) else {
            return Err(resources);
        };
        let raw = memory.as_ptr().cast::<Domain<P>>();
        // SAFETY: fresh allocation with the layout of `Domain<P>`, not shared yet.
        unsafe {
            raw.write(Domain {
                global_epoch: AtomicU64::new(1),
                released_epoch: AtomicU64::new(0),
                freed_through: AtomicU64::new(0),
                cycle: Cycle {
                    in_flight: AtomicBool::new(false),
                    requested: AtomicBool::new(false),
                    epoch: AtomicU64::new(1),
                    oldest: AtomicU64::new(u64::MAX),
                    release_at_start: AtomicU64::new(0),
                    started_ns: AtomicU64::new(0),
                    first: AtomicPtr::new(ptr::null_mut()),
                },
                table: SlotTable::new(),
                registry: SpinLock::new(Registry {
                    head: ptr::null_mut(),
                }),
                overflow: SpinLock::new(Participant::new()),
                counters: DomainCounters::default(),
                cycle_latency: SpinLock::new(LatencyHistogram::default()),
                config,
                callback_state: AtomicU32::new(CallbackState::NotUsed as u32),
                callback_handle: AtomicPtr::new(ptr::null_mut()),
                shutting_down: AtomicBool::new(false),
                prepare_retry_epoch: AtomicU64::new(0),
                outstanding_work: AtomicU64::new(0),
                platform: ManuallyDrop::new(platform),
                timer: MaybeUninit::uninit(),
                cycle_done: MaybeUninit::uninit(),
                work_idle: MaybeUninit::uninit(),
            })
        };
        // SAFETY: initialised just above; the timer and events are initialised in place below before
        // anything uses them.
        let domain = unsafe { &*raw };
        let this = raw as *const ();
        // SAFETY: the events and timer live inside the domain, which never moves.
        let timer_ok = unsafe {
            domain
                .platform
                .event_init(domain.cycle_done.as_ptr().cast_mut());
            domain
                .platform
                .event_init(domain.work_idle.as_ptr().cast_mut());
            domain.platform.timer_init(
                domain.timer.as_ptr().cast_mut(),
                Handler {
                    func: Self::on_timer,
                    context: this,
                },
            )
        };
        if timer_ok.is_err() {
            // SAFETY: nothing refers to the domain yet; free it without a shutdown.
            unsafe {
                let platform = ManuallyDrop::take(&mut (*raw).platform);
                ptr::drop_in_place(raw);
                platform.free(memory, Layout::new::<Domain<P>>());
            }
            return Err(resources);
        }
        // The box keeps the allocation's own pointer (not one derived from the shared `domain`
        // reference), so that unload may take the platform out mutably.
        let boxed = DomainBox {
            domain: memory.cast::<Domain<P>>(),
        };

        match config.strategy {
            Strategy::Eager => domain.prepare_eager()?,
            Strategy::Callback => domain.register_callback(),
            Strategy::Lazy => {}
        }
        domain
            .platform
            .timer_start(domain.timer(), config.cycle_period_us);
        domain.platform.log(
            LogLevel::Info,
            format_args!(
                "kepoch: strategy {} (registry value {}), max {} active {} processors, callback {}, idle deactivation {}, cycle {} us",
                config.strategy,
                config.strategy.registry_value(),
                domain.platform.max_processor_count(),
                domain.platform.active_processor_count(),
                match domain.callback_state() {
                    CallbackState::NotUsed => "not used",
                    CallbackState::Registered => "registered",
                    CallbackState::ApiMissing => "API missing, running as lazy",
                    CallbackState::RegistrationFailed => "registration failed, running as lazy",
                },
                config.idle_deactivation,
                config.cycle_period_us
            ),
        );
        Ok(boxed)
    }

    /// The platform this domain runs on.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The configuration the domain was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn timer(&self) -> &P::Timer {
        // SAFETY: initialised in `create` before any use.
        unsafe { self.timer.assume_init_ref() }
    }

    fn cycle_done(&self) -> &P::Event {
        // SAFETY: initialised in `create` before any use.
        unsafe { self.cycle_done.assume_init_ref() }
    }

    fn work_idle(&self) -> &P::Event {
        // SAFETY: initialised in `create` before any use.
        unsafe { self.work_idle.assume_init_ref() }
    }

    fn mutated(&self, mutation: Mutation) -> bool {
        self.config.mutations.active(mutation)
    }

    /// Takes one of the domain's spin locks: raises to DISPATCH, spins, and restores the IRQL when the
    /// guard drops. Any IRQL up to DISPATCH.
    fn locked<'a, T>(&'a self, lock: &'a SpinLock<T>) -> SpinGuard<'a, T, P> {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::LockWithoutRaise) {
            return lock.lock_without_raise(&*self.platform);
        }
        lock.lock(&*self.platform)
    }

    /// How the `callback` strategy is running.
    pub fn callback_state(&self) -> CallbackState {
        match self.callback_state.load(Ordering::Relaxed) {
            1 => CallbackState::Registered,
            2 => CallbackState::ApiMissing,
            3 => CallbackState::RegistrationFailed,
            _ => CallbackState::NotUsed,
        }
    }

    /// The current global epoch.
    pub fn global_epoch(&self) -> u64 {
        self.global_epoch.load(Ordering::SeqCst)
    }

    /// The newest epoch whose items may be freed: every item stamped at or below it is unreachable by
    /// any active reader. Tests compare it with what readers hold.
    pub fn released_epoch(&self) -> u64 {
        self.released_epoch.load(Ordering::Acquire)
    }

    // ---------------------------------------------------------------------------------------------
    // Preparation of per-CPU state.

    /// Allocates, initialises and publishes the slot of `processor`. Returns the slot (an existing one if
    /// another path prepared it first) or `None` when the allocation or the binding failed.
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
        let part = Participant::new();
        if participating {
            part.participating.store(true, Ordering::Relaxed);
            part.local_epoch
                .store(self.global_epoch(), Ordering::Relaxed);
        }
        // SAFETY: fresh allocation of `Slot<P>`'s layout.
        unsafe {
            slot.write(Slot {
                part,
                ready: AtomicBool::new(ready),
                processor,
                domain: self,
                next_in_cycle: AtomicPtr::new(ptr::null_mut()),
                next_registered: AtomicPtr::new(ptr::null_mut()),
                message: MaybeUninit::uninit(),
            })
        };
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
        match self.table.insert(&self.platform, processor, slot) {
            Ok((None, group_bytes)) => {
                // SAFETY: `slot` is ours and now published; the registry lock is held.
                unsafe {
                    (*slot)
                        .next_registered
                        .store(registry.head, Ordering::Relaxed)
                };
                registry.head = slot;
                drop(registry);
                DomainCounters::add(
                    &self.counters.per_cpu_bytes,
                    (layout.size() + group_bytes) as u64,
                );
                DomainCounters::add(&self.counters.cpus_prepared, 1);
                Some(slot)
            }
            Ok((Some(existing), group_bytes)) => {
                drop(registry);
                DomainCounters::add(&self.counters.per_cpu_bytes, group_bytes as u64);
                // SAFETY: our slot was never published.
                unsafe { self.discard_slot(slot) };
                Some(existing)
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
    fn prepare_eager(&self) -> Result<(), LoadError> {
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

    /// `callback`: register for processor-change notifications, or fall back to `lazy`.
    fn register_callback(&self) {
        // SAFETY: the domain outlives the registration: shutdown deregisters first.
        let result = unsafe {
            self.platform.processor_change_register(
                Self::on_processor_change,
                self as *const Self as *const (),
            )
        };
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
                        "kepoch: KeRegisterProcessorChangeCallback is missing; running as lazy"
                    ),
                );
                CallbackState::ApiMissing
            }
            Err(status) => {
                self.platform.log(
                    LogLevel::Warning,
                    format_args!("kepoch: processor-change registration failed with {status}; running as lazy"),
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
        match change {
            ProcessorChange::AddStart => {
                DomainCounters::add(&domain.counters.hot_add_start, 1);
                if domain.table.lookup(number).is_null() {
                    // The `route-before-complete` mutation makes the slot ready and participating
                    // here, before the processor runs: cycles would message it too early.
                    let early = domain.mutated(Mutation::RouteBeforeComplete);
                    match domain.prepare_slot(number, early, early) {
                        Some(_) => DomainCounters::add(&domain.counters.prepare_passive, 1),
                        None => domain.platform.log(
                            LogLevel::Warning,
                            format_args!("kepoch: preparing processor {number} at AddStart failed; it will use the lazy path"),
                        ),
                    }
                }
            }
            ProcessorChange::AddComplete => {
                DomainCounters::add(&domain.counters.hot_add_complete, 1);
                let slot = domain.table.lookup(number);
                // SAFETY: published slots live until teardown or rollback (which only we do).
                if let Some(slot) = unsafe { slot.as_ref() } {
                    slot.ready.store(true, Ordering::Release);
                    // The `activate-remote` mutation joins the slot here, on the notification thread,
                    // instead of on the processor's own first epoch use.
                    if domain.mutated(Mutation::ActivateRemote) {
                        domain.join(&slot.part);
                    }
                }
            }
            ProcessorChange::AddFailure(_) => {
                DomainCounters::add(&domain.counters.hot_add_failure, 1);
                domain.roll_back(number);
            }
        }
        Status::SUCCESS
    }

    /// Undoes the AddStart preparation of `processor` if it never became ready.
    fn roll_back(&self, processor: ProcessorNumber) {
        let mut registry = self.locked(&self.registry);
        let slot = self.table.lookup(processor);
        // SAFETY: published slots stay valid while the registry lock is held.
        if slot.is_null() || unsafe { &*slot }.ready.load(Ordering::Acquire) {
            return;
        }
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
        drop(registry);
        // A slot that never became ready never had readers, items or messages: nothing refers to it.
        self.counters
            .per_cpu_bytes
            .fetch_sub(Layout::new::<Slot<P>>().size() as u64, Ordering::Relaxed);
        self.counters.cpus_prepared.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: unpublished above; no processor ran epoch code with it.
        unsafe { self.discard_slot(slot) };
    }

    // ---------------------------------------------------------------------------------------------
    // The hot path.

    /// Enters an epoch: until the guard drops, nothing retired after this call is freed.
    /// Never fails (SPEC S2). Nested guards are fine.
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
        // were never ready, and we check `ready`).
        let token = match unsafe { slot.as_ref() } {
            Some(slot) if slot.ready.load(Ordering::Acquire) => self.enter_owned(&slot.part),
            _ => self.enter_slow(current, slot.is_null()),
        };
        self.platform.lower_irql(previous);
        token
    }

    /// Records a reader in the current processor's own slot, joining the cycle first if it left.
    /// At DISPATCH on the slot's processor.
    #[inline]
    fn enter_owned(&self, part: &Participant) -> RawGuard {
        self.ensure_joined(part);
        let entry = part.readers.enter(part.local_epoch.load(Ordering::Relaxed));
        ParticipantCounters::bump(&part.counters.enters);
        RawGuard {
            participant: part as *const Participant,
            entry,
        }
    }

    /// Joins the cycle if `part` is not in it. Called by the participant's owner only.
    #[inline]
    fn ensure_joined(&self, part: &Participant) {
        if !part.participating.load(Ordering::Relaxed) {
            self.join(part);
        }
    }

    /// Enter on a processor without a usable slot: prepare one (`lazy`, `callback` fallback) or use the
    /// shared overflow slot. At DISPATCH.
    #[cold]
    fn enter_slow(&self, current: CurrentProcessor, no_slot: bool) -> RawGuard {
        if no_slot {
            if let Some(slot) = self.prepare_here(current.number) {
                // SAFETY: freshly prepared (or existing) published slot.
                let slot = unsafe { &*slot };
                if slot.ready.load(Ordering::Acquire) {
                    return self.enter_owned(&slot.part);
                }
            }
        }
        let overflow = self.locked(&self.overflow);
        // Overflow readers take the global epoch itself: they may come from any processor. The cycle
        // folds them in under the lock, so only the reader's own fence matters here: like the
        // second fence of `join`, it orders the reader's pointer loads after the epoch it entered.
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
        ParticipantCounters::bump(&overflow.counters.enters);
        DomainCounters::add(&self.counters.fallback_uses, 1);
        RawGuard {
            participant: &*overflow as *const Participant,
            entry,
        }
    }

    /// Lazy preparation of the current processor's slot, at DISPATCH on that processor.
    fn prepare_here(&self, processor: ProcessorNumber) -> Option<*mut Slot<P>> {
        self.platform
            .verify_irql("lazy preparation", IrqlRule::Dispatch);
        if self.config.strategy == Strategy::Eager || self.shutting_down.load(Ordering::Relaxed) {
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

    /// The owner of `part` puts it back into the cycle: store `participating`, full fence, load the
    /// global epoch, full fence. The first fence pairs with the one between the cycle's publish and
    /// its snapshot (store buffering): either the in-flight cycle sees this participant or this
    /// participant sees that cycle's epoch. The second pairs with the retirement fence: the readers
    /// that follow see every unlink stamped before the epoch they enter. See PROTOCOL.md, "Joining".
    fn join(&self, part: &Participant) {
        let epoch = if self.mutated(Mutation::JoinLoadFirst) {
            let epoch = self.global_epoch.load(Ordering::Relaxed);
            part.participating.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            epoch
        } else {
            part.participating.store(true, Ordering::Relaxed);
            if !self.mutated(Mutation::JoinNoStoreFence) {
                fence(Ordering::SeqCst);
            }
            self.global_epoch.load(Ordering::Relaxed)
        };
        if !self.mutated(Mutation::JoinNoLoadFence) {
            fence(Ordering::SeqCst);
        }
        part.local_epoch.store(epoch, Ordering::Relaxed);
        ParticipantCounters::bump(&part.counters.joins);
        part.mark_joined();
    }

    /// Exits the epoch entered by `token`, on whatever processor the caller now runs.
    ///
    /// # Safety
    /// `token` came from [`Domain::enter_raw`] of this domain and was not exited yet.
    #[inline]
    pub unsafe fn exit_raw(&self, token: RawGuard) {
        let previous = self.platform.raise_to_dispatch();
        let overflow_part = self.overflow_ptr();
        if ptr::eq(token.participant, overflow_part) {
            let overflow = self.locked(&self.overflow);
            overflow.readers.exit_local(token.entry);
            ParticipantCounters::bump(&overflow.counters.exits);
        } else {
            // SAFETY: the token points into a live slot (slots with readers are never freed).
            let part = unsafe { &*token.participant };
            let current = self.platform.current_processor();
            let here = self.table.lookup(current.number);
            // SAFETY: `here` is null or a published slot.
            if !here.is_null() && ptr::eq(unsafe { &(*here).part }, part) {
                if !self.mutated(Mutation::LostExit) {
                    part.readers.exit_local(token.entry);
                }
                ParticipantCounters::bump(&part.counters.exits);
            } else {
                let ordering = if self.mutated(Mutation::RemoteExitRelaxed) {
                    Ordering::Relaxed
                } else {
                    Ordering::Release
                };
                part.readers.exit_remote(token.entry, ordering);
                DomainCounters::add(&self.counters.remote_exits, 1);
            }
        }
        self.platform.lower_irql(previous);
    }

    fn overflow_ptr(&self) -> *const Participant {
        // The lock's value never moves; its address identifies overflow tokens.
        self.overflow.value_ptr()
    }

    // ---------------------------------------------------------------------------------------------
    // Retirement.

    /// Allocates a cache-aligned block holding `value`, ready to be retired with [`Domain::retire`].
    /// Returns the value back if the allocation fails.
    pub fn alloc<T: Send>(&self, value: T) -> Result<NonNull<T>, T> {
        let layout = block_layout::<T>();
        let Some(memory) = self.platform.allocate(layout) else {
            return Err(value);
        };
        let header = memory.as_ptr().cast::<RetireHeader>();
        // SAFETY: fresh block of `layout`: header at 0, value at `value_offset`, both in bounds.
        unsafe {
            header.write(RetireHeader::new(dispose_object::<T, P>, layout));
            let value_ptr = memory.as_ptr().add(value_offset::<T>()).cast::<T>();
            value_ptr.write(value);
            Ok(NonNull::new_unchecked(value_ptr))
        }
    }

    /// Frees a block from [`Domain::alloc`] that was never published to readers, at once.
    ///
    /// # Safety
    /// `value` came from `alloc` of this domain, was never retired and no reader can reach it.
    pub unsafe fn free_now<T>(&self, value: NonNull<T>) {
        // SAFETY: per the caller, the header precedes the value and nobody else uses the block.
        unsafe {
            let header = value
                .as_ptr()
                .cast::<u8>()
                .sub(value_offset::<T>())
                .cast::<RetireHeader>();
            ((*header).dispose)(header, self as *const Self as *const ());
        }
    }

    /// Retires a block from [`Domain::alloc`] that the caller has unlinked: its destructor runs and its
    /// memory is freed once every reader that could still see it has exited. Returns the epoch it was
    /// stamped with; a second retirement of the same block is refused and counted.
    ///
    /// # Safety
    /// `value` came from `alloc` of this domain and is no longer reachable by readers that enter from
    /// now on.
    pub unsafe fn retire<T>(&self, value: NonNull<T>) -> Result<u64, RetireError> {
        // SAFETY: per the caller, the header precedes the value.
        let header = unsafe {
            value
                .as_ptr()
                .cast::<u8>()
                .sub(value_offset::<T>())
                .cast::<RetireHeader>()
        };
        // SAFETY: the block is alive (it has not been released, since it is not yet retired or the
        // state check below refuses).
        unsafe { self.retire_header(header, state::LIVE) }
    }

    /// Moves `header` from `from` to RETIRED and appends it to the current participant's list.
    unsafe fn retire_header(
        &self,
        header: *mut RetireHeader,
        from: u8,
    ) -> Result<u64, RetireError> {
        // SAFETY: the caller passes a live header.
        let head = unsafe { &*header };
        if head
            .state
            .compare_exchange(from, state::RETIRED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            DomainCounters::add(&self.counters.double_retires, 1);
            return Err(RetireError::AlreadyRetired);
        }
        // SAFETY: the header is live and now RETIRED by us, in no list.
        Ok(unsafe { self.link_retired(header) })
    }

    /// Appends a RETIRED header to the current processor's list (the overflow list without a usable
    /// slot, and during unload, whose drains own the per-CPU lists) and returns its stamp.
    ///
    /// # Safety
    /// `header` is live, RETIRED by the caller and in no list.
    unsafe fn link_retired(&self, header: *mut RetireHeader) -> u64 {
        let previous = self.platform.raise_to_dispatch();
        let unloading = self.shutting_down.load(Ordering::Relaxed);
        let current = self.platform.current_processor();
        let mut slot = if unloading {
            ptr::null_mut()
        } else {
            self.table.lookup(current.number)
        };
        if slot.is_null() && !unloading {
            slot = self.prepare_here(current.number).unwrap_or(ptr::null_mut());
        }
        // SAFETY: null or a published slot.
        let stamp = match unsafe { slot.as_ref() } {
            Some(slot) if slot.ready.load(Ordering::Acquire) => {
                let part = &slot.part;
                self.ensure_joined(part);
                let stamp = self.retire_stamp(part);
                // SAFETY: we own this participant at DISPATCH; the header is ours to link.
                unsafe { part.retired.push(header, stamp) };
                ParticipantCounters::bump(&part.counters.retires);
                stamp
            }
            _ => {
                let overflow = self.locked(&self.overflow);
                self.ensure_joined(&overflow);
                let stamp = self.retire_stamp(&overflow);
                // SAFETY: the overflow lock makes us its owner.
                unsafe { overflow.retired.push(header, stamp) };
                ParticipantCounters::bump(&overflow.counters.retires);
                DomainCounters::add(&self.counters.fallback_uses, 1);
                stamp
            }
        };
        self.platform.lower_irql(previous);
        stamp
    }

    /// The epoch a retirement is stamped with: the global epoch, read after a full fence so that any
    /// reader that could still see the unlinked item entered at or before it.
    fn retire_stamp(&self, part: &Participant) -> u64 {
        if !self.mutated(Mutation::StampNoFence) {
            fence(Ordering::SeqCst);
        }
        if self.mutated(Mutation::LocalEpochStamp) {
            return part.local_epoch.load(Ordering::Relaxed);
        }
        self.global_epoch.load(Ordering::Relaxed)
    }

    /// Disposes of one released item. At DISPATCH, outside any lock.
    fn dispose(&self, header: *mut RetireHeader) {
        // SAFETY: released items are valid until disposed of, only we hold this one, and its epoch is
        // released: no reader can reach it. The header's function knows the block's kind.
        unsafe { ((*header).dispose)(header, self as *const Self as *const ()) }
    }

    /// Disposes of a released work item: hands it to a passive thread; if it was cancelled and
    /// scheduled again, retires it again with a fresh stamp; if cancelled, returns it to idle and
    /// drops the domain's reference.
    fn dispose_work_block(&self, block: *mut WorkBlock<P>) {
        // SAFETY: the domain's reference keeps the block alive until released below or after it ran.
        let head = unsafe { &(*block).header };
        loop {
            let (from, to) = match head.state.load(Ordering::Acquire) {
                state::RETIRED => (state::RETIRED, state::QUEUED),
                state::RESCHEDULED => (state::RESCHEDULED, state::RETIRED),
                _ => (state::CANCELLED, state::LIVE),
            };
            if head
                .state
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue; // cancelled or rescheduled meanwhile
            }
            match to {
                state::QUEUED => {
                    self.outstanding_work.fetch_add(1, Ordering::AcqRel);
                    // SAFETY: the block holds the domain's reference until the work runs.
                    self.platform
                        .passive_queue(unsafe { (*block).passive.assume_init_ref() });
                }
                // SAFETY: the block is live (the domain's reference), RETIRED by us and in no list.
                state::RETIRED => unsafe {
                    self.link_retired(block.cast());
                },
                // SAFETY: the domain held one reference for the schedule.
                _ => unsafe { self.release_work(block) },
            }
            return;
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Work items.

    /// Allocates a work item that runs `callback(context)` at PASSIVE once scheduled and safe.
    pub fn new_work_item(&self, callback: fn(usize), context: usize) -> Option<WorkItem<'_, P>> {
        let layout = Layout::new::<WorkBlock<P>>();
        let memory = self.platform.allocate(layout)?;
        let block = memory.as_ptr().cast::<WorkBlock<P>>();
        // SAFETY: fresh block of the right layout; the passive object is initialised in place.
        unsafe {
            block.write(WorkBlock {
                header: RetireHeader::new(dispose_work::<P>, layout),
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

    /// Schedules `item` to run once everything retired before this call is safe; returns the epoch it
    /// waits for (at least). Refused (and counted) if it is already scheduled. A cancelled item can be
    /// scheduled again at once.
    pub fn schedule_work(&self, item: &WorkItem<'_, P>) -> Result<u64, RetireError> {
        let block = item.block.as_ptr();
        // SAFETY: the handle keeps the block alive.
        let head = unsafe { &(*block).header };
        // Cancelled while its entry still waits in a retired list: arm it again. Disposing of that
        // entry retires it anew with a fresh stamp, so it still waits for everything retired before
        // this call; the domain's reference for the old schedule carries over.
        if head
            .state
            .compare_exchange(
                state::CANCELLED,
                state::RESCHEDULED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            fence(Ordering::SeqCst);
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
    /// it was cancelled (it will then not run).
    pub fn cancel_work(&self, item: &WorkItem<'_, P>) -> bool {
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
            // The decrement is this work item's last access to the domain unless unload waits for
            // it (the waiter bit): unload then cannot go on before the signal. Everything needed
            // to decide is read before the decrement.
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
    }

    /// Drops one reference to a work block, freeing it with the last.
    ///
    /// # Safety
    /// The caller owns one reference.
    unsafe fn release_work(&self, block: *mut WorkBlock<P>) {
        // SAFETY: per the caller.
        unsafe {
            if (*block).refs.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.platform.passive_release((*block).passive.as_mut_ptr());
                let layout = (*block).header.layout;
                ptr::drop_in_place(block);
                self.platform
                    .free(NonNull::new_unchecked(block.cast()), layout);
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The reclamation cycle.

    unsafe fn on_timer(context: *const ()) {
        // SAFETY: the timer is stopped before the domain goes away.
        let domain = unsafe { &*(context as *const Self) };
        // A cycle with no member sends no message: it only advances the epoch and folds in the
        // overflow slot, so the timer need not guess whether anything is pending.
        domain.drive_cycles(false);
    }

    /// Runs cycles on this processor until one is in flight with messages out, none is requested,
    /// or another processor owns the cycle. `finishing`: the caller ends the cycle in flight (its
    /// last visit). Iterative, so a flush storm cannot grow the stack (L3). At DISPATCH.
    fn drive_cycles(&self, mut finishing: bool) {
        loop {
            if finishing {
                if !self.finish_cycle() {
                    return;
                }
                // The `recursive-chaining` mutation chains the next cycle by recursion, as the first
                // version did.
                if self.mutated(Mutation::RecursiveChaining) {
                    return self.drive_cycles(false);
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
        if self.shutting_down.load(Ordering::Relaxed) {
            return CycleStart::NotStarted;
        }
        if self
            .cycle
            .in_flight
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            self.cycle.requested.store(true, Ordering::SeqCst);
            return CycleStart::NotStarted;
        }
        // Unload stores `shutting_down`, fences, then waits while `in_flight` is set. Re-checking
        // after owning `in_flight` (store buffering, fence against fence) means a cycle either is
        // seen by unload or sees unload: none can start after unload found no cycle in flight.
        if !self.mutated(Mutation::StartWithoutShutdownRecheck) {
            fence(Ordering::SeqCst);
            if self.shutting_down.load(Ordering::Relaxed) {
                self.cycle.in_flight.store(false, Ordering::SeqCst);
                self.platform.event_signal(self.cycle_done());
                return CycleStart::NotStarted;
            }
        }
        self.cycle.requested.store(false, Ordering::SeqCst);
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
        self.cycle.first.store(first, Ordering::Release);
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
    unsafe fn on_message(context: *const ()) {
        let slot_ptr = context as *mut Slot<P>;
        // SAFETY: messages are only sent to member slots, which outlive the cycle.
        let slot = unsafe { &*slot_ptr };
        let domain = Self::of_slot(slot);
        domain
            .platform
            .verify_irql("reclamation cycle visit", IrqlRule::Dispatch);
        let part = &slot.part;
        ParticipantCounters::bump(&part.counters.messages);
        let epoch = domain.cycle.epoch.load(Ordering::Acquire);

        // Free what the previous cycle released.
        let released = domain.cycle.release_at_start.load(Ordering::Relaxed);
        while let Some(item) = part.retired.pop_released(released) {
            ParticipantCounters::bump(&part.counters.freed);
            domain.dispose(item);
        }

        part.local_epoch.store(epoch, Ordering::Relaxed);
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
            None => domain.drive_cycles(true),
        }
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
    /// wakes waiters. Returns whether another cycle was asked for meanwhile. At DISPATCH.
    fn finish_cycle(&self) -> bool {
        let epoch = self.cycle.epoch.load(Ordering::Relaxed);
        let mut oldest = self.cycle.oldest.load(Ordering::Relaxed);
        let freed_before = self.cycle.release_at_start.load(Ordering::Relaxed);

        let released_items = RetiredList::new();
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
            let release = oldest - 1;
            // Take the overflow's released items out under the lock, dispose of them outside it.
            while let Some(item) = overflow.retired.pop_released(release) {
                // SAFETY: the item left the overflow list; the local list owns it now.
                unsafe { released_items.push(item, release) };
                ParticipantCounters::bump(&overflow.counters.freed);
            }
            if overflow_oldest.is_none()
                && overflow.retired.is_empty()
                && overflow.participating.load(Ordering::Relaxed)
            {
                overflow.participating.store(false, Ordering::SeqCst);
            }
        }
        while let Some(item) = released_items.pop_released(u64::MAX) {
            self.dispose(item);
        }

        self.released_epoch.store(oldest - 1, Ordering::Release);
        self.freed_through.store(freed_before, Ordering::Release);
        DomainCounters::add(&self.counters.cycles, 1);
        let took = self
            .platform
            .now_ns()
            .saturating_sub(self.cycle.started_ns.load(Ordering::Relaxed));
        self.locked(&self.cycle_latency).record(took);
        self.cycle.in_flight.store(false, Ordering::SeqCst);
        self.platform.event_signal(self.cycle_done());
        self.cycle.requested.swap(false, Ordering::SeqCst)
    }

    /// Asks for a cycle soon without waiting (a flush hint). Any IRQL up to DISPATCH.
    pub fn flush(&self) {
        self.cycle.requested.store(true, Ordering::SeqCst);
        let previous = self.platform.raise_to_dispatch();
        self.drive_cycles(false);
        self.platform.lower_irql(previous);
    }

    /// Blocks until everything retired before the call has been disposed of. PASSIVE only, outside any
    /// epoch (waiting inside one would wait for itself). Called from a work item while the domain
    /// unloads, it returns at once: cycles have stopped and unload disposes of everything itself.
    pub fn synchronize(&self) {
        self.platform
            .verify_irql("Domain::synchronize", IrqlRule::Passive);
        if self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        fence(Ordering::SeqCst);
        let target = self.global_epoch.load(Ordering::SeqCst);
        // Ask for cycles back to back only while they make progress; when one released nothing (a
        // reader holds the oldest epoch), wait for the timer's next cycle instead of spinning.
        let mut progressing = true;
        loop {
            let before = self.progress();
            if before.1 >= target {
                return;
            }
            self.platform.event_reset(self.cycle_done());
            if progressing {
                self.flush();
            }
            if self.freed_through.load(Ordering::Acquire) >= target {
                return;
            }
            self.platform.event_wait(self.cycle_done());
            progressing = self.progress() != before;
        }
    }

    /// (released epoch, freed-through epoch): what a cycle can advance.
    fn progress(&self) -> (u64, u64) {
        (
            self.released_epoch.load(Ordering::Acquire),
            self.freed_through.load(Ordering::Acquire),
        )
    }

    // ---------------------------------------------------------------------------------------------
    // Statistics and shutdown.

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            version: STATS_VERSION,
            size: mem::size_of::<Stats>() as u32,
            strategy: self.config.strategy.registry_value(),
            callback_state: self.callback_state() as u32,
            max_reported: self.platform.max_processor_count(),
            active: self.platform.active_processor_count(),
            ..Stats::default()
        };
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        stats.cpus_prepared = load(&c.cpus_prepared);
        stats.per_cpu_bytes = load(&c.per_cpu_bytes);
        stats.prepare_at_dispatch = load(&c.prepare_at_dispatch);
        stats.prepare_passive = load(&c.prepare_passive);
        stats.prepare_failures = load(&c.prepare_failures);
        stats.fallback_uses = load(&c.fallback_uses);
        stats.remote_exits = load(&c.remote_exits);
        stats.double_retires = load(&c.double_retires);
        stats.stalls_reported = load(&c.stalls_reported);
        stats.cycles = load(&c.cycles);
        stats.work_items_run = load(&c.work_items_run);
        stats.hot_add_start = load(&c.hot_add_start);
        stats.hot_add_complete = load(&c.hot_add_complete);
        stats.hot_add_failure = load(&c.hot_add_failure);
        stats.leaked_readers = load(&c.leaked_readers);
        stats.cycle_latency_ns = *self.locked(&self.cycle_latency);
        stats.global_epoch = self.global_epoch.load(Ordering::Relaxed);
        stats.released_epoch = self.released_epoch.load(Ordering::Relaxed);
        let mut add = |part: &Participant| {
            let pc = &part.counters;
            stats.enters += load(&pc.enters);
            stats.exits += load(&pc.exits);
            stats.retired += load(&pc.retires);
            stats.freed += load(&pc.freed);
            stats.messages += load(&pc.messages);
            stats.joins += load(&pc.joins);
            stats.leaves += load(&pc.leaves);
        };
        {
            let registry = self.locked(&self.registry);
            let mut cursor = registry.head;
            while !cursor.is_null() {
                // SAFETY: registry slots are valid while the lock is held.
                let slot = unsafe { &*cursor };
                add(&slot.part);
                cursor = slot.next_registered.load(Ordering::Relaxed);
            }
        }
        add(&self.locked(&self.overflow));
        stats.exits += stats.remote_exits;
        stats.pending = stats.retired.saturating_sub(stats.freed);
        stats
    }

    /// What holds reclamation back (see [`Holdback`]). Any IRQL up to DISPATCH.
    pub fn holdback(&self) -> Holdback {
        let mut oldest: Option<(Holder, u64)> = None;
        let mut consider = |holder: Holder, part: &Participant| {
            if let Some(epoch) = part.readers.oldest_active_epoch() {
                if !matches!(oldest, Some((_, e)) if e <= epoch) {
                    oldest = Some((holder, epoch));
                }
            }
        };
        {
            let registry = self.locked(&self.registry);
            let mut cursor = registry.head;
            while !cursor.is_null() {
                // SAFETY: registry slots are valid while the lock is held.
                let slot = unsafe { &*cursor };
                consider(Holder::Processor(slot.processor), &slot.part);
                cursor = slot.next_registered.load(Ordering::Relaxed);
            }
        }
        consider(Holder::Overflow, &self.locked(&self.overflow));
        Holdback {
            global_epoch: self.global_epoch.load(Ordering::Relaxed),
            released_epoch: self.released_epoch.load(Ordering::Relaxed),
            oldest_reader: oldest,
            pending: self.stats().pending,
        }
    }

    /// SPEC S8, in this order: deregister the processor-change callback; stop cycles (the timer, then
    /// the cycle in flight, then every message); then, until a pass finds nothing, wait for work
    /// items and dispose of everything retired (a work callback or a destructor may retire more);
    /// then free every slot. PASSIVE only; no reader may still be inside an epoch, but work items
    /// may still run and retire.
    fn shutdown(&self) {
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
        // SAFETY: stopped above; no handler can run any more.
        unsafe {
            self.platform.timer_release(self.timer.as_ptr().cast_mut());
        }
    }

    /// Waits until no work item is queued or running. Sets the waiter bit first, so the last work
    /// item to finish signals `work_idle`; one that finishes without seeing the bit touches nothing
    /// of the domain after its decrement. Only unload queues work items meanwhile (its drains), and
    /// not while it waits here. PASSIVE.
    fn wait_for_work_items(&self) {
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

    /// One unload pass: disposes of everything retired so far in every slot and in the overflow
    /// slot, outside every lock, since a destructor may retire again (into the overflow list) and a
    /// disposed work item is queued. Reports readers still inside on the first pass. Returns how many
    /// items it disposed of.
    fn drain_pass(&self, report_readers: bool) -> u64 {
        let previous = self.platform.raise_to_dispatch();
        let mut disposed = 0;
        let mut cursor = self.locked(&self.registry).head;
        while !cursor.is_null() {
            // SAFETY: slots stay registered until the end of unload, and the registry no longer
            // changes: notifications are deregistered and no slot is prepared while unloading.
            let slot = unsafe { &*cursor };
            if report_readers {
                self.report_leaked_readers(&slot.part, Some(slot.processor));
            }
            while let Some(item) = slot.part.retired.pop_released(u64::MAX) {
                ParticipantCounters::bump(&slot.part.counters.freed);
                self.dispose(item);
                disposed += 1;
            }
            cursor = slot.next_registered.load(Ordering::Relaxed);
        }
        let items = RetiredList::new();
        {
            let overflow = self.locked(&self.overflow);
            if report_readers {
                self.report_leaked_readers(&overflow, None);
            }
            while let Some(item) = overflow.retired.pop_released(u64::MAX) {
                // SAFETY: the item left the overflow list; the local list owns it now.
                unsafe { items.push(item, u64::MAX) };
                ParticipantCounters::bump(&overflow.counters.freed);
            }
        }
        while let Some(item) = items.pop_released(u64::MAX) {
            self.dispose(item);
            disposed += 1;
        }
        self.platform.lower_irql(previous);
        disposed
    }

    /// Counts and logs readers of `part` that never exited (unload).
    fn report_leaked_readers(&self, part: &Participant, processor: Option<ProcessorNumber>) {
        let leaked = part.readers.active_readers();
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

/// Disposes of a released work block (the header function of every work item).
unsafe fn dispose_work<P: Platform>(header: *mut RetireHeader, domain: *const ()) {
    // SAFETY: `domain` is the block's domain and the header starts a `WorkBlock<P>`.
    unsafe { (*(domain as *const Domain<P>)).dispose_work_block(header.cast()) }
}
