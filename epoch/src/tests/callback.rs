//! The `callback` strategy on the test platform: registration replay, hot-add, AddFailure rollback,
//! registration failing halfway, the missing API and allocation failure at AddStart.

use super::*;

fn callback_domain(platform: &TestPlatform) -> DomainBox<TestPlatform> {
    Domain::create(platform.clone(), test_config(Strategy::Callback)).expect("callback loads")
}

#[test]
fn callback_prewarms_the_active_subset_and_pays_nothing_at_dispatch() {
    let platform = TestPlatform::new(2, 64);
    let domain = callback_domain(&platform);
    assert_eq!(domain.callback_state(), crate::CallbackState::Registered);
    let stats = domain.stats();
    assert_eq!(
        (
            stats.cpus_prepared,
            stats.prepare_passive,
            stats.hot_add_start,
            stats.hot_add_complete
        ),
        (2, 2, 2, 2)
    );
    for cpu in 0..2 {
        TestPlatform::on_cpu(cpu, || drop(domain.enter()));
    }
    assert_eq!(domain.stats().prepare_at_dispatch, 0);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn hot_added_cpu_is_prepared_at_add_start_and_ready_only_at_add_complete() {
    let platform = TestPlatform::new(2, 8);
    let domain = callback_domain(&platform);
    let drops = Arc::new(AtomicUsize::new(0));
    // A cycle and a reader are in flight while the processor arrives.
    let reader = TestPlatform::on_cpu(0, || domain.enter());
    TestPlatform::on_cpu(1, || retire_new(&domain, &drops));
    platform.tick();
    let added = platform.hot_add(false);
    // The reader migrates onto the new processor and exits there.
    let guard = TestPlatform::on_cpu(added, || domain.enter());
    TestPlatform::on_cpu(added, || drop(reader));
    let stats = domain.stats();
    assert_eq!(
        stats.prepare_at_dispatch, 0,
        "the hot-added processor was pre-warmed"
    );
    assert_eq!(stats.remote_exits, 1);
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    TestPlatform::on_cpu(added, || drop(guard));
    domain.synchronize();
    assert_eq!(
        platform.0.lock().unwrap().misrouted,
        0,
        "a message went to a processor that was not running"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn add_failure_rolls_back_completely_and_a_retry_works() {
    let platform = TestPlatform::new(2, 8);
    let domain = callback_domain(&platform);
    let before = domain.stats();
    platform.hot_add(true);
    let after_failure = domain.stats();
    assert_eq!(after_failure.cpus_prepared, before.cpus_prepared);
    assert_eq!(
        after_failure.per_cpu_bytes, before.per_cpu_bytes,
        "{after_failure:?}"
    );
    assert_eq!(after_failure.hot_add_failure, 1);
    let retried = platform.hot_add(false);
    assert_eq!(domain.stats().cpus_prepared, before.cpus_prepared + 1);
    TestPlatform::on_cpu(retried, || drop(domain.enter()));
    assert_eq!(domain.stats().prepare_at_dispatch, 0);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn replayed_add_start_is_idempotent() {
    let platform = TestPlatform::new(3, 3);
    platform.0.lock().unwrap().replay_start_twice = true;
    let domain = callback_domain(&platform);
    let stats = domain.stats();
    assert_eq!(stats.hot_add_start, 6);
    assert_eq!(
        stats.cpus_prepared, 3,
        "a second AddStart must not prepare a second slot"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn registration_failing_halfway_rolls_back_and_runs_as_lazy() {
    let platform = TestPlatform::new(4, 4);
    platform.0.lock().unwrap().veto_start = Some(2);
    let domain = callback_domain(&platform);
    assert_eq!(
        domain.callback_state(),
        crate::CallbackState::RegistrationFailed
    );
    let stats = domain.stats();
    assert_eq!(
        (
            stats.hot_add_start,
            stats.hot_add_failure,
            stats.cpus_prepared
        ),
        (2, 2, 0)
    );
    TestPlatform::on_cpu(3, || drop(domain.enter()));
    assert_eq!(
        domain.stats().prepare_at_dispatch,
        1,
        "the lazy path takes over"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn missing_callback_api_runs_as_lazy_and_says_so() {
    let platform = TestPlatform::new(2, 2);
    platform.0.lock().unwrap().callback_api = false;
    let domain = callback_domain(&platform);
    assert_eq!(domain.callback_state(), crate::CallbackState::ApiMissing);
    let logs = platform.0.lock().unwrap().logs.clone();
    assert!(
        logs.iter()
            .any(|l| l.contains("missing") && l.contains("lazy")),
        "{logs:?}"
    );
}

#[test]
fn allocation_failure_at_add_start_never_vetoes_and_leaves_the_cpu_to_the_lazy_path() {
    let platform = TestPlatform::new(2, 8);
    let domain = callback_domain(&platform);
    platform.0.lock().unwrap().fail_allocations = 1;
    let added = platform.hot_add(false);
    let stats = domain.stats();
    assert_eq!(
        (
            stats.prepare_failures,
            stats.hot_add_complete,
            stats.hot_add_vetoed
        ),
        (1, 3, 0)
    );
    // The lazy path prepares it on first use; if that fails too, the overflow slot serves it.
    platform.0.lock().unwrap().fail_allocations = 1;
    let guard = TestPlatform::on_cpu(added, || domain.enter());
    assert_eq!(domain.stats().fallback_uses, 1);
    drop(guard);
    for _ in 0..3 {
        platform.tick();
    }
    TestPlatform::on_cpu(added, || drop(domain.enter()));
    assert_eq!(domain.stats().prepare_at_dispatch, 1);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}
