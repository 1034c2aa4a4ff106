//! The workload of `examples/threads.rs`, with fixed counts instead of a duration: readers and a
//! writer on threads that never said which processor they are.

mod common;

use common::{eventually, join, Record};
use kepoch::{Atomic, Config, Domain, Owned};
use kepoch_user::UserPlatform;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

const READERS: usize = 4;
const READS: u64 = 100_000;
const SWAPS: u64 = 20_000;
const SYNCHRONIZE_EVERY: u64 = 500;

/// Every record the writer retires is freed once it synchronizes, no reader sees a freed record,
/// no reader needs the core's shared overflow slot (each thread is a processor of its own), and
/// unload leaves no block allocated.
#[test]
fn readers_and_a_writer_on_unpinned_threads_free_everything_retired() {
    let platform = UserPlatform::new();
    let drops = Arc::new(AtomicU64::new(0));
    let domain = Domain::create(platform.clone(), Config::default()).expect("load");
    let current = Atomic::new(Owned::new(&domain, Record::new(0, &drops)).expect("memory"));
    let broken = AtomicU64::new(0);

    let mut retired = thread::scope(|s| {
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..READS {
                        let guard = domain.enter();
                        if current.load(&guard).is_some_and(|record| !record.intact()) {
                            broken.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        let writer = s.spawn(|| {
            let mut retired = 0;
            for serial in 1..=SWAPS {
                let fresh = Owned::new(&domain, Record::new(serial, &drops)).expect("memory");
                if let Some(old) = current.swap(fresh) {
                    old.retire();
                    retired += 1;
                }
                if serial % SYNCHRONIZE_EVERY == 0 {
                    domain.synchronize();
                    assert_eq!(
                        drops.load(Ordering::SeqCst),
                        retired,
                        "synchronize returned before everything retired was freed"
                    );
                }
            }
            retired
        });
        for reader in readers {
            join(reader).expect("a reader panicked");
        }
        join(writer).expect("the writer panicked")
    });

    let last = current.take().expect("the last record");
    last.retire();
    retired += 1;
    domain.synchronize();
    assert_eq!(
        drops.load(Ordering::SeqCst),
        retired,
        "retired and freed differ"
    );
    assert_eq!(
        broken.load(Ordering::SeqCst),
        0,
        "readers saw freed records"
    );
    let stats = domain.stats();
    assert_eq!(stats.fallback_uses, 0, "a thread had no processor slot");
    assert_eq!(stats.pending, 0);
    drop(current);
    drop(domain);
    assert_eq!(platform.allocated_blocks(), 0, "blocks leaked at unload");
}

/// Nobody flushes or synchronizes: only the timer's cycles can free a retired record.
#[test]
fn cycles_run_by_themselves() {
    let platform = UserPlatform::new();
    let drops = Arc::new(AtomicU64::new(0));
    let domain = Domain::create(platform, Config::default()).expect("load");
    let slot = Atomic::new(Owned::new(&domain, Record::new(1, &drops)).expect("memory"));
    slot.take().expect("set").retire();
    eventually("the timer's cycles free the retired record", || {
        drops.load(Ordering::SeqCst) == 1
    });
    assert!(domain.stats().cycles >= 2, "freed without two cycles");
}
