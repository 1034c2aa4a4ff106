//! `ebpf_epoch.h` misuse the C layer must catch: any call before `ebpf_epoch_initiate`, and a
//! processor index at or above the maximum; each a bug check with the documented codes and a log
//! line naming the function.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use kepoch_c::ebpf::{
    ebpf_epoch_allocate, ebpf_epoch_initiate, ebpf_epoch_is_free_list_empty,
    kepoch_ebpf_epoch_set_driver_object, EbpfResult,
};
use kepoch_c::fail::{Function, Misuse};
use kepoch_c_sample_test::{expect_fail_fast, remembered_driver, remembering_driver_entry};
use kepoch_ntemu::{Machine, MachineConfig};

#[test]
fn ebpf_calls_before_initiate_and_bad_processors_fail_fast() {
    let machine = Machine::start(
        MachineConfig::default()
            .service("ebpf_misuse")
            .expect_error("bug check 0xE2 (0x4350454B"),
    );
    let _loaded = machine.load(remembering_driver_entry).expect("DriverEntry");
    expect_fail_fast(
        &machine,
        "an allocation before ebpf_epoch_initiate",
        Function::Allocate,
        Misuse::NotInitiated,
        "kepoch: ebpf_epoch_allocate: ebpf_epoch_initiate has not succeeded",
        || {
            ebpf_epoch_allocate(8);
        },
    );
    let driver = remembered_driver() as usize;
    let initiated = machine.call("ebpf_epoch_initiate", move || {
        // SAFETY: the loaded driver's object, valid while it is loaded.
        unsafe { kepoch_ebpf_epoch_set_driver_object(driver as *mut _) };
        ebpf_epoch_initiate()
    });
    assert_eq!(initiated, EbpfResult::Success);
    expect_fail_fast(
        &machine,
        "a processor index above the maximum",
        Function::IsFreeListEmpty,
        Misuse::BadProcessor,
        "kepoch: ebpf_epoch_is_free_list_empty: no processor has this index (cpu_id 1000000)",
        || {
            ebpf_epoch_is_free_list_empty(1_000_000);
        },
    );
    // The machine is left as it is (the module stays initiated on a stopped "kernel").
}
