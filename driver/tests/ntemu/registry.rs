//! DriverEntry with every registry case, with and without the optional routines, on a machine with
//! max > active and two groups.

use kepoch_driver::driver::driver_entry;
use kepoch_ntemu::{GroupConfig, Machine, MachineConfig, RegistryData};

use crate::common::*;

/// `REG_SZ`.
const REG_SZ: u32 = 1;
/// `STATUS_ACCESS_DENIED`.
const ACCESS_DENIED: i32 = 0xC000_0022u32 as i32;

/// Loads with `config`, runs a short load, checks what the registry selected, unloads, finishes.
fn load_and_check(config: MachineConfig, strategy: u32, callback_state: u32, warnings: u64) {
    let machine = Machine::start(config);
    let driver = load(&machine);
    let stats = driver.stats();
    assert_eq!(
        (stats.strategy, stats.callback_state, stats.config_warnings),
        (strategy, callback_state, warnings),
        "strategy, callback state, warnings"
    );
    start_load(&driver, 5_000, 30, 0);
    wait_for(&driver, "cycles", |s| s.cycles >= 3 && s.enters > 0);
    quiesce_and_unload(driver);
    machine.finish();
}

fn with(name: &str, data: RegistryData) -> MachineConfig {
    MachineConfig::default().parameter(name, data)
}

#[test]
fn activation_strategy_values_select_lazy_callback_or_the_default() {
    use RegistryData::*;
    // (value, strategy, callback state, warnings): absent and bad values mean callback (1) + a warning;
    // lazy (0) registers too, to learn which processors completed their add.
    load_and_check(MachineConfig::default(), 1, 1, 0);
    load_and_check(with("ActivationStrategy", Dword(0)), 0, 1, 0);
    load_and_check(with("ActivationStrategy", Dword(1)), 1, 1, 0);
    load_and_check(with("ActivationStrategy", Dword(7)), 1, 1, 1);
    let sz = Raw {
        reg_type: REG_SZ,
        data: "1\0".encode_utf16().flat_map(u16::to_le_bytes).collect(),
    };
    load_and_check(with("ActivationStrategy", sz), 1, 1, 1);
    let short = Raw {
        reg_type: kepoch_nt::sys::REG_DWORD,
        data: vec![1, 0],
    };
    load_and_check(with("ActivationStrategy", short), 1, 1, 1);
    load_and_check(
        with("ActivationStrategy", QueryFails(ACCESS_DENIED)),
        1,
        1,
        1,
    );
}

#[test]
fn missing_keys_mean_defaults_and_an_unreadable_service_key_is_one_warning() {
    let no_parameters = MachineConfig {
        parameters_key: false,
        ..MachineConfig::default()
    };
    load_and_check(no_parameters, 1, 1, 0);
    let unreadable = MachineConfig {
        service_key_fails: Some(ACCESS_DENIED),
        ..MachineConfig::default()
    };
    load_and_check(unreadable, 1, 1, 1);
}

#[test]
fn idle_deactivation_and_cycle_period_values_are_used_or_warned_about() {
    use RegistryData::*;
    let config = MachineConfig::default()
        .parameter("IdleDeactivation", Dword(0))
        .parameter("CyclePeriodMicroseconds", Dword(2000));
    load_and_check(config, 1, 1, 0);
    let bad = MachineConfig::default()
        .parameter("IdleDeactivation", Dword(9))
        .parameter("CyclePeriodMicroseconds", Dword(1));
    load_and_check(bad, 1, 1, 2);
    let frees = MachineConfig::default()
        .parameter("MaxFreesPerVisit", Dword(0))
        .parameter("CyclePeriodMicroseconds", Dword(2000));
    load_and_check(frees, 1, 1, 0);
    let clamped = MachineConfig::default().parameter("MaxFreesPerVisit", Dword(3));
    load_and_check(clamped, 1, 1, 1);
}

#[test]
fn eager_refuses_to_load_where_max_exceeds_active_and_loads_where_they_are_equal() {
    let machine = Machine::start(
        with("ActivationStrategy", RegistryData::Dword(2)).expect_error("load failed"),
    );
    let status = machine
        .load(driver_entry)
        .err()
        .expect("eager must refuse max > active");
    assert!(status < 0);
    machine.finish();

    let full = MachineConfig {
        groups: vec![
            GroupConfig {
                max: 2,
                active: vec![0, 1],
            },
            GroupConfig {
                max: 2,
                active: vec![0, 1],
            },
        ],
        ..with("ActivationStrategy", RegistryData::Dword(2))
    };
    load_and_check(full, 2, 0, 0);
}

#[test]
fn callback_api_missing_or_failing_and_exallocatepool2_missing_still_load() {
    load_and_check(
        MachineConfig::default().missing("KeRegisterProcessorChangeCallback"),
        1,
        2,
        0,
    );
    load_and_check(
        MachineConfig::default().missing("KeDeregisterProcessorChangeCallback"),
        1,
        2,
        0,
    );
    let refused = MachineConfig {
        fail_callback_registration: true,
        ..MachineConfig::default()
    };
    load_and_check(refused, 1, 3, 0);
    load_and_check(MachineConfig::default().missing("ExAllocatePool2"), 1, 1, 0);
    load_and_check(
        MachineConfig::default().missing("KeGetProcessorNumberFromIndex"),
        1,
        1,
        0,
    );
}
