//! `c/tests/ebpf_usage.c` — every function of `ebpf_epoch.h`, used the way eBPF for Windows' runtime
//! does — run on the emulated kernel inside a loaded driver, then the pool checked for leaks.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use kepoch_c_sample_test::{remembered_driver, remembering_driver_entry, run_ebpf_usage};
use kepoch_ntemu::nt::DRIVER_OBJECT;
use kepoch_ntemu::{Machine, MachineConfig};

#[test]
fn every_ebpf_epoch_function_works_as_ebpf_uses_it() {
    let machine = Machine::start(MachineConfig::default().service("ebpf_usage"));
    let loaded = machine.load(remembering_driver_entry).expect("DriverEntry");
    let driver = remembered_driver() as usize;
    // SAFETY: the loaded driver's object; the epoch module is not initiated yet.
    let line = machine.call("ebpf_usage_run", move || unsafe {
        run_ebpf_usage(driver as *mut DRIVER_OBJECT)
    });
    assert_eq!(line, 0, "ebpf_usage.c failed at line {line}");
    // Checked after the unload: a work item released during its own run is freed by the kernel's
    // work routine once the callback returned (NT does not free a running work item), which the
    // unload waits for.
    loaded.unload();
    let tags = machine.pool().live_by_tag;
    assert!(
        tags.iter().all(|(_, blocks)| *blocks == 0),
        "blocks left after terminate: {tags:?}"
    );
    machine.finish();
}
