//! Directed scenarios of the linked structures (`kepoch::list`, `kepoch::map`, built on
//! `kepoch::atomic::chain`): a reader walks while a writer inserts, removes or replaces. Every node
//! holds an [`Object`], so the machine's checks apply to each node the reader reaches (a read not
//! ordered after its initialisation or before its destructor, a late read), and the reader asserts
//! it found every node that was never removed.

use super::{on_cpu, rt, Object, World};
use kepoch::list::List;
use kepoch::map::Map;
use kepoch::Strategy;
use std::sync::Arc;

type SharedList = Arc<List<'static, Object, super::ModelPlatform>>;
type SharedMap = Arc<Map<'static, u32, Object, super::ModelPlatform, 1>>;

/// A world whose CPUs 0 and 1 have prepared slots, and a list holding `initial` objects.
fn world_with_list(initial: usize) -> (Arc<World>, SharedList) {
    let w = World::new(Strategy::Lazy, 2);
    w.read(0);
    w.read(1);
    // SAFETY: `finish_list` drops the list before it unloads the domain.
    let list = Arc::new(unsafe { List::new_detached(&w.domain) });
    on_cpu(0, || {
        for _ in 0..initial {
            list.push_front(Object::new()).expect("alloc");
        }
    });
    (w, list)
}

/// Drops the list (freeing what it holds), then finishes the world.
fn finish_list(w: Arc<World>, list: SharedList) {
    let list = Arc::try_unwrap(list).unwrap_or_else(|_| panic!("threads joined"));
    on_cpu(0, || drop(list));
    World::finish(w);
}

/// A reader on CPU 1 that walks the list, giving the other threads a turn at each node, checks
/// every node it reaches and returns how many it saw.
fn walk(w: &World, list: &SharedList) -> usize {
    on_cpu(1, || {
        let guard = w.domain.enter();
        let mut seen = 0;
        for object in list.iter(&guard) {
            rt::yield_now();
            object.check_alive("a list reader");
            seen += 1;
        }
        seen
    })
}

/// A writer on CPU 0 pushes a node in front of the one the list holds while a reader on CPU 1 walks
/// it: the reader must reach the old node whether or not it saw the new one, so the new node's
/// link must be set before the node is published, and the publication must release it.
///
/// Gated: the reader walks once the writer has pushed, by a std flag the checker cannot see, so no
/// happens-before orders them and loom lets the reader's load of the head return the old or the
/// new node; only the insertion's Release and the walk's Acquire order the new node's contents and
/// link before the reader's reads.
pub fn list_reader_sees_every_node_during_an_insertion() {
    let (w, list) = world_with_list(1);
    let reader = {
        let (w, list) = (w.clone(), list.clone());
        rt::thread::spawn(move || {
            w.gates[0].wait();
            walk(&w, &list)
        })
    };
    on_cpu(0, || list.push_front(Object::new()).expect("alloc"));
    w.gates[0].open();
    let seen = reader.join().unwrap();
    assert!(seen >= 1, "a reader missed a node that was never removed");
    finish_list(w, list);
}

/// A writer on CPU 0 removes the middle one of three nodes, retires it and runs the cycles that free
/// it while a reader on CPU 1 walks the list: the reader never reads a freed node and always reaches
/// the two nodes that stay.
pub fn list_reader_on_a_removed_node_reaches_the_rest() {
    let (w, list) = world_with_list(3);
    let reader = {
        let (w, list) = (w.clone(), list.clone());
        rt::thread::spawn(move || walk(&w, &list))
    };
    on_cpu(0, || {
        let mut index = 0;
        let removed = list.remove(|_| {
            index += 1;
            index == 2
        });
        removed.expect("three nodes").retire();
    });
    w.cycle();
    w.cycle();
    let seen = reader.join().unwrap();
    assert!(seen >= 2, "a reader missed a node that was never removed");
    finish_list(w, list);
}

/// A writer on CPU 0 replaces the value of a key (and retires the old entry, and runs cycles) while
/// a reader on CPU 1 looks the key up: the key was never absent, so the reader must find it, alive
/// (mutation `map-replace-unlinks-first`).
pub fn map_replace_never_hides_the_key() {
    let w = World::new(Strategy::Lazy, 2);
    w.read(0);
    w.read(1);
    // SAFETY: the map is dropped below, before `finish` unloads the domain.
    let map: SharedMap = Arc::new(unsafe { Map::new_detached(&w.domain) });
    on_cpu(0, || {
        // One bucket: key 3 is pushed in front of key 1, so the replaced entry has a predecessor.
        for key in [1, 3] {
            map.insert(key, Object::new()).expect("alloc");
        }
    });
    let reader = {
        let (w, map) = (w.clone(), map.clone());
        rt::thread::spawn(move || {
            on_cpu(1, || {
                let guard = w.domain.enter();
                let found = map.get(&1, &guard);
                rt::yield_now();
                let found = found.expect("a reader did not find a key that was never removed");
                found.check_alive("a map reader");
            })
        })
    };
    on_cpu(0, || {
        let old = map.insert(1, Object::new()).expect("alloc");
        old.expect("key 1 was present").retire();
    });
    w.cycle();
    w.cycle();
    reader.join().unwrap();
    let map = Arc::try_unwrap(map).unwrap_or_else(|_| panic!("threads joined"));
    on_cpu(0, || drop(map));
    World::finish(w);
}
