//! A test driver: DriverEntry remembers its driver object and service key, makes one device (for
//! device-object work items) and reads the configuration; domains are created on the machine's
//! threads by the tests.

use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kepoch::{Domain, DomainBox, Owned};
use kepoch_nt::sys;
use kepoch_nt::{read_config, wide, DpcDelivery, NtPlatform, PoolTag, RegistryConfig, Settings};
use kepoch_ntemu::Machine;

/// The driver object DriverEntry got.
pub static DRIVER: AtomicUsize = AtomicUsize::new(0);
/// The device DriverEntry made.
pub static DEVICE: AtomicUsize = AtomicUsize::new(0);
/// What DriverEntry read from `Parameters`.
pub static CONFIG: Mutex<Option<RegistryConfig>> = Mutex::new(None);

/// A pool tag from four characters.
pub fn tag(bytes: &[u8; 4]) -> PoolTag {
    PoolTag::new(*bytes).expect("a valid pool tag")
}

unsafe extern "system" fn unload(driver: *const sys::DRIVER_OBJECT) {
    // SAFETY: the device DriverEntry made, deleted once, after every domain using it dropped.
    unsafe {
        let device = (*driver).DeviceObject;
        if !device.is_null() {
            sys::IoDeleteDevice(device);
        }
    }
}

/// The test driver's DriverEntry.
///
/// # Safety
/// Called by the emulated I/O manager once per load, at PASSIVE.
pub unsafe fn driver_entry(
    driver: *mut sys::DRIVER_OBJECT,
    registry_path: *mut sys::UNICODE_STRING,
) -> sys::NTSTATUS {
    // SAFETY: the I/O manager's driver object and service key path, at PASSIVE.
    unsafe {
        (*driver).DriverUnload = Some(unload);
        let mut device: *mut sys::DEVICE_OBJECT = ptr::null_mut();
        let status = sys::IoCreateDevice(
            driver,
            0,
            ptr::null(),
            sys::FILE_DEVICE_UNKNOWN,
            0,
            false,
            &mut device,
        );
        if status < 0 {
            return status;
        }
        DRIVER.store(driver as usize, Ordering::SeqCst);
        DEVICE.store(device as usize, Ordering::SeqCst);
        *CONFIG.lock().unwrap() = Some(read_config(registry_path, wide!("Parameters")));
    }
    0
}

/// Settings for a domain: `tag`, work items of `owner`, no probe.
pub fn settings(tag: PoolTag, owner: kepoch_nt::WorkItemOwner) -> Settings {
    Settings {
        pool_tag: tag,
        work_items: owner,
        dpc_delivery: DpcDelivery::Assume,
    }
}

/// The driver object as a work-item owner.
pub fn driver_owner() -> kepoch_nt::WorkItemOwner {
    kepoch_nt::WorkItemOwner::Driver(
        NonNull::new(DRIVER.load(Ordering::SeqCst) as *mut _).expect("DriverEntry ran"),
    )
}

/// The device as a work-item owner.
pub fn device_owner() -> kepoch_nt::WorkItemOwner {
    kepoch_nt::WorkItemOwner::Device(
        NonNull::new(DEVICE.load(Ordering::SeqCst) as *mut _).expect("DriverEntry ran"),
    )
}

/// A domain with `settings` and the configuration DriverEntry read, made on a machine thread.
pub fn create(machine: &Machine, settings: Settings) -> DomainBox<NtPlatform> {
    let config = CONFIG
        .lock()
        .unwrap()
        .expect("DriverEntry read the configuration")
        .config;
    machine.call("Domain::create", move || {
        // SAFETY: PASSIVE; the owner lives until the test unloads the driver, after the domain.
        let platform = unsafe { NtPlatform::new(settings) }.expect("the NT platform");
        Domain::create(platform, config).expect("Domain::create")
    })
}

/// Runs of [`count_run`], by context.
pub static WORK_RUNS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

fn count_run(context: usize) {
    WORK_RUNS[context].fetch_add(1, Ordering::SeqCst);
}

/// On a machine thread: a reader at DISPATCH on `domain`, a value swapped and retired, and a work item
/// counting into `WORK_RUNS[slot]` scheduled and waited for (at most 20 s); then `synchronize`.
pub fn exercise(machine: &Machine, domain: &'static DomainBox<NtPlatform>, slot: usize) {
    machine.call("reader, writer and work item", move || {
        let value = kepoch::Atomic::new(Owned::new(domain, 1u64).expect("memory"));
        // SAFETY: lowered again below, on this thread.
        let previous = unsafe { sys::irql::raise_to_dispatch() };
        let guard = domain.enter();
        assert_eq!(value.load(&guard).map(|v| *v.get()), Some(1));
        drop(guard);
        // SAFETY: from the raise above.
        unsafe { sys::irql::lower(previous) };
        if let Some(old) = value.swap(Owned::new(domain, 2).expect("memory")) {
            old.retire();
        }
        let before = WORK_RUNS[slot].load(Ordering::SeqCst);
        let item = domain.new_work_item(count_run, slot).expect("a work item");
        domain.schedule_work(&item).expect("scheduled");
        let start = Instant::now();
        while WORK_RUNS[slot].load(Ordering::SeqCst) == before {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the work item never ran"
            );
            domain.synchronize();
        }
        drop(item);
        if let Some(last) = value.take() {
            last.retire();
        }
        domain.synchronize();
    });
}

/// The domain's counters, read on a machine thread.
pub fn stats(machine: &Machine, domain: &'static DomainBox<NtPlatform>) -> Box<kepoch::Stats> {
    machine.call("stats", move || {
        let mut stats = Box::<kepoch::Stats>::default();
        domain.stats_into(&mut stats);
        stats
    })
}

/// Drops `domain` on a machine thread (at PASSIVE, as unload does).
pub fn drop_domain(machine: &Machine, domain: DomainBox<NtPlatform>) {
    machine.call("dropping the domain", move || drop(domain));
}

/// Leaks the box for the duration of a test so that closures on machine threads may borrow it; the
/// returned owner gives it back.
pub fn borrowable(domain: DomainBox<NtPlatform>) -> &'static DomainBox<NtPlatform> {
    Box::leak(Box::new(domain))
}

/// Takes back a box made by [`borrowable`].
///
/// # Safety
/// No borrow of it is alive (every machine call using it returned).
pub unsafe fn reclaim(domain: &'static DomainBox<NtPlatform>) -> DomainBox<NtPlatform> {
    // SAFETY: per the caller; the reference came from Box::leak.
    *unsafe { Box::from_raw(ptr::from_ref(domain).cast_mut()) }
}
