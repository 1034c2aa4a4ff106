//! The machine the platform emulates: every thread is a processor of its own, new ones arrive as
//! hot-added processors, a thread at DISPATCH excludes everything else from its processor.

mod common;

use common::{eventually, join, LIMIT};
use kepoch::platform::{CurrentProcessor, Platform, ProcessorNumber};
use kepoch::{Config, Domain, Strategy};
use kepoch_user::{PinError, UserPlatform};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Three threads that never said which processor they are, alive at the same time: each runs as
/// another processor, each of those arrives as AddStart and AddComplete and is prepared at
/// PASSIVE. Once they exit, three new threads run as the same processors: none is added.
#[test]
fn unpinned_threads_are_processors_of_their_own_and_leave_them_to_later_threads() {
    let platform = UserPlatform::builder()
        .max_processors(4)
        .build()
        .expect("platform");
    let domain =
        Domain::create(platform.clone(), Config::with_strategy(Strategy::Callback)).expect("load");
    let creator = platform.current_processor().index;
    let loaded = domain.stats();
    assert_eq!(
        (
            loaded.active,
            loaded.replayed_add_complete,
            loaded.hot_add_complete
        ),
        (1, 1, 0),
        "the creator's processor is replayed at registration, not hot-added"
    );

    let first = round(&domain, &platform);
    let others: Vec<u32> = (0..4).filter(|&i| i != creator).collect();
    assert_eq!(
        first, others,
        "threads alive together must be distinct processors"
    );
    let stats = domain.stats();
    assert_eq!(stats.active, 4);
    assert_eq!(
        (
            stats.replayed_add_start,
            stats.hot_add_start,
            stats.hot_add_complete
        ),
        (1, 3, 3)
    );
    assert_eq!((stats.prepare_passive, stats.prepare_at_dispatch), (4, 0));
    assert_eq!((stats.cpus_prepared, stats.fallback_uses), (4, 0));

    let second = round(&domain, &platform);
    assert_eq!(
        second, others,
        "the processors of exited threads are reused"
    );
    let stats = domain.stats();
    assert_eq!((stats.active, stats.hot_add_start), (4, 3), "nothing added");
}

/// Runs three threads that enter once and stay alive until all three have; returns the indexes
/// of the processors they ran as, sorted.
fn round(domain: &Domain<UserPlatform>, platform: &UserPlatform) -> Vec<u32> {
    let (ran_as, ran_as_rx) = mpsc::channel();
    let mut indexes: Vec<u32> = thread::scope(|s| {
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let ran_as = ran_as.clone();
                let (release, released) = mpsc::channel::<()>();
                let handle = s.spawn(move || {
                    drop(domain.enter());
                    ran_as.send(platform.current_processor().index).unwrap();
                    released.recv_timeout(LIMIT).expect("released by the test");
                });
                (handle, release)
            })
            .collect();
        let indexes = (0..3)
            .map(|_| ran_as_rx.recv_timeout(LIMIT).expect("a thread entered"))
            .collect();
        for (handle, release) in threads {
            release.send(()).unwrap();
            join(handle).expect("thread");
        }
        indexes
    });
    indexes.sort_unstable();
    indexes
}

/// A thread pinned to index 70 runs as processor 1:6 (group 1); the index is refused to a second
/// thread while the first lives, and free once it exited; indexes beyond the maximum and pinning
/// at DISPATCH are refused.
#[test]
fn a_pinned_thread_runs_as_the_processor_it_chose() {
    let platform = UserPlatform::builder()
        .max_processors(128)
        .build()
        .expect("platform");
    let domain = Domain::create(platform.clone(), Config::default()).expect("load");
    let (domain, platform) = (&domain, &platform);
    thread::scope(|s| {
        let (pinned, pinned_rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let holder = s.spawn(move || {
            platform.pin_current_thread(70).expect("pin to 70");
            drop(domain.enter());
            pinned.send(platform.current_processor()).unwrap();
            released.recv_timeout(LIMIT).expect("released by the test");
        });
        let ran_as = pinned_rx.recv_timeout(LIMIT).expect("pinned");
        assert_eq!(
            ran_as,
            CurrentProcessor {
                number: ProcessorNumber::new(1, 6),
                index: 70
            }
        );
        assert!(matches!(
            platform.pin_current_thread(70),
            Err(PinError::Taken { index: 70, .. })
        ));
        release.send(()).unwrap();
        join(holder).expect("holder");
    });
    assert_eq!(
        platform.pin_current_thread(128),
        Err(PinError::OutOfRange {
            index: 128,
            max: 128
        })
    );
    platform.pin_current_thread(70).expect("free again");
    assert_eq!(platform.current_processor().index, 70);
    let previous = platform.raise_to_dispatch();
    assert_eq!(platform.pin_current_thread(3), Err(PinError::AtDispatch));
    platform.lower_irql(previous);
    assert!(domain.stats().fallback_uses == 0);
}

/// While a thread with a reader inside stays at DISPATCH, no cycle that visits its processor can
/// finish (at most the one already past it does); once it lowers, cycles go on.
#[test]
fn a_thread_at_dispatch_holds_off_the_cycles_that_visit_its_processor() {
    let platform = UserPlatform::new();
    let domain = Domain::create(platform.clone(), Config::default()).expect("load");
    let (domain, platform) = (&domain, &platform);
    let (during, before) = thread::scope(|s| {
        let (raised, raised_rx) = mpsc::channel();
        let (lower, lower_rx) = mpsc::channel::<()>();
        let holder = s.spawn(move || {
            // A reader inside: every cycle visits this processor.
            let guard = domain.enter();
            let previous = platform.raise_to_dispatch();
            raised.send(()).unwrap();
            let released = lower_rx.recv_timeout(LIMIT);
            platform.lower_irql(previous);
            drop(guard);
            released.expect("released by the test");
        });
        raised_rx.recv_timeout(LIMIT).expect("raised");
        let before = domain.stats().cycles;
        thread::sleep(Duration::from_millis(200)); // 200 timer periods
        let during = domain.stats().cycles;
        lower.send(()).unwrap();
        join(holder).expect("holder");
        (during, before)
    });
    assert!(
        during <= before + 1,
        "{} cycles finished while a processor they visit was at DISPATCH",
        during - before
    );
    // Cycles go on once the thread lowered: something retired now is freed by them (the timer
    // may have stopped for want of work meanwhile; the retirement restarts it).
    let freed = domain.stats().freed;
    let object = domain.alloc(7u64).expect("memory");
    // SAFETY: never published; retired once.
    unsafe { domain.retire(object) }.expect("retire");
    eventually("cycles go on once the thread lowered", || {
        domain.stats().freed > freed
    });
}
