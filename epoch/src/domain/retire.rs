//! Allocation and retirement: blocks with a retire header, the retirement stamp, double-retire
//! detection and disposal of released items.

use super::*;

/// Alignment of a block holding a `T`: the value's own, at least the header's. Not a cache line:
/// padding every object to 64 bytes would cost memory and, on NT, an over-aligned pool block per
/// object. A value that needs a line of its own is allocated as a [`CacheAligned`].
const fn block_align<T>() -> usize {
    let header = mem::align_of::<RetireHeader>();
    if mem::align_of::<T>() > header {
        mem::align_of::<T>()
    } else {
        header
    }
}

/// Byte offset of the value in a block from [`Domain::alloc`]: the header, padded to the value's
/// alignment.
pub(super) const fn value_offset<T>() -> usize {
    let align = block_align::<T>();
    mem::size_of::<RetireHeader>().div_ceil(align) * align
}

/// Layout of a block holding a header and a `T`; `None` for a `T` so large that the block's size
/// would overflow (its allocation then fails like any other).
pub(super) fn block_layout<T>() -> Option<Layout> {
    let size = value_offset::<T>().checked_add(mem::size_of::<T>())?;
    Layout::from_size_align(size, block_align::<T>()).ok()
}

/// A value on cache lines of its own: `Domain::alloc(CacheAligned(value))` (or
/// `Owned::new(&domain, CacheAligned(value))`) gives a block whose value starts on a 64-byte line
/// and shares no line with another block, for objects that different processors write (counters,
/// per-request state) where false sharing would cost more than the padding.
///
/// ```
/// # use kepoch::{CacheAligned, Config, Domain};
/// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
/// let counter = domain.alloc(CacheAligned(0u64)).unwrap();
/// assert_eq!(counter.as_ptr() as usize % 64, 0);
/// # unsafe { domain.free_now(counter) };
/// ```
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheAligned<T>(pub T);

impl<T> core::ops::Deref for CacheAligned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> core::ops::DerefMut for CacheAligned<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Drops the `T` of a memory block and frees the block.
pub(super) unsafe fn dispose_object<T, P: Platform>(header: *mut RetireHeader, domain: *const ()) {
    // SAFETY: `header` starts a block made by `Domain::alloc::<T>` of `domain`, retired and released:
    // no reader can reach it any more.
    unsafe {
        // `alloc` made this block with this layout, so it exists.
        let layout = block_layout::<T>().unwrap_unchecked();
        let value = header.cast::<u8>().add(value_offset::<T>()).cast::<T>();
        ptr::drop_in_place(value);
        let domain = &*(domain as *const Domain<P>);
        RetireHeader::free_block(header, layout, &*domain.platform);
    }
}

impl<P: Platform> Domain<P> {
    /// Allocates a block holding `value` (aligned for `T`), ready to be retired with [`Domain::retire`].
    /// If the allocation fails, the [`AllocError`] holds the value (its
    /// [`into_inner`](AllocError::into_inner) hands it back). The safe layer's
    /// [`Owned`](crate::Owned) wraps this.
    pub fn alloc<T: Send>(&self, value: T) -> Result<NonNull<T>, AllocError<T>> {
        let Some(block) = self.alloc_block::<T>(None) else {
            return Err(AllocError::new(value));
        };
        // SAFETY: a fresh block's value storage, aligned for `T`.
        unsafe { block.as_ptr().write(value) };
        Ok(block)
    }

    /// Allocates a block for a `T` (with `tag`, if any) and writes its header; the value is left
    /// uninitialised. `None` if the allocation fails or the size overflows.
    pub(super) fn alloc_block<T>(&self, tag: Option<PoolTag>) -> Option<NonNull<T>> {
        let layout = block_layout::<T>()?;
        // Tag 0 is no tag: the header records 0 and the block is freed with `free`.
        let memory = match tag {
            Some(tag) if tag.0 != 0 => self.platform.allocate_tagged(layout, tag),
            _ => self.platform.allocate(layout),
        }?;
        let header = memory.as_ptr().cast::<RetireHeader>();
        // SAFETY: fresh block of `layout`: header at 0, value at `value_offset`, both in bounds.
        unsafe {
            header.write(RetireHeader::tagged(dispose_object::<T, P>, tag));
            Some(NonNull::new_unchecked(
                memory.as_ptr().add(value_offset::<T>()).cast::<T>(),
            ))
        }
    }

    /// Frees a block from [`Domain::alloc`] that was never published to readers, at once.
    ///
    /// # Safety
    /// `value` came from `alloc` of this domain, was never retired and no reader can reach it.
    pub unsafe fn free_now<T>(&self, value: NonNull<T>) {
        // SAFETY: per the caller, the header precedes the value and nobody else uses the block.
        unsafe {
            let header = value
                .as_ptr()
                .cast::<u8>()
                .sub(value_offset::<T>())
                .cast::<RetireHeader>();
            ((*header).dispose)(header, self as *const Self as *const ());
        }
    }

    /// Retires a block from [`Domain::alloc`] that the caller has unlinked: its destructor runs and its
    /// memory is freed once every reader that could still see it has exited. Returns the epoch it was
    /// stamped with; a second retirement of the same block is refused and counted.
    ///
    /// The safe layer retires without `unsafe`: see [`Unlinked::retire`](crate::Unlinked::retire).
    ///
    /// # Safety
    /// `value` came from `alloc` of this domain and is no longer reachable by readers that enter from
    /// now on.
    pub unsafe fn retire<T>(&self, value: NonNull<T>) -> Result<u64, RetireError> {
        // SAFETY: per the caller, the header precedes the value.
        let header = unsafe {
            value
                .as_ptr()
                .cast::<u8>()
                .sub(value_offset::<T>())
                .cast::<RetireHeader>()
        };
        // SAFETY: the block is alive (it has not been released, since it is not yet retired or the
        // state check below refuses).
        unsafe { self.retire_header(header, state::LIVE) }
    }

    /// Moves `header` from `from` to RETIRED and appends it to the current participant's list; a
    /// refusal is counted as a double retirement.
    pub(super) unsafe fn retire_header(
        &self,
        header: *mut RetireHeader,
        from: u8,
    ) -> Result<u64, RetireError> {
        // SAFETY: per the caller.
        unsafe { self.retire_header_from(header, from) }.map_err(|_| {
            DomainCounters::add(&self.counters.double_retires, 1);
            RetireError::AlreadyRetired
        })
    }

    /// Moves `header` from `from` to RETIRED and appends it to the current participant's list;
    /// returns its stamp, or the state found instead of `from` (nothing is counted).
    pub(super) unsafe fn retire_header_from(
        &self,
        header: *mut RetireHeader,
        from: u8,
    ) -> Result<u64, u8> {
        // SAFETY: the caller passes a live header.
        let head = unsafe { &*header };
        let rmw =
            LockedRmw::compare_exchange(&head.state, from, state::RETIRED, Ordering::Relaxed)?;
        // SAFETY: the header is live and now RETIRED by us, in no list.
        Ok(unsafe { self.link_retired(header, rmw) })
    }

    /// Appends a RETIRED header to the current processor's list (the overflow list without a usable
    /// slot, and during unload, whose drains own the per-CPU lists) and returns its stamp.
    ///
    /// `rmw`: the caller's state transition to RETIRED, which the stamp's fence follows.
    ///
    /// # Safety
    /// `header` is live, RETIRED by the caller and in no list.
    pub(super) unsafe fn link_retired(&self, header: *mut RetireHeader, rmw: LockedRmw) -> u64 {
        let previous = self.platform.raise_to_dispatch();
        let unloading = self.shutting_down.load(Ordering::Relaxed);
        let current = self.platform.current_processor();
        let mut slot = if unloading {
            ptr::null_mut()
        } else {
            self.table.lookup(current.number)
        };
        if slot.is_null() && !unloading {
            slot = self.prepare_here(current.number).unwrap_or(ptr::null_mut());
        }
        // SAFETY: null or a published slot.
        let stamp = match unsafe { slot.as_ref() } {
            Some(slot) if slot.ready.load(Ordering::Acquire) => {
                self.platform.verify_slot_owner("retire", slot.processor);
                let part = &slot.part;
                self.ensure_joined(part);
                let stamp = self.retire_stamp(part, rmw);
                // SAFETY: we own this participant at DISPATCH; the header is ours to link.
                unsafe { part.retired.push(header, stamp) };
                ParticipantCounters::bump(&part.counters.retires);
                stamp
            }
            _ => {
                let overflow = self.locked(&self.overflow);
                self.ensure_joined(&overflow);
                let stamp = self.retire_stamp(&overflow, rmw);
                // SAFETY: the overflow lock makes us its owner.
                unsafe { overflow.retired.push(header, stamp) };
                ParticipantCounters::bump(&overflow.counters.retires);
                DomainCounters::add(&self.counters.fallback_uses, 1);
                stamp
            }
        };
        // The item is linked (and its participant joined, fence FJ or the overflow lock before):
        // a timer stopped for want of work starts again.
        self.wake_timer();
        self.platform.lower_irql(previous);
        stamp
    }

    /// The epoch a retirement is stamped with: the global epoch, read after a full fence (fence FW,
    /// after the caller's state transition `rmw`) so that any reader that could still see the
    /// unlinked item entered at or before it.
    fn retire_stamp(&self, part: &Participant, rmw: LockedRmw) -> u64 {
        if !self.mutated(Mutation::StampNoFence) {
            rmw.full_fence();
        }
        if self.mutated(Mutation::LocalEpochStamp) {
            return part.local_epoch.load(Ordering::Relaxed);
        }
        self.global_epoch.load(Ordering::Relaxed)
    }

    /// Disposes of one released item. At DISPATCH, outside any lock.
    pub(super) fn dispose(&self, header: *mut RetireHeader) {
        // SAFETY: released items are valid until disposed of, only we hold this one, and its epoch is
        // released: no reader can reach it. The header's function knows the block's kind.
        unsafe { ((*header).dispose)(header, self as *const Self as *const ()) }
    }
}
