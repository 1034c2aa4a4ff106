//! The C sample's bugs: a block freed twice (inside an epoch, so it cannot be released between the
//! frees), then an epoch exited that was never entered. Each stops the emulated kernel with the C
//! API's bug check, and the log names the function (`ebpf_epoch_free`, `ebpf_epoch_exit`) and the
//! misuse. The first leaves its thread parked inside an epoch, which the second does not need.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use kepoch_c::fail::{Function, Misuse};
use kepoch_c_sample_test::{driver_entry, expect_fail_fast, misuse};
use kepoch_ntemu::{Machine, MachineConfig};

#[test]
fn the_c_samples_double_free_and_exit_without_enter_bug_check_naming_the_function() {
    let double_free = "kepoch: ebpf_epoch_free: the block was freed already (double free)";
    let not_entered = "kepoch: ebpf_epoch_exit: the epoch state was not entered";
    let machine = Machine::start(
        MachineConfig::default()
            .service("kepoch_c_sample")
            .expect_error(double_free)
            .expect_error(not_entered),
    );
    let _loaded = machine.load(driver_entry).expect("DriverEntry");
    expect_fail_fast(
        &machine,
        "the sample's double free",
        Function::Free,
        Misuse::DoubleFree,
        double_free,
        || misuse(1),
    );
    expect_fail_fast(
        &machine,
        "the sample's exit without an enter",
        Function::Exit,
        Misuse::StateNotEntered,
        not_entered,
        || misuse(2),
    );
    // The machine is left as it is: its worker threads still run on the stopped "kernel".
}
