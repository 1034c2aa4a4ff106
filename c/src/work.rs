//! One-shot C work items (eBPF's contract): allocated with a callback and its context, then either
//! scheduled once — the callback runs at PASSIVE_LEVEL, outside any epoch, after every reader that
//! entered before the schedule has exited, and the item is freed after it ran — or cancelled
//! unscheduled, which frees it. A check word catches a second schedule, a cancel after the schedule
//! and pointers that are not live items.

use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use kepoch::WorkItem;
use kepoch_nt::NtPlatform;

use crate::domain::CDomain;
use crate::fail::{fail_fast, require_at_most_dispatch, Function, Misuse};

/// A C work item's callback: `void callback(void* context)`.
pub type Callback = unsafe extern "C" fn(context: *mut c_void);

/// Check value (XORed with the item's address) of an item allocated and not scheduled.
const IDLE: usize = 0x6B65_706F_6368_5749;
/// Check value of a scheduled item that has not run yet.
const SCHEDULED: usize = 0x6B65_706F_6368_5753;
/// Check value of a freed item (until its memory is reused).
const FREED: usize = 0x6B65_706F_6368_5746;

/// Bit of [`CWorkItem::ends`]: the schedule call has returned.
const SCHEDULE_RETURNED: u8 = 1;
/// Bit of [`CWorkItem::ends`]: the run has finished with the item.
const RUN_DONE: u8 = 2;

/// What a C work item handle points to: a block of its domain.
pub struct CWorkItem {
    check: AtomicUsize,
    owner: NonNull<CDomain>,
    callback: Callback,
    context: *mut c_void,
    /// Which of the schedule call and the run are done with the item: the second frees it (the run
    /// can end on a worker thread before the schedule call has returned).
    ends: AtomicU8,
    /// kepoch's work item, whose closure calls [`run`] with this block's address.
    item: MaybeUninit<WorkItem<'static, NtPlatform>>,
}

// SAFETY: the owner is a live C domain (Sync), the context is the C caller's to share, and the
// work item handle is Send.
unsafe impl Send for CWorkItem {}

/// Allocates an idle work item, or NULL when the pool has no memory. Any IRQL up to DISPATCH_LEVEL
/// (above it fails fast, naming `name`).
pub fn allocate(
    owner: &CDomain,
    callback: Callback,
    context: *mut c_void,
    name: &str,
) -> *mut CWorkItem {
    require_at_most_dispatch(name, Function::AllocateWorkItem);
    let domain = owner.domain();
    let Ok(block) = domain.alloc(CWorkItem {
        check: AtomicUsize::new(0),
        owner: NonNull::from(owner),
        callback,
        context,
        ends: AtomicU8::new(0),
        item: MaybeUninit::uninit(),
    }) else {
        return ptr::null_mut();
    };
    let address = block.as_ptr() as usize;
    // SAFETY: the C domain outlives its work items (destroying it with idle items fails fast, and
    // scheduled items run before its domain is gone), so the borrow may be 'static.
    let domain: &'static kepoch::Domain<NtPlatform> = unsafe { &*(domain as *const _) };
    let Some(item) = domain.work_item(move || {
        // SAFETY: the item block lives until `run` frees it after its one run.
        unsafe { run(address as *mut CWorkItem) }
    }) else {
        // SAFETY: never published; allocated above by this domain.
        unsafe { domain.free_now(block) };
        return ptr::null_mut();
    };
    // SAFETY: the block is ours until it is returned.
    unsafe {
        (*block.as_ptr()).item.write(item);
        (*block.as_ptr())
            .check
            .store(address ^ IDLE, Ordering::Release);
    }
    owner.idle_work_items.fetch_add(1, Ordering::AcqRel);
    block.as_ptr()
}

/// The live item behind `item` whose check word moves from `from` to `to`; fails fast otherwise.
///
/// # Safety
/// `item` is NULL or points to readable memory of a `CWorkItem`'s size.
unsafe fn transition<'a>(
    item: *mut CWorkItem,
    from: usize,
    to: usize,
    name: &str,
    function: Function,
) -> &'a CWorkItem {
    require_at_most_dispatch(name, function);
    if item.is_null() {
        fail_fast(name, function, Misuse::Null, 0, format_args!(""));
    }
    let address = item as usize;
    // SAFETY: readable per the caller; the check word is atomic.
    let check = unsafe { &(*item).check };
    if let Err(found) = check.compare_exchange(
        address ^ from,
        address ^ to,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        let misuse = match found ^ address {
            SCHEDULED => {
                if function == Function::CancelWorkItem {
                    Misuse::CancelAfterSchedule
                } else {
                    Misuse::ScheduledTwice
                }
            }
            _ => Misuse::NotAWorkItem,
        };
        fail_fast(name, function, misuse, address, format_args!(""));
    }
    // SAFETY: a live item (its check word).
    unsafe { &*item }
}

/// Schedules an idle item: its callback runs once after a grace period, then it is freed. Any IRQL
/// up to DISPATCH_LEVEL.
///
/// # Safety
/// `item` is NULL or points to readable memory of a `CWorkItem`'s size.
pub unsafe fn schedule(item: *mut CWorkItem, name: &str) {
    // SAFETY: per the caller.
    let this = unsafe { transition(item, IDLE, SCHEDULED, name, Function::ScheduleWorkItem) };
    // SAFETY: a live item's owner is a live domain.
    let owner = unsafe { this.owner.as_ref() };
    owner.schedules_in_flight.fetch_add(1, Ordering::AcqRel);
    owner.idle_work_items.fetch_sub(1, Ordering::AcqRel);
    // SAFETY: written at allocation, before the check word went live.
    let work = unsafe { this.item.assume_init_ref() };
    // The check word makes this the item's only schedule, of its own domain: never refused. The
    // item stays allocated until this call is done with it, even when the run ends first.
    let _ = owner.domain().schedule_work(work);
    if this.ends.fetch_or(SCHEDULE_RETURNED, Ordering::AcqRel) & RUN_DONE != 0 {
        // SAFETY: the run is over and this call was the last user of the item.
        unsafe { release(item) };
    }
    // The last use of the domain by this call: a destroy waiting for it may go on.
    owner.schedules_in_flight.fetch_sub(1, Ordering::AcqRel);
}

/// Cancels and frees an unscheduled item; NULL is ignored. Any IRQL up to DISPATCH_LEVEL.
///
/// # Safety
/// `item` is NULL or points to readable memory of a `CWorkItem`'s size.
pub unsafe fn cancel(item: *mut CWorkItem, name: &str) {
    require_at_most_dispatch(name, Function::CancelWorkItem);
    if item.is_null() {
        return;
    }
    // SAFETY: per the caller.
    let this = unsafe { transition(item, IDLE, FREED, name, Function::CancelWorkItem) };
    // SAFETY: a live item's owner is a live domain.
    let owner = unsafe { this.owner.as_ref() };
    owner.idle_work_items.fetch_sub(1, Ordering::AcqRel);
    // SAFETY: the item is ours alone now (its check word says freed): never scheduled.
    unsafe { release(item) };
}

/// The passive-level run of a scheduled item: its callback, then its release.
///
/// # Safety
/// `item` is a scheduled, live item; called once.
unsafe fn run(item: *mut CWorkItem) {
    // SAFETY: live per the caller.
    let (callback, context) = unsafe { ((*item).callback, (*item).context) };
    // SAFETY: the C caller's callback with the context it gave for it.
    unsafe { callback(context) };
    // SAFETY: live until released below; the check word marks it freed first.
    unsafe {
        (*item)
            .check
            .store(item as usize ^ FREED, Ordering::Release);
        if (*item).ends.fetch_or(RUN_DONE, Ordering::AcqRel) & SCHEDULE_RETURNED != 0 {
            release(item);
        }
    }
}

/// Drops kepoch's work item and frees the block.
///
/// # Safety
/// `item` is live and used by nobody else: never scheduled, or both its schedule call and its run
/// are done with it (this is its end).
unsafe fn release(item: *mut CWorkItem) {
    // SAFETY: per the caller; the handle was written at allocation. Dropping it during its own run
    // leaves the block to the run's reference, which frees it after the callback returns.
    unsafe {
        let owner = (*item).owner.as_ref();
        (*item).item.assume_init_drop();
        owner.domain().free_now(NonNull::new_unchecked(item));
    }
}
