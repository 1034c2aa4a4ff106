//! `DriverEntry` / `DriverUnload` and the driver's state.
//!
//! Everything the driver owns lives in [`DeviceState`], in the device extension of `\Device\kepoch`
//! (non-paged, fixed address, freed by `IoDeleteDevice` in unload after the state has been dropped).
//! The control device's IOCTLs are in `device.rs`, the load generator in `load.rs`.

use core::cell::UnsafeCell;
use core::mem;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32};

use kepoch::config::Config;
use kepoch::platform::LogLevel;
use kepoch::{Atomic, Domain, DomainBox, Stats};
use kepoch_nt::sys as nt;
use kepoch_nt::wide::unicode_string;
use kepoch_nt::{
    log_line, read_config, wide, DpcDelivery, NtPlatform, PassiveLock, PoolTag, RegistryConfig,
    Settings, WorkItemOwner,
};

use crate::device::{create_close, device_control, restrict_to_system_and_admins};
use crate::lifecycle::{driver_entry_steps, EntrySteps};
use crate::load::{LoadGenerator, LoadThread};
use crate::slots::ThreadSlot;
use crate::support::AtomicHistogram;

pub(crate) const DEVICE_NAME: &[u16] = wide!("\\Device\\kepoch");
pub(crate) const LINK_NAME: &[u16] = wide!("\\DosDevices\\kepoch");

/// Pool tag of every kepoch.sys allocation: shows as `Epch` in `!poolused` / PoolMon (C literal
/// `'hcpE'`).
pub const POOL_TAG: PoolTag = match PoolTag::new(*b"Epch") {
    Ok(tag) => tag,
    Err(_) => panic!("Epch is a valid pool tag"),
};

/// How long DriverEntry waits for its DPC-delivery probe (Wine never runs it).
const DPC_PROBE_MILLISECONDS: u32 = 500;

/// Everything the driver owns, stored in the device extension of `\Device\kepoch`.
pub struct DeviceState {
    /// Declared before `domain`: its shared item belongs to the domain, so it must drop first.
    pub(crate) load: LoadGenerator,
    pub(crate) domain: DomainBox<NtPlatform>,
    /// Registry values ignored or clamped at load (and registry reads that failed).
    pub(crate) config_warnings: u64,
    pub(crate) first_enter: AtomicHistogram,
    pub(crate) enter_exit: AtomicHistogram,
    /// Serialises GET_STATS, RESET_STATS, LOAD_START, LOAD_STOP and unload; guards `baseline`,
    /// `scratch` and `load.threads`.
    pub(crate) control: PassiveLock,
    pub(crate) baseline: UnsafeCell<Stats>,
    /// Where GET_STATS assembles its answer (a `Stats` is 40 KB, too large for the kernel stack).
    pub(crate) scratch: UnsafeCell<Stats>,
}

// SAFETY: the UnsafeCells and the thread slots' handles are only accessed under `control` (or in
// DriverEntry/unload, when nothing else runs); a load thread only reads its slot's parameters, written
// before it was created; everything else is atomics, the Sync domain, or kernel objects.
unsafe impl Sync for DeviceState {}

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
    // SAFETY: the I/O manager's service key path (DriverEntry's contract).
    let RegistryConfig {
        config,
        warnings: config_warnings,
    } = unsafe { read_config(registry_path, wide!("Parameters")) };

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
        let device_name = unicode_string(DEVICE_NAME);
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

    fn create_domain(&mut self, device: Self::Device) -> Result<Self::Domain, i32> {
        let settings = Settings {
            pool_tag: POOL_TAG,
            work_items: WorkItemOwner::Device(device),
            dpc_delivery: DpcDelivery::Probe {
                milliseconds: DPC_PROBE_MILLISECONDS,
            },
        };
        // SAFETY: PASSIVE (DriverEntry); the device lives until unload (or a failing DriverEntry)
        // deletes it after the domain (and its platform) dropped.
        let platform = unsafe { NtPlatform::new(settings) }.map_err(|status| {
            log_line(
                LogLevel::Error,
                format_args!("load failed: the NT platform: 0x{:08X}", status.0 as u32),
            );
            status.0
        })?;
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
        let link_name = unicode_string(LINK_NAME);
        let device_name = unicode_string(DEVICE_NAME);
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
        let link_name = unicode_string(LINK_NAME);
        nt::IoDeleteSymbolicLink(&link_name);
        if !device.is_null() {
            let state = (*device).DeviceExtension.cast::<DeviceState>();
            (*state).stop_load();
            // Dropping the domain unloads it (`epoch/PROTOCOL.md` S8: deregister, stop cycles, free
            // everything, wait for work).
            // The platform flushes a probe DPC that had not run when it gave up.
            ptr::drop_in_place(state);
            nt::IoDeleteDevice(device);
        }
    }
    log_line(LogLevel::Info, format_args!("unloaded"));
}
