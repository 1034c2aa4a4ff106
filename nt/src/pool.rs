//! Non-paged pool with a tag: `ExAllocatePool2` where the kernel has it (resolved at run time), else
//! `ExAllocatePoolWithTag(NonPagedPoolNx)`; blocks aligned for any [`Layout`].

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::routines::OptionalRoutines;
use crate::sys;

/// A pool tag: the four characters `!poolused` and PoolMon show for a block (`PoolTag::new(*b"Epch")`
/// is the C literal `'hcpE'`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolTag(u32);

/// A pool tag that cannot be used: not zero, printable ASCII, zeros only at the end (a tag of fewer
/// than four characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPoolTag {
    /// The bytes given.
    pub bytes: [u8; 4],
}

impl fmt::Display for BadPoolTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool tag {:?}: a tag is one to four printable ASCII characters (zero bytes only at the end)",
            self.bytes
        )
    }
}

impl PoolTag {
    /// The tag whose bytes in memory are `bytes`, or why it cannot be one.
    pub const fn new(bytes: [u8; 4]) -> Result<PoolTag, BadPoolTag> {
        let mut i = 0;
        let mut ended = false;
        while i < 4 {
            let byte = bytes[i];
            if byte == 0 {
                ended = true;
            } else if ended || byte < 0x20 || byte > 0x7E {
                return Err(BadPoolTag { bytes });
            }
            i += 1;
        }
        if bytes[0] == 0 {
            return Err(BadPoolTag { bytes });
        }
        Ok(PoolTag(u32::from_le_bytes(bytes)))
    }

    /// The `ULONG` the pool routines take.
    pub const fn value(self) -> u32 {
        self.0
    }
}

/// Alignment NT pool guarantees for blocks smaller than a page on x64 (`MEMORY_ALLOCATION_ALIGNMENT`).
pub const POOL_ALIGNMENT: usize = 16;

/// How a [`Layout`] is served from pool: directly (alignment the pool already gives) or over-allocated
/// with the original block address stored just below the aligned start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolBlock {
    /// Allocate `size` bytes and use them as they are.
    Direct {
        /// Bytes to request (at least 1).
        size: usize,
    },
    /// Allocate `size` bytes, use [`aligned_start`] inside them, and keep the base below it.
    OverAligned {
        /// Bytes to request.
        size: usize,
    },
}

impl PoolBlock {
    /// The request for `layout`, or `None` when the padded size overflows.
    pub fn for_layout(layout: Layout) -> Option<PoolBlock> {
        if layout.align() <= POOL_ALIGNMENT {
            return Some(PoolBlock::Direct {
                size: layout.size().max(1),
            });
        }
        let size = layout
            .size()
            .checked_add(layout.align())?
            .checked_add(core::mem::size_of::<usize>())?;
        Some(PoolBlock::OverAligned { size })
    }

    /// Bytes to request from the pool.
    pub fn size(self) -> usize {
        match self {
            PoolBlock::Direct { size } | PoolBlock::OverAligned { size } => size,
        }
    }
}

/// The first address at or above `base + size_of::<usize>()` that is aligned to `align` (a power of
/// two): the start of an over-aligned block, leaving room for the base address right below it.
pub fn aligned_start(base: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (base + core::mem::size_of::<usize>() + align - 1) & !(align - 1)
}

/// Non-paged pool with one tag. `NtPlatform` allocates everything of its domain with the domain's;
/// a driver makes another for its own blocks (`Pool::new(tag, platform.routines())`).
#[derive(Clone, Copy)]
pub struct Pool {
    tag: PoolTag,
    allocate_pool2: Option<sys::ExAllocatePool2Fn>,
}

impl Pool {
    /// Pool tagged `tag`, through `ExAllocatePool2` when `routines` resolved it.
    pub fn new(tag: PoolTag, routines: &OptionalRoutines) -> Pool {
        Pool {
            tag,
            allocate_pool2: routines.allocate_pool2(),
        }
    }

    /// The tag of every block.
    pub fn tag(&self) -> PoolTag {
        self.tag
    }

    fn allocate_bytes(&self, bytes: usize) -> *mut u8 {
        match self.allocate_pool2 {
            // SAFETY: ExAllocatePool2 accepts any size with a non-zero tag (PoolTag guarantees it) at
            // IRQL <= DISPATCH with a non-paged flag; it returns null on failure.
            Some(allocate) => unsafe {
                allocate(
                    sys::POOL_FLAG_NON_PAGED | sys::POOL_FLAG_UNINITIALIZED,
                    bytes,
                    self.tag.value(),
                )
            }
            .cast(),
            // SAFETY: as above for ExAllocatePoolWithTag with NonPagedPoolNx.
            None => unsafe {
                sys::ExAllocatePoolWithTag(sys::NON_PAGED_POOL_NX, bytes, self.tag.value())
            }
            .cast(),
        }
    }

    /// A non-paged block for `layout` (uninitialised), or `None`. IRQL <= DISPATCH_LEVEL.
    pub fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        let block = PoolBlock::for_layout(layout)?;
        let base = NonNull::new(self.allocate_bytes(block.size()))?;
        match block {
            PoolBlock::Direct { .. } => Some(base),
            PoolBlock::OverAligned { .. } => {
                let offset =
                    aligned_start(base.as_ptr() as usize, layout.align()) - base.as_ptr() as usize;
                // SAFETY: PoolBlock reserves `align + size_of::<usize>()` bytes beyond `size`, so the
                // aligned start, the usize below it and `size` bytes above it lie inside the block.
                unsafe {
                    let start = base.as_ptr().add(offset);
                    start
                        .sub(core::mem::size_of::<usize>())
                        .cast::<*mut u8>()
                        .write_unaligned(base.as_ptr());
                    Some(NonNull::new_unchecked(start))
                }
            }
        }
    }

    /// Frees a block of [`Pool::allocate`]. IRQL <= DISPATCH_LEVEL.
    ///
    /// # Safety
    /// `ptr` came from `allocate(layout)` of a pool with this tag and is freed once.
    pub unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        let base = match PoolBlock::for_layout(layout) {
            Some(PoolBlock::OverAligned { .. }) => {
                // SAFETY: `allocate` stored the block's base right below the aligned start.
                unsafe {
                    ptr.as_ptr()
                        .sub(core::mem::size_of::<usize>())
                        .cast::<*mut u8>()
                        .read_unaligned()
                }
            }
            _ => ptr.as_ptr(),
        };
        // SAFETY: `base` is the start of a pool block allocated with this tag (caller contract),
        // freed once at IRQL <= DISPATCH.
        unsafe { sys::ExFreePoolWithTag(base.cast(), self.tag.value()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_tags_are_one_to_four_printable_characters() {
        assert_eq!(PoolTag::new(*b"Epch").unwrap().value(), 0x6863_7045); // 'hcpE'
        assert_eq!(PoolTag::new(*b"Ab\0\0").unwrap().value(), 0x6241);
        assert!(PoolTag::new(*b"Ex m").is_ok());
        for bad in [
            [0; 4],
            *b"\0abc",
            *b"a\0bc",
            *b"ab\x07c",
            [b'a', 0xE9, b'b', b'c'],
        ] {
            let error = PoolTag::new(bad).unwrap_err();
            assert_eq!(error.bytes, bad);
        }
        extern crate std;
        use std::string::ToString;
        let message = PoolTag::new(*b"\0abc").unwrap_err().to_string();
        assert!(
            message.starts_with("pool tag [0, 97, 98, 99]: "),
            "{message}"
        );
    }

    #[test]
    fn small_alignments_are_served_directly() {
        for align in [1, 2, 4, 8, 16] {
            let layout = Layout::from_size_align(24, align).unwrap();
            assert_eq!(
                PoolBlock::for_layout(layout),
                Some(PoolBlock::Direct { size: 24 })
            );
        }
        let empty = Layout::from_size_align(0, 8).unwrap();
        assert_eq!(PoolBlock::for_layout(empty).unwrap().size(), 1);
    }

    #[test]
    fn over_aligned_blocks_fit_header_and_payload() {
        for align in [32usize, 64, 128, 4096] {
            for size in [0usize, 1, 63, 64, 65, 1000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let block = PoolBlock::for_layout(layout).unwrap();
                assert!(matches!(block, PoolBlock::OverAligned { .. }));
                // Any base the pool may return: 16-aligned, and also odd ones to be safe.
                for base in (0x1000usize..0x1000 + 2 * align).step_by(8) {
                    let start = aligned_start(base, align);
                    assert_eq!(start % align, 0);
                    assert!(start >= base + core::mem::size_of::<usize>());
                    assert!(
                        start + size <= base + block.size(),
                        "{base:#x} {align} {size}"
                    );
                }
            }
        }
    }
}
