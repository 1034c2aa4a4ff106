//! The simulated non-paged pool: counting, fault injection, poisoning and quarantine.

use std::alloc::{alloc, dealloc, Layout};
use std::collections::{BTreeMap, VecDeque};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kepoch::platform::Irql;
use parking_lot::Mutex;

/// Pattern written over every freed block (as atomic `u64` stores).
pub const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;
/// Pattern written over every fresh block, so reads of uninitialised memory stand out.
pub const FRESH: u64 = 0xABAB_ABAB_ABAB_ABAB;
/// Freed blocks are kept (poisoned) until the quarantine holds more than this many bytes. Guard-page
/// blocks count a whole page each, so at most `QUARANTINE_LIMIT / page size` (16384 with 4 KiB pages)
/// protected pages are kept: well below the kernel's default limit of 65530 mappings per process.
pub const QUARANTINE_LIMIT: usize = 64 << 20;

/// Size of the smaller blocks the quarantine is sized for: every block of a domain carries a
/// 32-byte retire header.
const QUARANTINED_BLOCK_BYTES: usize = 32;

/// The system page size.
pub fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .unwrap_or(4096)
    })
}

/// What a fault hook sees about an allocation attempt.
#[derive(Clone, Copy, Debug)]
pub struct AllocRequest {
    /// 1-based number of the attempt (failed attempts count).
    pub attempt: u64,
    /// Requested layout.
    pub layout: Layout,
    /// Index of the CPU whose context allocates.
    pub cpu: u32,
    /// IRQL of the caller.
    pub irql: Irql,
}

/// Decides whether an allocation attempt fails (`true` = fail).
pub type FaultHook = Arc<dyn Fn(&AllocRequest) -> bool + Send + Sync>;

/// Allocator counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Allocation attempts (successful + failed).
    pub attempts: u64,
    /// Successful allocations.
    pub allocations: u64,
    /// Failed (injected) allocations.
    pub failed: u64,
    /// Successful frees.
    pub frees: u64,
    /// Objects live now.
    pub live_objects: u64,
    /// Bytes live now (requested sizes).
    pub live_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_bytes: u64,
    /// Highest `live_objects` seen.
    pub peak_objects: u64,
    /// Bytes ever allocated.
    pub total_bytes: u64,
    /// Bytes in quarantine now.
    pub quarantine_bytes: u64,
}

/// A block that was allocated and not freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAllocation {
    /// Address.
    pub addr: usize,
    /// Requested layout.
    pub layout: Layout,
    /// Attempt number that produced it (see [`AllocRequest::attempt`]).
    pub attempt: u64,
    /// CPU index of the allocating context.
    pub cpu: u32,
}

/// A problem found by `free` or by the quarantine check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AllocProblem {
    /// Never allocated, or freed with another layout.
    Invalid(String),
    /// Already freed.
    Double(String),
    /// A quarantined block's poison was overwritten.
    Overwritten(String),
}

struct Quarantined {
    layout: Layout,
    sys: Layout,
    /// On its own page, now `PROT_NONE` (its `sys` is the page); unmapped when evicted.
    guard: bool,
}

#[derive(Default)]
struct Inner {
    live: BTreeMap<usize, LiveAllocation>,
    quarantine: VecDeque<usize>,
    quarantined: BTreeMap<usize, Quarantined>,
    /// Live blocks that have a page of their own (guard-page mode).
    guarded_live: std::collections::BTreeSet<usize>,
    /// Whether new blocks (of at most one page) get a page of their own.
    guard_pages: bool,
    stats: AllocStats,
    fail_every: u64,
    fail_next: u64,
    hook: Option<FaultHook>,
}

/// The allocator of one machine.
pub(crate) struct SimAllocator {
    inner: Mutex<Inner>,
}

/// The layout actually requested from the system: at least 8-aligned, size a non-zero multiple of 8,
/// so that every block is covered exactly by `u64` words.
fn sys_layout(layout: Layout) -> Layout {
    let align = layout.align().max(8);
    let size = layout.size().max(1).next_multiple_of(8);
    // Size rounded up to 8 cannot overflow isize for any valid Layout with align <= 2^29... but be safe.
    Layout::from_size_align(size, align).unwrap_or(layout)
}

/// Fills `words` u64 words at `ptr` with `value`, atomically word by word.
///
/// # Safety
/// `ptr` is 8-aligned and valid for writes of `words * 8` bytes.
unsafe fn fill_words(ptr: *mut u8, words: usize, value: u64) {
    for i in 0..words {
        // SAFETY: in bounds and 8-aligned by the caller's contract; accesses to this memory that may race
        // (buggy use-after-free readers in parallel mode) are atomic as well.
        let word = unsafe { AtomicU64::from_ptr(ptr.add(i * 8).cast::<u64>()) };
        word.store(value, Ordering::Relaxed);
    }
}

/// Whether all words read as `value`.
///
/// # Safety
/// `ptr` is 8-aligned and valid for reads of `words * 8` bytes.
unsafe fn words_are(ptr: *const u8, words: usize, value: u64) -> bool {
    (0..words).all(|i| {
        // SAFETY: in bounds and aligned by the caller's contract; atomic loads only.
        let word = unsafe { AtomicU64::from_ptr(ptr.add(i * 8).cast::<u64>().cast_mut()) };
        word.load(Ordering::Relaxed) == value
    })
}

impl SimAllocator {
    pub(crate) fn new(fail_every: u64) -> Self {
        SimAllocator {
            inner: Mutex::new(Inner {
                fail_every,
                // Reserved up front: growing a queue of a million entries copies it and faults in
                // fresh pages, milliseconds inside one `free`, which a visit's DPC figure would
                // count. Pages are only touched as the quarantine fills.
                quarantine: VecDeque::with_capacity(QUARANTINE_LIMIT / QUARANTINED_BLOCK_BYTES),
                ..Inner::default()
            }),
        }
    }

    pub(crate) fn allocate(&self, layout: Layout, cpu: u32, irql: Irql) -> Option<NonNull<u8>> {
        let (request, mut fail, hook, guard_pages) = {
            let mut g = self.inner.lock();
            g.stats.attempts += 1;
            let request = AllocRequest {
                attempt: g.stats.attempts,
                layout,
                cpu,
                irql,
            };
            let mut fail = g.stats.attempts.checked_rem(g.fail_every) == Some(0);
            if g.fail_next > 0 {
                g.fail_next -= 1;
                fail = true;
            }
            (request, fail, g.hook.clone(), g.guard_pages)
        };
        if !fail {
            if let Some(hook) = hook {
                fail = hook(&request);
            }
        }
        if fail {
            self.inner.lock().stats.failed += 1;
            return None;
        }
        let sys = sys_layout(layout);
        let page = page_size();
        let guard = guard_pages && sys.size() <= page && sys.align() <= page;
        let ptr = if guard {
            map_page()?
        } else {
            // SAFETY: `sys` has a non-zero size.
            NonNull::new(unsafe { alloc(sys) })?
        };
        // SAFETY: fresh block of at least `sys.size()` bytes, 8-aligned (align >= 8, or page-aligned),
        // size a multiple of 8.
        unsafe { fill_words(ptr.as_ptr(), sys.size() / 8, FRESH) };
        let mut g = self.inner.lock();
        let addr = ptr.as_ptr() as usize;
        if guard {
            super::freed_pages::note_mapped(addr);
            g.guarded_live.insert(addr);
        }
        g.live.insert(
            addr,
            LiveAllocation {
                addr,
                layout,
                attempt: request.attempt,
                cpu,
            },
        );
        let s = &mut g.stats;
        s.allocations += 1;
        s.live_objects += 1;
        s.live_bytes += layout.size() as u64;
        s.total_bytes += layout.size() as u64;
        s.peak_bytes = s.peak_bytes.max(s.live_bytes);
        s.peak_objects = s.peak_objects.max(s.live_objects);
        Some(ptr)
    }

    /// Frees (poisons and quarantines) a block. Returns the problems found.
    pub(crate) fn free(&self, ptr: NonNull<u8>, layout: Layout) -> Vec<AllocProblem> {
        let addr = ptr.as_ptr() as usize;
        let mut problems = Vec::new();
        let mut g = self.inner.lock();
        match g.live.get(&addr) {
            Some(live) if live.layout == layout => {}
            Some(live) => {
                problems.push(AllocProblem::Invalid(format!(
                    "free of {addr:#x} with layout {layout:?}, but it was allocated with {:?}",
                    live.layout
                )));
                return problems;
            }
            None => {
                if g.quarantined.contains_key(&addr) {
                    problems.push(AllocProblem::Double(format!(
                        "double free of {addr:#x} ({layout:?})"
                    )));
                } else {
                    problems.push(AllocProblem::Invalid(format!(
                        "free of {addr:#x} ({layout:?}) that was never allocated"
                    )));
                }
                return problems;
            }
        }
        g.live.remove(&addr);
        let guard = g.guarded_live.remove(&addr);
        let mut sys = sys_layout(layout);
        // SAFETY: the block is ours (found in `live`), 8-aligned with a size that is a multiple of 8.
        unsafe { fill_words(ptr.as_ptr(), sys.size() / 8, POISON) };
        if guard {
            // The whole page is the quarantined unit.
            sys = Layout::from_size_align(page_size(), 1).unwrap_or(sys);
            // SAFETY: `addr` is the start of a page we mapped (guarded_live) and nothing of the
            // allocator's own refers into it any more; a reader that still does faults, which is the
            // point.
            let rc =
                unsafe { libc::mprotect(addr as *mut libc::c_void, sys.size(), libc::PROT_NONE) };
            assert_eq!(rc, 0, "mprotect(PROT_NONE) of a guard page failed");
            super::freed_pages::note_freed(addr, layout.size());
        }
        let s = &mut g.stats;
        s.frees += 1;
        s.live_objects -= 1;
        s.live_bytes -= layout.size() as u64;
        s.quarantine_bytes += sys.size() as u64;
        g.quarantine.push_back(addr);
        g.quarantined
            .insert(addr, Quarantined { layout, sys, guard });
        while g.stats.quarantine_bytes > QUARANTINE_LIMIT as u64 {
            let Some(old) = g.quarantine.pop_front() else {
                break;
            };
            let Some(q) = g.quarantined.remove(&old) else {
                continue;
            };
            g.stats.quarantine_bytes -= q.sys.size() as u64;
            if q.guard {
                // A write after free would have faulted; nothing to check.
                // SAFETY: a page we mapped, no longer tracked.
                unsafe { unmap_page(old) };
                continue;
            }
            // SAFETY: quarantined blocks are ours, aligned and sized as checked on allocation.
            if !unsafe { words_are(old as *const u8, q.sys.size() / 8, POISON) } {
                problems.push(AllocProblem::Overwritten(format!(
                    "freed block {old:#x} ({:?}) was written after free",
                    q.layout
                )));
            }
            // SAFETY: allocated by `alloc(q.sys)` and not referenced by the allocator any more.
            unsafe { dealloc(old as *mut u8, q.sys) };
        }
        problems
    }

    /// True if `[ptr, ptr + len)` lies inside one quarantined (freed) block and reads as poison.
    pub(crate) fn is_poisoned(&self, ptr: *const u8, len: usize) -> bool {
        let g = self.inner.lock();
        let addr = ptr as usize;
        let Some((&base, q)) = g.quarantined.range(..=addr).next_back() else {
            return false;
        };
        let end = addr.saturating_add(len);
        if end > base + q.sys.size() {
            return false;
        }
        if q.guard {
            // No access at all: poisoned in the strongest sense (and reading it would fault).
            return true;
        }
        let first = (addr - base) / 8;
        let last = (end - base).div_ceil(8).max(first + 1);
        // SAFETY: the words [first, last) are inside the quarantined block, which stays allocated while we
        // hold the lock; `base` is 8-aligned.
        unsafe { words_are((base + first * 8) as *const u8, last - first, POISON) }
    }

    /// True if `ptr` is the start of a quarantined (freed, poisoned) block.
    pub(crate) fn is_quarantined(&self, ptr: *const u8) -> bool {
        self.inner.lock().quarantined.contains_key(&(ptr as usize))
    }

    /// Checks every quarantined block's poison; returns the addresses that were overwritten.
    pub(crate) fn corrupted_quarantine(&self) -> Vec<usize> {
        let g = self.inner.lock();
        g.quarantined
            .iter()
            .filter(|(&addr, q)| {
                // Guard pages cannot be read; a write to them faults instead.
                // SAFETY: quarantined blocks stay allocated while we hold the lock.
                !q.guard && !unsafe { words_are(addr as *const u8, q.sys.size() / 8, POISON) }
            })
            .map(|(&addr, _)| addr)
            .collect()
    }

    pub(crate) fn live(&self) -> Vec<LiveAllocation> {
        self.inner.lock().live.values().copied().collect()
    }

    pub(crate) fn stats(&self) -> AllocStats {
        self.inner.lock().stats.clone()
    }

    pub(crate) fn fail_next(&self, count: u64) {
        self.inner.lock().fail_next = count;
    }

    pub(crate) fn set_fail_every(&self, every: u64) {
        self.inner.lock().fail_every = every;
    }

    pub(crate) fn set_hook(&self, hook: Option<FaultHook>) {
        self.inner.lock().hook = hook;
    }

    pub(crate) fn set_guard_pages(&self, on: bool) {
        self.inner.lock().guard_pages = on;
    }

    /// True if `ptr` is inside a page that a guard-page block was freed from and that is still held
    /// (protected) in quarantine.
    pub(crate) fn is_guard_protected(&self, ptr: *const u8) -> bool {
        let page = (ptr as usize) & !(page_size() - 1);
        self.inner
            .lock()
            .quarantined
            .get(&page)
            .is_some_and(|q| q.guard)
    }
}

/// Maps one fresh read-write page.
fn map_page() -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choice; no existing memory is
    // affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page_size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast::<u8>())
}

/// Unmaps a page from [`map_page`].
///
/// # Safety
/// `addr` came from `map_page` and nothing uses the page any more.
unsafe fn unmap_page(addr: usize) {
    // SAFETY: per the caller.
    let rc = unsafe { libc::munmap(addr as *mut libc::c_void, page_size()) };
    debug_assert_eq!(rc, 0, "munmap of a guard page failed");
}

impl Drop for SimAllocator {
    fn drop(&mut self) {
        // Quarantined blocks go back to the system. Live blocks are leaked on purpose: they are the
        // caller's leak, and something outside the machine may still point at them.
        let g = self.inner.get_mut();
        for (addr, q) in std::mem::take(&mut g.quarantined) {
            if q.guard {
                // SAFETY: a page we mapped, freed by its user, and no longer tracked.
                unsafe { unmap_page(addr) };
                continue;
            }
            // SAFETY: allocated by `alloc(q.sys)`, freed by its user, and no longer tracked.
            unsafe { dealloc(addr as *mut u8, q.sys) };
        }
    }
}
