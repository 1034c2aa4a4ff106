//! The read-mostly workload, written with the core's safe pointer layer (`kepoch::atomic`) the way
//! a driver would: a fixed-bucket hash map whose buckets readers look keys up in and writers replace
//! as a whole (copy on write).
//!
//! Every bucket is an [`Atomic`]; a [`Bucket`] holds up to [`BUCKET_CAPACITY`] entries (key, version,
//! check word). Readers enter, look keys up and check everything they hold, in this step and — held
//! by an outer epoch that spans steps and migrations — in later ones: the bucket is live (its
//! destructor overwrites the magic and the allocator poisons the freed block), its retirement epoch
//! was not released while held, and every entry's check word matches its key and version (a reader
//! that saw the pointer before the bucket's contents reads a wrong word). Writers build the next
//! version of a bucket from the one they loaded and publish it with `compare_exchange`, rebuilding
//! the box a failure gives back from the value it found; now and then a competing `store` lands
//! first on purpose, so that the failure path runs in deterministic mode too. They retire what they
//! unlinked with `retire_protected`, record its stamp and re-check it after nested epochs (where
//! cycles run); now and then a bucket is emptied (`take`) or reset (`swap`).

use super::{fault, Shared};
use crate::machine::{SimPlatform, StepContext, StepOutcome, Task};
use crate::objects::{self, SimDomain, DEAD, LIVE, NOT_RETIRED};
use kepoch::platform::Platform;
use kepoch::{Atomic, Guard, Owned, RawGuard};
use rand::Rng;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Buckets of the map.
pub(super) const BUCKETS: usize = 8;
/// Keys are `0..KEYS`.
const KEYS: u64 = 48;
/// Entries per bucket; a full bucket evicts an entry to take a new key.
pub(super) const BUCKET_CAPACITY: usize = 4;
/// `key` of an unused entry.
const EMPTY: u64 = u64::MAX;
/// Buckets a reader holds at most across steps.
const HELD: usize = 8;

/// The bucket a key hashes to.
fn bucket_of(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % BUCKETS
}

/// The check word of an entry: a reader recomputes it from the key and version it read.
fn check_word(key: u64, version: u64) -> u64 {
    (key ^ 0xC2B2_AE3D_27D4_EB4F)
        .wrapping_mul(version | 1)
        .rotate_left(23)
        ^ version
}

/// One entry of a bucket. Atomics throughout, so that a reader of a wrongly freed (poisoned) bucket
/// reads garbage soundly and reports it.
#[derive(Default)]
struct Entry {
    key: AtomicU64,
    version: AtomicU64,
    check: AtomicU64,
}

/// One version of a bucket's contents, replaced as a whole.
pub(super) struct Bucket {
    magic: AtomicU64,
    id: AtomicU64,
    retired_at: AtomicU64,
    entries: [Entry; BUCKET_CAPACITY],
}

impl Drop for Bucket {
    fn drop(&mut self) {
        self.magic.store(DEAD, Ordering::Release);
    }
}

impl Bucket {
    /// An empty, live bucket with serial `id`.
    fn new(id: u64) -> Self {
        let entries: [Entry; BUCKET_CAPACITY] = Default::default();
        for entry in &entries {
            entry.key.store(EMPTY, Ordering::Relaxed);
        }
        Bucket {
            magic: AtomicU64::new(LIVE),
            id: AtomicU64::new(id),
            retired_at: AtomicU64::new(NOT_RETIRED),
            entries,
        }
    }

    /// Makes this (unpublished) bucket a copy of `from` with `key` set to `version`; a full bucket
    /// evicts the entry `version` picks.
    fn fill(&mut self, from: Option<&Bucket>, key: u64, version: u64) {
        for (k, entry) in self.entries.iter_mut().enumerate() {
            // `from` was loaded with Acquire (or is this writer's own): its contents are visible.
            let (key, version, check) = match from.map(|b| &b.entries[k]) {
                Some(e) => (
                    e.key.load(Ordering::Relaxed),
                    e.version.load(Ordering::Relaxed),
                    e.check.load(Ordering::Relaxed),
                ),
                None => (EMPTY, 0, 0),
            };
            *entry.key.get_mut() = key;
            *entry.version.get_mut() = version;
            *entry.check.get_mut() = check;
        }
        let slot = self
            .entries
            .iter_mut()
            .position(|e| *e.key.get_mut() == key)
            .or_else(|| {
                self.entries
                    .iter_mut()
                    .position(|e| *e.key.get_mut() == EMPTY)
            })
            .unwrap_or(version as usize % BUCKET_CAPACITY);
        let entry = &mut self.entries[slot];
        *entry.key.get_mut() = key;
        *entry.version.get_mut() = version;
        *entry.check.get_mut() = check_word(key, version);
    }

    /// What is wrong with this bucket, as held by a reader inside its epoch (`None`: nothing).
    fn problem(&self, domain: &SimDomain, index: usize, cpu: u32) -> Option<String> {
        let magic = self.magic.load(Ordering::Acquire);
        let id = self.id.load(Ordering::Relaxed);
        let retired_at = self.retired_at.load(Ordering::Acquire);
        if let Some(text) = objects::verdict(domain, magic, retired_at).describe(id, cpu) {
            return Some(format!("map bucket {index}: {text}"));
        }
        for entry in &self.entries {
            let key = entry.key.load(Ordering::Relaxed);
            if key == EMPTY {
                continue;
            }
            let version = entry.version.load(Ordering::Relaxed);
            let check = entry.check.load(Ordering::Relaxed);
            if check != check_word(key, version) || bucket_of(key) != index {
                return Some(format!(
                    "map bucket {index} (#{id}) read on CPU {cpu} holds key {key} version {version} with check word {check:#x}: its contents were not published before the pointer, or were freed"
                ));
            }
        }
        None
    }
}

/// The map: one atomic per bucket, detached from the domain (it lives next to it in the run's
/// shared state, which drops it first).
pub(super) struct ObjectMap {
    buckets: [Atomic<'static, Bucket, SimPlatform>; BUCKETS],
}

impl ObjectMap {
    /// An empty map of `domain`.
    ///
    /// # Safety
    /// The domain outlives the map.
    pub(super) unsafe fn new(domain: &SimDomain) -> Self {
        ObjectMap {
            // SAFETY: per the caller.
            buckets: std::array::from_fn(|_| unsafe { Atomic::null_detached(domain) }),
        }
    }

    /// Unlinks and retires every bucket (teardown).
    pub(super) fn clear(&self) {
        for bucket in &self.buckets {
            if let Some(old) = bucket.take() {
                old.retire();
            }
        }
    }
}

/// A fresh bucket from `domain`, registered for the guard-page fault handler; `None` if the
/// allocation failed.
fn new_bucket<'d>(
    shared: &Shared,
    domain: &'d SimDomain,
) -> Option<Owned<'d, Bucket, SimPlatform>> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let bucket = Owned::new(domain, Bucket::new(id)).ok()?;
    objects::register(std::ptr::from_ref::<Bucket>(&bucket) as usize, id);
    Some(bucket)
}

impl Shared {
    /// Checks a bucket a map reader or writer holds; `index` is its bucket number.
    fn check_bucket(&self, domain: &SimDomain, bucket: &Bucket, index: usize, cpu: u32) {
        self.map_lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(text) = bucket.problem(domain, index, cpu) {
            self.violation(text);
        }
    }
}

/// A map reader: an outer epoch that spans a few steps (and, at PASSIVE, migrations), and in each
/// step a guard of the safe API under which it looks keys up; buckets loaded in earlier steps are
/// re-checked under the outer epoch.
pub(super) struct MapReader {
    shared: Arc<Shared>,
    outer: Option<RawGuard>,
    /// Buckets loaded in earlier steps of the outer epoch, with their bucket numbers.
    held: Vec<(NonNull<Bucket>, usize)>,
    steps_left: u32,
    entered_at: u64,
}

// SAFETY: the held pointers are only dereferenced under the outer epoch, which keeps them alive.
unsafe impl Send for MapReader {}

impl MapReader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        MapReader {
            shared,
            outer: None,
            held: Vec::new(),
            steps_left: 0,
            entered_at: 0,
        }
    }

    /// One step inside the outer epoch: re-check what is held, look keys up under a fresh guard.
    fn read(&mut self, domain: &SimDomain, map: &ObjectMap, ctx: &mut StepContext<'_>) {
        let cpu = ctx.cpu().index;
        fault::set_reader(self.entered_at, cpu);
        for &(bucket, index) in &self.held {
            // SAFETY: loaded inside the outer epoch, which is still open (see `objects::check` for
            // why even a protocol bug reads quarantined memory soundly).
            self.shared
                .check_bucket(domain, unsafe { bucket.as_ref() }, index, cpu);
        }
        let at_dispatch = ctx.rng().gen_ratio(1, 4);
        let previous = at_dispatch.then(|| domain.platform().raise_to_dispatch());
        let guard = domain.enter();
        for _ in 0..ctx.rng().gen_range(1..4) {
            let key = ctx.rng().gen_range(0..KEYS);
            let index = bucket_of(key);
            if let Some(bucket) = map.buckets[index].load(&guard) {
                self.shared.check_bucket(domain, &bucket, index, cpu);
                if self.held.len() < HELD {
                    self.held.push((NonNull::from(bucket.get()), index));
                }
            }
        }
        drop(guard);
        if let Some(previous) = previous {
            domain.platform().lower_irql(previous);
        }
        fault::clear_reader();
    }
}

impl Task for MapReader {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        let domain_guard = shared.domain();
        let map_guard = shared.map.read();
        let (Some(domain), Some(map)) = (domain_guard.as_deref(), map_guard.as_ref()) else {
            return StepOutcome::Done;
        };
        if self.outer.is_none() {
            if shared.stop.load(Ordering::Relaxed) {
                return StepOutcome::Done;
            }
            // SAFETY: exited below before the task ends, and the run waits for every task before it
            // unloads the domain.
            self.outer = Some(unsafe { domain.enter_raw() });
            self.entered_at = domain.global_epoch();
            self.steps_left = ctx.rng().gen_range(1..6);
        }
        self.read(domain, map, ctx);
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
        // Hold the outer epoch while other tasks run: writers replace what this reader holds.
        StepOutcome::Sleep(ctx.rng().gen_range(1..6))
    }
}

/// A map writer: replaces one key's bucket by compare-and-exchange, retires what it unlinked and
/// keeps reading it under its guard; now and then empties or resets a bucket.
pub(super) struct MapWriter {
    pub shared: Arc<Shared>,
}

impl MapWriter {
    fn write(shared: &Shared, domain: &SimDomain, map: &ObjectMap, ctx: &mut StepContext<'_>) {
        let cpu = ctx.cpu().index;
        let guard = domain.enter();
        let key = ctx.rng().gen_range(0..KEYS);
        let index = bucket_of(key);
        let atomic = &map.buckets[index];
        let mut unlinked = Vec::new();
        match ctx.rng().gen_range(0..16) {
            0 => unlinked.extend(atomic.take()),
            1 => {
                if let Some(mut fresh) = new_bucket(shared, domain) {
                    fresh.fill(None, key, shared.next_id.fetch_add(1, Ordering::Relaxed));
                    unlinked.extend(atomic.swap(fresh));
                }
            }
            _ => Self::update(shared, domain, atomic, key, &guard, ctx, &mut unlinked),
        }
        let mut retired = Vec::new();
        for old in unlinked {
            let (old, stamp) = old.retire_protected(&guard);
            old.retired_at.store(stamp, Ordering::Release);
            objects::note_retired(old.as_ptr() as usize, old.id.load(Ordering::Relaxed), stamp);
            shared.retires.fetch_add(1, Ordering::Relaxed);
            retired.push(old);
        }
        // Nested epochs are preemption points, where cycles may run on this CPU: what was retired
        // above must survive them while this guard is inside.
        for _ in 0..ctx.rng().gen_range(0..3) {
            drop(domain.enter());
            for old in &retired {
                shared.check_bucket(domain, old.get(), index, cpu);
            }
        }
    }

    /// Publishes a copy of `key`'s bucket with a new version, retrying from what a failed
    /// compare-and-exchange found; the value it replaced goes to `unlinked`.
    fn update<'g>(
        shared: &Shared,
        domain: &SimDomain,
        atomic: &'g Atomic<'static, Bucket, SimPlatform>,
        key: u64,
        guard: &'g Guard<'_, SimPlatform>,
        ctx: &mut StepContext<'_>,
        unlinked: &mut Vec<kepoch::Unlinked<'g, Bucket, SimPlatform>>,
    ) {
        let cpu = ctx.cpu().index;
        let index = bucket_of(key);
        let Some(mut next) = new_bucket(shared, domain) else {
            return;
        };
        let mut seen = atomic.load(guard);
        for attempt in 0..4 {
            if let Some(bucket) = seen {
                shared.check_bucket(domain, &bucket, index, cpu);
            }
            let version = shared.next_id.fetch_add(1, Ordering::Relaxed);
            next.fill(seen.map(kepoch::Shared::get), key, version);
            if attempt == 0 && ctx.rng().gen_ratio(1, 4) {
                // Another writer's update lands between the load and the exchange.
                if let Some(mut rival) = new_bucket(shared, domain) {
                    rival.fill(seen.map(kepoch::Shared::get), key, version + 1);
                    unlinked.extend(atomic.swap(rival));
                }
            }
            match atomic.compare_exchange(seen, next, guard) {
                Ok(old) => {
                    shared.map_updates.fetch_add(1, Ordering::Relaxed);
                    unlinked.extend(old);
                    return;
                }
                Err(lost) => {
                    shared.map_conflicts.fetch_add(1, Ordering::Relaxed);
                    seen = lost.current;
                    next = lost.new;
                }
            }
        }
    }
}

impl Task for MapWriter {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        let map_guard = shared.map.read();
        shared.step_unless_stopped(|domain| {
            let Some(map) = map_guard.as_ref() else {
                return StepOutcome::Done;
            };
            Self::write(&shared, domain, map, ctx);
            if ctx.rng().gen_ratio(1, 3) {
                return shared.migrate(ctx);
            }
            StepOutcome::Sleep(ctx.rng().gen_range(1..10))
        })
    }
}
