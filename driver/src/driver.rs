//! `DriverEntry` / `DriverUnload`, the control device and its IOCTLs, and the load generator.
//!
//! Everything the driver owns lives in [`DeviceState`], in the device extension of `\Device\kepoch`
//! (non-paged, fixed address, freed by `IoDeleteDevice` in unload after the state has been dropped).

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::mem::{self, MaybeUninit};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use kepoch::config::{select_config, Config, RegistryInput, RegistryValue, Setting};
use kepoch::platform::LogLevel;
use kepoch::{Atomic, Domain, DomainBox, Owned, Stats};

use crate::ioctl::{self, LoadRequest, Request};
use crate::lifecycle::{driver_entry_steps, with_passive_lock, CriticalRegionLock, EntrySteps};
use crate::nt;
use crate::platform::{dpcs_are_delivered, log_line, performance_counter, NtPlatform};
use crate::slots::ThreadSlot;
use crate::support::{
    dacl_size, nth_set_bit, ops_due, registry_value_from_query, thread_rate, ticks_to_ns,
    AtomicHistogram, WellKnownSid,
};
use crate::wide;

const DEVICE_NAME: &[u16] = wide!("\\Device\\kepoch");
const LINK_NAME: &[u16] = wide!("\\DosDevices\\kepoch");
const PARAMETERS_KEY: &[u16] = wide!("Parameters");
const ACTIVATION_STRATEGY: &[u16] = wide!("ActivationStrategy");
const IDLE_DEACTIVATION: &[u16] = wide!("IdleDeactivation");
const CYCLE_PERIOD: &[u16] = wide!("CyclePeriodMicroseconds");

/// Most load threads ([`ioctl::limits::MAX_THREADS`]).
const MAX_LOAD_THREADS: usize = ioctl::limits::MAX_THREADS as usize;

/// Everything the driver owns, stored in the device extension of `\Device\kepoch`.
pub struct DeviceState {
    /// Declared before `domain`: its shared item belongs to the domain, so it must drop first.
    load: LoadGenerator,
    domain: DomainBox<NtPlatform>,
    /// Registry values ignored or clamped at load (and registry reads that failed).
    config_warnings: u64,
    first_enter: AtomicHistogram,
    enter_exit: AtomicHistogram,
    /// Serialises GET_STATS, RESET_STATS, LOAD_START, LOAD_STOP and unload; guards `baseline`,
    /// `scratch` and `load.threads`.
    control: PassiveLock,
    baseline: UnsafeCell<Stats>,
    /// Where GET_STATS assembles its answer (a `Stats` is 24 KB, too large for the kernel stack).
    scratch: UnsafeCell<Stats>,
}

/// A lock for PASSIVE_LEVEL callers: a synchronization event, signalled when free, held only inside a
/// critical region (so a suspended holder cannot keep it forever; see [`with_passive_lock`]).
struct PassiveLock {
    event: UnsafeCell<MaybeUninit<nt::KEVENT>>,
}

impl PassiveLock {
    /// # Safety
    /// `this` is the lock's final address; it is initialised once, before any use.
    unsafe fn init(this: *mut PassiveLock) {
        // SAFETY: per the caller; a synchronization event created signalled = an unlocked lock.
        unsafe {
            let event = UnsafeCell::raw_get(ptr::addr_of!((*this).event)).cast::<nt::KEVENT>();
            nt::KeInitializeEvent(event, nt::SYNCHRONIZATION_EVENT, true);
        }
    }

    fn event(&self) -> *mut nt::KEVENT {
        self.event.get().cast()
    }

    /// Runs `f` with the lock held. PASSIVE_LEVEL only.
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        with_passive_lock(self, f)
    }
}

impl CriticalRegionLock for PassiveLock {
    fn enter_critical_region(&self) {
        // SAFETY: no arguments; PASSIVE_LEVEL callers only (PassiveLock::with's contract); paired with
        // leave_critical_region by with_passive_lock.
        unsafe { nt::KeEnterCriticalRegion() }
    }

    fn leave_critical_region(&self) {
        // SAFETY: pairs the enter_critical_region of the same with_passive_lock call.
        unsafe { nt::KeLeaveCriticalRegion() }
    }

    fn acquire(&self) {
        // SAFETY: initialised in DriverEntry; an untimed kernel-mode wait at PASSIVE returns once the
        // auto-reset event is ours.
        unsafe {
            nt::KeWaitForSingleObject(
                self.event().cast(),
                nt::EXECUTIVE,
                nt::KERNEL_MODE,
                false,
                ptr::null(),
            );
        }
    }

    fn release(&self) {
        // SAFETY: initialised in DriverEntry; signalling the event hands the lock to one waiter.
        unsafe { nt::KeSetEvent(self.event(), 0, false) };
    }
}

/// The object load threads read and replace: one block of the domain, published through
/// [`LoadGenerator::shared`].
struct LoadItem {
    value: u64,
}

/// One load thread's parameters (in a [`ThreadSlot`] of [`LoadGenerator::threads`], at a fixed address
/// while it runs; its handle is kept apart in the slot).
#[derive(Clone, Copy)]
struct LoadThread {
    state: *const DeviceState,
    rate: u32,
    seconds: u32,
    /// Group-0 processor number to pin to, if any.
    processor: Option<u32>,
}

impl LoadThread {
    const IDLE: LoadThread = LoadThread {
        state: ptr::null(),
        rate: 0,
        seconds: 0,
        processor: None,
    };
}

/// The built-in load generator: system threads doing enter / read / exit / replace / retire on
/// [`LoadGenerator::shared`] at a given rate.
struct LoadGenerator {
    /// Prepared, published and reaped under `DeviceState::control`; a running thread reads only its
    /// parameters.
    threads: [ThreadSlot<LoadThread, nt::HANDLE>; MAX_LOAD_THREADS],
    stop: AtomicBool,
    /// Threads that have not finished their loop yet.
    running: AtomicU32,
    /// The item readers look up and writers replace, through the core's safe pointer API (detached
    /// from the domain's borrow: both live in the same [`DeviceState`], which drops it first).
    shared: Atomic<'static, LoadItem, NtPlatform>,
}

// SAFETY: the UnsafeCells and the thread slots' handles are only accessed under `control` (or in
// DriverEntry/unload, when nothing else runs); a load thread only reads its slot's parameters, written
// before it was created; everything else is atomics, the Sync domain, or kernel objects.
unsafe impl Sync for DeviceState {}

/// A `UNICODE_STRING` over a static UTF-16 name. The kernel routines it is passed to only read it.
fn unicode(name: &'static [u16]) -> nt::UNICODE_STRING {
    let bytes = (name.len() * 2) as u16;
    nt::UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: name.as_ptr().cast_mut(),
    }
}

/// `InitializeObjectAttributes(name, attributes, root, NULL)`.
fn object_attributes(
    name: *mut nt::UNICODE_STRING,
    attributes: u32,
    root: nt::HANDLE,
) -> nt::OBJECT_ATTRIBUTES {
    nt::OBJECT_ATTRIBUTES {
        Length: mem::size_of::<nt::OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: root,
        ObjectName: name,
        Attributes: attributes,
        SecurityDescriptor: ptr::null_mut(),
        SecurityQualityOfService: ptr::null_mut(),
    }
}

/// Reads `Parameters` under the service key. Returns the input for `select_config` and the number of
/// values that could not be read (logged; they count as warnings and mean the default).
fn read_parameters(registry_path: *mut nt::UNICODE_STRING) -> (RegistryInput, u64) {
    let mut input = RegistryInput {
        activation_strategy: RegistryValue::Missing,
        idle_deactivation: RegistryValue::Missing,
        cycle_period_us: RegistryValue::Missing,
    };
    if registry_path.is_null() {
        return (input, 0);
    }
    let mut service: nt::HANDLE = ptr::null_mut();
    let attributes = object_attributes(
        registry_path,
        nt::OBJ_CASE_INSENSITIVE | nt::OBJ_KERNEL_HANDLE,
        ptr::null_mut(),
    );
    // SAFETY: the I/O manager's service key path and valid attributes; PASSIVE_LEVEL (DriverEntry).
    let status = unsafe { nt::ZwOpenKey(&mut service, nt::KEY_READ, &attributes) };
    if status < 0 {
        log_line(
            LogLevel::Warning,
            format_args!(
                "opening the service key failed: 0x{:08X}; using defaults",
                status as u32
            ),
        );
        return (input, 1);
    }
    let mut name = unicode(PARAMETERS_KEY);
    let mut parameters: nt::HANDLE = ptr::null_mut();
    let attributes = object_attributes(
        &mut name,
        nt::OBJ_CASE_INSENSITIVE | nt::OBJ_KERNEL_HANDLE,
        service,
    );
    // SAFETY: as above, relative to the open service key.
    let status = unsafe { nt::ZwOpenKey(&mut parameters, nt::KEY_READ, &attributes) };
    // SAFETY: our handle, closed once.
    unsafe { nt::ZwClose(service) };
    if status == nt::STATUS_OBJECT_NAME_NOT_FOUND {
        return (input, 0);
    }
    if status < 0 {
        log_line(
            LogLevel::Warning,
            format_args!(
                "opening the Parameters key failed: 0x{:08X}; using defaults",
                status as u32
            ),
        );
        return (input, 1);
    }
    let mut errors = 0;
    for (setting, name, slot) in [
        (
            Setting::ActivationStrategy,
            ACTIVATION_STRATEGY,
            &mut input.activation_strategy,
        ),
        (
            Setting::IdleDeactivation,
            IDLE_DEACTIVATION,
            &mut input.idle_deactivation,
        ),
        (
            Setting::CyclePeriodMicroseconds,
            CYCLE_PERIOD,
            &mut input.cycle_period_us,
        ),
    ] {
        match query_value(parameters, name) {
            Ok(value) => *slot = value,
            Err(status) => {
                errors += 1;
                log_line(
                    LogLevel::Warning,
                    format_args!(
                        "reading registry value {} failed: 0x{:08X}; using the default",
                        setting.value_name(),
                        status as u32
                    ),
                );
            }
        }
    }
    // SAFETY: our handle, closed once.
    unsafe { nt::ZwClose(parameters) };
    (input, errors)
}

/// `ZwQueryValueKey(KeyValuePartialInformation)` of one value.
fn query_value(key: nt::HANDLE, name: &'static [u16]) -> Result<RegistryValue, i32> {
    // KEY_VALUE_PARTIAL_INFORMATION: TitleIndex, Type, DataLength (u32 each), then the data.
    let mut buffer = [0u32; 16];
    let mut result_length = 0u32;
    let name = unicode(name);
    // SAFETY: valid key handle, name and a 4-aligned buffer of the length we pass; PASSIVE_LEVEL.
    let status = unsafe {
        nt::ZwQueryValueKey(
            key,
            &name,
            nt::KEY_VALUE_PARTIAL_INFORMATION_CLASS,
            buffer.as_mut_ptr().cast(),
            mem::size_of_val(&buffer) as u32,
            &mut result_length,
        )
    };
    let reg_type = buffer[1];
    let data_length = (buffer[2] as usize).min(mem::size_of_val(&buffer) - 12);
    let bytes: [u8; 64] = {
        let mut out = [0u8; 64];
        for (chunk, word) in out.chunks_exact_mut(4).zip(buffer.iter()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    };
    let data = if status == 0 {
        &bytes[12..12 + data_length]
    } else {
        &[][..]
    };
    registry_value_from_query(status, reg_type, data)
}

/// Restricts `\Device\kepoch` to SYSTEM and Administrators, the equivalent of the SDDL
/// `D:P(A;;GA;;;SY)(A;;GA;;;BA)` (`SDDL_DEVOBJ_SYS_ALL_ADM_ALL`).
///
/// `IoCreateDeviceSecure` would do this in one call, but it is not a kernel export: it is
/// `WdmlibIoCreateDeviceSecure` in the static library `wdmsec.lib`, which the Linux (raw-dylib) build
/// cannot link. So the driver builds the descriptor in code with documented routines, on both build
/// paths: an absolute security descriptor (`RtlCreateSecurityDescriptor`) whose DACL
/// (`RtlCreateAcl`, `RtlAddAccessAllowedAce`) grants `FILE_ALL_ACCESS` (what `GA` maps to for device
/// objects) to S-1-5-18 and S-1-5-32-544 and nothing to anyone else, applied with `ZwSetSecurityObject`
/// (DACL + PROTECTED_DACL, the `P`) on a kernel handle from `ObOpenObjectByPointer`
/// (`ObSetSecurityObjectByPointer`, which wdmsec uses, is only a stub in Wine 8). The device is still
/// `DO_DEVICE_INITIALIZING` and has no symbolic link while this runs, so nobody can open it before the
/// descriptor is in place. With the `wdk` feature, `IoCreateDeviceSecure` (linking `wdmsec.lib`)
/// could replace this function and the `IoCreateDevice` call.
fn restrict_to_system_and_admins(device: NonNull<nt::DEVICE_OBJECT>) -> Result<(), i32> {
    const SIDS: [WellKnownSid; 2] = [
        WellKnownSid::LOCAL_SYSTEM,
        WellKnownSid::BUILTIN_ADMINISTRATORS,
    ];
    const DACL_SIZE: usize = dacl_size(&SIDS);
    let mut sids = SIDS;
    let mut dacl = [0u32; DACL_SIZE.div_ceil(4)];
    let mut descriptor = MaybeUninit::<nt::SECURITY_DESCRIPTOR>::zeroed();
    let check = |status: i32| if status < 0 { Err(status) } else { Ok(()) };
    // SAFETY: every buffer is local, 4-aligned and as large as the length passed; the Rtl routines only
    // write inside them; the descriptor points at `dacl`, which outlives the ZwSetSecurityObject call
    // that copies it. PASSIVE_LEVEL (DriverEntry).
    unsafe {
        let descriptor: nt::PSECURITY_DESCRIPTOR = descriptor.as_mut_ptr().cast();
        check(nt::RtlCreateSecurityDescriptor(
            descriptor,
            nt::SECURITY_DESCRIPTOR_REVISION,
        ))?;
        check(nt::RtlCreateAcl(
            dacl.as_mut_ptr().cast(),
            DACL_SIZE as u32,
            nt::ACL_REVISION,
        ))?;
        for sid in &mut sids {
            check(nt::RtlAddAccessAllowedAce(
                dacl.as_mut_ptr().cast(),
                nt::ACL_REVISION,
                nt::FILE_ALL_ACCESS,
                ptr::from_mut(sid).cast(),
            ))?;
        }
        check(nt::RtlSetDaclSecurityDescriptor(
            descriptor,
            true,
            dacl.as_ptr().cast(),
            false,
        ))?;
        let mut handle: nt::HANDLE = ptr::null_mut();
        check(nt::ObOpenObjectByPointer(
            device.as_ptr().cast(),
            nt::OBJ_KERNEL_HANDLE,
            ptr::null_mut(),
            nt::WRITE_DAC,
            0,
            nt::KERNEL_MODE,
            &mut handle,
        ))?;
        let status = nt::ZwSetSecurityObject(
            handle,
            nt::DACL_SECURITY_INFORMATION | nt::PROTECTED_DACL_SECURITY_INFORMATION,
            descriptor,
        );
        nt::ZwClose(handle);
        check(status)
    }
}

/// The body of `DriverEntry` (`driver/README.md`): the registry, then [`driver_entry_steps`] on `NtEntry`.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL with its driver object and service key path.
pub unsafe fn driver_entry(
    driver: *mut nt::DRIVER_OBJECT,
    registry_path: *mut nt::UNICODE_STRING,
) -> nt::NTSTATUS {
    // SAFETY: the I/O manager passes a valid driver object that we may fill in during DriverEntry.
    // (Unload is not called when DriverEntry fails, so setting it first is fine.)
    unsafe {
        (*driver).DriverUnload = Some(driver_unload);
        (*driver).MajorFunction[nt::IRP_MJ_CREATE] = Some(create_close);
        (*driver).MajorFunction[nt::IRP_MJ_CLOSE] = Some(create_close);
        (*driver).MajorFunction[nt::IRP_MJ_DEVICE_CONTROL] = Some(device_control);
    }

    // Registry (`driver/README.md`, "Registry"): never fails the load.
    let (input, read_errors) = read_parameters(registry_path);
    let (config, warnings) = select_config(&input);
    let mut config_warnings = read_errors;
    for warning in warnings.iter().flatten() {
        config_warnings += 1;
        log_line(LogLevel::Warning, format_args!("{warning}"));
    }

    let mut entry = NtEntry {
        driver,
        config,
        config_warnings,
    };
    let status = driver_entry_steps(&mut entry);
    if status >= 0 {
        log_line(
            LogLevel::Info,
            format_args!(
                "ready: \\Device\\kepoch (SYSTEM and Administrators only), {config_warnings} registry warning(s)"
            ),
        );
    }
    status
}

/// `DriverEntry`'s steps on the NT kernel (with their log lines); their order and the undo of each
/// failure are [`driver_entry_steps`]'s. Built only by [`driver_entry`], at PASSIVE_LEVEL, with the
/// I/O manager's driver object.
struct NtEntry {
    driver: *mut nt::DRIVER_OBJECT,
    config: Config,
    config_warnings: u64,
}

impl EntrySteps for NtEntry {
    type Device = NonNull<nt::DEVICE_OBJECT>;
    type Domain = DomainBox<NtPlatform>;

    fn create_device(&mut self) -> Result<Self::Device, i32> {
        let device_name = unicode(DEVICE_NAME);
        let mut device: *mut nt::DEVICE_OBJECT = ptr::null_mut();
        // SAFETY: valid driver object (NtEntry's origin) and name; the extension is sized for
        // DeviceState.
        let status = unsafe {
            nt::IoCreateDevice(
                self.driver,
                mem::size_of::<DeviceState>() as u32,
                &device_name,
                nt::FILE_DEVICE_UNKNOWN,
                nt::FILE_DEVICE_SECURE_OPEN,
                false,
                &mut device,
            )
        };
        NonNull::new(device).filter(|_| status >= 0).ok_or_else(|| {
            log_line(
                LogLevel::Error,
                format_args!(
                    "IoCreateDevice(\\Device\\kepoch) failed: 0x{:08X}",
                    status as u32
                ),
            );
            if status < 0 {
                status
            } else {
                kepoch::platform::Status::INSUFFICIENT_RESOURCES.0
            }
        })
    }

    fn secure_device(&mut self, device: Self::Device) -> Result<(), i32> {
        restrict_to_system_and_admins(device).inspect_err(|status| {
            log_line(
                LogLevel::Error,
                format_args!(
                    "applying the SYSTEM/Administrators security descriptor failed: 0x{:08X}",
                    *status as u32
                ),
            );
        })
    }

    fn probe_dpc_delivery(&mut self) -> bool {
        let delivered = dpcs_are_delivered();
        if !delivered {
            log_line(
                LogLevel::Warning,
                format_args!(
                    "DPCs queued to a processor are not delivered on this host (Wine?): per-CPU slots cannot be bound, every processor uses the shared overflow slot; cycles and IRQL are not exercised"
                ),
            );
        }
        delivered
    }

    fn create_domain(
        &mut self,
        device: Self::Device,
        dpcs_delivered: bool,
    ) -> Result<Self::Domain, i32> {
        // SAFETY: the device lives until unload (or a failing DriverEntry) deletes it after the domain
        // (and its platform) dropped.
        let platform = unsafe { NtPlatform::new(device, dpcs_delivered) };
        let routines = *platform.routines();
        log_line(
            LogLevel::Info,
            format_args!(
                "routines: KeRegisterProcessorChangeCallback {}; ExAllocatePool2 {}; KeGetProcessorNumberFromIndex {}",
                if routines.has_processor_change_callback() { "resolved" } else { "missing" },
                if routines.has_allocate_pool2() { "resolved" } else { "missing (ExAllocatePoolWithTag fallback)" },
                if routines.has_processor_number_from_index() { "resolved" } else { "missing" },
            ),
        );
        // Domain::create logs the strategy, max/active counts and the callback state.
        Domain::create(platform, self.config).map_err(|error| {
            log_line(LogLevel::Error, format_args!("load failed: {error}"));
            error.status.0
        })
    }

    fn install_state(&mut self, device: Self::Device, domain: Self::Domain) {
        // SAFETY: the device extension is DeviceState-sized, suitably aligned (pool) and ours. It is
        // zeroed first: all-zero is a valid value of the histograms, the statistics buffers and the
        // lock's uninitialised event, so those (about 66 KB) are never built on the 24 KiB kernel stack;
        // the other fields are written in place, and the lock is initialised at its final address before
        // anything can use it (no link exists yet).
        unsafe {
            let state = (*device.as_ptr()).DeviceExtension.cast::<DeviceState>();
            ptr::write_bytes(state.cast::<u8>(), 0, mem::size_of::<DeviceState>());
            ptr::addr_of_mut!((*state).domain).write(domain);
            ptr::addr_of_mut!((*state).config_warnings).write(self.config_warnings);
            // The atomic is declared before the domain in DeviceState, so it drops first.
            let shared = Atomic::null_detached(&(*state).domain);
            ptr::addr_of_mut!((*state).load).write(LoadGenerator {
                threads: core::array::from_fn(|_| ThreadSlot::new(LoadThread::IDLE)),
                stop: AtomicBool::new(false),
                running: AtomicU32::new(0),
                shared,
            });
            PassiveLock::init(ptr::addr_of_mut!((*state).control));
        }
    }

    fn create_link(&mut self) -> Result<(), i32> {
        let link_name = unicode(LINK_NAME);
        let device_name = unicode(DEVICE_NAME);
        // SAFETY: both strings are valid for the call.
        let status = unsafe { nt::IoCreateSymbolicLink(&link_name, &device_name) };
        if status < 0 {
            log_line(
                LogLevel::Error,
                format_args!(
                    "IoCreateSymbolicLink(\\DosDevices\\kepoch) failed: 0x{:08X}",
                    status as u32
                ),
            );
            return Err(status);
        }
        Ok(())
    }

    fn drop_state(&mut self, device: Self::Device) {
        // SAFETY: install_state initialised it; unreachable from outside (no link, DriverEntry failing).
        unsafe { ptr::drop_in_place((*device.as_ptr()).DeviceExtension.cast::<DeviceState>()) };
    }

    fn flush_queued_dpcs(&mut self) {
        // SAFETY: no arguments; PASSIVE_LEVEL (DriverEntry).
        unsafe { nt::KeFlushQueuedDpcs() };
    }

    fn delete_device(&mut self, device: Self::Device) {
        // SAFETY: the device was created by create_device, has no symbolic link, its state (if any) has
        // been dropped, and nothing references it.
        unsafe { nt::IoDeleteDevice(device.as_ptr()) };
    }
}

unsafe extern "system" fn driver_unload(driver: *const nt::DRIVER_OBJECT) {
    // SAFETY: called once by the I/O manager at PASSIVE_LEVEL after all handles to our device are
    // closed; DriverEntry succeeded, so DeviceObject is our device with an initialised DeviceState.
    unsafe {
        let device = (*driver).DeviceObject;
        let link_name = unicode(LINK_NAME);
        nt::IoDeleteSymbolicLink(&link_name);
        if !device.is_null() {
            let state = (*device).DeviceExtension.cast::<DeviceState>();
            (*state).stop_load();
            // Dropping the domain unloads it (`epoch/PROTOCOL.md` S8: deregister, stop cycles, free
            // everything, wait for work).
            ptr::drop_in_place(state);
            // The DPC delivery probe may in theory still be queued.
            nt::KeFlushQueuedDpcs();
            nt::IoDeleteDevice(device);
        }
    }
    log_line(LogLevel::Info, format_args!("unloaded"));
}

/// IRP_MJ_CREATE / IRP_MJ_CLOSE: opening and closing the control device always succeeds (access is
/// decided by the device's security descriptor before the IRP reaches us).
unsafe extern "system" fn create_close(
    _device: *const nt::DEVICE_OBJECT,
    irp: *mut nt::IRP,
) -> nt::NTSTATUS {
    // SAFETY: the I/O manager dispatched this IRP to us; we complete it exactly once.
    unsafe { nt::complete_irp(irp, nt::STATUS_SUCCESS, 0) };
    nt::STATUS_SUCCESS
}

/// IRP_MJ_DEVICE_CONTROL (PASSIVE_LEVEL, caller's thread): validated by [`ioctl::decode`], then run.
unsafe extern "system" fn device_control(
    device: *const nt::DEVICE_OBJECT,
    irp: *mut nt::IRP,
) -> nt::NTSTATUS {
    // SAFETY: the I/O manager dispatched an IRP_MJ_DEVICE_CONTROL IRP for our device, whose extension
    // holds the DeviceState initialised in DriverEntry (the link that makes it reachable is created
    // after that).
    let (params, state) = unsafe {
        (
            nt::device_io_control(irp),
            &*(*device).DeviceExtension.cast::<DeviceState>(),
        )
    };
    let (status, information) = if !ioctl::ALL_CODES.contains(&params.code) {
        // Before looking at buffers: codes of other transfer methods carry no SystemBuffer.
        (ioctl::status::INVALID_DEVICE_REQUEST, 0)
    } else if params.buffer.is_null() && (params.input_length != 0 || params.output_length != 0) {
        (ioctl::status::INVALID_PARAMETER, 0)
    } else {
        let input: &[u8] = if params.input_length == 0 {
            &[]
        } else {
            // SAFETY: METHOD_BUFFERED: SystemBuffer holds max(input, output) bytes, the input first.
            unsafe { core::slice::from_raw_parts(params.buffer, params.input_length as usize) }
        };
        match ioctl::decode(params.code, input, params.output_length as usize) {
            Err(status) => (status, 0),
            Ok(Request::GetStats) => {
                // SAFETY: as above; the input slice is no longer used (GET_STATS has no input).
                let output = unsafe {
                    core::slice::from_raw_parts_mut(params.buffer, params.output_length as usize)
                };
                let (status, written) = state.encode_stats_since_reset(output);
                (status, written as u64)
            }
            Ok(Request::ResetStats) => {
                state.reset_stats();
                (nt::STATUS_SUCCESS, 0)
            }
            Ok(Request::LoadStart(request)) => (state.start_load(request), 0),
            Ok(Request::LoadStop) => {
                state.stop_load();
                (nt::STATUS_SUCCESS, 0)
            }
            Ok(Request::Sync) => {
                state.domain.synchronize();
                (nt::STATUS_SUCCESS, 0)
            }
        }
    };
    // SAFETY: our IRP, completed exactly once.
    unsafe { nt::complete_irp(irp, status, information) };
    status
}

impl DeviceState {
    /// Writes the current counters into `out` in place.
    fn snapshot_into(&self, out: &mut Stats) {
        self.domain.stats_into(out);
        out.config_warnings = self.config_warnings;
        self.first_enter.snapshot_into(&mut out.first_enter_ns);
        self.enter_exit.snapshot_into(&mut out.enter_exit_ns);
    }

    /// GET_STATS: the counters since the last reset, encoded into `output`.
    fn encode_stats_since_reset(&self, output: &mut [u8]) -> (i32, usize) {
        self.control.with(|| {
            // SAFETY: `scratch` and `baseline` are only accessed under `control`.
            let (scratch, baseline) = unsafe { (&mut *self.scratch.get(), &*self.baseline.get()) };
            self.snapshot_into(scratch);
            ioctl::subtract_baseline(scratch, baseline);
            ioctl::encode_stats(scratch, output)
        })
    }

    fn reset_stats(&self) {
        // SAFETY: `baseline` is only accessed under `control`.
        self.control
            .with(|| self.snapshot_into(unsafe { &mut *self.baseline.get() }));
        log_line(LogLevel::Info, format_args!("statistics reset"));
    }

    /// LOAD_START: refuses while a previous run is still going; reaps a finished one first.
    fn start_load(&self, request: LoadRequest) -> i32 {
        self.control.with(|| {
            if self.load.running.load(Ordering::Acquire) != 0 {
                return ioctl::status::DEVICE_BUSY;
            }
            // SAFETY: under `control`.
            unsafe { self.reap_threads() };
            // SAFETY: callable at any IRQL.
            let mask = unsafe { nt::KeQueryActiveProcessors() } as u64;
            let wanted = if request.threads == 0 {
                mask.count_ones().max(1)
            } else {
                request.threads
            };
            // No thread with a zero rate.
            let count = wanted.min(request.rate).min(MAX_LOAD_THREADS as u32);
            self.load.stop.store(false, Ordering::Release);
            for index in 0..count {
                let slot = &self.load.threads[index as usize];
                // SAFETY: under `control`; no load thread runs (reaped above).
                unsafe {
                    slot.prepare(LoadThread {
                        state: self,
                        rate: thread_rate(request.rate, count, index),
                        seconds: request.seconds,
                        processor: nth_set_bit(mask, index),
                    });
                }
                let attributes =
                    object_attributes(ptr::null_mut(), nt::OBJ_KERNEL_HANDLE, ptr::null_mut());
                self.load.running.fetch_add(1, Ordering::AcqRel);
                let mut handle: nt::HANDLE = ptr::null_mut();
                // SAFETY: the slot stays in place and its parameters unchanged until the thread is reaped
                // (under `control`); a kernel handle because we run in the caller's process.
                let status = unsafe {
                    nt::PsCreateSystemThread(
                        &mut handle,
                        nt::THREAD_ALL_ACCESS,
                        &attributes,
                        ptr::null_mut(),
                        ptr::null_mut(),
                        nt::start_routine(load_thread),
                        slot.context(),
                    )
                };
                if status < 0 {
                    self.load.running.fetch_sub(1, Ordering::AcqRel);
                    log_line(
                        LogLevel::Error,
                        format_args!("PsCreateSystemThread failed: 0x{:08X}", status as u32),
                    );
                    self.load.stop.store(true, Ordering::Release);
                    // SAFETY: under `control`.
                    unsafe { self.reap_threads() };
                    return status;
                }
                // SAFETY: under `control`; the new thread (maybe running already) reads only its
                // parameters, never the handle cell.
                unsafe { slot.publish_handle(handle) };
            }
            log_line(
                LogLevel::Info,
                format_args!(
                    "load started: {} operations/s over {count} thread(s) for {} s",
                    request.rate, request.seconds
                ),
            );
            nt::STATUS_SUCCESS
        })
    }

    /// LOAD_STOP and unload: stops the threads, waits for them and retires the last shared item.
    fn stop_load(&self) {
        self.control.with(|| {
            self.load.stop.store(true, Ordering::Release);
            // SAFETY: under `control`.
            let reaped = unsafe { self.reap_threads() };
            if let Some(last) = self.load.shared.take() {
                last.retire();
            }
            if reaped != 0 {
                log_line(
                    LogLevel::Info,
                    format_args!("load stopped ({reaped} thread(s))"),
                );
            }
        })
    }

    /// Waits for every created load thread to end and closes its handle. Returns how many there were.
    ///
    /// # Safety
    /// The caller holds `control`.
    unsafe fn reap_threads(&self) -> usize {
        let mut reaped = 0;
        for slot in &self.load.threads {
            // SAFETY: per the caller (`control` is held).
            let Some(handle) = (unsafe { slot.take_handle() }) else {
                continue;
            };
            // SAFETY: our kernel handle to a thread we created; an untimed wait at PASSIVE returns once
            // the thread has terminated; closed once (taken out of the slot above).
            unsafe {
                nt::ZwWaitForSingleObject(handle, false, ptr::null());
                nt::ZwClose(handle);
            }
            reaped += 1;
        }
        reaped
    }

    /// One load operation: a timed enter / read / exit, then replace the shared item and retire the old
    /// one.
    fn load_operation(&self, first: bool, value: u64, frequency: u64) {
        let domain = &*self.domain;
        let (start, _) = performance_counter();
        let guard = domain.enter();
        let (entered, _) = performance_counter();
        if let Some(item) = self.load.shared.load(&guard) {
            // Read through an optimisation barrier, so the lookup is not optimised away.
            core::hint::black_box(item.value);
        }
        drop(guard);
        let (exited, _) = performance_counter();
        if first {
            self.first_enter
                .record(ticks_to_ns(entered.wrapping_sub(start), frequency));
        } else {
            self.enter_exit
                .record(ticks_to_ns(exited.wrapping_sub(start), frequency));
        }
        if let Ok(new) = Owned::new(domain, LoadItem { value }) {
            self.load.shared.store(new);
        }
    }
}

/// Start routine of a load thread: pin to its processor, run at its rate until stopped or its time is
/// up, then end.
unsafe extern "system" fn load_thread(context: *mut c_void) {
    // SAFETY: `context` is the context of the thread's slot, prepared before the thread was created and
    // unchanged until it is reaped; its DeviceState outlives every load thread (unload and LOAD_STOP reap
    // them first).
    let (slot, state) = unsafe {
        let slot = ThreadSlot::<LoadThread, nt::HANDLE>::thread_params(context);
        (slot, &*slot.state)
    };
    // SAFETY: a system thread may set its own system affinity to an active processor's bit.
    let previous = slot
        .processor
        .map(|p| unsafe { nt::KeSetSystemAffinityThreadEx(1usize << p) });

    let (start, frequency) = performance_counter();
    let end = u64::from(slot.seconds).saturating_mul(frequency);
    let mut done = 0u64;
    while !state.load.stop.load(Ordering::Acquire) {
        let (now, _) = performance_counter();
        let elapsed = now.wrapping_sub(start);
        if elapsed >= end {
            break;
        }
        let due = ops_due(elapsed, frequency, slot.rate);
        let mut batch = 0;
        while done < due && batch < 1024 {
            state.load_operation(done == 0, done, frequency);
            done += 1;
            batch += 1;
        }
        if done >= due {
            // 1 ms, relative (negative: 100 ns units from now).
            let interval: i64 = -10_000;
            // SAFETY: a kernel-mode, non-alertable delay at PASSIVE_LEVEL with a valid interval.
            unsafe { nt::KeDelayExecutionThread(nt::KERNEL_MODE, false, &interval) };
        }
    }

    if let Some(previous) = previous {
        // SAFETY: restores the affinity returned by KeSetSystemAffinityThreadEx above.
        unsafe { nt::KeRevertToUserAffinityThreadEx(previous) };
    }
    state.load.running.fetch_sub(1, Ordering::AcqRel);
    // SAFETY: ends this system thread; LOAD_STOP/unload wait on its handle before the image can go.
    unsafe { nt::PsTerminateSystemThread(nt::STATUS_SUCCESS) };
}

/// Logs the panic and stops the machine with bug check [`nt::BUGCHECK_RUST_PANIC`]: continuing after a
/// broken invariant in kernel memory reclamation would risk silent corruption.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line, column) = info
        .location()
        .map_or(("?", 0, 0), |l| (l.file(), l.line(), l.column()));
    log_line(
        LogLevel::Error,
        format_args!("panic at {file}:{line}:{column}: {}", info.message()),
    );
    // SAFETY: KeBugCheckEx never returns; the parameters are plain values shown in the crash dump.
    unsafe {
        nt::bug_check(
            nt::BUGCHECK_RUST_PANIC,
            [
                file.as_ptr() as usize,
                file.len(),
                line as usize,
                column as usize,
            ],
        )
    }
}
