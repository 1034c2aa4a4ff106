//! The registry configuration read in DriverEntry.

use kepoch::config::Strategy;
use kepoch_nt::{read_config, wide};
use kepoch_ntemu::{Machine, MachineConfig, RegistryData};

use crate::common::*;

#[test]
fn parameters_become_the_config_with_a_warning_per_unusable_value() {
    let machine = Machine::start(
        MachineConfig::default()
            .parameter("ActivationStrategy", RegistryData::Dword(0))
            .parameter("IdleDeactivation", RegistryData::Dword(0))
            .parameter(
                "CyclePeriodMicroseconds",
                RegistryData::Raw {
                    reg_type: 1, // REG_SZ
                    data: b"5\0".to_vec(),
                },
            ),
    );
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let read = CONFIG.lock().unwrap().expect("read");
    assert_eq!(read.config.strategy, Strategy::Lazy);
    assert!(!read.config.idle_deactivation);
    assert_eq!(
        read.config.cycle_period_us, 1000,
        "the default for a REG_SZ"
    );
    assert_eq!(read.warnings, 1);
    assert!(
        machine
            .log()
            .iter()
            .any(|(_, line)| line.contains("CyclePeriodMicroseconds")),
        "{:?}",
        machine.log()
    );
    // A domain made with it runs the strategy it names.
    let domain = create(&machine, settings(tag(b"RegT"), driver_owner()));
    assert_eq!(domain.config().strategy, Strategy::Lazy);
    drop_domain(&machine, domain);
    driver.unload();
    machine.finish();
}

#[test]
fn a_missing_key_or_service_path_means_the_defaults_without_warnings() {
    let machine = Machine::start(MachineConfig {
        parameters_key: false,
        ..MachineConfig::default()
    });
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let read = CONFIG.lock().unwrap().expect("read");
    assert_eq!(read.config.strategy, Strategy::Callback);
    assert_eq!(read.warnings, 0);
    let (strategy, warnings) = machine.call("a null service key", || {
        // SAFETY: a null path is allowed (the defaults); PASSIVE.
        let read = unsafe { read_config(core::ptr::null(), wide!("Parameters")) };
        (read.config.strategy, read.warnings)
    });
    assert_eq!((strategy, warnings), (Strategy::Callback, 0));
    driver.unload();
    machine.finish();
}
