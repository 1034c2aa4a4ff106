//! Code running on a hot-added processor between AddStart and AddComplete (PROTOCOL.md, "Hot-add
//! window"): it must use the overflow slot, cycles must not message the processor before its
//! AddComplete, and an AddFailure after such code ran must roll back without leaving anything that
//! waits for the processor. Each runs on machines of one and of several processor groups
//! ([`GROUP_SIZES`]); with one processor per group the new processor opens a group of its own.

use super::*;
use core::mem::ManuallyDrop;

/// What runs on the new processor inside its add window: a reader that also retires, then cycles on
/// the running processors (the timer fires on processor 0).
fn epoch_code_in_the_window(
    platform: &TestPlatform,
    domain: &Domain<TestPlatform>,
    drops: &Arc<AtomicUsize>,
    cpu: usize,
) {
    TestPlatform::on_cpu(cpu, || {
        let guard = domain.enter();
        retire_new(domain, drops);
        drop(guard);
        drop(domain.enter());
    });
    for _ in 0..4 {
        TestPlatform::on_cpu(0, || platform.tick());
    }
}

/// The domain is unloaded only at the end of a passing test: a failed check leaks it rather than
/// unloading a domain that may wait forever for a processor (a panic inside the unwinding drop would
/// abort the whole test binary).
fn leak_on_panic(
    domain: Result<DomainBox<TestPlatform>, crate::LoadError>,
) -> ManuallyDrop<DomainBox<TestPlatform>> {
    ManuallyDrop::new(domain.expect("load"))
}

fn misrouted(platform: &TestPlatform) -> usize {
    platform.0.lock().unwrap().misrouted
}

/// `callback`, AddStart's preparation failed (the case the lazy path takes over): code in the window
/// must not get a routable slot; after AddComplete the lazy path prepares one on first use.
#[test]
fn callback_without_an_add_start_slot_keeps_the_window_on_the_overflow_slot() {
    for group_size in GROUP_SIZES {
        callback_without_an_add_start_slot_with(group_size);
    }
}

fn callback_without_an_add_start_slot_with(group_size: usize) {
    let platform = TestPlatform::grouped(2, 8, group_size);
    let domain = leak_on_panic(Domain::create(
        platform.clone(),
        test_config(Strategy::Callback),
    ));
    let drops = Arc::new(AtomicUsize::new(0));
    platform.0.lock().unwrap().fail_allocations = 1; // AddStart's slot
    let before = domain.stats();
    let added = platform.hot_add_with_window(false, |cpu| {
        epoch_code_in_the_window(&platform, &domain, &drops, cpu);
    });
    let window = domain.stats();
    assert_eq!(window.prepare_failures, before.prepare_failures + 1);
    assert_eq!(
        platform.0.lock().unwrap().vetoes,
        0,
        "a failed preparation vetoed the hot-add (kepoch never vetoes)"
    );
    assert_eq!(
        misrouted(&platform),
        0,
        "a cycle messaged the processor before its AddComplete"
    );
    assert_eq!(
        window.prepare_at_dispatch, before.prepare_at_dispatch,
        "a routable slot was prepared inside the add window"
    );
    assert!(window.fallback_uses > before.fallback_uses);
    TestPlatform::on_cpu(added, || drop(domain.enter()));
    assert_eq!(
        domain.stats().prepare_at_dispatch,
        before.prepare_at_dispatch + 1,
        "after AddComplete the lazy path prepares the processor"
    );
    domain.synchronize();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(misrouted(&platform), 0);
    drop(ManuallyDrop::into_inner(domain));
    assert_eq!(platform.live_allocations(), 0);
}

/// `lazy` learns about AddComplete from the notifications too, and keeps the window off the ring.
#[test]
fn lazy_keeps_a_processor_in_its_add_window_on_the_overflow_slot() {
    for group_size in GROUP_SIZES {
        lazy_keeps_the_add_window_on_the_overflow_slot_with(group_size);
    }
}

fn lazy_keeps_the_add_window_on_the_overflow_slot_with(group_size: usize) {
    let platform = TestPlatform::grouped(2, 8, group_size);
    let domain = leak_on_panic(Domain::create(
        platform.clone(),
        test_config(Strategy::Lazy),
    ));
    assert_eq!(domain.callback_state(), crate::CallbackState::Registered);
    let drops = Arc::new(AtomicUsize::new(0));
    let added = platform.hot_add_with_window(false, |cpu| {
        epoch_code_in_the_window(&platform, &domain, &drops, cpu);
    });
    assert_eq!(
        misrouted(&platform),
        0,
        "a cycle messaged the processor before its AddComplete"
    );
    assert_eq!(domain.stats().prepare_at_dispatch, 0);
    TestPlatform::on_cpu(added, || drop(domain.enter()));
    assert_eq!(domain.stats().prepare_at_dispatch, 1);
    domain.synchronize();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(misrouted(&platform), 0);
    drop(ManuallyDrop::into_inner(domain));
    assert_eq!(platform.live_allocations(), 0);
}

/// AddFailure after the processor ran epoch code: its pending slot is freed (nothing handed it out),
/// nothing waits for the processor that never came up, and a retry of the same processor works.
#[test]
fn add_failure_after_epoch_code_ran_in_the_window_rolls_back_and_a_retry_works() {
    for (strategy, group_size) in [Strategy::Callback, Strategy::Lazy]
        .into_iter()
        .flat_map(|strategy| GROUP_SIZES.map(|size| (strategy, size)))
    {
        let platform = TestPlatform::grouped(2, 8, group_size);
        let domain = leak_on_panic(Domain::create(platform.clone(), test_config(strategy)));
        let drops = Arc::new(AtomicUsize::new(0));
        let before = domain.stats();
        let failed = platform.hot_add_with_window(true, |cpu| {
            epoch_code_in_the_window(&platform, &domain, &drops, cpu);
        });
        let after = domain.stats();
        // A processor in a group of its own may leave that group's table (see `group_table_bytes`).
        let new_group =
            platform.processor(failed).number.group != platform.processor(failed - 1).number.group;
        let kept = after.per_cpu_bytes - before.per_cpu_bytes;
        assert!(
            after.cpus_prepared == before.cpus_prepared
                && (kept == 0 || new_group && kept == group_table_bytes()),
            "{strategy}, group size {group_size}: AddFailure left per-CPU state behind"
        );
        // Cycles go on without the processor that never came up: `synchronize` returns (the test
        // platform panics on a wait that never ends, and the domain is then leaked, not unloaded).
        domain.synchronize();
        assert_eq!(drops.load(Ordering::SeqCst), 1, "{strategy}");
        assert_eq!(misrouted(&platform), 0, "{strategy}");
        let retried = platform.hot_add(false);
        assert_eq!(retried, failed);
        TestPlatform::on_cpu(retried, || {
            let guard = domain.enter();
            retire_new(&domain, &drops);
            drop(guard);
        });
        domain.synchronize();
        assert_eq!(drops.load(Ordering::SeqCst), 2, "{strategy}");
        assert_eq!(misrouted(&platform), 0, "{strategy}");
        drop(ManuallyDrop::into_inner(domain));
        assert_eq!(platform.live_allocations(), 0, "{strategy}");
    }
}
