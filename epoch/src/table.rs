//! Per-CPU storage indexed by (group, number), not by the reported maximum: a fixed directory of
//! groups, each a table of 64 slot pointers allocated when the first processor of that group is
//! prepared. Indexes at or above the reported maximum, sparse indexes and group ≠ 0 all work, and
//! memory stays O(processors prepared).

use crate::participant::Slot;
use crate::platform::{Platform, ProcessorNumber};
use crate::sync::{AtomicPtr, Ordering};
use core::alloc::Layout;
use core::ptr::{self, NonNull};

/// Largest number of processor groups the directory covers. Windows supports at most 32 groups; a
/// processor in a group beyond the directory is served by the overflow slot.
pub const MAX_GROUPS: usize = 64;
/// Processors per group (`MAXIMUM_PROC_PER_GROUP`).
pub const PROCESSORS_PER_GROUP: usize = 64;

/// The slots of one group.
pub(crate) struct GroupTable<P: Platform> {
    slots: [AtomicPtr<Slot<P>>; PROCESSORS_PER_GROUP],
}

/// Directory of group tables. Readers look up without a lock; writers hold the registry lock.
pub(crate) struct SlotTable<P: Platform> {
    groups: [AtomicPtr<GroupTable<P>>; MAX_GROUPS],
}

/// Why a slot could not be placed in the table.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InsertError {
    /// The group or number is outside what the table covers.
    OutOfRange,
    /// The group table could not be allocated.
    NoMemory,
}

impl<P: Platform> SlotTable<P> {
    /// An empty table.
    pub(crate) fn new() -> Self {
        SlotTable {
            groups: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }

    /// Bytes of one group table.
    pub(crate) fn group_table_layout() -> Layout {
        Layout::new::<GroupTable<P>>()
    }

    /// The slot of `processor`, or null. Lock-free.
    #[inline]
    pub(crate) fn lookup(&self, processor: ProcessorNumber) -> *mut Slot<P> {
        let (group, number) = (processor.group as usize, processor.number as usize);
        if group >= MAX_GROUPS || number >= PROCESSORS_PER_GROUP {
            return ptr::null_mut();
        }
        let table = self.groups[group].load(Ordering::Acquire);
        if table.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: group tables are freed only when the domain is torn down, after all users are gone.
        unsafe { &*table }.slots[number].load(Ordering::Acquire)
    }

    /// Publishes `slot` for `processor`; returns the slot already there if there is one (and then does
    /// not publish). Returns the bytes allocated for a new group table. Caller holds the registry lock.
    pub(crate) fn insert(
        &self,
        platform: &P,
        processor: ProcessorNumber,
        slot: *mut Slot<P>,
    ) -> Result<(Option<*mut Slot<P>>, usize), InsertError> {
        let (group, number) = (processor.group as usize, processor.number as usize);
        if group >= MAX_GROUPS || number >= PROCESSORS_PER_GROUP {
            return Err(InsertError::OutOfRange);
        }
        let mut table = self.groups[group].load(Ordering::Acquire);
        let mut allocated = 0;
        if table.is_null() {
            let layout = Self::group_table_layout();
            let memory = platform.allocate(layout).ok_or(InsertError::NoMemory)?;
            let fresh = memory.as_ptr().cast::<GroupTable<P>>();
            // SAFETY: fresh allocation of the right layout, not yet shared.
            unsafe {
                fresh.write(GroupTable {
                    slots: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
                })
            };
            self.groups[group].store(fresh, Ordering::Release);
            table = fresh;
            allocated = layout.size();
        }
        // SAFETY: the group table lives until teardown.
        let entry = &unsafe { &*table }.slots[number];
        let existing = entry.load(Ordering::Acquire);
        if !existing.is_null() {
            return Ok((Some(existing), allocated));
        }
        entry.store(slot, Ordering::Release);
        Ok((None, allocated))
    }

    /// Unpublishes the slot of `processor`. Caller holds the registry lock and guarantees no processor
    /// can look it up concurrently with using it (the slot was never ready).
    pub(crate) fn remove(&self, processor: ProcessorNumber) {
        let (group, number) = (processor.group as usize, processor.number as usize);
        if group >= MAX_GROUPS || number >= PROCESSORS_PER_GROUP {
            return;
        }
        let table = self.groups[group].load(Ordering::Acquire);
        if !table.is_null() {
            // SAFETY: the group table lives until teardown.
            unsafe { &*table }.slots[number].store(ptr::null_mut(), Ordering::Release);
        }
    }

    /// Frees every group table. Teardown only: no lookups may follow.
    pub(crate) fn free_groups(&self, platform: &P) {
        for group in &self.groups {
            let table = group.swap(ptr::null_mut(), Ordering::AcqRel);
            if let Some(table) = NonNull::new(table) {
                // SAFETY: allocated in `insert` with this layout; no lookups remain.
                unsafe { platform.free(table.cast(), Self::group_table_layout()) };
            }
        }
    }
}
