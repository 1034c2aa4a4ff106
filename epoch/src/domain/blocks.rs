//! Allocation options: a pool tag per allocation, and values built in their block (zeroed, then
//! filled through a reference) instead of on the caller's stack — a kernel stack is 24 KiB, less
//! than a routing table.

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
    /// platform's default allocation otherwise). Returns the value back if the allocation fails.
    ///
    /// ```
    /// # use kepoch::{Config, Domain};
    /// use kepoch::platform::PoolTag;
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let route = domain.alloc_tagged(7u32, PoolTag::from_bytes(*b"Rout")).expect("memory");
    /// // SAFETY: never published: no reader can reach it.
    /// unsafe { domain.retire(route) }.expect("retired once");
    /// ```
    pub fn alloc_tagged<T: Send>(&self, value: T, tag: PoolTag) -> Result<NonNull<T>, T> {
        let Some(block) = self.alloc_block::<T>(Some(tag)) else {
            return Err(value);
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
}
