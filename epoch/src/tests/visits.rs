//! Bounded work per visit: a visit (one DPC) frees at most `max_frees_per_visit` items, asks for
//! another cycle when released items are left, and records its duration and frees; unload still
//! frees everything.

use super::*;
use crate::stats::LatencyHistogram;

/// A domain on two processors with `max_frees_per_visit = limit`, and `count` objects retired on
/// processor 0.
fn retired_burst(
    limit: u32,
    count: usize,
) -> (TestPlatform, DomainBox<TestPlatform>, Arc<AtomicUsize>) {
    let platform = TestPlatform::new(2, 2);
    let config = Config {
        max_frees_per_visit: limit,
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

#[test]
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
fn unload_frees_everything_whatever_the_bound() {
    let (platform, domain, drops) = retired_burst(16, 100);
    platform.tick();
    drop(domain);
    assert_eq!(drops.load(Ordering::SeqCst), 100);
    assert_eq!(platform.live_allocations(), 0);
}
