//! The C sample exiting an epoch it never entered: the emulated kernel records the bug check, and
//! the log names `ebpf_epoch_exit` and the state that was not entered.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use kepoch_c::fail::{Function, Misuse};
use kepoch_c_sample_test::{driver_entry, expect_fail_fast, misuse};
use kepoch_ntemu::{Machine, MachineConfig};

#[test]
fn an_exit_without_an_enter_in_the_c_sample_bug_checks_naming_ebpf_epoch_exit() {
    let line = "kepoch: ebpf_epoch_exit: the epoch state was not entered";
    let machine = Machine::start(
        MachineConfig::default()
            .service("kepoch_c_sample")
            .expect_error(line),
    );
    let _loaded = machine.load(driver_entry).expect("DriverEntry");
    expect_fail_fast(
        &machine,
        "the sample's exit without an enter",
        Function::Exit,
        Misuse::StateNotEntered,
        line,
        || misuse(2),
    );
}
