//! Pool: tagged blocks with leak accounting, allocation failures by count, uninitialised blocks filled
//! with a pattern, freed blocks poisoned and quarantined so that writes after free are found.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU8, Ordering};
use std::alloc::Layout;
use std::collections::{HashMap, VecDeque};
use std::format;
use std::string::String;
use std::sync::Mutex;
use std::vec::Vec;

use super::config::MachineConfig;
use super::kernel::{enter, Kernel, Rule, DISPATCH};

/// What a freed block is filled with.
pub(super) const POISON: u8 = 0xDD;
/// What an uninitialised block is filled with.
const UNINITIALISED: u8 = 0xCC;
/// Quarantined bytes kept before the oldest blocks are checked and released.
const QUARANTINE_LIMIT: usize = 64 << 20;
/// `NonPagedPool`.
const NON_PAGED_POOL: i32 = 0;
/// `POOL_FLAG_*` bits this emulation understands (USE_QUOTA, UNINITIALIZED, CACHE_ALIGNED, NON_PAGED,
/// NON_PAGED_EXECUTE, PAGED).
const KNOWN_POOL_FLAGS: u64 = 0x1 | 0x2 | 0x8 | 0x40 | 0x80 | 0x100;

struct Block {
    size: usize,
    tag: u32,
    sequence: u64,
}

#[derive(Default)]
struct Inner {
    live: HashMap<usize, Block>,
    quarantine: VecDeque<(usize, usize, u32)>,
    quarantine_bytes: usize,
    attempts: u64,
    failed: u64,
    frees: u64,
    live_bytes: usize,
    peak_bytes: usize,
    /// Blocks whose poison was found broken when they left the quarantine.
    corrupted: Vec<String>,
}

/// Counters of the pool, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolReport {
    /// Allocation attempts.
    pub attempts: u64,
    /// Attempts failed on purpose.
    pub failed: u64,
    /// Blocks freed.
    pub frees: u64,
    /// Blocks still allocated.
    pub live_blocks: usize,
    /// Largest number of bytes allocated at once.
    pub peak_bytes: usize,
    /// Blocks still allocated per tag (`u32::from_le_bytes(*b"Epch")`), by tag.
    pub live_by_tag: Vec<(u32, usize)>,
}

/// The emulated pool.
pub(super) struct Pool {
    inner: Mutex<Inner>,
    /// Attempts (1-based) that fail: `first..first + count`.
    fail: Option<(u64, u64)>,
    /// An emulated thread (id, 0: none) whose every allocation fails.
    failing_thread: std::sync::atomic::AtomicU64,
}

fn layout(size: usize) -> Layout {
    let align = if size >= 4096 { 4096 } else { 16 };
    Layout::from_size_align(size.max(1), align).expect("pool block layout")
}

fn fill(start: usize, len: usize, byte: u8) {
    for address in start..start + len {
        // SAFETY: inside a block this pool allocated; atomic so that a racing (buggy) access by the
        // driver is a detectable corruption, not undefined behaviour of the emulation itself.
        unsafe { (*(address as *const AtomicU8)).store(byte, Ordering::Relaxed) };
    }
}

/// The offset of the first byte of a quarantined block that is no longer poison.
fn poison_intact(start: usize, len: usize) -> Option<usize> {
    let byte = |address: usize| {
        // SAFETY: a quarantined block this pool still owns; atomic, see `fill`.
        unsafe { (*(address as *const AtomicU8)).load(Ordering::Relaxed) }
    };
    (start..start + len)
        .find(|&a| byte(a) != POISON)
        .map(|a| a - start)
}

impl Pool {
    pub(super) fn new(config: &MachineConfig) -> Pool {
        Pool {
            inner: Mutex::new(Inner::default()),
            fail: config.fail_allocations,
            failing_thread: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Makes every allocation of emulated thread `thread` fail until called with `None`.
    pub(super) fn fail_thread(&self, thread: Option<u64>) {
        self.failing_thread
            .store(thread.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates `size` bytes with `tag`, zeroed or filled with the uninitialised pattern; null when the
    /// attempt is one configured to fail.
    pub(super) fn allocate(&self, size: usize, tag: u32, zeroed: bool) -> *mut c_void {
        let failing_thread = self
            .failing_thread
            .load(std::sync::atomic::Ordering::SeqCst);
        let this_thread_fails = failing_thread != 0
            && super::kernel::try_with_context(|c| c.thread) == Some(failing_thread);
        let mut inner = self.inner();
        inner.attempts += 1;
        let attempt = inner.attempts;
        if this_thread_fails
            || self
                .fail
                .is_some_and(|(first, count)| attempt >= first && attempt < first + count)
        {
            inner.failed += 1;
            return core::ptr::null_mut();
        }
        // SAFETY: a non-zero size (layout() rounds 0 up to 1).
        let block = unsafe { std::alloc::alloc(layout(size)) };
        assert!(!block.is_null(), "host allocation of {size} bytes failed");
        fill(block as usize, size, if zeroed { 0 } else { UNINITIALISED });
        inner.live.insert(
            block as usize,
            Block {
                size,
                tag,
                sequence: attempt,
            },
        );
        inner.live_bytes += size;
        inner.peak_bytes = inner.peak_bytes.max(inner.live_bytes);
        block.cast()
    }

    /// The size of the live block starting at `block`.
    pub(super) fn size_of(&self, block: usize) -> Option<usize> {
        self.inner().live.get(&block).map(|b| b.size)
    }

    /// Frees a block: checks the tag, poisons it and quarantines it.
    pub(super) fn free(&self, block: usize, tag: u32) -> Result<(), String> {
        let mut inner = self.inner();
        let Some(found) = inner.live.remove(&block) else {
            return Err(format!(
                "{block:#x} is not an allocated pool block (double free or foreign pointer)"
            ));
        };
        if found.tag != tag {
            inner.live.insert(block, found);
            return Err(format!(
                "block {block:#x} freed with tag {tag:#x} but allocated with tag {:#x} (bug check 0xC2)",
                inner.live[&block].tag
            ));
        }
        inner.frees += 1;
        inner.live_bytes -= found.size;
        fill(block, found.size, POISON);
        inner.quarantine.push_back((block, found.size, found.tag));
        inner.quarantine_bytes += found.size;
        while inner.quarantine_bytes > QUARANTINE_LIMIT {
            let (old, size, old_tag) = inner.quarantine.pop_front().expect("non-empty quarantine");
            inner.quarantine_bytes -= size;
            if let Some(offset) = poison_intact(old, size) {
                inner
                    .corrupted
                    .push(format!("freed block {old:#x} ({size} bytes, tag {old_tag:#x}) written at +{offset:#x} after free"));
            }
            // SAFETY: allocated by `allocate` with this layout, freed once (it left the quarantine).
            unsafe { std::alloc::dealloc(old as *mut u8, layout(size)) };
        }
        Ok(())
    }

    /// Blocks still allocated, one line each.
    pub(super) fn leaks(&self) -> Vec<String> {
        let inner = self.inner();
        let mut leaks: Vec<(u64, String)> = inner
            .live
            .iter()
            .map(|(address, b)| {
                (
                    b.sequence,
                    format!(
                        "pool block {address:#x}: {} bytes, tag {:?}, allocation #{} never freed",
                        b.size,
                        String::from_utf8_lossy(&b.tag.to_le_bytes()),
                        b.sequence
                    ),
                )
            })
            .collect();
        leaks.sort();
        leaks.into_iter().map(|(_, line)| line).collect()
    }

    /// Freed blocks written after they were freed.
    pub(super) fn corruption(&self) -> Vec<String> {
        let inner = self.inner();
        let mut found = inner.corrupted.clone();
        for &(block, size, tag) in &inner.quarantine {
            if let Some(offset) = poison_intact(block, size) {
                found.push(format!(
                    "freed block {block:#x} ({size} bytes, tag {:?}) written at +{offset:#x} after free",
                    String::from_utf8_lossy(&tag.to_le_bytes())
                ));
            }
        }
        found
    }

    /// The counters.
    pub(super) fn report(&self) -> PoolReport {
        let inner = self.inner();
        PoolReport {
            attempts: inner.attempts,
            failed: inner.failed,
            frees: inner.frees,
            live_blocks: inner.live.len(),
            peak_bytes: inner.peak_bytes,
            live_by_tag: {
                let mut tags: Vec<(u32, usize)> = Vec::new();
                for block in inner.live.values() {
                    match tags.iter_mut().find(|(tag, _)| *tag == block.tag) {
                        Some((_, count)) => *count += 1,
                        None => tags.push((block.tag, 1)),
                    }
                }
                tags.sort_unstable();
                tags
            },
        }
    }

    /// Returns the quarantine to the host (a machine that finished cleanly: nothing uses it).
    pub(super) fn release_quarantine(&self) {
        let mut inner = self.inner();
        while let Some((block, size, _)) = inner.quarantine.pop_front() {
            // SAFETY: allocated by `allocate` with this layout, freed once.
            unsafe { std::alloc::dealloc(block as *mut u8, layout(size)) };
        }
        inner.quarantine_bytes = 0;
    }
}

/// Checks the pool rules shared by both allocation routines.
fn check_pool_irql(kernel: &Kernel, routine: &str, irql: u8, non_paged: bool) {
    if irql >= DISPATCH && !non_paged {
        kernel.fail(format!("{routine}: paged pool requested at DISPATCH_LEVEL"));
    }
}

/// `ExAllocatePoolWithTag` (the block is not zeroed).
///
/// # Safety
/// None beyond the DDI's: the block is freed with `ExFreePoolWithTag` and `tag`.
#[no_mangle]
pub unsafe extern "system" fn ExAllocatePoolWithTag(
    pool_type: i32,
    bytes: usize,
    tag: u32,
) -> *mut c_void {
    let (kernel, irql) = enter("ExAllocatePoolWithTag", Rule::AtMostDispatch);
    let non_paged = pool_type == NON_PAGED_POOL || pool_type == crate::nt::NON_PAGED_POOL_NX;
    check_pool_irql(&kernel, "ExAllocatePoolWithTag", irql, non_paged);
    kernel.pool.allocate(bytes, tag, false)
}

/// `ExAllocatePool2` (resolved with `MmGetSystemRoutineAddress`): zeroed unless
/// `POOL_FLAG_UNINITIALIZED`; null for tag 0.
///
/// # Safety
/// None beyond the DDI's: the block is freed with `ExFreePoolWithTag` and `tag`.
pub unsafe extern "system" fn ExAllocatePool2(flags: u64, bytes: usize, tag: u32) -> *mut c_void {
    let (kernel, irql) = enter("ExAllocatePool2", Rule::AtMostDispatch);
    if flags & !KNOWN_POOL_FLAGS != 0 {
        kernel.fail(format!(
            "ExAllocatePool2: unknown POOL_FLAG bits {flags:#x}"
        ));
    }
    let non_paged = flags & (crate::nt::POOL_FLAG_NON_PAGED | 0x80) != 0;
    check_pool_irql(&kernel, "ExAllocatePool2", irql, non_paged);
    if tag == 0 {
        return core::ptr::null_mut();
    }
    kernel
        .pool
        .allocate(bytes, tag, flags & crate::nt::POOL_FLAG_UNINITIALIZED == 0)
}

/// Frees a pool block after checking that no kernel object inside it (a queued or running DPC, an
/// armed timer, an event with waiters) is still in use.
pub(super) fn free_checked(kernel: &Kernel, start: usize, tag: u32, what: &str) {
    if let Some(size) = kernel.pool.size_of(start) {
        let mut state = kernel.lock();
        let mut busy = state.dpc.busy_in(&state.cpus, start, size);
        busy.extend(state.sync.busy_in(start, size));
        busy.extend(state.work.busy_in(start, size));
        state.dpc.forget(start, size);
        state.sync.forget(start, size);
        state.work.forget(start, size);
        drop(state);
        if !busy.is_empty() {
            kernel.fail(format!(
                "{what}({start:#x}) frees kernel objects still in use: {}",
                busy.join("; ")
            ));
        }
    }
    if let Err(error) = kernel.pool.free(start, tag) {
        kernel.fail(format!("{what}: {error}"));
    }
}

/// `ExFreePoolWithTag`.
///
/// # Safety
/// `block` came from one of the allocation routines with `tag`.
#[no_mangle]
pub unsafe extern "system" fn ExFreePoolWithTag(block: *mut c_void, tag: u32) {
    let (kernel, _) = enter("ExFreePoolWithTag", Rule::AtMostDispatch);
    free_checked(&kernel, block as usize, tag, "ExFreePoolWithTag");
}
