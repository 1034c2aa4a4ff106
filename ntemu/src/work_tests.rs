//! Work items initialised in the driver's pool for the driver object (`IoSizeofWorkItem`,
//! `IoInitializeWorkItem`, `IoQueueWorkItemEx`, `IoUninitializeWorkItem`): the correct sequence runs
//! and leaves nothing behind; each documented misuse fails the machine.

use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::string::String;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::{Machine, MachineConfig};
use crate::nt::{self, DRIVER_OBJECT, NTSTATUS, PIO_WORKITEM, UNICODE_STRING};

const TAG: u32 = u32::from_le_bytes(*b"WkTs");
/// Normal work queue (`DelayedWorkQueue`).
const DELAYED_WORK_QUEUE: i32 = 1;

static DRIVER: AtomicUsize = AtomicUsize::new(0);
static SEEN_OBJECT: AtomicUsize = AtomicUsize::new(0);
static SEEN_ITEM: AtomicUsize = AtomicUsize::new(0);

unsafe extern "system" fn unload(_: *const DRIVER_OBJECT) {}

/// Remembers its driver object (the owner of the tests' work items).
unsafe fn entry(driver: *mut DRIVER_OBJECT, _: *mut UNICODE_STRING) -> NTSTATUS {
    DRIVER.store(driver as usize, Ordering::SeqCst);
    // SAFETY: the I/O manager's driver object, ours to fill in during DriverEntry.
    unsafe { (*driver).DriverUnload = Some(unload) };
    0
}

unsafe extern "system" fn record(object: *mut c_void, _: *mut c_void, item: PIO_WORKITEM) {
    SEEN_OBJECT.store(object as usize, Ordering::SeqCst);
    SEEN_ITEM.store(item as usize, Ordering::SeqCst);
}

unsafe extern "system" fn nothing(_: *mut nt::DEVICE_OBJECT, _: *mut c_void) {}

fn routine_ex() -> nt::PIO_WORKITEM_ROUTINE_EX {
    let routine: nt::IO_WORKITEM_ROUTINE_EX = record;
    // SAFETY: function pointers of the same size; the emulation converts it back before the call.
    Some(unsafe {
        core::mem::transmute::<nt::IO_WORKITEM_ROUTINE_EX, unsafe extern "system" fn()>(routine)
    })
}

/// A driver-object work item in a fresh pool block.
///
/// # Safety
/// On a machine thread at PASSIVE, with the test driver loaded.
unsafe fn initialised_item() -> PIO_WORKITEM {
    // SAFETY: per the caller; the block is as large as IoSizeofWorkItem says.
    unsafe {
        let size = nt::IoSizeofWorkItem() as usize;
        let item = nt::ExAllocatePoolWithTag(nt::NON_PAGED_POOL_NX, size, TAG) as PIO_WORKITEM;
        nt::IoInitializeWorkItem(DRIVER.load(Ordering::SeqCst) as *const c_void, item);
        item
    }
}

fn wait_for_item(item: usize) {
    let start = Instant::now();
    while SEEN_ITEM.load(Ordering::SeqCst) != item {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the work item never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn contains(failures: &[String], text: &str) -> bool {
    failures.iter().any(|f| f.contains(text))
}

#[test]
fn a_driver_object_work_item_runs_with_its_object_and_item_and_leaves_nothing() {
    let machine = Machine::start(MachineConfig::default());
    let driver = machine.load(entry).expect("DriverEntry");
    // SAFETY: PASSIVE on a machine thread, the test driver loaded.
    let item = machine.call("initialise", || unsafe { initialised_item() as usize });
    machine.call("queue", move || {
        // SAFETY: an initialised item, not queued.
        unsafe {
            nt::IoQueueWorkItemEx(
                item as PIO_WORKITEM,
                routine_ex(),
                DELAYED_WORK_QUEUE,
                core::ptr::null(),
            )
        };
    });
    wait_for_item(item);
    assert_eq!(
        SEEN_OBJECT.load(Ordering::SeqCst),
        DRIVER.load(Ordering::SeqCst)
    );
    machine.call("uninitialise and free", move || {
        // SAFETY: the item ran and is not queued; its block is freed once.
        unsafe {
            nt::IoUninitializeWorkItem(item as PIO_WORKITEM);
            nt::ExFreePoolWithTag(item as *mut c_void, TAG);
        }
    });
    driver.unload();
    machine.finish();
}

#[test]
fn io_queue_work_item_refuses_a_driver_object_item_and_freeing_an_initialised_item_is_caught() {
    let machine = Machine::start(MachineConfig::default());
    let _driver = machine.load(entry).expect("DriverEntry");
    let failures: Vec<String> = machine
        .try_call("IoQueueWorkItem on a driver-object item", || {
            // SAFETY: an initialised item; the emulation refuses it before anything is queued.
            unsafe {
                let item = initialised_item();
                let routine: nt::IO_WORKITEM_ROUTINE = nothing;
                let routine = Some(core::mem::transmute::<
                    nt::IO_WORKITEM_ROUTINE,
                    unsafe extern "system" fn(),
                >(routine));
                nt::IoQueueWorkItem(item, routine, DELAYED_WORK_QUEUE, core::ptr::null());
                nt::IoUninitializeWorkItem(item);
                nt::ExFreePoolWithTag(item as *mut c_void, TAG);
            }
        })
        .expect_err("IoQueueWorkItem needs a device object's item");
    assert!(
        contains(&failures, "initialised for the driver object"),
        "{failures:?}"
    );
    let failures = machine
        .try_call("free without IoUninitializeWorkItem", || {
            // SAFETY: the block is ours; freeing it while the item is initialised is the bug shown.
            unsafe { nt::ExFreePoolWithTag(initialised_item() as *mut c_void, TAG) };
        })
        .expect_err("freeing an initialised work item must fail");
    assert!(
        contains(&failures, "IO_WORKITEM at +0x0 still initialised"),
        "{failures:?}"
    );
}
