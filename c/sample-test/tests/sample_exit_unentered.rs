//! The C sample exiting an epoch it never entered: the emulated kernel records the bug check, and
//! the log names `ebpf_epoch_exit` and the state that was not entered.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use kepoch_c::fail::{Function, Misuse, BUGCHECK_MARKER};
use kepoch_c_sample_test::{driver_entry, misuse};
use kepoch_ntemu::{Machine, MachineConfig};

#[test]
fn an_exit_without_an_enter_in_the_c_sample_bug_checks_naming_ebpf_epoch_exit() {
    let machine = Machine::start(
        MachineConfig::default()
            .service("kepoch_c_sample")
            .expect_error("ebpf_epoch_exit: the epoch state was not entered"),
    );
    let _loaded = machine.load(driver_entry).expect("DriverEntry");
    let failures = machine
        .try_call("the sample's exit without an enter", || misuse(2))
        .expect_err("an exit without an enter must stop the machine");
    let bug_check = format!(
        "KeBugCheckEx(0xe2, {BUGCHECK_MARKER:#x}, {:#x}, {:#x},",
        Function::Exit as usize,
        Misuse::StateNotEntered as usize
    );
    assert!(
        failures.iter().any(|f| f.contains(&bug_check)),
        "{bug_check} in {failures:?}"
    );
    assert!(
        machine.log().iter().any(|(level, line)| *level == 0
            && line.starts_with("kepoch: ebpf_epoch_exit: the epoch state was not entered")),
        "{:?}",
        machine.log()
    );
}
