//! The one trait through which the core reaches its host: the NT kernel (`kepoch-nt`), the simulated
//! machine in `kepoch-sim`, threads of a user-mode process (`kepoch-user`). Nothing else in the core
//! knows which one it runs on.
//!
//! Objects that the kernel requires to stay at a fixed address (KDPC, timers, work items, events) are
//! associated types stored *inline* in core structures that never move, and are initialised in place.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

/// A processor as NT names it: a group and a group-relative number (`PROCESSOR_NUMBER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessorNumber {
    /// Processor group (`PROCESSOR_NUMBER.Group`).
    pub group: u16,
    /// Group-relative number, `0..64` (`PROCESSOR_NUMBER.Number`).
    pub number: u8,
}

impl ProcessorNumber {
    /// Builds a processor number.
    pub const fn new(group: u16, number: u8) -> Self {
        Self { group, number }
    }
}

impl fmt::Display for ProcessorNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.group, self.number)
    }
}

/// The processor the caller runs on: its number and its system-wide index
/// (`KeGetCurrentProcessorNumberEx`). The index may be at or above the reported maximum on lying firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentProcessor {
    /// Group and group-relative number.
    pub number: ProcessorNumber,
    /// System-wide processor index.
    pub index: u32,
}

/// Interrupt request level, as far as the core cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Irql(pub u8);

impl Irql {
    /// PASSIVE_LEVEL: threads may block and migrate.
    pub const PASSIVE: Irql = Irql(0);
    /// APC_LEVEL: processor-change callbacks run here in practice.
    pub const APC: Irql = Irql(1);
    /// DISPATCH_LEVEL: no preemption, no migration; DPCs run here.
    pub const DISPATCH: Irql = Irql(2);
}

/// The IRQL a core routine may be called at. Platforms that check IRQL discipline the way Driver
/// Verifier does (the simulator, the emulated kernel, the user-mode platform) enforce it in
/// [`Platform::verify_irql`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqlRule {
    /// PASSIVE_LEVEL only: the routine may wait (load, unload, `synchronize`).
    Passive,
    /// Below DISPATCH_LEVEL (PASSIVE or APC): processor-change notifications, which may wait.
    BelowDispatch,
    /// DISPATCH_LEVEL only: the reclamation cycle's DPC paths.
    Dispatch,
}

impl IrqlRule {
    /// Whether `irql` satisfies the rule.
    pub fn allows(self, irql: Irql) -> bool {
        match self {
            IrqlRule::Passive => irql == Irql::PASSIVE,
            IrqlRule::BelowDispatch => irql < Irql::DISPATCH,
            IrqlRule::Dispatch => irql == Irql::DISPATCH,
        }
    }
}

/// An NTSTATUS value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Status(pub i32);

impl Status {
    /// STATUS_SUCCESS.
    pub const SUCCESS: Status = Status(0);
    /// STATUS_INVALID_PARAMETER (what `KeGetProcessorNumberFromIndex` returns for an absent index).
    pub const INVALID_PARAMETER: Status = Status(0xC000_000Du32 as i32);
    /// STATUS_INSUFFICIENT_RESOURCES (allocation failure).
    pub const INSUFFICIENT_RESOURCES: Status = Status(0xC000_009Au32 as i32);
    /// STATUS_NOT_SUPPORTED (an optional capability is missing).
    pub const NOT_SUPPORTED: Status = Status(0xC000_00BBu32 as i32);

    /// The symbolic name of the well-known statuses, for log lines and reports.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Status::SUCCESS => Some("STATUS_SUCCESS"),
            Status::INVALID_PARAMETER => Some("STATUS_INVALID_PARAMETER"),
            Status::INSUFFICIENT_RESOURCES => Some("STATUS_INSUFFICIENT_RESOURCES"),
            Status::NOT_SUPPORTED => Some("STATUS_NOT_SUPPORTED"),
            _ => None,
        }
    }

    /// True for success and informational codes (`NT_SUCCESS`).
    pub fn is_success(self) -> bool {
        self.0 >= 0
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (0x{:08X})", self.0 as u32),
            None => write!(f, "NTSTATUS 0x{:08X}", self.0 as u32),
        }
    }
}

/// A pool tag: four characters that name who allocated a block (NT's `ULONG` tag, first character in
/// the low byte, as `'opeK'` is written in C).
///
/// ```
/// # use kepoch::platform::PoolTag;
/// let tag = PoolTag::from_bytes(*b"Rout");
/// assert_eq!(tag.0, u32::from_le_bytes(*b"Rout"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolTag(pub u32);

impl PoolTag {
    /// The tag spelled by these four characters, in the order `!poolused` shows them.
    pub const fn from_bytes(bytes: [u8; 4]) -> PoolTag {
        PoolTag(u32::from_le_bytes(bytes))
    }
}

/// A callback the platform invokes later: a function plus the context it receives (what `KDPC`,
/// `EX_TIMER` and `WORK_QUEUE_ITEM` store). The core only creates handlers whose context outlives the
/// object they are bound to.
#[derive(Clone, Copy)]
pub struct Handler {
    /// Called with `context`.
    pub func: unsafe fn(context: *const ()),
    /// Opaque pointer handed back to `func`.
    pub context: *const (),
}

impl Handler {
    /// Invokes the handler.
    ///
    /// # Safety
    /// The object the handler was created for must still be alive (the platform guarantees this by
    /// only invoking handlers of objects that have not been released).
    pub unsafe fn invoke(&self) {
        // SAFETY: forwarded to the caller's contract above.
        unsafe { (self.func)(self.context) }
    }
}

// SAFETY: a handler is a function pointer plus a context pointer to core state that is itself Sync; the
// core builds handlers only for such contexts.
unsafe impl Send for Handler {}
// SAFETY: see the Send impl; invoking from any thread is what DPCs and timers do.
unsafe impl Sync for Handler {}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something the administrator should know (load summary).
    Info,
    /// Recovered problem: invalid registry value, fallback taken, stalled reader.
    Warning,
    /// The operation failed.
    Error,
}

/// What a processor-change notification says (`KE_PROCESSOR_CHANGE_NOTIFY_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessorChange {
    /// The processor is about to be started; allocate its resources. It is not running yet.
    AddStart,
    /// The processor runs and may receive DPCs.
    AddComplete,
    /// The add failed after AddStart; release what AddStart allocated.
    AddFailure(Status),
}

/// Callback for processor-change notifications: `context`, the change, the processor.
/// It runs at PASSIVE or APC level, never concurrently with itself. Returning an error from
/// [`ProcessorChange::AddStart`] would veto the add; kepoch never does.
pub type ProcessorChangeFn =
    unsafe fn(context: *const (), change: ProcessorChange, processor: CurrentProcessor) -> Status;

/// One reading of [`Platform::work_clock`]: wall time and the time the reading thread ran, each in
/// nanoseconds from an arbitrary origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkInstant {
    /// Monotonic wall time: counts time the host gave to other threads.
    pub wall_ns: u64,
    /// Time the reading thread ran (on NT the wall time): on a virtual machine its accounting can
    /// run ahead of the wall clock by tens of microseconds between two close readings.
    pub run_ns: u64,
}

impl WorkInstant {
    /// Work done on this processor from `self` to `later`: the lower of the wall time and the run
    /// time between them. Either alone overstates the work where the host interferes: the wall time
    /// counts descheduled time, the run time its accounting's jumps. The wall time is never below
    /// the work; the run time, and so the result, can be while the run-time accounting lags.
    pub fn work_ns_until(self, later: WorkInstant) -> u64 {
        let wall = later.wall_ns.saturating_sub(self.wall_ns);
        let run = later.run_ns.saturating_sub(self.run_ns);
        wall.min(run)
    }
}

/// Services the core needs from its host.
///
/// # Safety
/// Implementations must honour the documented contracts: `raise_to_dispatch` gives exclusion on the
/// current processor until the matching `lower_irql` (nothing else runs there: no DPC, no other
/// reader); a message handler runs at DISPATCH on the processor its message was bound to, never
/// concurrently with itself; `allocate` returns memory with the requested layout or `None`.
pub unsafe trait Platform: Send + Sync + 'static {
    /// A per-CPU message (a KDPC bound to one processor). Stored inline in a per-CPU slot.
    type Message: Send + Sync;
    /// The periodic timer that drives reclamation cycles.
    type Timer: Send + Sync;
    /// A passive-level work item (retired work runs here, outside any epoch).
    type PassiveWork: Send + Sync;
    /// A notification event (`synchronize` waits on it).
    type Event: Send + Sync;

    /// The processor the caller runs on. Stable only at DISPATCH.
    fn current_processor(&self) -> CurrentProcessor;
    /// The current IRQL.
    fn current_irql(&self) -> Irql;
    /// Raises to DISPATCH (no-op if already there) and returns the previous level.
    fn raise_to_dispatch(&self) -> Irql;
    /// Lowers back to `previous`, as returned by [`Platform::raise_to_dispatch`].
    fn lower_irql(&self, previous: Irql);

    /// `KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS)`: what the firmware reports.
    fn max_processor_count(&self) -> u32;
    /// `KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS)`.
    fn active_processor_count(&self) -> u32;
    /// `KeGetProcessorNumberFromIndex`: fails with STATUS_INVALID_PARAMETER for an absent index.
    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status>;

    /// Non-paged allocation with the given size and alignment; `None` on failure. Callable at DISPATCH.
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>>;
    /// [`Platform::allocate`] with a pool tag for this allocation (the tag `ExAllocatePool2` is given
    /// on NT, shown by `!poolused` and Driver Verifier). The default ignores the tag.
    /// [`Platform::free`] frees the block like any other.
    fn allocate_tagged(&self, layout: Layout, tag: PoolTag) -> Option<NonNull<u8>> {
        let _ = tag;
        self.allocate(layout)
    }
    /// Frees memory from [`Platform::allocate`].
    ///
    /// # Safety
    /// `ptr` came from `allocate(layout)` on this platform and is not used afterwards.
    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout);
    /// Frees memory from [`Platform::allocate_tagged`] with `tag` (NT's `ExFreePoolWithTag` must
    /// name the tag the block was allocated with). The default is [`Platform::free`], for platforms
    /// whose `allocate_tagged` is their `allocate`.
    ///
    /// # Safety
    /// `ptr` came from `allocate_tagged(layout, tag)` on this platform and is not used afterwards.
    unsafe fn free_tagged(&self, ptr: NonNull<u8>, layout: Layout, tag: PoolTag) {
        let _ = tag;
        // SAFETY: per the caller, and `allocate_tagged` defaults to `allocate`.
        unsafe { self.free(ptr, layout) }
    }

    /// Initialises `message` in place, bound to `target` (`KeInitializeDpc` + `KeSetTargetProcessorDpcEx`).
    ///
    /// # Safety
    /// `message` points to writable storage that stays at this address until `message_release`.
    unsafe fn message_init(
        &self,
        message: *mut Self::Message,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status>;
    /// Queues `message` to run its handler on its processor (`KeInsertQueueDpc`). Callable at DISPATCH.
    fn message_send(&self, message: &Self::Message);
    /// Undoes `message_init`. The message is not queued.
    ///
    /// # Safety
    /// `message` was initialised and is not queued or running.
    unsafe fn message_release(&self, message: *mut Self::Message);
    /// Waits until every message queued before the call, and every message handler running when it
    /// was made, has returned (`KeFlushQueuedDpcs`). PASSIVE only. Unload relies on this: once it
    /// returns, no handler started earlier can still touch the domain.
    fn flush_messages(&self);

    /// Initialises `timer` in place with `handler`, which runs at DISPATCH on some processor.
    ///
    /// # Safety
    /// `timer` points to storage that stays at this address until `timer_release`.
    unsafe fn timer_init(&self, timer: *mut Self::Timer, handler: Handler) -> Result<(), Status>;
    /// Starts (or restarts) the timer with the given period. Callable at DISPATCH (a retirement
    /// restarts a timer that stopped while the domain was idle), never from the timer's handler.
    fn timer_start(&self, timer: &Self::Timer, period_us: u32);
    /// Stops the timer: when this returns, no handler invocation is running and none will start
    /// (`KeCancelTimer` plus `KeFlushQueuedDpcs` on NT). PASSIVE only: unload, and the passive work
    /// item that stops the timer of an idle domain; never from the timer's handler.
    fn timer_stop(&self, timer: &Self::Timer);
    /// Undoes `timer_init`.
    ///
    /// # Safety
    /// `timer` was initialised and stopped.
    unsafe fn timer_release(&self, timer: *mut Self::Timer);

    /// Initialises a passive work item in place.
    ///
    /// # Safety
    /// `work` points to storage that stays at this address until `passive_release`.
    unsafe fn passive_init(
        &self,
        work: *mut Self::PassiveWork,
        handler: Handler,
    ) -> Result<(), Status>;
    /// Queues the work item; its handler runs once at PASSIVE on a system thread. Callable at DISPATCH.
    fn passive_queue(&self, work: &Self::PassiveWork);
    /// Undoes `passive_init`. May be called while the item runs, once its handler has made its last
    /// access to the item (from the handler itself, as `IoFreeWorkItem` from the work routine, or
    /// from another thread after that): the platform must not touch `work` after invoking the
    /// handler.
    ///
    /// # Safety
    /// `work` was initialised and is not queued; if it is running, its handler no longer uses it.
    unsafe fn passive_release(&self, work: *mut Self::PassiveWork);

    /// Initialises a notification event in place, not signalled.
    ///
    /// # Safety
    /// `event` points to storage that stays at this address while the event is used.
    unsafe fn event_init(&self, event: *mut Self::Event);
    /// Signals the event (wakes every waiter; stays signalled until reset). Callable at DISPATCH.
    /// Must touch neither the event nor `self` once a waiter can observe it signalled (`KeSetEvent`
    /// with `Wait = FALSE`): the waiter may free the memory holding both (the domain) as soon as it
    /// wakes.
    fn event_signal(&self, event: &Self::Event);
    /// Clears the event.
    fn event_reset(&self, event: &Self::Event);
    /// Waits until the event is signalled. PASSIVE only.
    fn event_wait(&self, event: &Self::Event);

    /// Registers for processor-change notifications with "add existing" semantics
    /// (`KeRegisterProcessorChangeCallback(…, KE_PROCESSOR_CHANGE_ADD_EXISTING)`): AddStart and then
    /// AddComplete are replayed for every active processor before this returns. `Ok(None)` means the
    /// capability does not exist on this host (the routine could not be resolved).
    ///
    /// # Safety
    /// `context` stays valid until `processor_change_deregister` has returned.
    unsafe fn processor_change_register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status>;
    /// Deregisters a registration made by `processor_change_register`. PASSIVE only.
    ///
    /// # Safety
    /// `handle` came from a successful registration and is deregistered once.
    unsafe fn processor_change_deregister(&self, handle: NonNull<()>);

    /// A monotonic clock in nanoseconds (`KeQueryPerformanceCounter` scaled on NT). The core only
    /// uses differences of it, to time reclamation cycles.
    fn now_ns(&self) -> u64;

    /// A reading of the current processor's work clock, to time a visit (one DPC) and keep it to its
    /// budget: on NT [`Platform::now_ns`] on both sides (nothing but interrupts stretches a DPC). A
    /// platform whose processors are host threads also reads the thread's own run time, so that a
    /// visit's figure is its work, not the host's scheduling (see [`WorkInstant`]). Only
    /// differences on one processor are used.
    fn work_clock(&self) -> WorkInstant {
        let now = self.now_ns();
        WorkInstant {
            wall_ns: now,
            run_ns: now,
        }
    }

    /// Writes one log line (DbgPrintEx in the kernel).
    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>);

    /// Called on entry of a core routine with its IRQL rule. A checking platform records a violation
    /// when the caller's IRQL breaks it; the default does nothing (a release driver pays nothing).
    #[inline(always)]
    fn verify_irql(&self, routine: &'static str, rule: IrqlRule) {
        let _ = (routine, rule);
    }

    /// The caller, at DISPATCH, is about to use the per-CPU slot of processor `owner` as that
    /// processor's own (`routine`: an enter, an exit on the entering processor, a join, a
    /// retirement, the cycle's visit): with plain stores that only the owner may make. A checking
    /// platform records a violation when the caller does not run on `owner`, e.g. a slot found
    /// under another processor's (group, number); the default does nothing (a release driver pays
    /// nothing).
    #[inline(always)]
    fn verify_slot_owner(&self, routine: &'static str, owner: ProcessorNumber) {
        let _ = (routine, owner);
    }

    /// A core spin lock (identified by its address) was just acquired by the caller. The lock raised
    /// to DISPATCH first, so a checking platform that sees a lower IRQL here reports the rule broken.
    #[inline(always)]
    fn spin_lock_acquired(&self, lock: *const ()) {
        let _ = lock;
    }

    /// The caller, already at DISPATCH, found the core spin lock `lock` held and is about to spin. A
    /// checking platform that knows the holder cannot run (preempted on the caller's own processor)
    /// reports the deadlock instead of letting the caller spin forever.
    #[inline(always)]
    fn spin_lock_contended(&self, lock: *const ()) {
        let _ = lock;
    }

    /// The caller is about to release the core spin lock `lock`.
    #[inline(always)]
    fn spin_lock_released(&self, lock: *const ()) {
        let _ = lock;
    }

    /// The caller entered an epoch (a [`Guard`](crate::Guard) or a raw token was made). A checking
    /// platform that knows its threads (the simulator's tasks) counts the guards each one holds, to
    /// report a wait inside an epoch in [`Platform::synchronize_called`]. The default does nothing.
    #[inline(always)]
    fn epoch_entered(&self) {}

    /// The caller exited an epoch (a guard dropped, a raw token exited). See
    /// [`Platform::epoch_entered`].
    #[inline(always)]
    fn epoch_exited(&self) {}

    /// [`Domain::synchronize`](crate::Domain::synchronize) (or another wait for a grace period:
    /// [`Domain::wait_for_grace_period`](crate::Domain::wait_for_grace_period),
    /// [`Domain::callback_barrier`](crate::Domain::callback_barrier)) was called and is about to
    /// wait for readers. `readers_here()` counts the readers recorded on the caller's processor that have not
    /// exited. Only a platform on which a thread *is* its processor (the user-mode platform of
    /// `kepoch-user`) can read that as "readers this thread entered": it reports a non-zero count
    /// as `synchronize` inside an epoch, which would wait for itself; a platform that counts guards
    /// per thread ([`Platform::epoch_entered`]) reports a thread that holds one. The default never
    /// calls it.
    #[inline(always)]
    fn synchronize_called(&self, readers_here: &dyn Fn() -> u64) {
        let _ = readers_here;
    }
}
