//! Bounded work per visit: a visit (one DPC) frees at most `max_frees_per_visit` items and stops
//! once `visit_budget_us` of work is spent, asks for another cycle when released items are left,
//! and records its duration and frees; unload still frees everything.

use super::*;
use crate::stats::LatencyHistogram;

/// A domain on two processors with `max_frees_per_visit = limit`, no time budget, and `count`
/// objects retired on processor 0.
fn retired_burst(
    limit: u32,
    count: usize,
) -> (TestPlatform, DomainBox<TestPlatform>, Arc<AtomicUsize>) {
    retired_burst_with(limit, 0, count)
}

/// [`retired_burst`] with a time budget of `budget_us` per visit.
fn retired_burst_with(
    limit: u32,
    budget_us: u32,
    count: usize,
) -> (TestPlatform, DomainBox<TestPlatform>, Arc<AtomicUsize>) {
    let platform = TestPlatform::new(2, 2);
    let config = Config {
        max_frees_per_visit: limit,
        visit_budget_us: budget_us,
        ..test_config(Strategy::Lazy)
    };
    let domain = Domain::create(platform.clone(), config).expect("load");
    let drops = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(0, || {
        for _ in 0..count {
            retire_new(&domain, &drops);
        }
    });
    (platform, domain, drops)
}

/// The largest count recorded in a histogram used for counts.
fn largest(histogram: &LatencyHistogram) -> u64 {
    histogram.max_ns
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds to thousands of retirements: minutes under Miri; the same paths run with few items in the other unit tests"
)]
fn a_visit_frees_at_most_its_bound_and_the_rest_follows_in_chained_cycles() {
    let (platform, domain, drops) = retired_burst(16, 100);
    for _ in 0..20 {
        platform.tick();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        100,
        "everything is freed in the end"
    );
    let stats = domain.stats();
    assert_eq!(
        largest(&stats.frees_per_visit),
        16,
        "no visit freed more than 16"
    );
    assert!(
        stats.visits_cut_short >= 100 / 16,
        "visits stopped at the bound and asked for more: {}",
        stats.visits_cut_short
    );
    assert_eq!(stats.frees_per_visit.count, stats.visit_ns.count);
    assert!(stats.visit_ns.count > 0 && stats.visit_ns.max_ns > 0);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

/// The test platform's clock advances 1 µs per reading: a visit reads it at its start and after
/// every 32 frees, so with a 3 µs budget it stops after 96 frees, below its count bound of 1000.
#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds to thousands of retirements: minutes under Miri; the same paths run with few items in the other unit tests"
)]
fn a_visit_stops_freeing_when_its_time_budget_is_spent() {
    let (platform, domain, drops) = retired_burst_with(1000, 3, 200);
    for _ in 0..20 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 200, "everything is freed");
    let stats = domain.stats();
    assert_eq!(
        largest(&stats.frees_per_visit),
        96,
        "the budget, not the count, ended the visits"
    );
    assert!(
        stats.visits_cut_short >= 200 / 96,
        "{}",
        stats.visits_cut_short
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds to thousands of retirements: minutes under Miri; the same paths run with few items in the other unit tests"
)]
fn without_a_bound_one_visit_frees_the_whole_burst() {
    let (platform, domain, drops) = retired_burst(0, 100);
    for _ in 0..5 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 100);
    let stats = domain.stats();
    assert_eq!(largest(&stats.frees_per_visit), 100);
    assert_eq!(stats.visits_cut_short, 0);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds to thousands of retirements: minutes under Miri; the same paths run with few items in the other unit tests"
)]
fn unload_frees_everything_whatever_the_bound() {
    let (platform, domain, drops) = retired_burst(16, 100);
    platform.tick();
    drop(domain);
    assert_eq!(drops.load(Ordering::SeqCst), 100);
    assert_eq!(platform.live_allocations(), 0);
}

/// Retires `count` objects on processor 0 of a two-processor domain with the default bound.
fn backlog(count: usize) -> (TestPlatform, DomainBox<TestPlatform>, Arc<AtomicUsize>) {
    retired_burst(crate::config::DEFAULT_MAX_FREES_PER_VISIT, count)
}

/// Review 2026-12-06 (bounded visits): a grace period taken after 300 retirements must not read
/// as elapsed while a visit left some of them at its bound. DPCs are delivered one at a time, and
/// the token is polled after each.
#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds to thousands of retirements: minutes under Miri; the same paths run with few items in the other unit tests"
)]
fn a_grace_period_is_not_elapsed_while_a_visit_left_items_at_its_bound() {
    let (platform, domain, drops) = backlog(300);
    let token = domain.grace_period();
    for _ in 0..10 {
        TestPlatform::on_cpu(1, || domain.flush());
        while platform.deliver_one() {
            let dropped = drops.load(Ordering::SeqCst);
            assert!(
                !domain.grace_period_elapsed(token) || dropped == 300,
                "the grace period reads as elapsed with {dropped} of 300 items retired before it disposed of"
            );
        }
    }
    assert!(domain.grace_period_elapsed(token));
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

/// Review 2026-12-06 (bounded visits): a barrier whose work item waits behind a backlog larger
/// than one visit's bound must not return before the item ran. Each wait delivers DPCs one at a
/// time until a cycle finishes (its signal wakes the waiter while the chained cycle's DPCs are
/// still queued, as on a machine whose other processors run them).
#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds to thousands of retirements: minutes under Miri; the same paths run with few items in the other unit tests"
)]
fn a_barrier_waits_for_a_callback_behind_a_backlog_larger_than_the_bound() {
    let (platform, domain, drops) = backlog(3000);
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let item = domain
        .work_item(move || flag.store(true, Ordering::SeqCst))
        .expect("work item");
    TestPlatform::on_cpu(0, || domain.schedule_work(&item)).expect("schedule");
    let hook = {
        let platform = platform.clone();
        // The domain outlives the hook: it is removed before the domain is dropped.
        let domain_address = &*domain as *const Domain<TestPlatform> as usize;
        move || {
            // SAFETY: alive until the hook is removed, below.
            let domain = unsafe { &*(domain_address as *const Domain<TestPlatform>) };
            let cycles = domain.stats().cycles;
            while domain.stats().cycles == cycles && platform.deliver_one() {}
        }
    };
    platform.0.lock().unwrap().on_wait = Some(Arc::new(hook));
    TestPlatform::on_cpu(1, || domain.callback_barrier());
    platform.0.lock().unwrap().on_wait = None;
    assert!(
        ran.load(Ordering::SeqCst),
        "callback_barrier returned before the callback scheduled before it ran ({} of 3000 items disposed of)",
        drops.load(Ordering::SeqCst)
    );
    drop(item);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

/// A visit's work is the lower of its wall time and its run time: the host's descheduling (wall
/// time far ahead) and a jump of the run-time accounting (run time ahead) are both left out.
#[test]
fn a_visits_work_is_the_lower_of_wall_and_run_time() {
    use crate::platform::WorkInstant;
    let at = |wall_ns, run_ns| WorkInstant { wall_ns, run_ns };
    let start = at(1_000, 500);
    assert_eq!(start.work_ns_until(at(9_000, 2_500)), 2_000, "descheduled");
    assert_eq!(
        start.work_ns_until(at(3_000, 90_500)),
        2_000,
        "run time jumped"
    );
    assert_eq!(start.work_ns_until(at(500, 400)), 0, "never negative");
}

/// The end of a cycle frees the overflow slot's released items in the same DPC: in batches of 32
/// between two readings of the work clock, within the same budget as a visit. Here every item is
/// retired on a processor whose slot could not be prepared (the overflow slot); the test clock
/// advances 1 µs per reading, so with a 3 µs budget the first cycle's end stops after 3 batches,
/// and `freed_through` stays below the items it left (a grace period is not elapsed).
#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds to thousands of retirements: minutes under Miri; the same paths run with few items in the other unit tests"
)]
fn the_overflow_step_keeps_to_the_dpc_budget() {
    let platform = TestPlatform::new(2, 2);
    let config = Config {
        max_frees_per_visit: 1000,
        visit_budget_us: 3,
        ..test_config(Strategy::Lazy)
    };
    let domain = Domain::create(platform.clone(), config).expect("load");
    let drops = Arc::new(AtomicUsize::new(0));
    // The slot's preparation fails and is not retried before the next cycle.
    platform.0.lock().unwrap().fail_allocations = 1;
    TestPlatform::on_cpu(1, || {
        drop(domain.enter());
        for _ in 0..200 {
            retire_new(&domain, &drops);
        }
    });
    assert_eq!(
        domain.stats().fallback_uses,
        201,
        "all on the overflow slot"
    );
    let token = domain.grace_period();
    platform.tick();
    assert_eq!(drops.load(Ordering::SeqCst), 96, "three batches of 32");
    assert!(domain.stats().visits_cut_short >= 1);
    for _ in 0..10 {
        let dropped = drops.load(Ordering::SeqCst);
        assert!(
            !domain.grace_period_elapsed(token) || dropped == 200,
            "the grace period reads as elapsed with {dropped} of 200 items retired before it disposed of"
        );
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 200, "the rest follows");
    assert!(domain.grace_period_elapsed(token));
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}
