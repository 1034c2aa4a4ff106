//! Allocation options: a pool tag per allocation, values built in their block (zeroed, then filled
//! through a reference) instead of on the caller's stack — a kernel stack is 24 KiB, less than a
//! routing table — and variable-size blocks (`[T]` of a length chosen at run time, bytes for C).

use super::*;

/// Types for which all-zero bytes are a valid value: [`Domain::alloc_with`] starts from that value.
///
/// # Safety
/// The all-zero bit pattern of `Self`'s size must be a valid `Self`.
pub unsafe trait Zeroable {}

macro_rules! zeroable {
    ($($t:ty),*) => {
        $(
            // SAFETY: zero is a valid value of every integer, `false`, and a zero atomic.
            unsafe impl Zeroable for $t {}
        )*
    };
}

zeroable!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, bool);
zeroable!(
    core::sync::atomic::AtomicU8,
    core::sync::atomic::AtomicU16,
    core::sync::atomic::AtomicU32,
    core::sync::atomic::AtomicU64,
    core::sync::atomic::AtomicUsize,
    core::sync::atomic::AtomicBool
);

// SAFETY: an array of zero-valid elements is zero-valid (no padding between elements).
unsafe impl<T: Zeroable, const N: usize> Zeroable for [T; N] {}

// SAFETY: `CacheAligned` is `repr(C)` around one `T`: zero bytes are a zero `T` plus padding.
unsafe impl<T: Zeroable> Zeroable for CacheAligned<T> {}

impl<P: Platform> Domain<P> {
    /// [`Domain::alloc`] with a pool tag for this block (what `!poolused` shows for it on NT; the
    /// platform's default allocation otherwise). If the allocation fails, the [`AllocError`] holds
    /// the value.
    ///
    /// ```
    /// # use kepoch::{Config, Domain};
    /// use kepoch::platform::PoolTag;
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let route = domain.alloc_tagged(7u32, PoolTag::from_bytes(*b"Rout")).expect("memory");
    /// // SAFETY: never published: no reader can reach it.
    /// unsafe { domain.retire(route) }.expect("retired once");
    /// ```
    pub fn alloc_tagged<T: Send>(
        &self,
        value: T,
        tag: PoolTag,
    ) -> Result<NonNull<T>, AllocError<T>> {
        let Some(block) = self.alloc_block::<T>(Some(tag)) else {
            return Err(AllocError::new(value));
        };
        // SAFETY: a fresh block's value storage, aligned for `T`.
        unsafe { block.as_ptr().write(value) };
        Ok(block)
    }

    /// Allocates a block (with `tag`, if any) whose value is built in place: zeroed in the block,
    /// then filled by `init` through a reference to it. Nothing of the value's size passes through
    /// the stack, so a table larger than a kernel stack can be built at DISPATCH_LEVEL. `None` if
    /// the allocation fails (if `init` panics, the block leaks). The block is retired and freed
    /// like one from [`Domain::alloc`].
    ///
    /// ```
    /// # use kepoch::{Config, Domain};
    /// use kepoch::platform::PoolTag;
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// // 64 KB: more than a kernel stack holds.
    /// let table = domain
    ///     .alloc_with(Some(PoolTag::from_bytes(*b"Rout")), |table: &mut [u32; 16384]| {
    ///         for (slot, gateway) in table.iter_mut().enumerate() {
    ///             *gateway = slot as u32;
    ///         }
    ///     })
    ///     .expect("memory");
    /// // SAFETY: just built; nobody else has it.
    /// assert_eq!(unsafe { table.as_ref() }[100], 100);
    /// // SAFETY: never published: no reader can reach it.
    /// unsafe { domain.retire(table) }.expect("retired once");
    /// ```
    ///
    /// Only types whose all-zero value is valid start zeroed: a reference, for one, is refused.
    ///
    /// ```compile_fail,E0277
    /// # use kepoch::{Config, Domain};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// static ANSWER: u32 = 42;
    /// let _ = domain.alloc_with(None, |r: &mut &'static u32| *r = &ANSWER);
    /// ```
    pub fn alloc_with<T: Zeroable + Send>(
        &self,
        tag: Option<PoolTag>,
        init: impl FnOnce(&mut T),
    ) -> Option<NonNull<T>> {
        let block = self.alloc_block::<T>(tag)?;
        // SAFETY: the block's value storage, aligned for `T` and ours alone; zero bytes are a valid
        // `T` (`Zeroable`), so the reference handed to `init` is to a valid value.
        unsafe {
            block.as_ptr().write_bytes(0, 1);
            init(&mut *block.as_ptr());
        }
        Some(block)
    }

    /// Allocates a variable-size block of `len` values of `T` (with `tag`, if any), zeroed in the
    /// block and then filled by `init` in place: for tables sized at run time and, with `u8`,
    /// zeroed byte blocks for C callers. `None` if the allocation fails or the size overflows.
    /// Retire it with [`Domain::retire_slice`].
    ///
    /// ```
    /// # use kepoch::{Config, Domain};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let buckets = 1000; // from the registry, say
    /// let table = domain
    ///     .alloc_slice_with(buckets, None, |table: &mut [u64]| table[0] = 7)
    ///     .expect("memory");
    /// // SAFETY: just built; nobody else has it.
    /// let view = unsafe { table.as_ref() };
    /// assert_eq!((view.len(), view[0], view[999]), (1000, 7, 0));
    /// // SAFETY: never published: no reader can reach it.
    /// unsafe { domain.retire_slice(table) }.expect("retired once");
    /// ```
    pub fn alloc_slice_with<T: Zeroable + Send>(
        &self,
        len: usize,
        tag: Option<PoolTag>,
        init: impl FnOnce(&mut [T]),
    ) -> Option<NonNull<[T]>> {
        let layout = slice_layout::<T>(len)?;
        // Tag 0 is no tag: the header records 0 and the block is freed with `free`.
        let memory = match tag {
            Some(tag) if tag.0 != 0 => self.platform.allocate_tagged(layout, tag),
            _ => self.platform.allocate(layout),
        }?;
        let header = memory.as_ptr().cast::<RetireHeader>();
        // SAFETY: fresh block of `layout`: header at 0, the length after it, the values at
        // `slice_offset`, all in bounds; zero bytes are valid values (`Zeroable`).
        unsafe {
            header.write(RetireHeader::tagged(dispose_slice::<T, P>, tag));
            memory
                .as_ptr()
                .add(mem::size_of::<RetireHeader>())
                .cast::<usize>()
                .write(len);
            let first = memory.as_ptr().add(slice_offset::<T>()).cast::<T>();
            first.write_bytes(0, len);
            let values = ptr::slice_from_raw_parts_mut(first, len);
            init(&mut *values);
            Some(NonNull::new_unchecked(values))
        }
    }

    /// Retires a block from [`Domain::alloc_slice_with`] like [`Domain::retire`] does a value: its
    /// values are dropped and its memory freed once every reader that could still see it exited.
    ///
    /// # Safety
    /// `values` came from `alloc_slice_with` of this domain and is no longer reachable by readers
    /// that enter from now on.
    pub unsafe fn retire_slice<T>(&self, values: NonNull<[T]>) -> Result<u64, RetireError> {
        // SAFETY: per the caller, the header precedes the values by `slice_offset`.
        unsafe {
            let header = values
                .as_ptr()
                .cast::<u8>()
                .sub(slice_offset::<T>())
                .cast::<RetireHeader>();
            self.retire_header(header, state::LIVE)
        }
    }
}

/// Byte offset of the values in a slice block: the header and the length, padded to `T`'s
/// alignment.
const fn slice_offset<T>() -> usize {
    let align = slice_align::<T>();
    (mem::size_of::<RetireHeader>() + mem::size_of::<usize>()).div_ceil(align) * align
}

/// Alignment of a slice block: `T`'s, at least the header's.
const fn slice_align<T>() -> usize {
    let header = mem::align_of::<RetireHeader>();
    if mem::align_of::<T>() > header {
        mem::align_of::<T>()
    } else {
        header
    }
}

/// Layout of a slice block of `len` values; `None` if its size overflows.
fn slice_layout<T>(len: usize) -> Option<Layout> {
    let values = mem::size_of::<T>().checked_mul(len)?;
    let size = slice_offset::<T>().checked_add(values)?;
    Layout::from_size_align(size, slice_align::<T>()).ok()
}

/// Drops the values of a slice block and frees it (the header function of slice blocks).
unsafe fn dispose_slice<T, P: Platform>(header: *mut RetireHeader, domain: *const ()) {
    // SAFETY: `header` starts a block made by `alloc_slice_with::<T>` of `domain`, released or
    // never published: nobody else can reach it. Its length follows the header.
    unsafe {
        let memory = header.cast::<u8>();
        let len = memory
            .add(mem::size_of::<RetireHeader>())
            .cast::<usize>()
            .read();
        let first = memory.add(slice_offset::<T>()).cast::<T>();
        ptr::drop_in_place(ptr::slice_from_raw_parts_mut(first, len));
        // `alloc_slice_with` made this block with this layout, so it exists.
        let layout = slice_layout::<T>(len).unwrap_unchecked();
        let domain = &*(domain as *const Domain<P>);
        RetireHeader::free_block(header, layout, &*domain.platform);
    }
}
