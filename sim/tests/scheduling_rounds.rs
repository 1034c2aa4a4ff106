//! The scheduling probe of a parallel run: its rounds stand still while the host does not run one of
//! the machine's threads, however long the other threads run, and go on once it runs again — the
//! clock the torture's liveness bounds count in, so that a thread the host did not schedule is not
//! taken for a stuck protocol.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use kepoch_sim::machine::{Machine, MachineConfig, StepContext, StepOutcome};

/// Generous bound of every wait of the test; a wait that hits it fails the test.
const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `condition` holds; panics naming `what` after [`DEADLINE`].
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn rounds_stand_still_while_a_cpu_thread_does_not_run() {
    let m = Machine::new(MachineConfig {
        max_reported: 2,
        active_at_boot: 2,
        ..MachineConfig::default()
    })
    .expect("valid machine");
    // A step that keeps CPU 1's thread off the machine until the test lets it go, as a host that
    // does not schedule that thread would.
    let stalled = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (stalling, released) = (stalled.clone(), release.clone());
    m.spawn(1, move |_: &mut StepContext<'_>| {
        stalling.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !released.load(Ordering::SeqCst) && start.elapsed() < DEADLINE {
            thread::sleep(Duration::from_millis(1));
        }
        stalling.store(false, Ordering::SeqCst);
        StepOutcome::Done
    });
    // CPU 0 keeps running steps meanwhile.
    m.spawn(0, |_: &mut StepContext<'_>| StepOutcome::Sleep(100));
    let mut probe = m.scheduling_probe();
    let (finished, run_ended) = mpsc::channel();
    let runner = m.clone();
    thread::spawn(move || {
        runner.run_parallel(Duration::from_secs(2));
        let _ = finished.send(());
    });

    wait_for("the stall", || stalled.load(Ordering::SeqCst));
    // At most the round in progress when the stall began completes: CPU 1's thread ticked before it
    // stalled. The other threads tick every few hundred microseconds all the while.
    let mut rounds_while_stalled = 0;
    for _ in 0..300 {
        rounds_while_stalled += u32::from(probe.every_thread_ran());
        thread::sleep(Duration::from_millis(1));
    }
    assert!(stalled.load(Ordering::SeqCst));
    assert!(
        rounds_while_stalled <= 1,
        "{rounds_while_stalled} rounds while CPU 1's thread did not run"
    );
    release.store(true, Ordering::SeqCst);
    let mut rounds_after = 0;
    wait_for("two rounds after the stall", || {
        rounds_after += u32::from(probe.every_thread_ran());
        rounds_after >= 2
    });
    run_ended
        .recv_timeout(DEADLINE)
        .expect("run_parallel returned");
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}
