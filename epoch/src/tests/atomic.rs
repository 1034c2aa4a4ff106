//! The safe pointer layer (`crate::atomic`) on the test platform: what it frees when, and the
//! misuse it refuses.

use super::{domain, TestPlatform, Tracked};
use crate::config::Strategy;
use crate::list::List;
use crate::map::Map;
use crate::{AllocError, Atomic, CompareExchangeError, Domain, DomainBox, Owned};
use std::string::ToString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn tracked<'d>(
    domain: &'d Domain<TestPlatform>,
    drops: &Arc<AtomicUsize>,
) -> Owned<'d, Tracked, TestPlatform> {
    Owned::new(domain, Tracked(drops.clone())).expect("alloc")
}

fn dropped(drops: &AtomicUsize) -> usize {
    drops.load(Ordering::SeqCst)
}

/// A lazy domain on `cpus` processors and a drop counter.
fn setup(cpus: usize) -> (TestPlatform, DomainBox<TestPlatform>, Arc<AtomicUsize>) {
    let (platform, domain) = domain(cpus, Strategy::Lazy);
    (platform, domain, Arc::new(AtomicUsize::new(0)))
}

/// Unloads the domain and checks that nothing is left allocated.
fn unload_without_leak(platform: &TestPlatform, domain: DomainBox<TestPlatform>) {
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak");
}

#[test]
fn a_swapped_out_value_is_freed_only_after_the_readers_that_saw_it() {
    let (platform, domain, drops) = setup(2);
    let atomic = Atomic::new(tracked(&domain, &drops));
    let guard = TestPlatform::on_cpu(1, || domain.enter());
    let seen = atomic.load(&guard).expect("published");
    TestPlatform::on_cpu(0, || {
        let old = atomic
            .swap(tracked(&domain, &drops))
            .expect("was published");
        assert_eq!(
            old.as_ptr(),
            seen.as_ptr(),
            "swap hands back what readers saw"
        );
        old.retire();
    });
    for _ in 0..5 {
        platform.tick();
    }
    assert_eq!(dropped(&drops), 0, "freed under a reader that loaded it");
    assert!(Arc::ptr_eq(&seen.get().0, &drops), "still readable");
    TestPlatform::on_cpu(1, || drop(guard));
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(dropped(&drops), 1, "freed once the reader exited");
    drop(atomic);
    assert_eq!(
        dropped(&drops),
        2,
        "dropping the atomic frees its value at once"
    );
    unload_without_leak(&platform, domain);
}

#[test]
fn store_take_and_dropped_tokens_retire_and_unload_frees_them() {
    let (platform, domain, drops) = setup(1);
    let atomic = Atomic::null(&domain);
    assert!(
        atomic.take().is_none(),
        "nothing to take from an empty atomic"
    );
    atomic.store(tracked(&domain, &drops));
    atomic.store(tracked(&domain, &drops));
    assert_eq!(domain.stats().retired, 1, "store retires what it replaced");
    drop(atomic.take().expect("published"));
    assert_eq!(
        domain.stats().retired,
        2,
        "dropping an unlinked value retires it"
    );
    assert!(
        atomic.load(&domain.enter()).is_none(),
        "take empties the atomic"
    );
    assert_eq!(dropped(&drops), 0, "nothing freed before a cycle");
    drop(atomic);
    drop(domain);
    assert_eq!(dropped(&drops), 2, "unload disposes of what was retired");
    assert_eq!(platform.live_allocations(), 0, "leak");
}

#[test]
fn compare_exchange_publishes_only_over_the_value_seen() {
    let (platform, domain, drops) = setup(1);
    let atomic = Atomic::null(&domain);
    let guard = domain.enter();
    let first = match atomic.compare_exchange(None, tracked(&domain, &drops), &guard) {
        Ok(old) => {
            assert!(old.is_none(), "replaced nothing");
            atomic.load(&guard).expect("published")
        }
        Err(_) => panic!("the atomic was empty"),
    };
    let CompareExchangeError { current, new } = atomic
        .compare_exchange(None, tracked(&domain, &drops), &guard)
        .expect_err("the atomic is not empty any more");
    assert_eq!(current, Some(first), "the failure names the value found");
    // The box given back is still ours: publish it over the value found.
    let old = atomic
        .compare_exchange(current, new, &guard)
        .expect("current");
    assert_eq!(old.map(|o| o.as_ptr()), Some(first.as_ptr()));
    drop(guard);
    domain.synchronize();
    assert_eq!(dropped(&drops), 1, "only the replaced value was freed");
    drop(atomic);
    unload_without_leak(&platform, domain);
}

#[test]
fn an_unpublished_box_is_freed_at_once() {
    let (platform, domain, drops) = setup(1);
    let before = platform.live_allocations();
    drop(tracked(&domain, &drops));
    assert_eq!(dropped(&drops), 1);
    assert_eq!(platform.live_allocations(), before);
    assert_eq!(
        domain.stats().retired,
        0,
        "an unpublished box is not retired"
    );
}

#[test]
fn allocation_failure_gives_the_value_back() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    platform.0.lock().unwrap().fail_allocations = 1;
    assert_eq!(
        Owned::new(&domain, 7u32).err().map(AllocError::into_inner),
        Some(7)
    );
}

/// The error of a result that must have failed (`unwrap_err` would need the success's `Debug`).
fn failed<V, E>(result: Result<V, E>) -> E {
    match result {
        Ok(_) => panic!("the allocation was to fail"),
        Err(error) => error,
    }
}

/// Every allocating API hands the value back through `AllocError::into_inner` without dropping
/// it (nor leaking a block), for a value that is not `Debug`; the error prints without the value.
#[test]
fn every_allocation_failure_hands_back_the_value_undropped() {
    let (platform, domain, drops) = setup(1);
    let fail_next = || platform.0.lock().unwrap().fail_allocations = 1;
    TestPlatform::on_cpu(0, || {
        drop(domain.enter()); // the processor's slot is prepared: allocations from here are ours
        let live = platform.live_allocations();
        fail_next();
        let error = failed(Owned::new(&domain, Tracked(drops.clone())));
        assert_eq!(std::format!("{error:?}"), "AllocError { .. }");
        assert!(error.to_string().contains("allocation failed"), "{error}");
        let _: &dyn core::error::Error = &error;
        assert!(Arc::ptr_eq(&error.value().0, &drops));
        let value = error.into_inner();
        assert_eq!(dropped(&drops), 0, "handed back, not dropped");

        fail_next();
        let value = failed(domain.alloc(value)).into_inner();
        fail_next();
        let tag = crate::platform::PoolTag::from_bytes(*b"Fail");
        let value = failed(domain.alloc_tagged(value, tag)).into_inner();
        fail_next();
        let value = failed(crate::atomic::Node::new(&domain, value)).into_inner();
        fail_next();
        let list = List::new(&domain);
        let value = failed(list.push_front(value)).into_inner();
        assert_eq!(list.iter(&domain.enter()).count(), 0);
        fail_next();
        let map: Map<u32, Tracked, _, 4> = Map::new(&domain);
        let (key, value) = failed(map.insert(5, value)).into_inner();
        assert_eq!(key, 5);
        assert!(map.get(&5, &domain.enter()).is_none());
        assert_eq!(dropped(&drops), 0, "handed back, not dropped");
        assert_eq!(platform.live_allocations(), live, "no block kept");

        // The value handed back is whole: it can be allocated again once memory is there.
        let owned = Owned::new(&domain, value).expect("memory");
        drop(owned);
        assert_eq!(dropped(&drops), 1);
    });
}

/// A value that owns an atomic of its own domain: a node of a structure. Retiring the outer value
/// frees the inner one with it, when the outer one is disposed of.
struct Node {
    child: Atomic<'static, Tracked, TestPlatform>,
    _tracked: Tracked,
}

#[test]
fn a_retired_value_frees_the_atomic_it_owns_when_disposed_of() {
    let (platform, domain, drops) = setup(1);
    // SAFETY: the node (and so the atomic) is dropped at the latest by unload's drain, while the
    // domain still exists.
    let child = unsafe { Atomic::null_detached(&domain) };
    child.store(tracked(&domain, &drops));
    let node = Node {
        child,
        _tracked: Tracked(drops.clone()),
    };
    let root = Atomic::new(Owned::new(&domain, node).expect("alloc"));
    {
        let guard = domain.enter();
        let node = root.load(&guard).expect("published").get();
        let value = node.child.load(&guard).expect("published");
        assert!(
            Arc::ptr_eq(&value.0, &drops),
            "a loaded node's atomic loads too"
        );
    }
    drop(root.take());
    domain.synchronize();
    assert_eq!(dropped(&drops), 2, "the node and the value its atomic held");
    drop(root);
    unload_without_leak(&platform, domain);
}

#[test]
#[should_panic(expected = "a guard of another domain cannot protect")]
fn a_guard_of_another_domain_is_refused() {
    let (_p1, one) = domain(1, Strategy::Lazy);
    let (_p2, other) = domain(1, Strategy::Lazy);
    let atomic = Atomic::new(Owned::new(&one, 1u32).expect("alloc"));
    let guard = other.enter();
    let _ = atomic.load(&guard);
}

#[test]
#[should_panic(expected = "allocated by another domain cannot be published")]
fn a_box_of_another_domain_is_refused() {
    let (_p1, one) = domain(1, Strategy::Lazy);
    let (_p2, other) = domain(1, Strategy::Lazy);
    let atomic = Atomic::null(&one);
    atomic.store(Owned::new(&other, 1u32).expect("alloc"));
}
