//! Helpers shared by the emulated-kernel tests.

use std::time::{Duration, Instant};

use kepoch::Stats;
use kepoch_driver::driver::driver_entry;
use kepoch_driver::ioctl::{self, LoadRequest};
use kepoch_ntemu::{Driver, Machine, MachineConfig};

/// The driver's statistics, read the way `kepochctl stats` does.
pub trait DriverStats {
    /// Reads the statistics with IOCTL_GET_STATS (panics if it fails or does not decode).
    fn stats(&self) -> Stats;
}

impl DriverStats for Driver<'_> {
    fn stats(&self) -> Stats {
        let result = self.ioctl(ioctl::IOCTL_GET_STATS, &[], ioctl::STATS_SIZE as u32);
        assert_eq!(result.status, 0, "IOCTL_GET_STATS failed");
        ioctl::decode_stats(&result.output).expect("IOCTL_GET_STATS returned a decodable Stats")
    }
}

/// Loads the driver and opens its control device; panics if DriverEntry fails.
pub fn load(machine: &Machine) -> Driver<'_> {
    let driver = machine
        .load(driver_entry)
        .unwrap_or_else(|status| panic!("DriverEntry failed: {status:#x}"));
    assert_eq!(driver.open(), 0, "IRP_MJ_CREATE");
    driver
}

/// Starts the load generator.
pub fn start_load(driver: &Driver<'_>, rate: u32, seconds: u32, threads: u32) {
    let request = LoadRequest {
        rate,
        seconds,
        threads,
    };
    let result = driver.ioctl(ioctl::IOCTL_LOAD_START, &request.encode(), 0);
    assert_eq!(result.status, 0, "IOCTL_LOAD_START {request:?}");
}

/// Stops the load generator.
pub fn stop_load(driver: &Driver<'_>) {
    assert_eq!(
        driver.ioctl(ioctl::IOCTL_LOAD_STOP, &[], 0).status,
        0,
        "IOCTL_LOAD_STOP"
    );
}

/// IOCTL_SYNC: everything retired so far is freed when it returns.
pub fn sync(driver: &Driver<'_>) {
    assert_eq!(
        driver.ioctl(ioctl::IOCTL_SYNC, &[], 0).status,
        0,
        "IOCTL_SYNC"
    );
}

/// Waits until `condition` holds on fresh statistics (at most 20 s).
pub fn wait_for(driver: &Driver<'_>, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
    let start = Instant::now();
    loop {
        let stats = driver.stats();
        if condition(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {stats:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The counters of a quiescent driver (no reader inside, everything retired accounted for).
pub fn assert_consistent(stats: &Stats) {
    assert_eq!(stats.enters, stats.exits, "enters == exits: {stats:#?}");
    assert_eq!(
        stats.freed + stats.pending,
        stats.retired,
        "freed + pending == retired: {stats:#?}"
    );
    assert_eq!(stats.double_retires, 0, "no double retirement");
    assert_eq!(stats.leaked_readers, 0, "no reader left inside");
}

/// Stops the load, synchronises, checks the counters, closes and unloads (the machine checks that
/// nothing of the driver is left running or queued; `Machine::finish` then checks leaks and poison).
pub fn quiesce_and_unload(driver: Driver<'_>) -> Stats {
    stop_load(&driver);
    sync(&driver);
    let stats = driver.stats();
    assert_consistent(&stats);
    assert_eq!(driver.close(), 0, "IRP_MJ_CLOSE");
    driver.unload();
    stats
}

/// A machine with the default topology (two groups of four, two active in each) and `strategy`.
pub fn machine_with_strategy(strategy: u32) -> MachineConfig {
    MachineConfig::default().parameter(
        "ActivationStrategy",
        kepoch_ntemu::RegistryData::Dword(strategy),
    )
}
