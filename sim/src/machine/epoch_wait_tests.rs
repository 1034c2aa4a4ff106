//! The wait-inside-an-epoch check: a task that holds a guard and waits for a grace period halts the
//! machine with a violation naming it (deterministic and parallel mode) instead of hanging, while a task that waits as another task on its processor holds a guard is fine.

use std::sync::Arc;
use std::time::Duration;

use kepoch::{Config, Domain, DomainBox, Strategy};

use super::report::{Bugcheck, ViolationKind};
use super::*;

/// Which wait the guard holder calls.
#[derive(Clone, Copy, Debug)]
enum Wait {
    Synchronize,
    GracePeriod,
    Barrier,
}

fn machine_and_domain() -> (Machine, Arc<DomainBox<SimPlatform>>) {
    let m = Machine::new(MachineConfig {
        max_reported: 2,
        active_at_boot: 2,
        hot_add_slots: 0,
        ..MachineConfig::default()
    })
    .expect("valid config");
    let config = Config {
        cycle_period_us: 5,
        ..Config::with_strategy(Strategy::Lazy)
    };
    let domain = m
        .with_cpu(0, || Domain::create(m.platform(), config))
        .expect("load");
    (m, Arc::new(domain))
}

/// The scenario: a guard held, one item retired, then the wait. Step 1 enters and retires,
/// step 2 waits (still holding the guard).
fn spawn_waiter_inside_an_epoch(m: &Machine, domain: &Arc<DomainBox<SimPlatform>>, wait: Wait) {
    let domain = Arc::clone(domain);
    let mut token = None;
    m.spawn(1, move |_: &mut StepContext<'_>| {
        if token.is_none() {
            // SAFETY: the token is never exited: the machine halts in the next step, and the
            // leaked task body keeps the domain alive.
            token = Some(unsafe { domain.enter_raw() });
            let object = domain.alloc(5u64).expect("memory");
            // SAFETY: never published.
            unsafe { domain.retire(object) }.expect("retired once");
            return StepOutcome::Continue;
        }
        match wait {
            Wait::Synchronize => domain.synchronize(),
            Wait::GracePeriod => domain.wait_for_grace_period(domain.grace_period()),
            Wait::Barrier => domain.callback_barrier(),
        }
        StepOutcome::Done
    });
}

fn assert_names_the_waiter(bugcheck: &Bugcheck, m: &Machine) {
    assert_eq!(bugcheck.kind, ViolationKind::WaitInsideEpoch, "{bugcheck}");
    assert!(
        bugcheck
            .message
            .starts_with("task 0 on CPU 1 (0:1) at IRQL 0 (PASSIVE)")
            && bugcheck
                .message
                .contains("waits for a grace period inside an epoch: it holds 1 guard(s)"),
        "{bugcheck}"
    );
    assert!(
        m.violations()
            .iter()
            .any(|v| v.kind == ViolationKind::WaitInsideEpoch),
        "{:?}",
        m.violations()
    );
}

fn expect_bugcheck(f: impl FnOnce()) -> Bugcheck {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .expect_err("the machine should have halted");
    payload
        .downcast_ref::<Bugcheck>()
        .expect("a Bugcheck payload")
        .clone()
}

/// Runs `test` on a thread of its own and fails if it has not finished within two minutes: without
/// the check, the wait inside an epoch never returns (a hang is a failure, not a stuck test).
fn within_two_minutes(test: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        test();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => runner.join().expect("the test thread"),
        // The test panicked: show its message.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(runner.join().expect_err("it panicked"))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the wait inside an epoch hung (no violation within 120 s)")
        }
    }
}

#[test]
fn every_wait_inside_an_epoch_halts_with_a_violation_naming_the_waiter() {
    within_two_minutes(|| {
        for wait in [Wait::Synchronize, Wait::GracePeriod, Wait::Barrier] {
            let (m, domain) = machine_and_domain();
            spawn_waiter_inside_an_epoch(&m, &domain, wait);
            let bugcheck = expect_bugcheck(|| m.run_for(1_000_000));
            assert_names_the_waiter(&bugcheck, &m);
        }
    });
}

#[test]
fn synchronize_inside_an_epoch_halts_a_parallel_run() {
    within_two_minutes(|| {
        let (m, domain) = machine_and_domain();
        spawn_waiter_inside_an_epoch(&m, &domain, Wait::Synchronize);
        let bugcheck = expect_bugcheck(|| m.run_parallel(Duration::from_secs(60)));
        assert_names_the_waiter(&bugcheck, &m);
    });
}

/// Another task's guard on the same processor is not the waiter's: the wait ends once that task
/// exits, and nothing is reported.
#[test]
fn a_wait_while_another_task_on_the_processor_holds_a_guard_is_no_violation() {
    let (m, domain) = machine_and_domain();
    let holder_domain = Arc::clone(&domain);
    let mut token = None;
    m.spawn(1, move |_: &mut StepContext<'_>| match token.take() {
        None => {
            // SAFETY: exited in a later step of this task.
            token = Some(unsafe { holder_domain.enter_raw() });
            StepOutcome::Sleep(50)
        }
        Some(token) => {
            // SAFETY: from this domain's `enter_raw`, exited once.
            unsafe { holder_domain.exit_raw(token) };
            StepOutcome::Done
        }
    });
    let waiter_domain = Arc::clone(&domain);
    let mut waited = false;
    m.spawn(1, move |_: &mut StepContext<'_>| {
        if waited {
            return StepOutcome::Done;
        }
        let object = waiter_domain.alloc(5u64).expect("memory");
        // SAFETY: never published.
        unsafe { waiter_domain.retire(object) }.expect("retired once");
        waiter_domain.synchronize();
        waited = true;
        StepOutcome::Done
    });
    assert!(m.run_until_idle(1_000_000), "the tasks did not finish");
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    assert!(m.bugcheck().is_none());
    drop(domain);
}
