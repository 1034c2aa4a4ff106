//! `NtPlatform`: the core's [`Platform`] on the NT kernel, built on the binding facade ([`crate::nt`]).

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::fmt;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

use kepoch::platform::{
    CurrentProcessor, Handler, Irql, IrqlRule, LogLevel, Platform, ProcessorChangeFn,
    ProcessorNumber, Status,
};

use crate::lifecycle::{init_cycle_dpc, DpcSetup};
use crate::nt;
use crate::support::{
    aligned_start, processor_change_from_nt, relative_due_time, timer_period_ms, veto_status,
    LogLine, PoolBlock, POOL_TAG,
};
use crate::wide;

/// STATUS_UNSUCCESSFUL: `KeRegisterProcessorChangeCallback` returned no handle.
const STATUS_UNSUCCESSFUL: Status = Status(0xC000_0001u32 as i32);

/// `KeQueryPerformanceCounter`: (ticks, frequency).
pub(crate) fn performance_counter() -> (u64, u64) {
    let mut frequency = 0i64;
    // SAFETY: callable at any IRQL; writes the frequency we pass.
    let ticks = unsafe { nt::KeQueryPerformanceCounter(&mut frequency) };
    (ticks as u64, frequency as u64)
}

/// Writes one line to the kernel debugger (DbgPrintEx, IHV component), prefixed with `kepoch: `.
/// Callable at any IRQL up to DIRQL; lines longer than DbgPrintEx's 512 bytes are truncated.
pub fn log_line(level: LogLevel, args: fmt::Arguments<'_>) {
    // The core's messages already start with "kepoch: "; the driver's own do not.
    let mut line = LogLine::format(args);
    if !line.text().starts_with(b"kepoch: ") {
        line = LogLine::format(format_args!("kepoch: {args}"));
    }
    let level = match level {
        LogLevel::Error => nt::DPFLTR_ERROR_LEVEL,
        LogLevel::Warning => nt::DPFLTR_WARNING_LEVEL,
        LogLevel::Info => nt::DPFLTR_INFO_LEVEL,
    };
    let text = line.terminated();
    // SAFETY: "%s" consumes exactly one argument, a NUL-terminated byte string that outlives the call.
    unsafe {
        nt::DbgPrintEx(
            nt::DPFLTR_IHVDRIVER_ID,
            level,
            c"%s".as_ptr().cast(),
            text.as_ptr(),
        );
    }
}

/// The optional kernel routines, resolved once with `MmGetSystemRoutineAddress`.
#[derive(Clone, Copy, Default)]
pub struct OptionalRoutines {
    register_processor_change: Option<nt::KeRegisterProcessorChangeCallbackFn>,
    deregister_processor_change: Option<nt::KeDeregisterProcessorChangeCallbackFn>,
    allocate_pool2: Option<nt::ExAllocatePool2Fn>,
    processor_number_from_index: Option<nt::KeGetProcessorNumberFromIndexFn>,
}

impl OptionalRoutines {
    /// Resolves every optional routine. PASSIVE_LEVEL only.
    pub fn resolve() -> Self {
        let register = resolve(wide!("KeRegisterProcessorChangeCallback"));
        let deregister = resolve(wide!("KeDeregisterProcessorChangeCallback"));
        let pool2 = resolve(wide!("ExAllocatePool2"));
        let from_index = resolve(wide!("KeGetProcessorNumberFromIndex"));
        // SAFETY: (all four transmutes) a non-null address returned by MmGetSystemRoutineAddress for
        // these names is the kernel export of that name, whose signature is the declared fn type
        // (wdm.h).
        unsafe {
            let (register, deregister) = match (register, deregister) {
                // Registering without a way to deregister before unload would be a use-after-unload.
                (Some(r), Some(d)) => (
                    Some(core::mem::transmute::<
                        NonNull<c_void>,
                        nt::KeRegisterProcessorChangeCallbackFn,
                    >(r)),
                    Some(core::mem::transmute::<
                        NonNull<c_void>,
                        nt::KeDeregisterProcessorChangeCallbackFn,
                    >(d)),
                ),
                _ => (None, None),
            };
            Self {
                register_processor_change: register,
                deregister_processor_change: deregister,
                allocate_pool2: pool2
                    .map(|p| core::mem::transmute::<NonNull<c_void>, nt::ExAllocatePool2Fn>(p)),
                processor_number_from_index: from_index.map(|p| {
                    core::mem::transmute::<NonNull<c_void>, nt::KeGetProcessorNumberFromIndexFn>(p)
                }),
            }
        }
    }

    /// Whether `KeRegisterProcessorChangeCallback` (and its deregistration) resolved.
    pub fn has_processor_change_callback(&self) -> bool {
        self.register_processor_change.is_some()
    }

    /// Whether `ExAllocatePool2` resolved (otherwise pool comes from `ExAllocatePoolWithTag`).
    pub fn has_allocate_pool2(&self) -> bool {
        self.allocate_pool2.is_some()
    }

    /// Whether `KeGetProcessorNumberFromIndex` resolved.
    pub fn has_processor_number_from_index(&self) -> bool {
        self.processor_number_from_index.is_some()
    }
}

/// `MmGetSystemRoutineAddress(name)`.
fn resolve(name: &'static [u16]) -> Option<NonNull<c_void>> {
    let bytes = (name.len() * 2) as u16;
    let string = nt::UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: name.as_ptr().cast_mut(),
    };
    // SAFETY: `string` describes a valid UTF-16 buffer that the routine only reads; called at PASSIVE
    // (OptionalRoutines::resolve's contract).
    NonNull::new(unsafe { nt::MmGetSystemRoutineAddress(&string) })
}

/// Storage of the DPC delivery probe. Static (never moves, never freed) so that a probe DPC that runs
/// after [`dpcs_are_delivered`] stopped waiting still finds valid memory; unload and every failure
/// path of `DriverEntry` after the probe flush queued DPCs before the image can go
/// (`lifecycle::driver_entry_steps`).
struct DpcProbe {
    dpc: UnsafeCell<MaybeUninit<nt::KDPC>>,
    ran: AtomicBool,
}

// SAFETY: the KDPC is only touched through Ke* routines by the single DriverEntry that runs the probe;
// `ran` is atomic.
unsafe impl Sync for DpcProbe {}

static DPC_PROBE: DpcProbe = DpcProbe {
    dpc: UnsafeCell::new(MaybeUninit::uninit()),
    ran: AtomicBool::new(false),
};

unsafe extern "system" fn probe_dpc(
    _dpc: *mut nt::KDPC,
    _context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    DPC_PROBE.ran.store(true, Ordering::Release);
}

/// Whether DPCs queued to a processor actually run: queues one to the current processor and waits up
/// to 500 ms for it. On an NT kernel it runs within microseconds. Wine 8 accepts `KeInsertQueueDpc`
/// but never runs the DPC; there per-CPU slots cannot be bound (a reclamation cycle would wait forever
/// for their messages), so the platform refuses to bind them and every processor uses the core's shared
/// overflow slot (a spin-locked participant whose cycles need no DPC). PASSIVE_LEVEL, once per load.
pub fn dpcs_are_delivered() -> bool {
    let dpc = DPC_PROBE.dpc.get().cast::<nt::KDPC>();
    // A fresh image starts with `false`; reset anyway so that the answer is about this probe only.
    DPC_PROBE.ran.store(false, Ordering::Release);
    let mut number = nt::PROCESSOR_NUMBER::default();
    // SAFETY: the static KDPC is initialised before it is queued and never moves; DriverEntry runs the
    // probe once per load, so it is not queued already; the routine only sets an atomic.
    unsafe {
        nt::KeGetCurrentProcessorNumberEx(&mut number);
        nt::KeInitializeDpc(dpc, nt::deferred_routine(probe_dpc), ptr::null());
        nt::KeSetTargetProcessorDpcEx(dpc, &number);
        nt::KeInsertQueueDpc(dpc, ptr::null(), ptr::null());
    }
    for _ in 0..50 {
        if DPC_PROBE.ran.load(Ordering::Acquire) {
            return true;
        }
        // 10 ms, relative (negative: 100 ns units from now).
        let interval: i64 = -100_000;
        // SAFETY: a kernel-mode, non-alertable delay at PASSIVE_LEVEL with a valid interval.
        unsafe { nt::KeDelayExecutionThread(nt::KERNEL_MODE, false, &interval) };
    }
    DPC_PROBE.ran.load(Ordering::Acquire)
}

/// The NT kernel as the core's platform.
pub struct NtPlatform {
    /// Device object that passive work items reference (keeps the driver loaded while they run).
    device: NonNull<nt::DEVICE_OBJECT>,
    routines: OptionalRoutines,
    /// Result of [`dpcs_are_delivered`]: when false, `message_init` refuses to bind per-CPU messages.
    dpcs_delivered: bool,
}

// SAFETY: the device object pointer is valid for the driver's lifetime and only passed to kernel routines
// that accept it from any thread; the resolved routines are plain kernel function pointers.
unsafe impl Send for NtPlatform {}
// SAFETY: no interior mutability; see the Send impl.
unsafe impl Sync for NtPlatform {}

impl NtPlatform {
    /// Builds the platform for `device`, resolving the optional routines. `dpcs_delivered` is the
    /// result of [`dpcs_are_delivered`]. PASSIVE_LEVEL only.
    ///
    /// # Safety
    /// `device` stays valid (is not deleted) for as long as the platform and anything created by it
    /// (passive work items in particular) exist.
    pub unsafe fn new(device: NonNull<nt::DEVICE_OBJECT>, dpcs_delivered: bool) -> Self {
        Self {
            device,
            routines: OptionalRoutines::resolve(),
            dpcs_delivered,
        }
    }

    /// Which optional routines were found.
    pub fn routines(&self) -> &OptionalRoutines {
        &self.routines
    }

    fn pool_allocate(&self, bytes: usize) -> *mut u8 {
        match self.routines.allocate_pool2 {
            // SAFETY: ExAllocatePool2 accepts any size with a non-zero tag at IRQL <= DISPATCH with a
            // non-paged flag; it returns null on failure.
            Some(allocate) => unsafe {
                allocate(
                    nt::POOL_FLAG_NON_PAGED | nt::POOL_FLAG_UNINITIALIZED,
                    bytes,
                    POOL_TAG,
                )
            }
            .cast(),
            None => {
                // SAFETY: as above for ExAllocatePoolWithTag with NonPagedPoolNx.
                unsafe { nt::ExAllocatePoolWithTag(nt::NON_PAGED_POOL_NX, bytes, POOL_TAG) }.cast()
            }
        }
    }
}

/// A per-CPU message: a KDPC bound to one processor, with the core's handler.
pub struct NtMessage {
    dpc: UnsafeCell<MaybeUninit<nt::KDPC>>,
    handler: UnsafeCell<MaybeUninit<Handler>>,
}

// SAFETY: the KDPC is only manipulated through Ke* routines, which synchronise internally; the handler is
// written once in `message_init` before the DPC can be queued and only read afterwards.
unsafe impl Send for NtMessage {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtMessage {}

impl NtMessage {
    fn dpc(&self) -> *mut nt::KDPC {
        self.dpc.get().cast()
    }
}

unsafe extern "system" fn message_dpc(
    _dpc: *mut nt::KDPC,
    context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    // SAFETY: `context` is the NtMessage this DPC is embedded in (set by message_init); it stays in place
    // and initialised until message_release, which the core calls only when the DPC is neither queued
    // nor running.
    unsafe {
        let message = &*context.cast::<NtMessage>();
        (*message.handler.get()).assume_init_ref().invoke();
    }
}

/// A message's KDPC being prepared by [`init_cycle_dpc`] (the order and importance live there).
struct CycleDpc {
    dpc: *mut nt::KDPC,
    context: *mut c_void,
    number: nt::PROCESSOR_NUMBER,
}

impl DpcSetup for CycleDpc {
    fn initialize(&mut self) {
        // SAFETY: `dpc` is the message's KDPC storage, in place until message_release and not queued
        // (message_init runs before the message can be sent); the context is that message.
        unsafe { nt::KeInitializeDpc(self.dpc, nt::deferred_routine(message_dpc), self.context) }
    }

    fn set_importance(&mut self, importance: i32) {
        // SAFETY: an initialised KDPC that is not queued; callable at any IRQL.
        unsafe { nt::KeSetImportanceDpc(self.dpc, importance) }
    }

    fn set_target(&mut self) -> i32 {
        // SAFETY: as above; writes nothing but the KDPC.
        unsafe { nt::KeSetTargetProcessorDpcEx(self.dpc, &self.number) }
    }
}

/// The reclamation timer: a periodic KTIMER whose DPC runs the handler. A run that finds the previous
/// one still in progress (a periodic DPC can run on two processors at once when a run outlasts the
/// period) skips the tick, so the handler never runs concurrently with itself.
///
/// The DPC never re-arms its own timer: calling `KeSetTimerEx` from the timer's DPC is legal on NT, but
/// Wine 8 then waits for its own thread-pool callback while holding its kernel-sync lock, which hangs
/// every later wait of the driver.
pub struct NtTimer {
    timer: UnsafeCell<MaybeUninit<nt::KTIMER>>,
    dpc: UnsafeCell<MaybeUninit<nt::KDPC>>,
    handler: UnsafeCell<MaybeUninit<Handler>>,
    armed: AtomicBool,
    running: AtomicBool,
}

// SAFETY: KTIMER/KDPC are used only through Ke* routines; the handler is written once before the timer
// can fire; the remaining state is atomic.
unsafe impl Send for NtTimer {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtTimer {}

unsafe extern "system" fn timer_dpc(
    _dpc: *mut nt::KDPC,
    context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    // SAFETY: `context` is the NtTimer owning this DPC (timer_init); it lives until timer_release, which
    // the core calls only after timer_stop has cancelled the timer and flushed every run of this DPC.
    let timer = unsafe { &*context.cast::<NtTimer>() };
    if !timer.armed.load(Ordering::SeqCst) || timer.running.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the handler was written by timer_init before the timer could fire; its object is alive.
    unsafe { (*timer.handler.get()).assume_init_ref().invoke() };
    timer.running.store(false, Ordering::Release);
}

/// A passive work item (`IO_WORKITEM`, which holds a reference on the device while it runs, so the driver
/// cannot unload under a running item).
pub struct NtPassiveWork {
    /// The `PIO_WORKITEM` (0 once freed).
    item: AtomicIsize,
    handler: UnsafeCell<MaybeUninit<Handler>>,
}

// SAFETY: the work item is used only through Io* routines; the handler is written once before queuing.
unsafe impl Send for NtPassiveWork {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtPassiveWork {}

unsafe extern "system" fn passive_work(_device: *mut nt::DEVICE_OBJECT, context: *mut c_void) {
    // The handler may release this very item (and free the memory holding it) as its last act, so
    // take a copy of it first and hold no reference into the item while it runs.
    // SAFETY: `context` is the NtPassiveWork that queued this item, initialised until passive_release,
    // which can only happen inside the handler invoked below.
    let handler: Handler = unsafe {
        let work = context.cast::<NtPassiveWork>();
        (*(*work).handler.get()).assume_init()
    };
    // SAFETY: the handler's context is alive while the work item runs (the core's contract).
    unsafe { handler.invoke() };
}

/// A notification event (`KEVENT`).
pub struct NtEvent {
    event: UnsafeCell<MaybeUninit<nt::KEVENT>>,
}

// SAFETY: a KEVENT is a dispatcher object designed for use from any thread through Ke* routines.
unsafe impl Send for NtEvent {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtEvent {}

impl NtEvent {
    fn raw(&self) -> *mut nt::KEVENT {
        self.event.get().cast()
    }
}

/// What `processor_change_register` hands to the kernel as callback context (pool-allocated, freed at
/// deregistration): the core's callback, its context, and the kernel's registration handle.
struct Registration {
    callback: ProcessorChangeFn,
    context: *const (),
    kernel_handle: *mut c_void,
}

unsafe extern "system" fn processor_change_trampoline(
    context: *mut c_void,
    change: *mut nt::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    operation_status: *mut nt::NTSTATUS,
) {
    // SAFETY: `context` is our Registration, alive until deregistration returns; the kernel passes a
    // valid notification context for the duration of the call.
    let (registration, notification) = unsafe { (&*context.cast::<Registration>(), *change) };
    let Some(kind) = processor_change_from_nt(notification.State, notification.Status) else {
        return;
    };
    let processor = CurrentProcessor {
        number: ProcessorNumber::new(
            notification.ProcNumber.Group,
            notification.ProcNumber.Number,
        ),
        index: notification.NtNumber,
    };
    // SAFETY: the core registered this callback with this context and keeps the context valid until it
    // deregisters (processor_change_register's contract).
    let result = unsafe { (registration.callback)(registration.context, kind, processor) };
    if let Some(veto) = veto_status(kind, result) {
        // SAFETY: the kernel passes a writable status for the duration of the call; only AddStart may set it.
        unsafe { *operation_status = veto };
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
        let mut number = nt::PROCESSOR_NUMBER::default();
        // SAFETY: callable at any IRQL; writes the PROCESSOR_NUMBER we pass.
        let index = unsafe { nt::KeGetCurrentProcessorNumberEx(&mut number) };
        CurrentProcessor {
            number: ProcessorNumber::new(number.Group, number.Number),
            index,
        }
    }

    fn current_irql(&self) -> Irql {
        Irql(nt::irql::current())
    }

    fn raise_to_dispatch(&self) -> Irql {
        // SAFETY: the core pairs every raise with lower_irql(previous) on the same processor (the
        // trait's contract for these two methods).
        Irql(unsafe { nt::irql::raise_to_dispatch() })
    }

    fn lower_irql(&self, previous: Irql) {
        // SAFETY: `previous` came from raise_to_dispatch on this processor (trait contract).
        unsafe { nt::irql::lower(previous.0) }
    }

    fn max_processor_count(&self) -> u32 {
        // SAFETY: callable at any IRQL, no pointers.
        unsafe { nt::KeQueryMaximumProcessorCountEx(nt::ALL_PROCESSOR_GROUPS) }
    }

    fn active_processor_count(&self) -> u32 {
        // SAFETY: callable at any IRQL, no pointers.
        unsafe { nt::KeQueryActiveProcessorCountEx(nt::ALL_PROCESSOR_GROUPS) }
    }

    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status> {
        let Some(from_index) = self.routines.processor_number_from_index else {
            return Err(Status::NOT_SUPPORTED);
        };
        let mut number = nt::PROCESSOR_NUMBER::default();
        // SAFETY: the resolved export, callable at any IRQL; writes the PROCESSOR_NUMBER we pass.
        let status = unsafe { from_index(index, &mut number) };
        if status < 0 {
            Err(Status(status))
        } else {
            Ok(ProcessorNumber::new(number.Group, number.Number))
        }
    }

    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        let block = PoolBlock::for_layout(layout)?;
        let base = NonNull::new(self.pool_allocate(block.size()))?;
        match block {
            PoolBlock::Direct { .. } => Some(base),
            PoolBlock::OverAligned { .. } => {
                let offset =
                    aligned_start(base.as_ptr() as usize, layout.align()) - base.as_ptr() as usize;
                // SAFETY: PoolBlock reserves `align + size_of::<usize>()` bytes beyond `size`, so the
                // aligned start, the usize below it and `size` bytes above it lie inside the block.
                unsafe {
                    let start = base.as_ptr().add(offset);
                    start
                        .sub(core::mem::size_of::<usize>())
                        .cast::<*mut u8>()
                        .write_unaligned(base.as_ptr());
                    Some(NonNull::new_unchecked(start))
                }
            }
        }
    }

    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        let base = match PoolBlock::for_layout(layout) {
            Some(PoolBlock::OverAligned { .. }) => {
                // SAFETY: `allocate` stored the block's base right below the aligned start.
                unsafe {
                    ptr.as_ptr()
                        .sub(core::mem::size_of::<usize>())
                        .cast::<*mut u8>()
                        .read_unaligned()
                }
            }
            _ => ptr.as_ptr(),
        };
        // SAFETY: `base` is the start of a pool block allocated with POOL_TAG (caller contract: `ptr`
        // came from `allocate(layout)`), freed once at IRQL <= DISPATCH.
        unsafe { nt::ExFreePoolWithTag(base.cast(), POOL_TAG) }
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
        // SAFETY: the caller gives writable storage that stays in place until message_release; the
        // handler is written before the DPC can be queued.
        let dpc = unsafe {
            UnsafeCell::raw_get(ptr::addr_of!((*message).handler)).write(MaybeUninit::new(handler));
            UnsafeCell::raw_get(ptr::addr_of!((*message).dpc)).cast::<nt::KDPC>()
        };
        let mut setup = CycleDpc {
            dpc,
            context: message.cast(),
            number: nt::PROCESSOR_NUMBER {
                Group: target.group,
                Number: target.number,
                Reserved: 0,
            },
        };
        let status = init_cycle_dpc(&mut setup);
        if status < 0 {
            return Err(Status(status));
        }
        Ok(())
    }

    fn message_send(&self, message: &NtMessage) {
        // SAFETY: the KDPC was initialised by message_init; KeInsertQueueDpc is callable at any IRQL and
        // is a no-op if the DPC is already queued.
        unsafe {
            nt::KeInsertQueueDpc(message.dpc(), ptr::null_mut(), ptr::null_mut());
        }
    }

    unsafe fn message_release(&self, _message: *mut NtMessage) {
        // A KDPC that is neither queued nor running owns no kernel resources: nothing to undo.
    }

    fn flush_messages(&self) {
        // SAFETY: no arguments; PASSIVE_LEVEL is the caller's contract.
        unsafe { nt::KeFlushQueuedDpcs() }
    }

    unsafe fn timer_init(&self, timer: *mut NtTimer, handler: Handler) -> Result<(), Status> {
        // SAFETY: the caller gives writable storage that stays in place until timer_release; it is not
        // armed yet, so nothing else reads it while we initialise it.
        unsafe {
            timer.write(NtTimer {
                timer: UnsafeCell::new(MaybeUninit::uninit()),
                dpc: UnsafeCell::new(MaybeUninit::uninit()),
                handler: UnsafeCell::new(MaybeUninit::new(handler)),
                armed: AtomicBool::new(false),
                running: AtomicBool::new(false),
            });
            let timer = &*timer;
            nt::KeInitializeTimerEx(timer.timer.get().cast(), nt::NOTIFICATION_TIMER);
            nt::KeInitializeDpc(
                timer.dpc.get().cast(),
                nt::deferred_routine(timer_dpc),
                ptr::from_ref(timer).cast(),
            );
        }
        Ok(())
    }

    fn timer_start(&self, timer: &NtTimer, period_us: u32) {
        timer.armed.store(true, Ordering::SeqCst);
        let due = relative_due_time(period_us);
        // SAFETY: timer and DPC were initialised by timer_init and stay in place until timer_release;
        // KeSetTimerEx is callable at IRQL <= DISPATCH.
        unsafe {
            nt::KeSetTimerEx(
                timer.timer.get().cast(),
                due,
                timer_period_ms(period_us),
                timer.dpc.get().cast(),
            );
        }
    }

    fn timer_stop(&self, timer: &NtTimer) {
        // After the cancel no new expiry is queued; the flush waits for a DPC already queued or running
        // (one that starts after the store of `armed` returns at once).
        timer.armed.store(false, Ordering::SeqCst);
        // SAFETY: PASSIVE_LEVEL is the caller's contract; the timer was initialised.
        unsafe {
            nt::KeCancelTimer(timer.timer.get().cast());
            nt::KeFlushQueuedDpcs();
        }
    }

    unsafe fn timer_release(&self, _timer: *mut NtTimer) {
        // A cancelled KTIMER whose DPC has been flushed owns no kernel resources: nothing to undo.
    }

    unsafe fn passive_init(
        &self,
        work: *mut NtPassiveWork,
        handler: Handler,
    ) -> Result<(), Status> {
        // SAFETY: the device object outlives the platform (NtPlatform::new's contract).
        let item = unsafe { nt::IoAllocateWorkItem(self.device.as_ptr()) };
        if item == 0 {
            return Err(Status::INSUFFICIENT_RESOURCES);
        }
        // SAFETY: the caller gives writable storage that stays in place until passive_release.
        unsafe {
            work.write(NtPassiveWork {
                item: AtomicIsize::new(item),
                handler: UnsafeCell::new(MaybeUninit::new(handler)),
            });
        }
        Ok(())
    }

    fn passive_queue(&self, work: &NtPassiveWork) {
        // SAFETY: the item was allocated by passive_init and is not queued (the core queues an item again
        // only after its handler ran); IoQueueWorkItem is callable at IRQL <= DISPATCH.
        unsafe {
            nt::IoQueueWorkItem(
                work.item.load(Ordering::Relaxed),
                nt::work_item_routine(passive_work),
                nt::DELAYED_WORK_QUEUE,
                ptr::from_ref(work).cast(),
            );
        }
    }

    unsafe fn passive_release(&self, work: *mut NtPassiveWork) {
        // SAFETY: the caller guarantees the item is neither queued nor running; freed once.
        unsafe {
            let item = (*work).item.swap(0, Ordering::Relaxed);
            if item != 0 {
                nt::IoFreeWorkItem(item);
            }
        }
    }

    unsafe fn event_init(&self, event: *mut NtEvent) {
        // SAFETY: the caller gives writable storage that stays in place while the event is used.
        unsafe {
            let raw = UnsafeCell::raw_get(ptr::addr_of!((*event).event)).cast::<nt::KEVENT>();
            nt::KeInitializeEvent(raw, nt::NOTIFICATION_EVENT, false);
        }
    }

    fn event_signal(&self, event: &NtEvent) {
        // SAFETY: initialised by event_init; KeSetEvent with Wait = FALSE is callable at IRQL <= DISPATCH.
        unsafe {
            nt::KeSetEvent(event.raw(), 0, false);
        }
    }

    fn event_reset(&self, event: &NtEvent) {
        // SAFETY: initialised by event_init; callable at IRQL <= DISPATCH.
        unsafe { nt::KeClearEvent(event.raw()) }
    }

    fn event_wait(&self, event: &NtEvent) {
        // SAFETY: initialised by event_init; a non-alertable kernel-mode wait without timeout at PASSIVE
        // (caller contract) can only return once the event is signalled.
        unsafe {
            nt::KeWaitForSingleObject(
                event.raw().cast(),
                nt::EXECUTIVE,
                nt::KERNEL_MODE,
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
        let Some(register) = self.routines.register_processor_change else {
            return Ok(None);
        };
        let layout = Layout::new::<Registration>();
        let block = self
            .allocate(layout)
            .ok_or(Status::INSUFFICIENT_RESOURCES)?
            .cast::<Registration>();
        // SAFETY: `block` is fresh, suitably aligned storage for a Registration, initialised before the
        // kernel can call the trampoline (which happens during the registration itself: ADD_EXISTING).
        unsafe {
            block.as_ptr().write(Registration {
                callback,
                context,
                kernel_handle: ptr::null_mut(),
            });
            let handle = register(
                processor_change_trampoline,
                block.as_ptr().cast(),
                nt::KE_PROCESSOR_CHANGE_ADD_EXISTING,
            );
            if handle.is_null() {
                self.free(block.cast(), layout);
                return Err(STATUS_UNSUCCESSFUL);
            }
            // The trampoline never reads `kernel_handle`, so this write races with nothing.
            (*block.as_ptr()).kernel_handle = handle;
        }
        Ok(Some(block.cast()))
    }

    unsafe fn processor_change_deregister(&self, handle: NonNull<()>) {
        let block = handle.cast::<Registration>();
        // SAFETY: `handle` is the Registration made by processor_change_register (caller contract), which
        // only succeeds when the deregistration routine resolved; after KeDeregisterProcessorChangeCallback
        // returns the kernel no longer calls the trampoline, so the block can be freed.
        unsafe {
            if let Some(deregister) = self.routines.deregister_processor_change {
                deregister((*block.as_ptr()).kernel_handle);
            }
            self.free(block.cast(), Layout::new::<Registration>());
        }
    }

    fn now_ns(&self) -> u64 {
        let (ticks, frequency) = performance_counter();
        (ticks as u128 * 1_000_000_000 / frequency.max(1) as u128) as u64
    }

    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        log_line(level, args);
    }

    fn spin_lock_acquired(&self, _lock: *const ()) {
        // The core's spin locks raise to DISPATCH before spinning; anything lower risks bug check 0x133.
        self.verify_irql("core spin lock", IrqlRule::Dispatch);
    }

    fn verify_irql(&self, routine: &'static str, rule: IrqlRule) {
        // A broken rule is a driver bug: say so once in the debugger log (a bugcheck would take the
        // machine down for what Driver Verifier reports as a warning first).
        static REPORTED: AtomicBool = AtomicBool::new(false);
        let irql = self.current_irql();
        if !rule.allows(irql) && !REPORTED.swap(true, Ordering::Relaxed) {
            log_line(
                LogLevel::Error,
                format_args!("{routine} called at IRQL {} ({rule:?} only)", irql.0),
            );
        }
    }
}
