//! Directed scenarios of the safe pointer layer (`kepoch::atomic`): readers load through
//! [`Atomic::load`], writers publish [`Owned`] boxes and retire what they unlinked. The machine's
//! checks are the same as for the raw scenarios (an object's payload is a model cell: loom reports a
//! read not ordered after its initialisation or before its destructor, and a late read panics).

use super::{on_cpu, rt, Object, World};
use kepoch::{Atomic, Owned, Strategy};
use std::sync::Arc;

/// The atomic of a scenario. It lives in an `Arc` next to the world (model threads need `'static`
/// closures), so it is detached from the domain and dropped before the world is finished.
type SharedAtomic = Arc<Atomic<'static, Object, super::ModelPlatform>>;

/// A world whose CPUs 0 and 1 have prepared slots (so that a reader's enter touches no lock the
/// writer takes), with an API atomic holding `initial` objects (0 or 1).
fn world_with_atomic(initial: bool) -> (Arc<World>, SharedAtomic) {
    let w = World::new(Strategy::Lazy, 2);
    w.read(0);
    w.read(1);
    // SAFETY: `finish` drops the atomic before it unloads the domain.
    let atomic = Arc::new(unsafe { Atomic::null_detached(&w.domain) });
    if initial {
        on_cpu(0, || {
            atomic.store(Owned::new(&w.domain, Object::new()).expect("alloc"))
        });
    }
    (w, atomic)
}

/// A reader on `cpu` that loads through the API, gives the other threads a turn, and checks the
/// object it holds before its guard exits.
fn api_read(w: &World, atomic: &SharedAtomic, cpu: usize) {
    on_cpu(cpu, || {
        let guard = w.domain.enter();
        let object = atomic.load(&guard);
        rt::yield_now();
        if let Some(object) = object {
            object.check_alive(&format!("an API reader on CPU {cpu}"));
        }
    });
}

/// A writer on `cpu`: publishes a fresh object with `swap` and retires what it replaced.
fn api_replace(w: &World, atomic: &SharedAtomic, cpu: usize) {
    on_cpu(cpu, || {
        let fresh = Owned::new(&w.domain, Object::new()).expect("alloc");
        if let Some(old) = atomic.swap(fresh) {
            old.retire();
        }
    });
}

/// Empties and drops the atomic (its last value is retired), then finishes the world.
fn finish(w: Arc<World>, atomic: SharedAtomic) {
    let atomic = Arc::try_unwrap(atomic).unwrap_or_else(|_| panic!("threads joined"));
    on_cpu(0, || drop(atomic.take()));
    drop(atomic);
    World::finish(w);
}

/// A writer on CPU 0 initialises an object and publishes it into the empty atomic while a reader on
/// CPU 1 loads it: only the Release of the publication and the Acquire of the load order the
/// reader's read after the initialisation (mutation `publish-without-release`).
pub fn api_reader_sees_the_published_value() {
    let (w, atomic) = world_with_atomic(false);
    let reader = {
        let (w, atomic) = (w.clone(), atomic.clone());
        rt::thread::spawn(move || api_read(&w, &atomic, 1))
    };
    on_cpu(0, || {
        atomic.store(Owned::new(&w.domain, Object::new()).expect("alloc"))
    });
    reader.join().unwrap();
    finish(w, atomic);
}

/// A reader on CPU 1 loads through the API while a writer on CPU 0 swaps a new object in, retires
/// the old one and runs the cycles that free it: the reader never reads freed memory (S1), and
/// reads the new object initialised.
pub fn api_reader_holds_a_value_a_writer_swaps_and_retires() {
    let (w, atomic) = world_with_atomic(true);
    let reader = {
        let (w, atomic) = (w.clone(), atomic.clone());
        rt::thread::spawn(move || api_read(&w, &atomic, 1))
    };
    api_replace(&w, &atomic, 0);
    w.cycle();
    w.cycle();
    reader.join().unwrap();
    finish(w, atomic);
}

/// A writer on CPU 0 initialises an object and publishes it while a reader on CPU 1 tries to publish
/// its own into the (it believes) empty atomic: when the compare-exchange fails, the value it hands
/// back is read under the reader's guard, so the failure must read with Acquire, as `load` does
/// (mutation `failed-cas-relaxed`).
pub fn api_failed_compare_exchange_hands_back_an_initialised_value() {
    let (w, atomic) = world_with_atomic(false);
    let reader = {
        let (w, atomic) = (w.clone(), atomic.clone());
        rt::thread::spawn(move || {
            on_cpu(1, || {
                let guard = w.domain.enter();
                let mine = Owned::new(&w.domain, Object::new()).expect("alloc");
                let outcome = atomic.compare_exchange(None, mine, &guard);
                if let Err(lost) = &outcome {
                    if let Some(found) = lost.current {
                        found.check_alive("the value a failed compare-exchange handed back");
                    }
                }
                drop(outcome);
            })
        })
    };
    on_cpu(0, || {
        let fresh = Owned::new(&w.domain, Object::new()).expect("alloc");
        if let Some(old) = atomic.swap(fresh) {
            old.retire();
        }
    });
    reader.join().unwrap();
    finish(w, atomic);
}
