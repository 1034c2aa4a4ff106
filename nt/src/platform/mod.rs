//! [`NtPlatform`]: the core's [`Platform`] on the NT kernel, one per domain, with the embedding
//! driver's [`Settings`].

mod callback;
#[cfg(any(debug_assertions, not(target_os = "windows")))]
pub mod guards;
mod message;
mod probe;
mod timer;
mod work;

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use kepoch::platform::{
    CurrentProcessor, Handler, Irql, IrqlRule, LogLevel, Platform, ProcessorChangeFn,
    ProcessorNumber, Status,
};

pub use callback::{processor_change_from_nt, veto_status};
pub use message::{NtMessage, MEDIUM_HIGH_IMPORTANCE};
pub use probe::DpcDelivery;
pub use timer::NtTimer;
pub use work::{NtEvent, NtPassiveWork, WorkItemOwner};

use crate::log::log_line;
use crate::pool::{Pool, PoolTag};
use crate::routines::OptionalRoutines;
use crate::sys;
use probe::ProbeBlock;

/// `KeQueryPerformanceCounter`: (ticks, frequency). Any IRQL.
pub fn performance_counter() -> (u64, u64) {
    let mut frequency = 0i64;
    // SAFETY: callable at any IRQL; writes the frequency we pass.
    let ticks = unsafe { sys::KeQueryPerformanceCounter(&mut frequency) };
    (ticks as u64, frequency as u64)
}

/// `KeDelayExecutionThread` for `milliseconds` (kernel mode, not alertable): lets other threads,
/// lower-priority ones on this processor included, run meanwhile. PASSIVE_LEVEL only.
pub fn delay_passive(milliseconds: u32) {
    // Relative: negative, in 100 ns units.
    let interval = -(i64::from(milliseconds) * 10_000);
    // SAFETY: a kernel-mode, non-alertable delay with a valid relative interval; callers are at
    // PASSIVE_LEVEL (this function's contract).
    unsafe { sys::KeDelayExecutionThread(sys::KERNEL_MODE, false, &interval) };
}

/// What the embedding driver chooses for a domain's platform.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The tag of every allocation of the domain: its own state and the objects it allocates for the
    /// driver (`Owned::new`, `Domain::alloc`).
    pub pool_tag: PoolTag,
    /// The object the domain's passive work items belong to.
    pub work_items: WorkItemOwner,
    /// Whether and how long to check that DPCs are delivered before binding per-CPU slots.
    pub dpc_delivery: DpcDelivery,
}

/// The NT kernel as the core's platform. Each domain has its own (several domains in one driver
/// share nothing but the kernel): build one with [`NtPlatform::new`] and hand it to
/// `Domain::create`.
pub struct NtPlatform {
    settings: Settings,
    routines: OptionalRoutines,
    pool: Pool,
    /// Whether DPCs were delivered (or assumed to be): when false, `message_init` refuses to bind
    /// per-CPU messages.
    dpcs_delivered: bool,
    /// A probe DPC that had not run when the probe gave up: freed (after a flush) when the platform
    /// drops.
    late_probe: Option<NonNull<ProbeBlock>>,
    /// An IRQL rule was broken and logged (once per platform).
    irql_reported: AtomicBool,
    /// The guards each thread holds (debug checks).
    #[cfg(any(debug_assertions, not(target_os = "windows")))]
    guards: guards::Guards,
}

// SAFETY: the work-item owner is valid for the platform's lifetime and only passed to kernel routines
// that accept it from any thread; the probe block is only touched at creation and drop; the resolved
// routines are plain kernel function pointers.
unsafe impl Send for NtPlatform {}
// SAFETY: only atomics (the IRQL flag, the guard table of the debug checks) are mutated through
// `&self`; see the Send impl (the guard table is a pool block the platform owns).
unsafe impl Sync for NtPlatform {}

impl NtPlatform {
    /// Resolves the optional routines, probes DPC delivery as `settings` say (logging when DPCs are
    /// not delivered) and logs which routines were found. Fails only when the probe's block cannot be
    /// allocated. PASSIVE_LEVEL only.
    ///
    /// # Safety
    /// The work-item owner stays valid (the driver is not unloaded, the device not deleted) for as
    /// long as the platform and anything created by it (passive work items in particular) exist.
    pub unsafe fn new(settings: Settings) -> Result<NtPlatform, Status> {
        let routines = OptionalRoutines::resolve();
        let pool = Pool::new(settings.pool_tag, &routines);
        log_line(
            LogLevel::Info,
            format_args!(
                "routines: KeRegisterProcessorChangeCallback {}; ExAllocatePool2 {}; KeGetProcessorNumberFromIndex {}",
                if routines.has_processor_change_callback() { "resolved" } else { "missing" },
                if routines.has_allocate_pool2() { "resolved" } else { "missing (ExAllocatePoolWithTag fallback)" },
                if routines.has_processor_number_from_index() { "resolved" } else { "missing" },
            ),
        );
        let (dpcs_delivered, late_probe) = match settings.dpc_delivery {
            DpcDelivery::Assume => (true, None),
            DpcDelivery::Probe { milliseconds } => {
                let (block, ran) =
                    ProbeBlock::run(&pool, milliseconds).ok_or(Status::INSUFFICIENT_RESOURCES)?;
                if ran {
                    // SAFETY: from ProbeBlock::run with this pool, freed once.
                    unsafe { ProbeBlock::free(block, &pool) };
                    (true, None)
                } else {
                    log_line(
                        LogLevel::Warning,
                        format_args!(
                            "DPCs queued to a processor are not delivered on this host (Wine?): per-CPU slots cannot be bound, every processor uses the shared overflow slot; cycles and IRQL are not exercised"
                        ),
                    );
                    (false, Some(block))
                }
            }
        };
        Ok(NtPlatform {
            settings,
            routines,
            pool,
            dpcs_delivered,
            late_probe,
            irql_reported: AtomicBool::new(false),
            #[cfg(any(debug_assertions, not(target_os = "windows")))]
            guards: guards::Guards::new(&pool),
        })
    }

    /// The pool of a caller's tag: that tag when it is valid for NT (four printable characters,
    /// NUL-padded; not 0), the domain's otherwise. Allocation and free map a tag the same way (the
    /// core frees a block whose header says tag 0 with `free`, i.e. the domain's pool).
    fn pool_tagged(&self, tag: kepoch::platform::PoolTag) -> Pool {
        match PoolTag::new(tag.0.to_le_bytes()) {
            Ok(valid) if tag.0 != 0 => Pool::new(valid, &self.routines),
            _ => self.pool,
        }
    }

    /// Which optional routines were found.
    pub fn routines(&self) -> &OptionalRoutines {
        &self.routines
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The domain's pool (its tag).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether per-CPU messages can be bound (DPCs are delivered, or assumed to be).
    pub fn dpcs_delivered(&self) -> bool {
        self.dpcs_delivered
    }

    /// Turns off the reports of the debug checks of guards per thread ([`guards`]: a wait for a
    /// grace period inside an epoch, guards held at unload) for this domain. For a driver that exits
    /// raw tokens on another thread than the one that entered them (a token kept in a request and
    /// exited at its completion): there the count of the entering thread no longer says that it holds
    /// a guard. Callable at any IRQL, before or after `Domain::create` (through
    /// `domain.platform()`). Does nothing in builds without the checks (release builds for Windows).
    pub fn disable_guard_checks(&self) {
        #[cfg(any(debug_assertions, not(target_os = "windows")))]
        if let Some(table) = self.guards.table() {
            table.disable_reports();
        }
    }
}

impl Drop for NtPlatform {
    /// Logs the threads that still hold guards of the domain (debug checks, [`guards`]) and frees a
    /// probe block whose DPC had not run, after waiting for it (`KeFlushQueuedDpcs`): at PASSIVE,
    /// where a domain drops.
    fn drop(&mut self) {
        #[cfg(any(debug_assertions, not(target_os = "windows")))]
        if let Some(table) = self.guards.table() {
            table.report_unload();
        }
        if let Some(block) = self.late_probe.take() {
            // SAFETY: from ProbeBlock::run with this pool, freed once.
            unsafe { ProbeBlock::free(block, &self.pool) };
        }
    }
}

// SAFETY: raise_to_dispatch/lower_irql write CR8 (DISPATCH masks DPCs and preemption on this processor);
// messages are KDPCs targeted at one processor, and a KDPC is never queued twice, so it never runs
// concurrently with itself; `allocate` honours size and alignment (see PoolBlock) or returns None.
unsafe impl Platform for NtPlatform {
    type Message = NtMessage;
    type Timer = NtTimer;
    type PassiveWork = NtPassiveWork;
    type Event = NtEvent;

    fn current_processor(&self) -> CurrentProcessor {
        let mut number = sys::PROCESSOR_NUMBER::default();
        // SAFETY: callable at any IRQL; writes the PROCESSOR_NUMBER we pass.
        let index = unsafe { sys::KeGetCurrentProcessorNumberEx(&mut number) };
        CurrentProcessor {
            number: ProcessorNumber::new(number.Group, number.Number),
            index,
        }
    }

    fn current_irql(&self) -> Irql {
        Irql(sys::irql::current())
    }

    fn raise_to_dispatch(&self) -> Irql {
        // SAFETY: the core pairs every raise with lower_irql(previous) on the same processor (the
        // trait's contract for these two methods).
        Irql(unsafe { sys::irql::raise_to_dispatch() })
    }

    fn lower_irql(&self, previous: Irql) {
        // SAFETY: `previous` came from raise_to_dispatch on this processor (trait contract).
        unsafe { sys::irql::lower(previous.0) }
    }

    fn max_processor_count(&self) -> u32 {
        // SAFETY: callable at any IRQL, no pointers.
        unsafe { sys::KeQueryMaximumProcessorCountEx(sys::ALL_PROCESSOR_GROUPS) }
    }

    fn active_processor_count(&self) -> u32 {
        // SAFETY: callable at any IRQL, no pointers.
        unsafe { sys::KeQueryActiveProcessorCountEx(sys::ALL_PROCESSOR_GROUPS) }
    }

    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status> {
        let Some(from_index) = self.routines.processor_number_from_index() else {
            return Err(Status::NOT_SUPPORTED);
        };
        let mut number = sys::PROCESSOR_NUMBER::default();
        // SAFETY: the resolved export, callable at any IRQL; writes the PROCESSOR_NUMBER we pass.
        let status = unsafe { from_index(index, &mut number) };
        if status < 0 {
            Err(Status(status))
        } else {
            Ok(ProcessorNumber::new(number.Group, number.Number))
        }
    }

    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        self.pool.allocate(layout)
    }

    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: `ptr` came from `allocate(layout)`, i.e. from this pool (caller contract).
        unsafe { self.pool.free(ptr, layout) }
    }

    fn allocate_tagged(
        &self,
        layout: Layout,
        tag: kepoch::platform::PoolTag,
    ) -> Option<NonNull<u8>> {
        self.pool_tagged(tag).allocate(layout)
    }

    unsafe fn free_tagged(&self, ptr: NonNull<u8>, layout: Layout, tag: kepoch::platform::PoolTag) {
        // SAFETY: `ptr` came from `allocate_tagged(layout, tag)`, i.e. from the same pool (caller
        // contract; `pool_tagged` maps a tag to the same pool every time).
        unsafe { self.pool_tagged(tag).free(ptr, layout) }
    }

    unsafe fn message_init(
        &self,
        message: *mut NtMessage,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status> {
        if !self.dpcs_delivered {
            // A message that is never delivered would stall every cycle it is part of.
            return Err(Status::NOT_SUPPORTED);
        }
        // SAFETY: the core gives writable storage that stays in place until message_release.
        unsafe { NtMessage::init(message, target, handler) }
    }

    fn message_send(&self, message: &NtMessage) {
        // SAFETY: the KDPC was initialised by message_init; KeInsertQueueDpc is callable at any IRQL and
        // is a no-op if the DPC is already queued.
        unsafe {
            sys::KeInsertQueueDpc(message.dpc(), ptr::null_mut(), ptr::null_mut());
        }
    }

    unsafe fn message_release(&self, _message: *mut NtMessage) {
        // A KDPC that is neither queued nor running owns no kernel resources: nothing to undo.
    }

    fn flush_messages(&self) {
        // SAFETY: no arguments; PASSIVE_LEVEL is the caller's contract.
        unsafe { sys::KeFlushQueuedDpcs() }
    }

    unsafe fn timer_init(&self, timer: *mut NtTimer, handler: Handler) -> Result<(), Status> {
        // SAFETY: the core gives writable storage that stays in place until timer_release, not armed.
        unsafe { NtTimer::init(timer, handler) };
        Ok(())
    }

    fn timer_start(&self, timer: &NtTimer, period_us: u32) {
        timer.start(period_us);
    }

    fn timer_stop(&self, timer: &NtTimer) {
        timer.stop();
    }

    unsafe fn timer_release(&self, _timer: *mut NtTimer) {
        // A cancelled KTIMER whose DPC has been flushed owns no kernel resources: nothing to undo.
    }

    unsafe fn passive_init(
        &self,
        work: *mut NtPassiveWork,
        handler: Handler,
    ) -> Result<(), Status> {
        // A host that does not deliver DPCs is Wine, which also lacks `IoSizeofWorkItem` (calling
        // it aborts the process): work items are refused there, and the core copes (the idle
        // timer keeps running, `new_work_item` reports the failure).
        if !self.dpcs_delivered {
            return Err(Status::NOT_SUPPORTED);
        }
        // SAFETY: the core gives storage that stays in place until passive_release; the owner
        // outlives the platform (NtPlatform::new's contract).
        unsafe { NtPassiveWork::init(work, &self.pool, self.settings.work_items, handler) }
    }

    fn passive_queue(&self, work: &NtPassiveWork) {
        work.queue();
    }

    unsafe fn passive_release(&self, work: *mut NtPassiveWork) {
        // SAFETY: the core releases an item neither queued nor running (or from its own handler, as
        // its last act), once; made with this pool.
        unsafe { NtPassiveWork::release(work, &self.pool) }
    }

    unsafe fn event_init(&self, event: *mut NtEvent) {
        // SAFETY: the core gives writable storage that stays in place while the event is used.
        unsafe { NtEvent::init(event) }
    }

    fn event_signal(&self, event: &NtEvent) {
        // SAFETY: initialised by event_init; KeSetEvent with Wait = FALSE is callable at IRQL <= DISPATCH.
        unsafe {
            sys::KeSetEvent(event.raw(), 0, false);
        }
    }

    fn event_reset(&self, event: &NtEvent) {
        // SAFETY: initialised by event_init; callable at IRQL <= DISPATCH.
        unsafe { sys::KeClearEvent(event.raw()) }
    }

    fn event_wait(&self, event: &NtEvent) {
        // SAFETY: initialised by event_init; a non-alertable kernel-mode wait without timeout at PASSIVE
        // (caller contract) can only return once the event is signalled.
        unsafe {
            sys::KeWaitForSingleObject(
                event.raw().cast(),
                sys::EXECUTIVE,
                sys::KERNEL_MODE,
                false,
                ptr::null(),
            );
        }
    }

    unsafe fn processor_change_register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status> {
        let Some((register, _)) = self.routines.processor_change() else {
            return Ok(None);
        };
        // SAFETY: the core keeps `context` valid until it deregisters.
        unsafe { callback::register(&self.pool, register, callback, context) }.map(Some)
    }

    unsafe fn processor_change_deregister(&self, handle: NonNull<()>) {
        // A handle exists only when both routines resolved (processor_change_register).
        if let Some((_, deregister)) = self.routines.processor_change() {
            // SAFETY: `handle` came from processor_change_register (caller contract), once.
            unsafe { callback::deregister(&self.pool, deregister, handle) }
        }
    }

    fn now_ns(&self) -> u64 {
        let (ticks, frequency) = performance_counter();
        (ticks as u128 * 1_000_000_000 / frequency.max(1) as u128) as u64
    }

    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        log_line(level, args);
    }

    // The debug checks of guards per thread (`guards`); in a release build for Windows the core's
    // empty defaults.
    #[cfg(any(debug_assertions, not(target_os = "windows")))]
    fn epoch_entered(&self) {
        // Only enters below DISPATCH_LEVEL count: at DISPATCH the current thread may be one a DPC
        // interrupted.
        if let Some(table) = self.guards.table() {
            if sys::irql::current() < sys::irql::DISPATCH_LEVEL {
                table.entered(sys::current_thread_id(), true);
            }
        }
    }

    #[cfg(any(debug_assertions, not(target_os = "windows")))]
    fn epoch_exited(&self) {
        if let Some(table) = self.guards.table() {
            table.exited(sys::current_thread_id());
        }
    }

    #[cfg(any(debug_assertions, not(target_os = "windows")))]
    fn synchronize_called(&self, _readers_here: &dyn Fn() -> u64) {
        if let Some(table) = self.guards.table() {
            table.check_wait(ptr::from_ref(self) as usize);
        }
    }

    fn spin_lock_acquired(&self, _lock: *const ()) {
        // The core's spin locks raise to DISPATCH before spinning; anything lower risks bug check 0x133.
        self.verify_irql("core spin lock", IrqlRule::Dispatch);
    }

    fn verify_irql(&self, routine: &'static str, rule: IrqlRule) {
        // A broken rule is a driver bug: say so once per platform in the debugger log (a bugcheck
        // would take the machine down for what Driver Verifier reports as a warning first).
        let irql = self.current_irql();
        if !rule.allows(irql) && !self.irql_reported.swap(true, Ordering::Relaxed) {
            log_line(
                LogLevel::Error,
                format_args!(
                    "{routine} called at IRQL {irql} ({rule:?} only)",
                    irql = irql.0
                ),
            );
        }
    }
}
