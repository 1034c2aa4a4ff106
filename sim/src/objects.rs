//! Objects that readers read and writers retire, shared by the torture and the A/B lab workloads.
//!
//! An object carries a magic word: the destructor overwrites it and the simulated allocator then
//! poisons the freed block, so a reader that reaches a freed object reads something other than
//! [`LIVE`] — a use-after-free is caught, never silently passed.

use crate::machine::SimPlatform;
use kepoch::Domain;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Magic of a live object.
pub const LIVE: u64 = 0x4C49_5645_4F42_4A31;
/// Written by the object's destructor, before the allocator poisons the block.
pub const DEAD: u64 = 0x4445_4144_4F42_4A31;
/// `retired_at` of an object that is still linked.
pub const NOT_RETIRED: u64 = u64::MAX;

/// A domain on the simulated machine.
pub type SimDomain = Domain<SimPlatform>;

/// The object readers read through shared cells.
pub struct Object {
    magic: AtomicU64,
    /// Serial number, for messages.
    pub id: u64,
    retired_at: AtomicU64,
}

impl Drop for Object {
    fn drop(&mut self) {
        self.magic.store(DEAD, Ordering::Release);
    }
}

/// What a reader found when it checked an object it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Live, and not released under the reader.
    Ok,
    /// The magic is gone: the object was freed (the value read is given).
    UseAfterFree(u64),
    /// The object's retirement epoch was already released while the reader still holds it.
    ReleasedWhileHeld {
        /// Epoch the object was retired at.
        retired_at: u64,
        /// The domain's released epoch.
        released: u64,
        /// Cycles started since the object was unlinked (global epoch now minus `retired_at`).
        age_cycles: u64,
    },
}

impl Check {
    /// A one-line description of a failed check.
    pub fn describe(self, id: u64, cpu: u32) -> Option<String> {
        match self {
            Check::Ok => None,
            Check::UseAfterFree(magic) => Some(format!(
                "use-after-free: a reader on CPU {cpu} read object #{id} after it was freed (magic {magic:#018x})"
            )),
            Check::ReleasedWhileHeld { retired_at, released, age_cycles } => Some(format!(
                "object #{id} retired at epoch {retired_at} is still held by a reader on CPU {cpu}, but epoch {released} was released (read {age_cycles} cycle(s) after its unlink)"
            )),
        }
    }
}

/// Allocates a live object with serial `id` from the domain; `None` if the allocation failed.
pub fn new_object(domain: &SimDomain, id: u64) -> Option<NonNull<Object>> {
    let object = Object {
        magic: AtomicU64::new(LIVE),
        id,
        retired_at: AtomicU64::new(NOT_RETIRED),
    };
    let object = domain.alloc(object).ok()?;
    register(object.as_ptr() as usize, id);
    Some(object)
}

/// Checks an object a reader holds inside an epoch.
///
/// # Safety
/// `object` came from [`new_object`] and was loaded from a cell inside an epoch that is still open.
/// If the protocol is broken the object may be freed: the simulator's quarantine keeps the memory
/// mapped and poisoned, and every access here is atomic, so reading it is still sound.
pub unsafe fn check(domain: &SimDomain, object: NonNull<Object>) -> Check {
    // SAFETY: per the caller (see above).
    let (magic, retired_at) = unsafe {
        let object = object.as_ref();
        (
            object.magic.load(Ordering::Acquire),
            object.retired_at.load(Ordering::Acquire),
        )
    };
    verdict(domain, magic, retired_at)
}

/// What a reader holding a block with this magic word and retirement epoch (both read atomically
/// inside its epoch) found: freed, released while held, or fine.
pub fn verdict(domain: &SimDomain, magic: u64, retired_at: u64) -> Check {
    if magic != LIVE {
        return Check::UseAfterFree(magic);
    }
    let released = domain.released_epoch();
    if retired_at != NOT_RETIRED && retired_at <= released {
        return Check::ReleasedWhileHeld {
            retired_at,
            released,
            age_cycles: domain.global_epoch().saturating_sub(retired_at),
        };
    }
    Check::Ok
}

/// Age of an object a reader holds, in cycles started since it was unlinked (`None` while it is still
/// linked). Every cycle advances the global epoch by one, so this is the global epoch minus the
/// retirement stamp.
///
/// # Safety
/// As for [`check`].
pub unsafe fn age_cycles(domain: &SimDomain, object: NonNull<Object>) -> Option<u64> {
    // SAFETY: per the caller (an atomic load of memory that stays mapped).
    let retired_at = unsafe { object.as_ref() }
        .retired_at
        .load(Ordering::Acquire);
    (retired_at != NOT_RETIRED).then(|| domain.global_epoch().saturating_sub(retired_at))
}

/// Publishes `object` in `cell` and retires the object it replaced, recording its retirement epoch.
/// Returns `Ok(true)` if an object was retired. Call inside an epoch (which keeps the old object alive
/// while its epoch is recorded).
///
/// # Safety
/// `object` came from [`new_object`] of `domain`; every object in `cell` did too.
pub unsafe fn replace(
    domain: &SimDomain,
    cell: &AtomicPtr<Object>,
    object: NonNull<Object>,
) -> Result<bool, kepoch::RetireError> {
    let old = cell.swap(object.as_ptr(), Ordering::AcqRel);
    let Some(old) = NonNull::new(old) else {
        return Ok(false);
    };
    // SAFETY: `old` came from `alloc` and was just unlinked by the swap.
    let stamp = unsafe { domain.retire(old) }?;
    // SAFETY: the caller's epoch keeps `old` alive until it exits.
    unsafe { old.as_ref() }
        .retired_at
        .store(stamp, Ordering::Release);
    // SAFETY: as above.
    note_retired(old.as_ptr() as usize, unsafe { old.as_ref() }.id, stamp);
    Ok(true)
}

/// Loads one of `cells`, picked with `rng`, and returns the object published there with its id.
///
/// # Safety
/// The caller is inside an epoch of the domain whose [`new_object`] made every object in `cells`.
pub unsafe fn load_random(
    cells: &[AtomicPtr<Object>],
    rng: &mut impl rand::Rng,
) -> Option<(NonNull<Object>, u64)> {
    let object = NonNull::new(cells[rng.gen_range(0..cells.len())].load(Ordering::Acquire))?;
    // SAFETY: loaded inside the caller's epoch, which keeps the object from being freed (a bug
    // that frees it anyway reads poison, which the caller's check reports).
    let id = unsafe { object.as_ref().id };
    Some((object, id))
}

/// Unlinks and retires every object still published in `cells` (teardown). Returns how many
/// retirements were refused (always 0 unless the core is broken).
pub fn retire_cells(domain: &SimDomain, cells: &[AtomicPtr<Object>]) -> usize {
    let mut refused = 0;
    for cell in cells {
        let object = cell.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if let Some(object) = NonNull::new(object) {
            // SAFETY: unlinked just now; allocated by this domain.
            if unsafe { domain.retire(object) }.is_err() {
                refused += 1;
            }
        }
    }
    refused
}

// ---------------------------------------------------------------------------------------------------
// Guard-page fault registry.
//
// With the machine's guard pages on, every object has a page of its own that becomes `PROT_NONE` when it
// is freed. A SIGSEGV handler must then name the object from the faulting address using only
// async-signal-safe code, so objects are recorded here, in fixed-size arrays of atomics indexed by
// `id % REGISTRY_SLOTS`: the page, the id and the retirement epoch. The registry is process-wide (one
// torture run at a time fills it meaningfully; concurrent runs in a test process only blur diagnostics).

/// Entries in the registry (newer ids overwrite older ones in the same slot).
pub const REGISTRY_SLOTS: usize = 1 << 16;

struct RegistryEntry {
    page: AtomicUsize,
    id: AtomicU64,
    retired_at: AtomicU64,
}

static REGISTRY_ON: AtomicBool = AtomicBool::new(false);
static PAGE_MASK: AtomicUsize = AtomicUsize::new(!0xFFF);
static REGISTRY: [RegistryEntry; REGISTRY_SLOTS] = [const {
    RegistryEntry {
        page: AtomicUsize::new(0),
        id: AtomicU64::new(0),
        retired_at: AtomicU64::new(NOT_RETIRED),
    }
}; REGISTRY_SLOTS];

/// What the registry knows about the object on a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered {
    /// Object serial number.
    pub id: u64,
    /// Retirement epoch, or [`NOT_RETIRED`].
    pub retired_at: u64,
}

/// Turns recording of new objects on or off (the torture turns it on with guard pages).
pub fn set_fault_registry(on: bool) {
    PAGE_MASK.store(!(crate::machine::page_size() - 1), Ordering::Relaxed);
    REGISTRY_ON.store(on, Ordering::Release);
}

/// Records that the block at `addr` holds the torture block with serial `id` (a no-op unless the
/// registry is on).
pub(crate) fn register(addr: usize, id: u64) {
    if !REGISTRY_ON.load(Ordering::Relaxed) {
        return;
    }
    let entry = &REGISTRY[(id % REGISTRY_SLOTS as u64) as usize];
    entry.page.store(0, Ordering::Release);
    entry.id.store(id, Ordering::Release);
    entry.retired_at.store(NOT_RETIRED, Ordering::Release);
    let page = addr & PAGE_MASK.load(Ordering::Relaxed);
    entry.page.store(page, Ordering::Release);
}

/// Records the retirement epoch of the block `id` at `addr` (see [`register`]).
pub(crate) fn note_retired(addr: usize, id: u64, stamp: u64) {
    if !REGISTRY_ON.load(Ordering::Relaxed) {
        return;
    }
    let entry = &REGISTRY[(id % REGISTRY_SLOTS as u64) as usize];
    let page = addr & PAGE_MASK.load(Ordering::Relaxed);
    if entry.id.load(Ordering::Acquire) == id && entry.page.load(Ordering::Acquire) == page {
        entry.retired_at.store(stamp, Ordering::Release);
    }
}

/// The newest registered object on the page of `addr`, if any. Async-signal-safe: atomic loads only.
pub fn lookup_fault(addr: usize) -> Option<Registered> {
    let page = addr & PAGE_MASK.load(Ordering::Relaxed);
    if page == 0 {
        return None;
    }
    let mut found: Option<Registered> = None;
    for entry in &REGISTRY {
        if entry.page.load(Ordering::Acquire) != page {
            continue;
        }
        let id = entry.id.load(Ordering::Acquire);
        let newer = match found {
            Some(f) => id > f.id,
            None => true,
        };
        if newer {
            found = Some(Registered {
                id,
                retired_at: entry.retired_at.load(Ordering::Acquire),
            });
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------------
// Chains: objects whose destructor retires another object.

/// Counters shared by every chain link of one run.
#[derive(Debug)]
pub struct ChainStats {
    /// Links retired by the destructor of the link before them.
    pub retired_by_destructor: AtomicU64,
    /// Links whose destructor ran.
    pub dropped: AtomicU64,
    /// Retirements a destructor had refused (0 unless the core is broken).
    pub refused: AtomicU64,
    /// Index of a CPU that is meant to run no epoch code (`u64::MAX`: none)...
    pub idle_cpu: AtomicU64,
    /// ...and how many destructors retired on it (the core disposes of items on whichever CPU runs
    /// the cycle, so a destructor that retires makes that CPU run epoch code).
    pub retired_on_idle: AtomicU64,
}

impl ChainStats {
    /// Counters for a run whose CPU `idle_cpu` is meant to run no epoch code.
    pub fn new(idle_cpu: Option<u32>) -> Self {
        ChainStats {
            idle_cpu: AtomicU64::new(idle_cpu.map_or(u64::MAX, u64::from)),
            retired_by_destructor: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            retired_on_idle: AtomicU64::new(0),
        }
    }
}

/// A link of a chain published to readers through its head. Its destructor retires the next link, so
/// freeing a chain of `n` links takes `n` releases, each retirement made from inside the core's
/// disposal (a cycle, a flush or unload's drain).
pub struct ChainLink {
    magic: AtomicU64,
    /// Serial number, for messages.
    pub id: u64,
    next: AtomicPtr<ChainLink>,
    domain: *const SimDomain,
    stats: *const ChainStats,
}

// SAFETY: the raw pointers name the domain that disposes of the link and the run's counters, both of
// which outlive every link (the run frees them after unload); they are only used through `&`.
unsafe impl Send for ChainLink {}

impl Drop for ChainLink {
    fn drop(&mut self) {
        self.magic.store(DEAD, Ordering::Release);
        // SAFETY: the run's counters outlive the domain and so every disposal (see the Send impl).
        let stats = unsafe { &*self.stats };
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        let next = self.next.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if let Some(next) = NonNull::new(next) {
            // SAFETY: as below (the domain is alive while it disposes of the link).
            let here =
                kepoch::platform::Platform::current_processor(unsafe { (*self.domain).platform() });
            if u64::from(here.index) == stats.idle_cpu.load(Ordering::Relaxed) {
                stats.retired_on_idle.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: the domain is disposing of this link, so it is alive; `next` came from its
            // `alloc` and was reachable only through this link, which no reader can reach any more.
            match unsafe { (*self.domain).retire(next) } {
                Ok(_) => stats.retired_by_destructor.fetch_add(1, Ordering::Relaxed),
                Err(_) => stats.refused.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Allocates a chain of `len` links (ids `first_id..first_id + len`), head first; `None` if an
/// allocation failed (the links built so far are freed: the first one's destructor retires the rest).
/// `stats` must outlive the domain.
pub fn new_chain(
    domain: &SimDomain,
    first_id: u64,
    len: usize,
    stats: &ChainStats,
) -> Option<NonNull<ChainLink>> {
    let mut head: Option<NonNull<ChainLink>> = None;
    for k in (0..len as u64).rev() {
        let link = ChainLink {
            magic: AtomicU64::new(LIVE),
            id: first_id + k,
            next: AtomicPtr::new(head.map_or(std::ptr::null_mut(), NonNull::as_ptr)),
            domain,
            stats,
        };
        match domain.alloc(link) {
            Ok(link) => head = Some(link),
            Err(error) => {
                // The link that was not allocated owns nothing (it only points at the links built so
                // far, freed below): skip its destructor, which would retire them.
                std::mem::forget(error.into_inner());
                if let Some(head) = head {
                    // SAFETY: allocated just now by `domain`, never published or retired.
                    unsafe { domain.free_now(head) };
                }
                return None;
            }
        }
    }
    head
}

/// Walks a chain a reader holds and returns the id and magic of the first link that is not live.
///
/// # Safety
/// `head` came from [`new_chain`] and was loaded from a cell inside an epoch that is still open (as for
/// [`check`]: with a broken protocol the memory is quarantined and poisoned, and reads are atomic).
pub unsafe fn check_chain(head: NonNull<ChainLink>) -> Option<(u64, u64)> {
    let mut cursor = head.as_ptr();
    while !cursor.is_null() {
        // SAFETY: per the caller; each next link is alive while the link before it is.
        let link = unsafe { &*cursor };
        let magic = link.magic.load(Ordering::Acquire);
        if magic != LIVE {
            return Some((link.id, magic));
        }
        cursor = link.next.load(Ordering::Acquire);
    }
    None
}
