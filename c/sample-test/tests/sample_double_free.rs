//! The C sample freeing a block twice: the emulated kernel records the bug check, and the log names
//! `ebpf_epoch_free` and the double free.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use kepoch_c::fail::{Function, Misuse, BUGCHECK_MARKER};
use kepoch_c_sample_test::{driver_entry, misuse};
use kepoch_ntemu::{Machine, MachineConfig};

#[test]
fn a_double_free_in_the_c_sample_bug_checks_naming_ebpf_epoch_free() {
    let machine = Machine::start(
        MachineConfig::default()
            .service("kepoch_c_sample")
            .expect_error("ebpf_epoch_free: the block was freed already (double free)"),
    );
    let _loaded = machine.load(driver_entry).expect("DriverEntry");
    let failures = machine
        .try_call("the sample's double free", || misuse(1))
        .expect_err("a double free must stop the machine");
    let bug_check = format!(
        "KeBugCheckEx(0xe2, {BUGCHECK_MARKER:#x}, {:#x}, {:#x},",
        Function::Free as usize,
        Misuse::DoubleFree as usize
    );
    assert!(
        failures.iter().any(|f| f.contains(&bug_check)),
        "{bug_check} in {failures:?}"
    );
    assert!(
        machine.log().iter().any(|(level, line)| *level == 0
            && line
                .starts_with("kepoch: ebpf_epoch_free: the block was freed already (double free)")),
        "{:?}",
        machine.log()
    );
    // The machine is left as it is: its worker threads still run on the stopped "kernel".
}
