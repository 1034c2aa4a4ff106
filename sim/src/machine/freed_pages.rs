//! Guard pages of freed blocks, for the torture's fault handler: with guard pages on, every block
//! of at most a page has a page of its own that becomes `PROT_NONE` when it is freed, so a fault
//! there is a read of freed memory, whatever the block held (a torture object, a list or map node,
//! a chain link, a work block, a core structure). Kept in fixed arrays of atomics indexed by a hash
//! of the page, so that a signal handler can read them (atomic loads only). A collision overwrites
//! an older page: a fault there is then reported as an unknown one (diagnostics only, never a
//! false "freed").

use std::sync::atomic::{AtomicUsize, Ordering};

const SLOTS: usize = 1 << 16;

static PAGES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static SIZES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static PAGE_MASK: AtomicUsize = AtomicUsize::new(!0xFFF);

fn slot(page: usize) -> usize {
    (page >> 12) % SLOTS
}

/// The page `block` (a page of its own) was freed: its `size` bytes are no longer accessible.
pub(super) fn note_freed(block: usize, size: usize) {
    PAGE_MASK.store(!(super::page_size() - 1), Ordering::Relaxed);
    let k = slot(block);
    PAGES[k].store(0, Ordering::Release);
    SIZES[k].store(size, Ordering::Release);
    PAGES[k].store(block, Ordering::Release);
}

/// The page at `block` holds a live block again (the kernel reused the address).
pub(super) fn note_mapped(block: usize) {
    let k = slot(block);
    let _ = PAGES[k].compare_exchange(block, 0, Ordering::AcqRel, Ordering::Relaxed);
}

/// The size of the freed block whose guard page holds `addr`, if one was freed there.
/// Async-signal-safe: atomic loads only.
pub fn freed_block_at(addr: usize) -> Option<usize> {
    let page = addr & PAGE_MASK.load(Ordering::Relaxed);
    if page == 0 {
        return None;
    }
    let k = slot(page);
    let size = SIZES[k].load(Ordering::Acquire);
    (PAGES[k].load(Ordering::Acquire) == page).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::super::alloc::SimAllocator;
    use super::freed_block_at;
    use kepoch::platform::Irql;
    use std::alloc::Layout;

    /// A block on a guard page is found by any address on its page once freed, not before, and
    /// not once the page holds a live block again.
    #[test]
    fn a_freed_guard_page_is_found_by_any_address_on_it() {
        let pool = SimAllocator::new(0);
        pool.set_guard_pages(true);
        let layout = Layout::from_size_align(48, 8).unwrap();
        let block = pool.allocate(layout, 0, Irql::PASSIVE).expect("memory");
        let addr = block.as_ptr() as usize;
        assert_eq!(freed_block_at(addr + 0x20), None, "live");
        assert!(pool.free(block, layout).is_empty());
        assert_eq!(freed_block_at(addr + 0x20), Some(48));
        assert_eq!(freed_block_at(addr), Some(48));
        super::note_mapped(addr);
        assert_eq!(freed_block_at(addr + 0x20), None, "mapped again");
    }
}
