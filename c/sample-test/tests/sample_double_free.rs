//! The C sample freeing a block twice: the emulated kernel records the bug check, and the log names
//! `ebpf_epoch_free` and the double free.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use kepoch_c::fail::{Function, Misuse};
use kepoch_c_sample_test::{driver_entry, expect_fail_fast, misuse};
use kepoch_ntemu::{Machine, MachineConfig};

#[test]
fn a_double_free_in_the_c_sample_bug_checks_naming_ebpf_epoch_free() {
    let line = "kepoch: ebpf_epoch_free: the block was freed already (double free)";
    let machine = Machine::start(
        MachineConfig::default()
            .service("kepoch_c_sample")
            .expect_error(line),
    );
    let _loaded = machine.load(driver_entry).expect("DriverEntry");
    expect_fail_fast(
        &machine,
        "the sample's double free",
        Function::Free,
        Misuse::DoubleFree,
        line,
        || misuse(1),
    );
    // The machine is left as it is: its worker threads still run on the stopped "kernel".
}
