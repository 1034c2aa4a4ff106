//! Linked nodes (`crate::atomic::chain`), the list and the map on the test platform: what a reader
//! positioned on a removed node still reaches, when removed nodes are freed, that nothing leaks.

use super::{domain, TestPlatform, Tracked};
use crate::atomic::{Chain, Node};
use crate::config::Strategy;
use crate::list::List;
use crate::map::Map;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::vec::Vec;

fn ticks(platform: &TestPlatform, count: usize) {
    for _ in 0..count {
        platform.tick();
    }
}

#[test]
fn a_reader_on_an_unlinked_node_reaches_its_successor_and_holds_it_back() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let chain = Chain::new(&domain);
    TestPlatform::on_cpu(0, || {
        let guard = domain.enter();
        let mut after = None;
        for _ in 0..3 {
            let node = Node::new(&domain, Tracked(drops.clone())).expect("alloc");
            after = Some(
                chain
                    .insert_after(None, after, node, &guard)
                    .expect("alone"),
            );
        }
    });
    let reader = TestPlatform::on_cpu(1, || domain.enter());
    let first = chain.first(&reader).expect("three nodes");
    let middle = first.next().expect("three nodes");
    TestPlatform::on_cpu(0, || {
        let guard = domain.enter();
        let first = chain.first(&guard).expect("three nodes");
        let middle = first.next().expect("three nodes");
        let token = chain
            .unlink(Some(first), middle, &guard)
            .expect("follows first");
        assert_eq!(
            token.as_ptr(),
            middle.as_ptr(),
            "the token is the node unlinked"
        );
        token.retire();
        assert_eq!(
            chain
                .first(&guard)
                .and_then(|n| n.next())
                .and_then(|n| n.next()),
            None,
            "two nodes left"
        );
    });
    ticks(&platform, 5);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "freed under a reader on it"
    );
    assert!(middle.is_removed());
    assert!(
        middle.next().is_some(),
        "the reader still reaches the last node"
    );
    TestPlatform::on_cpu(1, || drop(reader));
    ticks(&platform, 3);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "freed after the reader exited"
    );
    drop(chain);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        3,
        "dropping the chain frees its nodes"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak");
}

#[test]
fn a_frozen_link_refuses_writers_and_a_failed_unlink_is_completed_later() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let chain = Chain::new(&domain);
    TestPlatform::on_cpu(0, || {
        let guard = domain.enter();
        let b = Node::new(&domain, 2u32).expect("alloc");
        let b = chain.insert_after(None, None, b, &guard).expect("empty");
        let a = Node::new(&domain, 1u32).expect("alloc");
        let a = chain
            .insert_after(None, Some(b), a, &guard)
            .expect("b first");
        // Wrong predecessor: the head holds `a`, not `b`.
        assert!(chain.unlink(None, b, &guard).is_err());
        assert!(b.is_removed(), "marked although still linked");
        let refused = chain
            .insert_after(Some(b), None, Node::new(&domain, 3).expect("alloc"), &guard)
            .expect_err("b's link is frozen");
        assert!(refused.frozen);
        // The node handed back holds no link: it can go anywhere else.
        let c = chain
            .insert_after(Some(a), Some(b), refused.new, &guard)
            .expect("a's link holds b");
        let token = chain.unlink(Some(c), b, &guard).expect("now from c");
        assert_eq!(**token, 2);
        let seen: Vec<u32> = core::iter::successors(chain.first(&guard), |n| n.next())
            .map(|n| *n)
            .collect();
        assert_eq!(seen, [1, 3]);
    });
    drop(chain);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak");
}

#[test]
fn list_and_map_free_what_they_remove_once_and_the_rest_when_dropped() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(0, || {
        let list = List::new(&domain);
        for _ in 0..4 {
            list.push_front(Tracked(drops.clone())).expect("alloc");
        }
        let mut seen = 0;
        let removed = list.remove(|_| {
            seen += 1;
            seen == 2
        });
        removed.expect("second").retire();
        domain.synchronize();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(list.iter(&domain.enter()).count(), 3);
        drop(list);
        assert_eq!(drops.load(Ordering::SeqCst), 4);

        // One bucket: every key collides, so replace and remove work inside one chain.
        let map: Map<u32, Tracked, _, 1> = Map::new(&domain);
        for key in 0..4 {
            let old = map.insert(key, Tracked(drops.clone())).expect("alloc");
            assert!(old.is_none());
        }
        let old = map.insert(2, Tracked(drops.clone())).expect("alloc");
        assert_eq!(*old.expect("replaced").key(), 2);
        assert!(map.remove(&0).is_some());
        assert!(map.remove(&0).is_none(), "removed once");
        let guard = domain.enter();
        let keys = [1, 2, 3].map(|key| map.get(&key, &guard).is_some());
        assert_eq!(keys, [true; 3]);
        drop(guard);
        domain.synchronize();
        assert_eq!(drops.load(Ordering::SeqCst), 6);
        drop(map);
        assert_eq!(drops.load(Ordering::SeqCst), 9);
    });
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak");
}
