//! The `callback` strategy on the test platform: registration replay, hot-add, AddFailure rollback,
//! registration failing halfway, the missing API and allocation failure at AddStart. The replay and
//! hot-add tests run on machines of one and of several processor groups ([`GROUP_SIZES`]).

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
            stats.replayed_add_start,
            stats.replayed_add_complete,
            stats.hot_add_start,
            stats.hot_add_complete
        ),
        (2, 2, 2, 2, 0, 0),
        "the registration's replay is not counted as hot-adds"
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
    for group_size in GROUP_SIZES {
        hot_added_cpu_is_prepared_at_add_start_and_ready_at_add_complete_with(group_size);
    }
}

fn hot_added_cpu_is_prepared_at_add_start_and_ready_at_add_complete_with(group_size: usize) {
    let platform = TestPlatform::grouped(2, 8, group_size);
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
        (stats.prepare_at_dispatch, stats.cpus_prepared),
        (0, 3),
        "group size {group_size}: the hot-added processor was pre-warmed"
    );
    assert_eq!(stats.remote_exits, 1);
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // The new processor's visits run there: its reader holds what is retired now.
    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1, "group size {group_size}");
    assert!(platform.delivered().contains(&added));
    TestPlatform::on_cpu(added, || drop(guard));
    domain.synchronize();
    assert_eq!(drops.load(Ordering::SeqCst), 2);
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
    for group_size in GROUP_SIZES {
        let platform = TestPlatform::grouped(2, 8, group_size);
        let domain = callback_domain(&platform);
        let before = domain.stats();
        let failed = platform.hot_add(true);
        // A processor in a group of its own leaves that group's table (see `group_table_bytes`).
        let new_group =
            platform.processor(failed).number.group != platform.processor(failed - 1).number.group;
        let kept = if new_group { group_table_bytes() } else { 0 };
        let after_failure = domain.stats();
        assert_eq!(after_failure.cpus_prepared, before.cpus_prepared);
        assert_eq!(
            after_failure.per_cpu_bytes,
            before.per_cpu_bytes + kept,
            "group size {group_size}: {} processor(s) prepared",
            after_failure.cpus_prepared
        );
        assert_eq!(after_failure.hot_add_failure, 1);
        let retried = platform.hot_add(false);
        assert_eq!(retried, failed);
        let after_retry = domain.stats();
        assert_eq!(after_retry.cpus_prepared, before.cpus_prepared + 1);
        assert_eq!(
            after_retry.per_cpu_bytes - after_failure.per_cpu_bytes,
            slot_bytes(),
            "group size {group_size}: the retry prepares one slot and no second group table"
        );
        TestPlatform::on_cpu(retried, || drop(domain.enter()));
        assert_eq!(domain.stats().prepare_at_dispatch, 0);
        drop(domain);
        assert_eq!(platform.live_allocations(), 0);
    }
}

#[test]
fn replayed_add_start_is_idempotent() {
    for group_size in GROUP_SIZES {
        let platform = TestPlatform::grouped(3, 3, group_size);
        platform.0.lock().unwrap().replay_start_twice = true;
        let domain = callback_domain(&platform);
        let stats = domain.stats();
        assert_eq!((stats.replayed_add_start, stats.hot_add_start), (6, 0));
        assert_eq!(
            stats.cpus_prepared, 3,
            "group size {group_size}: one slot per processor, whatever its group, and a second AddStart prepares none"
        );
        for cpu in 0..3 {
            TestPlatform::on_cpu(cpu, || drop(domain.enter()));
        }
        assert_eq!(domain.stats().prepare_at_dispatch, 0);
        drop(domain);
        assert_eq!(platform.live_allocations(), 0);
    }
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
            stats.replayed_add_start,
            stats.replayed_add_failure,
            stats.hot_add_start,
            stats.cpus_prepared
        ),
        (2, 2, 0, 0)
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
            stats.replayed_add_complete,
            stats.hot_add_complete,
            stats.hot_add_vetoed
        ),
        (1, 2, 1, 0)
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
