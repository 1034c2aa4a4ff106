//! The linked structures of the core as a driver uses them: a [`List`] (`--workloads list`) and a
//! [`Map`] (`--workloads map`, next to the copy-on-write map of `map.rs`).
//!
//! Both hold [`Item`]s: a magic word that the destructor overwrites (and the simulated allocator
//! poisons freed blocks), a key and a check word derived from key and serial. Some items are
//! permanent: the list's anchors are never removed, the map's low keys are only ever replaced. A
//! reader walks the list or looks keys up under a guard and checks every item it reaches; items
//! reached in earlier steps are re-checked under an outer epoch that spans steps and migrations
//! (writers remove and replace them meanwhile). A walk that misses an anchor, or a lookup that
//! misses a permanent key, is a violation: those nodes were never absent (mutation
//! `map-replace-unlinks-first` makes a replaced key vanish for a moment). Writers push and remove
//! transient items, and replace and remove map entries; what they unlink they retire.

use super::Shared;
use crate::machine::{SimPlatform, StepContext, StepOutcome, Task};
use crate::objects::{SimDomain, DEAD, LIVE};
use kepoch::list::List;
use kepoch::map::Map;
use kepoch::platform::Platform;
use kepoch::RawGuard;
use rand::Rng;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Anchors of the list: keys `0..ANCHORS`, never removed.
const ANCHORS: u64 = 4;
/// Keys of the list's transient items: `ANCHORS..LIST_KEYS`.
const LIST_KEYS: u64 = 16;
/// Permanent keys of the map: `0..PERMANENT`, only replaced.
const PERMANENT: u64 = 8;
/// Map keys are `0..MAP_KEYS`.
const MAP_KEYS: u64 = 40;
/// Buckets of the map (few, so that chains are several entries long).
const BUCKETS: usize = 4;
/// Items a reader holds at most across steps.
const HELD: usize = 8;

/// The check word of an item: a reader recomputes it from the key and serial it read.
fn check_word(key: u64, serial: u64) -> u64 {
    (key ^ 0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(serial | 1)
        .rotate_left(17)
        ^ serial
}

/// What the list and the map hold. Atomics, so that a reader of a wrongly freed (poisoned) item
/// reads garbage soundly and reports it.
pub(super) struct Item {
    magic: AtomicU64,
    key: AtomicU64,
    serial: AtomicU64,
    check: AtomicU64,
}

impl Item {
    fn new(key: u64, serial: u64) -> Self {
        Item {
            magic: AtomicU64::new(LIVE),
            key: AtomicU64::new(key),
            serial: AtomicU64::new(serial),
            check: AtomicU64::new(check_word(key, serial)),
        }
    }

    /// What is wrong with this item as a reader holds it (`None`: nothing).
    fn problem(&self, what: &str, cpu: u32) -> Option<String> {
        let magic = self.magic.load(Ordering::Acquire);
        let key = self.key.load(Ordering::Relaxed);
        let serial = self.serial.load(Ordering::Relaxed);
        let check = self.check.load(Ordering::Relaxed);
        if magic == DEAD {
            return Some(format!("use-after-free: a {what} reader on CPU {cpu} holds item key {key} serial {serial} after its destructor ran"));
        }
        if magic != LIVE || check != check_word(key, serial) {
            return Some(format!("a {what} reader on CPU {cpu} holds a corrupt item (magic {magic:#x}, key {key}, serial {serial}, check {check:#x}): freed, or not initialised before it was published"));
        }
        None
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        self.magic.store(DEAD, Ordering::Release);
    }
}

/// The structures of the workload, detached from the domain (they live next to it in the run's
/// shared state, which drops them first).
pub(super) struct Linked {
    list: Option<List<'static, Item, SimPlatform>>,
    map: Option<Map<'static, u64, Item, SimPlatform, BUCKETS>>,
    /// Anchors the list got (an allocation the run makes fail leaves one out).
    anchors: u64,
    /// Bit `k`: permanent key `k` is in the map.
    permanent: u64,
}

impl Linked {
    /// The structures of the enabled workloads, with their permanent items.
    ///
    /// # Safety
    /// The domain outlives the structures.
    pub(super) unsafe fn new(domain: &SimDomain, list: bool, map: bool) -> Self {
        // SAFETY: per the caller.
        let list = list.then(|| unsafe { List::new_detached(domain) });
        // SAFETY: per the caller.
        let map = map.then(|| unsafe { Map::new_detached(domain) });
        let mut anchors = 0;
        let mut permanent = 0;
        for key in 0..ANCHORS {
            if let Some(list) = &list {
                anchors += u64::from(list.push_front(Item::new(key, key)).is_ok());
            }
        }
        for key in 0..PERMANENT {
            if let Some(map) = &map {
                if map.insert(key, Item::new(key, key)).is_ok() {
                    permanent |= 1 << key;
                }
            }
        }
        Linked {
            list,
            map,
            anchors,
            permanent,
        }
    }
}

impl Shared {
    fn check_item(&self, item: &Item, what: &str, cpu: u32) {
        self.linked_reads.fetch_add(1, Ordering::Relaxed);
        if let Some(text) = item.problem(what, cpu) {
            self.violation(text);
        }
    }
}

/// A reader of the list and the map: an outer epoch spanning a few steps, and in each step a
/// guard under which it walks the list and looks keys up.
pub(super) struct LinkedReader {
    shared: Arc<Shared>,
    outer: Option<RawGuard>,
    held: Vec<NonNull<Item>>,
    steps_left: u32,
}

// SAFETY: the held pointers are only dereferenced under the outer epoch, which keeps them alive.
unsafe impl Send for LinkedReader {}

impl LinkedReader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        LinkedReader {
            shared,
            outer: None,
            held: Vec::new(),
            steps_left: 0,
        }
    }

    fn hold(&mut self, item: &Item) {
        if self.held.len() < HELD {
            self.held.push(NonNull::from(item));
        }
    }

    fn read(&mut self, domain: &SimDomain, linked: &Linked, ctx: &mut StepContext<'_>) {
        let cpu = ctx.cpu().index;
        let shared = self.shared.clone();
        for item in &self.held {
            // SAFETY: reached inside the outer epoch, which is still open; freed memory is
            // poisoned, not unmapped, so even a protocol bug reads it soundly and is reported.
            shared.check_item(unsafe { item.as_ref() }, "held", cpu);
        }
        let at_dispatch = ctx.rng().gen_ratio(1, 4);
        let previous = at_dispatch.then(|| domain.platform().raise_to_dispatch());
        let guard = domain.enter();
        if let Some(list) = &linked.list {
            let mut anchors = 0;
            for item in list.iter(&guard) {
                shared.check_item(item, "list", cpu);
                anchors += u64::from(item.key.load(Ordering::Relaxed) < ANCHORS);
                if ctx.rng().gen_ratio(1, 4) {
                    self.hold(item);
                }
            }
            if anchors != linked.anchors {
                shared.violation(format!("a list reader on CPU {cpu} saw {anchors} of the {} anchor items, which are never removed", linked.anchors));
            }
        }
        if let Some(map) = &linked.map {
            for _ in 0..ctx.rng().gen_range(1..4) {
                let key = ctx.rng().gen_range(0..MAP_KEYS);
                match map.get(&key, &guard) {
                    Some(item) => {
                        shared.check_item(item, "map", cpu);
                        if item.key.load(Ordering::Relaxed) != key {
                            shared.violation(format!("a map lookup of key {key} on CPU {cpu} returned an item of key {}", item.key.load(Ordering::Relaxed)));
                        }
                        self.hold(item);
                    }
                    None if linked.permanent & (1 << key) != 0 => shared.violation(format!("a map lookup on CPU {cpu} missed key {key}, which is only ever replaced, never removed")),
                    None => {}
                }
            }
        }
        drop(guard);
        if let Some(previous) = previous {
            domain.platform().lower_irql(previous);
        }
    }
}

impl Task for LinkedReader {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        let domain_guard = shared.domain();
        let linked_guard = shared.linked.read();
        let (Some(domain), Some(linked)) = (domain_guard.as_deref(), linked_guard.as_ref()) else {
            return StepOutcome::Done;
        };
        if self.outer.is_none() {
            if shared.stop.load(Ordering::Relaxed) {
                return StepOutcome::Done;
            }
            // SAFETY: exited below before the task ends, and the run waits for every task before it
            // unloads the domain.
            self.outer = Some(unsafe { domain.enter_raw() });
            self.steps_left = ctx.rng().gen_range(1..6);
        }
        self.read(domain, linked, ctx);
        self.steps_left -= 1;
        if self.steps_left == 0 || shared.stop.load(Ordering::Relaxed) {
            self.held.clear();
            if let Some(token) = self.outer.take() {
                // SAFETY: entered above on this domain; exited once.
                unsafe { domain.exit_raw(token) };
            }
            return StepOutcome::Sleep(ctx.rng().gen_range(10..40));
        }
        if ctx.rng().gen_ratio(1, 4) {
            return shared.migrate(ctx);
        }
        StepOutcome::Sleep(ctx.rng().gen_range(1..6))
    }
}

/// A writer of the list and the map: pushes and removes transient list items, replaces permanent
/// map keys, inserts and removes the others, and retires what it unlinked.
pub(super) struct LinkedWriter {
    pub shared: Arc<Shared>,
}

impl LinkedWriter {
    fn write(shared: &Shared, linked: &Linked, ctx: &mut StepContext<'_>) {
        let serial = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(list) = &linked.list {
            let key = ctx.rng().gen_range(ANCHORS..LIST_KEYS);
            if ctx.rng().gen_ratio(1, 2) {
                // An allocation failure hands the item back in its `AllocError`: dropping it is all.
                let _ = list.push_front(Item::new(key, serial));
            } else if let Some(removed) =
                list.remove(|item| item.key.load(Ordering::Relaxed) == key)
            {
                shared.linked_updates.fetch_add(1, Ordering::Relaxed);
                removed.retire();
            }
        }
        if let Some(map) = &linked.map {
            let key = ctx.rng().gen_range(0..MAP_KEYS);
            // A permanent key that the load could not insert stays out: it is not permanent then.
            let permanent = linked.permanent & (1 << key.min(63)) != 0;
            if permanent || (key >= PERMANENT && ctx.rng().gen_ratio(1, 2)) {
                if let Ok(old) = map.insert(key, Item::new(key, serial)) {
                    shared.linked_updates.fetch_add(1, Ordering::Relaxed);
                    drop(old); // dropping the token retires it
                }
            } else if key < PERMANENT {
                // Not in the map since the load: leave it out.
            } else if let Some(removed) = map.remove(&key) {
                shared.linked_updates.fetch_add(1, Ordering::Relaxed);
                removed.retire();
            }
        }
    }
}

impl Task for LinkedWriter {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        let linked_guard = shared.linked.read();
        shared.step_unless_stopped(|_domain| {
            let Some(linked) = linked_guard.as_ref() else {
                return StepOutcome::Done;
            };
            Self::write(&shared, linked, ctx);
            if ctx.rng().gen_ratio(1, 3) {
                return shared.migrate(ctx);
            }
            StepOutcome::Sleep(ctx.rng().gen_range(1..10))
        })
    }
}
