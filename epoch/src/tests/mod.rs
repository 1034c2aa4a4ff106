//! Unit tests of the domain on a minimal single-threaded platform: the test decides which CPU runs,
//! when queued messages are delivered and when the timer fires. Small enough for Miri.

mod helpers;
mod platform;

use helpers::*;
use platform::*;

use crate::config::{Config, Strategy};
use crate::platform::*;
use crate::{Domain, DomainBox, RetireError};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

#[test]
fn a_retired_object_is_freed_after_cycles_and_not_under_a_reader() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let guard = TestPlatform::on_cpu(1, || domain.enter());
    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    for _ in 0..5 {
        platform.tick();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "freed while a reader that entered before was inside"
    );
    TestPlatform::on_cpu(1, || drop(guard));
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak at unload");
}

#[test]
fn blocks_are_aligned_for_their_value_and_cache_aligned_on_request() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let small = domain.alloc(7u16).unwrap();
    let wide = domain.alloc(7u128).unwrap();
    let line = domain.alloc(crate::CacheAligned(7u8)).unwrap();
    assert_eq!(small.as_ptr() as usize % core::mem::align_of::<u16>(), 0);
    assert_eq!(wide.as_ptr() as usize % core::mem::align_of::<u128>(), 0);
    assert_eq!(
        line.as_ptr() as usize % 64,
        0,
        "a CacheAligned value starts a cache line"
    );
    assert_eq!(
        core::mem::size_of::<crate::CacheAligned<u8>>(),
        64,
        "and owns its line"
    );
    // SAFETY: allocated just above, never published or retired.
    unsafe {
        domain.free_now(small);
        domain.free_now(wide);
        domain.free_now(line);
    }
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn double_retire_is_refused_and_counted() {
    let (_platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let object = domain.alloc(Tracked(drops.clone())).unwrap();
    // SAFETY: never published.
    unsafe {
        domain.retire(object).unwrap();
        assert_eq!(domain.retire(object), Err(RetireError::AlreadyRetired));
    }
    assert_eq!(domain.stats().double_retires, 1);
    drop(domain);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "unload frees what is retired, once"
    );
}

#[test]
fn migrated_reader_exits_on_another_cpu() {
    // With one processor per group, both processors are number 0: only the group tells them apart.
    for group_size in GROUP_SIZES {
        let (platform, domain) = grouped_domain(2, group_size, Strategy::Lazy);
        let drops = Arc::new(AtomicUsize::new(0));
        let guard = TestPlatform::on_cpu(0, || domain.enter());
        TestPlatform::on_cpu(1, || retire_new(&domain, &drops));
        platform.tick();
        platform.tick();
        assert_eq!(drops.load(Ordering::SeqCst), 0, "group size {group_size}");
        TestPlatform::on_cpu(1, || drop(guard));
        assert_eq!(domain.stats().remote_exits, 1, "group size {group_size}");
        for _ in 0..3 {
            platform.tick();
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1, "group size {group_size}");
    }
}

#[test]
fn synchronize_frees_everything_retired_before_it() {
    for group_size in GROUP_SIZES {
        let (platform, domain) = grouped_domain(3, group_size, Strategy::Lazy);
        let drops = Arc::new(AtomicUsize::new(0));
        for cpu in 0..3 {
            TestPlatform::on_cpu(cpu, || retire_new(&domain, &drops));
        }
        assert_eq!(
            domain.stats().cpus_prepared,
            3,
            "group size {group_size}: the lazy path prepares one slot per processor"
        );
        domain.synchronize();
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        let mut visited = platform.delivered();
        visited.sort_unstable();
        visited.dedup();
        assert_eq!(visited, [0, 1, 2], "group size {group_size}");
    }
}

#[test]
fn idle_cpus_leave_and_receive_no_more_messages() {
    let (platform, domain) = domain(4, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(2, || retire_new(&domain, &drops));
    for _ in 0..4 {
        platform.tick();
    }
    let first = platform.delivered();
    assert!(
        first.iter().all(|&cpu| cpu == 2),
        "only the CPU that ran epoch code is visited: {first:?}"
    );
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    for _ in 0..4 {
        platform.tick();
    }
    assert!(
        platform.delivered().is_empty(),
        "a CPU that left received messages"
    );
    assert_eq!(domain.stats().leaves, 1);
}

#[test]
fn eager_refuses_to_load_when_max_exceeds_active_and_lazy_loads() {
    let platform = TestPlatform::new(2, 8);
    let error = Domain::create(platform.clone(), test_config(Strategy::Eager))
        .err()
        .expect("eager must fail");
    assert_eq!(error.status, Status::INVALID_PARAMETER);
    assert!(
        error.to_string().contains("STATUS_INVALID_PARAMETER"),
        "{error}"
    );
    assert_eq!(
        platform.live_allocations(),
        0,
        "a failed load leaks nothing"
    );
    let domain = Domain::create(platform.clone(), test_config(Strategy::Lazy)).expect("lazy loads");
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn allocation_failure_at_dispatch_falls_back_to_the_overflow_slot() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    platform.0.lock().unwrap().fail_allocations = 1;
    let guard = TestPlatform::on_cpu(1, || domain.enter());
    let stats = domain.stats();
    assert_eq!(stats.prepare_failures, 1);
    assert_eq!(stats.fallback_uses, 1);
    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "overflow reader must hold reclamation back"
    );
    TestPlatform::on_cpu(1, || drop(guard));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn work_items_run_once_safe_and_can_be_cancelled() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    fn bump(_: usize) {
        RUNS.fetch_add(1, Ordering::SeqCst);
    }
    let (platform, domain) = domain(1, Strategy::Lazy);
    let item = domain.new_work_item(bump, 0).unwrap();
    let cancelled = domain.new_work_item(bump, 0).unwrap();
    let guard = domain.enter();
    domain.schedule_work(&item).unwrap();
    assert_eq!(
        domain.schedule_work(&item),
        Err(RetireError::AlreadyScheduled(
            crate::WorkState::WaitingForGracePeriod
        ))
    );
    domain.schedule_work(&cancelled).unwrap();
    assert!(domain.cancel_work(&cancelled));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        0,
        "work ran inside a reader's epoch"
    );
    drop(guard);
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    assert!(
        !domain.cancel_work(&item),
        "a work item that ran cannot be cancelled"
    );
    drop(item);
    drop(cancelled);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn stale_items_drain_without_further_activity() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(1, || retire_new(&domain, &drops));
    // Nothing else happens: only the periodic timer runs.
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(domain.stats().pending, 0);
}

#[test]
fn nested_epochs_hold_until_the_outermost_exits() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let outer = domain.enter();
    let inner = domain.enter();
    retire_new(&domain, &drops);
    drop(inner);
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "freed while the outer epoch was open"
    );
    drop(outer);
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn items_of_a_closed_epoch_are_freed_while_a_later_one_is_open() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let early = Arc::new(AtomicUsize::new(0));
    let late = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(0, || retire_new(&domain, &early));
    platform.tick();
    platform.tick();
    // A reader enters after the early item's epoch has passed; an item retired now must wait for it.
    let reader = TestPlatform::on_cpu(1, || domain.enter());
    TestPlatform::on_cpu(0, || retire_new(&domain, &late));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(
        early.load(Ordering::SeqCst),
        1,
        "an item of a closed epoch was held by a later reader"
    );
    assert_eq!(late.load(Ordering::SeqCst), 0);
    TestPlatform::on_cpu(1, || drop(reader));
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(late.load(Ordering::SeqCst), 1);
}

/// Epoch skew: CPU `lagging` has not been visited by the in-flight cycle (its local epoch lags) while
/// a reader on the visited CPU entered the newer epoch; what the lagging CPU retires now must outlive
/// that reader. Returns (the retirement stamp was the global epoch, the item was freed under the reader).
fn epoch_skew_scenario(mutations: crate::Mutations) -> (bool, bool) {
    let platform = TestPlatform::new(2, 2);
    let config = Config {
        mutations,
        ..test_config(Strategy::Lazy)
    };
    let domain = Domain::create(platform.clone(), config).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    // Both CPUs join the cycle.
    TestPlatform::on_cpu(0, || drop(domain.enter()));
    TestPlatform::on_cpu(1, || drop(domain.enter()));
    // Start a cycle and deliver only its first visit.
    let timer = platform.0.lock().unwrap().timer.unwrap();
    TestPlatform::on_cpu(0, || {
        IRQL.with(|i| i.set(2));
        // SAFETY: the domain is alive.
        unsafe { timer.0.invoke() };
        IRQL.with(|i| i.set(0));
    });
    let (visited, id) = platform
        .0
        .lock()
        .unwrap()
        .messages
        .pop_front()
        .expect("a visit is queued");
    let handler = platform.0.lock().unwrap().bound[&id].1;
    TestPlatform::on_cpu(visited, || {
        IRQL.with(|i| i.set(2));
        // SAFETY: the slot is alive.
        unsafe { handler.0.invoke() };
        IRQL.with(|i| i.set(0));
    });
    let lagging = 1 - visited;
    let reader = TestPlatform::on_cpu(visited, || domain.enter());
    let stamp = TestPlatform::on_cpu(lagging, || retire_new(&domain, &drops));
    let stamped_global = stamp == domain.global_epoch();
    for _ in 0..5 {
        platform.tick();
    }
    let freed_under_reader = drops.load(Ordering::SeqCst) != 0;
    TestPlatform::on_cpu(visited, || drop(reader));
    drop(domain);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    (stamped_global, freed_under_reader)
}

#[test]
fn a_lagging_cpu_stamps_retirement_with_the_global_epoch() {
    assert_eq!(epoch_skew_scenario(crate::Mutations::NONE), (true, false));
}

#[cfg(feature = "mutations")]
#[test]
fn the_epoch_skew_test_catches_local_epoch_stamping() {
    let mutated = crate::Mutations::NONE.with(crate::Mutation::LocalEpochStamp);
    assert_eq!(epoch_skew_scenario(mutated), (false, true));
}

#[test]
fn a_stalled_reader_blocks_reclamation_and_is_reported_once() {
    let platform = TestPlatform::new(2, 2);
    let config = Config {
        stall_threshold_cycles: 3,
        ..test_config(Strategy::Lazy)
    };
    let domain = Domain::create(platform.clone(), config).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let stalled = TestPlatform::on_cpu(1, || domain.enter());
    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    for _ in 0..20 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    assert_eq!(
        domain.stats().stalls_reported,
        1,
        "reported once, not per cycle"
    );
    let logs = platform.0.lock().unwrap().logs.clone();
    assert!(
        logs.iter()
            .any(|l| l.contains("processor 0:1") && l.contains("reclamation is blocked")),
        "{logs:?}"
    );
    TestPlatform::on_cpu(1, || drop(stalled));
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}
mod atomic;
mod barrier_rounds;
mod blocks;
mod callback;
mod callbacks;
mod hardware;
mod hot_add_window;
mod linked;
mod owner;
mod review;
mod second_review;
mod visits;
