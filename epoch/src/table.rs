//! Per-CPU storage indexed by (group, number), not by the reported maximum: a fixed directory of
//! groups, each a table of 64 slot pointers allocated when the first processor of that group is
//! prepared. Indexes at or above the reported maximum, sparse indexes and group ≠ 0 all work, and
//! memory stays O(processors prepared).
//!
//! An entry is either empty, a **routable** slot (ready: its processor may run epoch code on it and
//! receive messages) or a **pending** slot (prepared at AddStart, waiting for AddComplete), which is
//! the slot pointer with `PENDING_TAG` set. `SlotTable::lookup` hands out routable slots only, so
//! the hot path never dereferences a pending slot: AddFailure may free one while code on the new
//! processor is looking it up.

#[cfg(feature = "mutations")]
use crate::mutation::Mutation;
use crate::mutation::Mutations;
use crate::participant::Slot;
use crate::platform::{Platform, ProcessorNumber};
use crate::sync::{AtomicPtr, AtomicU64, Ordering};
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
    /// The `table-ignores-group` mutation: every processor is filed under group 0 by its number.
    #[cfg(feature = "mutations")]
    ignores_group: bool,
}

/// Low bit of a pending entry. Slots are cache-line aligned, so the bit is free.
const PENDING_TAG: usize = 1;

/// What the table holds for one processor.
pub(crate) enum Entry<P: Platform> {
    /// No slot.
    Empty,
    /// Prepared at AddStart, not routable before AddComplete.
    Pending(*mut Slot<P>),
    /// Routable.
    Ready(*mut Slot<P>),
}

impl<P: Platform> Clone for Entry<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Platform> Copy for Entry<P> {}

impl<P: Platform> Entry<P> {
    fn decode(raw: *mut Slot<P>) -> Self {
        if raw.is_null() {
            Entry::Empty
        } else if raw as usize & PENDING_TAG != 0 {
            Entry::Pending(raw.cast::<u8>().wrapping_sub(PENDING_TAG).cast())
        } else {
            Entry::Ready(raw)
        }
    }

    /// The slot, whether pending or ready.
    pub(crate) fn slot(self) -> Option<*mut Slot<P>> {
        match self {
            Entry::Empty => None,
            Entry::Pending(slot) | Entry::Ready(slot) => Some(slot),
        }
    }
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
    /// An empty table, honouring the `table-ignores-group` mutation if it is in `mutations`.
    pub(crate) fn new(mutations: Mutations) -> Self {
        let _ = mutations;
        SlotTable {
            groups: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            #[cfg(feature = "mutations")]
            ignores_group: mutations.active(Mutation::TableIgnoresGroup),
        }
    }

    /// Where `processor` is filed: (group, number), or `None` outside the table's range.
    #[inline(always)]
    fn position(&self, processor: ProcessorNumber) -> Option<(usize, usize)> {
        let (group, number) = (processor.group as usize, processor.number as usize);
        #[cfg(feature = "mutations")]
        let group = if self.ignores_group { 0 } else { group };
        (group < MAX_GROUPS && number < PROCESSORS_PER_GROUP).then_some((group, number))
    }

    /// Bytes of one group table.
    pub(crate) fn group_table_layout() -> Layout {
        Layout::new::<GroupTable<P>>()
    }

    /// The routable slot of `processor`, or null (no slot, or one still pending). Lock-free.
    #[inline]
    pub(crate) fn lookup(&self, processor: ProcessorNumber) -> *mut Slot<P> {
        let raw = self.raw(processor);
        if raw as usize & PENDING_TAG != 0 {
            return ptr::null_mut();
        }
        raw
    }

    /// The entry of `processor`, pending slots included. Lock-free; a pending slot may only be
    /// dereferenced under the registry lock (AddFailure frees it under that lock).
    pub(crate) fn entry(&self, processor: ProcessorNumber) -> Entry<P> {
        Entry::decode(self.raw(processor))
    }

    fn raw(&self, processor: ProcessorNumber) -> *mut Slot<P> {
        let Some(entry) = self.cell(processor) else {
            return ptr::null_mut();
        };
        entry.load(Ordering::Acquire)
    }

    /// The cell of `processor`, if its group table exists.
    fn cell(&self, processor: ProcessorNumber) -> Option<&AtomicPtr<Slot<P>>> {
        let (group, number) = self.position(processor)?;
        let table = self.groups[group].load(Ordering::Acquire);
        if table.is_null() {
            return None;
        }
        // SAFETY: group tables are freed only when the domain is torn down, after all users are gone.
        Some(&unsafe { &*table }.slots[number])
    }

    /// Makes the pending slot of `processor` routable (AddComplete). Caller holds the registry lock.
    /// Returns the slot, or `None` if there was no pending one.
    pub(crate) fn make_routable(&self, processor: ProcessorNumber) -> Option<*mut Slot<P>> {
        let cell = self.cell(processor)?;
        match Entry::decode(cell.load(Ordering::Acquire)) {
            Entry::Pending(slot) => {
                cell.store(slot, Ordering::Release);
                Some(slot)
            }
            _ => None,
        }
    }

    /// Publishes `slot` for `processor`, routable or `pending`; returns the entry already there if
    /// there is one (and then does not publish). Returns the bytes allocated for a new group table.
    /// Caller holds the registry lock.
    pub(crate) fn insert(
        &self,
        platform: &P,
        processor: ProcessorNumber,
        slot: *mut Slot<P>,
        pending: bool,
    ) -> Result<(Entry<P>, usize), InsertError> {
        let (group, number) = self.position(processor).ok_or(InsertError::OutOfRange)?;
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
        let existing = Entry::decode(entry.load(Ordering::Acquire));
        if existing.slot().is_some() {
            return Ok((existing, allocated));
        }
        let tagged = if pending {
            slot.cast::<u8>().wrapping_add(PENDING_TAG).cast()
        } else {
            slot
        };
        entry.store(tagged, Ordering::Release);
        Ok((Entry::Empty, allocated))
    }

    /// Unpublishes the slot of `processor`. Caller holds the registry lock and guarantees that the slot
    /// was pending (never handed out by `SlotTable::lookup`).
    pub(crate) fn remove(&self, processor: ProcessorNumber) {
        let Some((group, number)) = self.position(processor) else {
            return;
        };
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

/// A set of processors, one bit per (group, number) the table covers; allocation-free, lock-free.
pub(crate) struct ProcessorSet {
    groups: [AtomicU64; MAX_GROUPS],
}

impl ProcessorSet {
    /// The empty set.
    pub(crate) fn new() -> Self {
        ProcessorSet {
            groups: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Whether `processor` is in the set (never, for one outside the table's range).
    pub(crate) fn get(&self, processor: ProcessorNumber) -> bool {
        let (group, number) = (processor.group as usize, processor.number as usize);
        group < MAX_GROUPS
            && number < PROCESSORS_PER_GROUP
            && self.groups[group].load(Ordering::Acquire) & (1 << number) != 0
    }

    /// Adds or removes `processor` (ignored outside the table's range). Writers are serialised by
    /// the processor-change notifications, which never run concurrently with themselves.
    pub(crate) fn set(&self, processor: ProcessorNumber, member: bool) {
        let (group, number) = (processor.group as usize, processor.number as usize);
        if group >= MAX_GROUPS || number >= PROCESSORS_PER_GROUP {
            return;
        }
        if member {
            self.groups[group].fetch_or(1 << number, Ordering::Release);
        } else {
            self.groups[group].fetch_and(!(1 << number), Ordering::Release);
        }
    }
}
