//! Retired items: the header every retirable block starts with, and the per-participant FIFO of
//! retired items waiting for their epoch to be released.

use crate::platform::{Platform, PoolTag};
use crate::sync::{AtomicPtr, AtomicU64, AtomicU8, Ordering};
use core::alloc::Layout;
use core::ptr::{self, NonNull};

/// Lifecycle of a retirable block, used for double-retire detection.
pub(crate) mod state {
    /// Allocated, reachable by its owner, not retired.
    pub(crate) const LIVE: u8 = 0;
    /// Retired (memory) or scheduled (work item): in some retired list.
    pub(crate) const RETIRED: u8 = 1;
    /// Work item handed to a passive thread.
    pub(crate) const QUEUED: u8 = 2;
    /// Work item whose schedule was cancelled before it was handed over; still in a retired list.
    pub(crate) const CANCELLED: u8 = 3;
    /// Work item cancelled and scheduled again while its old entry still waits in a retired list:
    /// when that entry is disposed of, the item is retired again with a fresh stamp.
    pub(crate) const RESCHEDULED: u8 = 4;
}

/// Disposes of a released block: drops the value and frees it (memory), or hands it to a passive
/// thread (work item); the function is chosen per block type when the block is allocated.
/// The second argument is the domain the block belongs to.
pub(crate) type DisposeFn = unsafe fn(*mut RetireHeader, *const ());

/// The header at the start of every retirable block.
#[repr(C)]
pub(crate) struct RetireHeader {
    next: AtomicPtr<RetireHeader>,
    /// Global epoch at retirement.
    stamp: AtomicU64,
    /// See [`state`].
    pub(crate) state: AtomicU8,
    /// The pool tag the block was allocated with (`Platform::allocate_tagged`), 0 for the platform's
    /// default allocation: the free must name the same tag (in the padding after `state`).
    pub(crate) tag: u32,
    /// Knows the block's type, and so its layout, which is therefore not stored in the header.
    pub(crate) dispose: DisposeFn,
}

// Four words: the block overhead the README states (the model checkers' atomics are larger).
#[cfg(not(any(loom, shuttle)))]
const _: () = assert!(core::mem::size_of::<RetireHeader>() == 32);

impl RetireHeader {
    /// A live header whose block `dispose` disposes of.
    #[inline]
    pub(crate) fn new(dispose: DisposeFn) -> Self {
        Self::tagged(dispose, None)
    }

    /// A live header of a block allocated with `tag` (`None`: the platform's default allocation).
    #[inline]
    pub(crate) fn tagged(dispose: DisposeFn, tag: Option<PoolTag>) -> Self {
        RetireHeader {
            next: AtomicPtr::new(ptr::null_mut()),
            stamp: AtomicU64::new(0),
            state: AtomicU8::new(state::LIVE),
            tag: tag.map_or(0, |tag| tag.0),
            dispose,
        }
    }

    /// Frees the block this header starts with `layout`, through the platform's tagged free when
    /// it was allocated with a tag.
    ///
    /// # Safety
    /// `header` starts a block of `layout` allocated on `platform` (with the header's tag), which
    /// nobody uses any more.
    pub(crate) unsafe fn free_block<P: Platform>(
        header: *mut RetireHeader,
        layout: Layout,
        platform: &P,
    ) {
        // SAFETY: per the caller.
        unsafe {
            let tag = (*header).tag;
            let block = NonNull::new_unchecked(header.cast::<u8>());
            if tag == 0 {
                platform.free(block, layout);
            } else {
                platform.free_tagged(block, layout, PoolTag(tag));
            }
        }
    }

    /// The epoch the block was retired in.
    #[inline]
    pub(crate) fn stamp(&self) -> u64 {
        self.stamp.load(Ordering::Relaxed)
    }
}

/// Retired items of one participant, oldest first. Stamps are non-decreasing along the list because
/// the global epoch only grows and one owner appends at a time. Owner only (or under a lock).
pub(crate) struct RetiredList {
    head: AtomicPtr<RetireHeader>,
    tail: AtomicPtr<RetireHeader>,
    len: AtomicU64,
}

impl RetiredList {
    /// An empty list.
    pub(crate) fn new() -> Self {
        RetiredList {
            head: AtomicPtr::new(ptr::null_mut()),
            tail: AtomicPtr::new(ptr::null_mut()),
            len: AtomicU64::new(0),
        }
    }

    /// Number of items waiting.
    #[inline]
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether nothing is waiting.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `item` with `stamp`.
    ///
    /// # Safety
    /// `item` is a valid header not in any list; the caller is the list's owner.
    #[inline]
    pub(crate) unsafe fn push(&self, item: *mut RetireHeader, stamp: u64) {
        // SAFETY: the caller passes a valid header that nobody else links.
        let header = unsafe { &*item };
        header.stamp.store(stamp, Ordering::Relaxed);
        header.next.store(ptr::null_mut(), Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        if tail.is_null() {
            self.head.store(item, Ordering::Relaxed);
        } else {
            // SAFETY: `tail` is the last item of this list, alive until popped.
            unsafe { &*tail }.next.store(item, Ordering::Relaxed);
        }
        self.tail.store(item, Ordering::Relaxed);
        self.len.store(self.len() + 1, Ordering::Relaxed);
    }

    /// The oldest item's stamp if it is at most `released` (a `pop_released` would return it).
    #[inline]
    pub(crate) fn oldest_released(&self, released: u64) -> Option<u64> {
        let head = self.head.load(Ordering::Relaxed);
        if head.is_null() {
            return None;
        }
        // SAFETY: items in the list stay valid until popped by the owner (us).
        let stamp = unsafe { &*head }.stamp();
        (stamp <= released).then_some(stamp)
    }

    /// Removes and returns the oldest item if its stamp is at most `released`.
    #[inline]
    pub(crate) fn pop_released(&self, released: u64) -> Option<*mut RetireHeader> {
        let head = self.head.load(Ordering::Relaxed);
        if head.is_null() {
            return None;
        }
        // SAFETY: items in the list stay valid until popped by the owner (us).
        let header = unsafe { &*head };
        if header.stamp() > released {
            return None;
        }
        let next = header.next.load(Ordering::Relaxed);
        self.head.store(next, Ordering::Relaxed);
        if next.is_null() {
            self.tail.store(ptr::null_mut(), Ordering::Relaxed);
        }
        self.len.store(self.len() - 1, Ordering::Relaxed);
        Some(head)
    }
}
