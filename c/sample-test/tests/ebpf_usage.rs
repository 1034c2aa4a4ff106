//! `c/tests/ebpf_usage.c` — every function of `ebpf_epoch.h`, used the way eBPF for Windows' runtime
//! does — run on the emulated kernel inside a loaded driver, then the pool checked for leaks.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use std::sync::atomic::{AtomicUsize, Ordering};

use kepoch_c_sample_test::run_ebpf_usage;
use kepoch_ntemu::nt::{DRIVER_OBJECT, NTSTATUS, UNICODE_STRING};
use kepoch_ntemu::{Machine, MachineConfig};

/// The driver object of the load, for the usage run's work items.
static DRIVER: AtomicUsize = AtomicUsize::new(0);

/// A driver that only remembers its object (the usage file initiates and terminates itself).
unsafe fn entry(driver: *mut DRIVER_OBJECT, _path: *mut UNICODE_STRING) -> NTSTATUS {
    DRIVER.store(driver as usize, Ordering::SeqCst);
    // SAFETY: the I/O manager's driver object, ours to fill in during DriverEntry.
    unsafe { (*driver).DriverUnload = Some(unload) };
    0
}

/// Nothing to undo: the usage run terminated the epoch module.
unsafe extern "system" fn unload(_driver: *const DRIVER_OBJECT) {}

#[test]
fn every_ebpf_epoch_function_works_as_ebpf_uses_it() {
    let machine = Machine::start(MachineConfig::default().service("ebpf_usage"));
    let loaded = machine.load(entry).expect("DriverEntry");
    let driver = DRIVER.load(Ordering::SeqCst);
    // SAFETY: the loaded driver's object; the epoch module is not initiated yet.
    let line = machine.call("ebpf_usage_run", move || unsafe {
        run_ebpf_usage(driver as *mut DRIVER_OBJECT)
    });
    assert_eq!(line, 0, "ebpf_usage.c failed at line {line}");
    let tags = machine.pool().live_by_tag;
    assert!(
        tags.iter().all(|(_, blocks)| *blocks == 0),
        "blocks left after terminate: {tags:?}"
    );
    loaded.unload();
    machine.finish();
}
