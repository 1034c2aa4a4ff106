//! The C layer's safety claim — a reader between `ebpf_epoch_enter` and `ebpf_epoch_exit` never sees
//! its route freed — caught when broken: with the mutation `c-enter-protects-nothing` (an enter that
//! exits at once), the C sample's readers, which hold their route across a sleep, see freed
//! (poisoned) routes. Run with `cargo test -p kepoch-c-sample-test --features mutations`.
#![cfg(all(
    feature = "mutations",
    not(target_os = "windows"),
    target_pointer_width = "64"
))]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kepoch_c::state::ENTER_PROTECTS_NOTHING;
use kepoch_c_sample_test::{counters, driver_entry};
use kepoch_ntemu::{Machine, MachineConfig};

#[test]
fn mutation_c_enter_protects_nothing_is_caught_by_the_samples_readers() {
    ENTER_PROTECTS_NOTHING.store(true, Ordering::Relaxed);
    let machine = Machine::start(MachineConfig::default().service("kepoch_c_sample"));
    let _loaded = machine.load(driver_entry).expect("DriverEntry");
    // Progress-bound, not time-bound: the readers get up to 200,000 reads to see a freed route
    // (about 60 per 7,000 reads when this was written); the deadline only detects a hang.
    let deadline = Instant::now() + Duration::from_secs(300);
    let seen = loop {
        let now = counters();
        if now.bad_reads > 0 || now.reads >= 200_000 {
            break now;
        }
        assert!(Instant::now() < deadline, "no progress in 300 s: {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        seen.bad_reads > 0,
        "unprotected readers never saw a freed route in {} reads: the sample cannot catch the mutation",
        seen.reads
    );
    // The machine is left as it is: its readers use freed memory by design here.
}
