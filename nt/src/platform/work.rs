//! Passive work items (`IO_WORKITEM` in the domain's pool, for the driver object or a device
//! object) and events (`KEVENT`).

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use kepoch::platform::{Handler, Status};

use crate::pool::Pool;
use crate::sys;

/// The object a domain's work items belong to: the I/O manager keeps the driver loaded while one of
/// its items is queued or running (a device object's items also keep the device).
#[derive(Clone, Copy, Debug)]
pub enum WorkItemOwner {
    /// The driver object `DriverEntry` got (a driver without devices).
    Driver(NonNull<sys::DRIVER_OBJECT>),
    /// One of the driver's device objects.
    Device(NonNull<sys::DEVICE_OBJECT>),
}

// SAFETY: a driver or device object is a kernel object the kernel routines accept from any thread; the
// owner is only handed to them.
unsafe impl Send for WorkItemOwner {}
// SAFETY: see the Send impl (no interior mutability).
unsafe impl Sync for WorkItemOwner {}

impl WorkItemOwner {
    fn io_object(self) -> *const c_void {
        match self {
            WorkItemOwner::Driver(driver) => driver.as_ptr().cast_const().cast(),
            WorkItemOwner::Device(device) => device.as_ptr().cast_const().cast(),
        }
    }
}

/// A passive work item: `IoSizeofWorkItem` bytes of the domain's pool initialised with
/// `IoInitializeWorkItem` for the owner (driver or device object: both are accepted there), queued
/// with `IoQueueWorkItemEx` (`IoQueueWorkItem` would need a device object).
pub struct NtPassiveWork {
    /// The `IO_WORKITEM` storage, after its `ItemHeader` (null once released).
    item: AtomicPtr<u8>,
    handler: UnsafeCell<MaybeUninit<Handler>>,
}

// SAFETY: the work item is used only through Io* routines; the handler is written once before queuing.
unsafe impl Send for NtPassiveWork {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtPassiveWork {}

unsafe extern "system" fn passive_work(
    _object: *mut c_void,
    context: *mut c_void,
    item: sys::PIO_WORKITEM,
) {
    // SAFETY: every item this routine is queued for starts its block, whose header follows it and
    // lives until the item is released (by `release`, or below).
    let header = unsafe { &*header_of(item as *mut u8) };
    header.state.store(RUNNING, Ordering::SeqCst);
    // The handler may release this very item (and free the memory holding the NtPassiveWork) as its
    // last act, so take a copy of it first and hold no reference into it while it runs.
    // SAFETY: `context` is the NtPassiveWork that queued this item, initialised until passive_release,
    // which cannot free the item's block while it is RUNNING (it leaves that to this routine).
    let handler: Handler = unsafe {
        let work = context.cast::<NtPassiveWork>();
        (*(*work).handler.get()).assume_init()
    };
    // SAFETY: the handler's context is alive while the work item runs (the core's contract).
    unsafe { handler.invoke() };
    // A release that came while the handler ran (from it, or from another thread after its last
    // access) left the item to this routine: the work routine itself uninitialises and frees it.
    if header
        .state
        .compare_exchange(RUNNING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // SAFETY: the release is pending: nothing else touches the item any more.
        unsafe { free_item(item as *mut u8) };
    }
}

/// The item is not running (its routine returned, or it never ran).
const IDLE: u32 = 0;
/// Its routine runs: a release is left to the routine.
const RUNNING: u32 = 1;
/// Released while running: the routine frees it when the handler returns.
const RELEASE_PENDING: u32 = 2;

/// What follows every `IO_WORKITEM` in its block (the item starts the block): who may free it, and
/// how.
#[repr(C, align(16))]
struct ItemHeader {
    state: AtomicU32,
    size: usize,
    pool: Pool,
}

/// Where the header starts in the block of an item of `size` bytes.
fn header_offset(size: usize) -> usize {
    size.next_multiple_of(core::mem::align_of::<ItemHeader>())
}

/// The header of the item at `item`.
fn header_of(item: *mut u8) -> *mut ItemHeader {
    // SAFETY: no arguments; callable at any IRQL.
    let size = unsafe { sys::IoSizeofWorkItem() } as usize;
    item.wrapping_add(header_offset(size)).cast()
}

/// Uninitialises the item at `item` and frees its block.
///
/// # Safety
/// The item is initialised, not queued, and nothing else uses it or its header any more.
unsafe fn free_item(item: *mut u8) {
    // SAFETY: per the caller; the header was written by `init`.
    unsafe {
        let header = header_of(item);
        let (size, pool) = ((*header).size, (*header).pool);
        sys::IoUninitializeWorkItem(item as sys::PIO_WORKITEM);
        if let Some(layout) = item_layout(size) {
            pool.free(NonNull::new_unchecked(item), layout);
        }
    }
}

/// The block of an item of `size` bytes: the item, then the header.
fn item_layout(size: usize) -> Option<Layout> {
    let total = header_offset(size).checked_add(core::mem::size_of::<ItemHeader>())?;
    Layout::from_size_align(total, core::mem::align_of::<ItemHeader>()).ok()
}

impl NtPassiveWork {
    /// `passive_init`: the item in `pool`, initialised for `owner`.
    ///
    /// # Safety
    /// `work` is writable storage that stays in place until released; `owner` outlives the item.
    pub(super) unsafe fn init(
        work: *mut NtPassiveWork,
        pool: &Pool,
        owner: WorkItemOwner,
        handler: Handler,
    ) -> Result<(), Status> {
        // SAFETY: no arguments; callable at any IRQL.
        let size = unsafe { sys::IoSizeofWorkItem() } as usize;
        let layout = item_layout(size).ok_or(Status::INSUFFICIENT_RESOURCES)?;
        let block = pool
            .allocate(layout)
            .ok_or(Status::INSUFFICIENT_RESOURCES)?;
        // SAFETY: the block is the item's `size` bytes of non-paged pool followed by the header,
        // aligned for it. The owner is the driver object or one of its devices and outlives the
        // item (the caller's contract); the storage is per the caller.
        unsafe {
            block
                .as_ptr()
                .add(header_offset(size))
                .cast::<ItemHeader>()
                .write(ItemHeader {
                    state: AtomicU32::new(IDLE),
                    size,
                    pool: *pool,
                });
            let item = block;
            sys::IoInitializeWorkItem(owner.io_object(), item.as_ptr() as sys::PIO_WORKITEM);
            work.write(NtPassiveWork {
                item: AtomicPtr::new(item.as_ptr()),
                handler: UnsafeCell::new(MaybeUninit::new(handler)),
            });
        }
        Ok(())
    }

    /// `passive_queue`.
    pub(super) fn queue(&self) {
        // SAFETY: the item was initialised by `init` and is not queued (the core queues an item again
        // only after its handler ran); IoQueueWorkItemEx is callable at IRQL <= DISPATCH.
        unsafe {
            sys::IoQueueWorkItemEx(
                self.item.load(Ordering::Relaxed) as sys::PIO_WORKITEM,
                sys::work_item_routine_ex(passive_work),
                sys::DELAYED_WORK_QUEUE,
                ptr::from_ref(self).cast(),
            );
        }
    }

    /// `passive_release`: uninitialises and frees the item, or, while its routine runs, leaves that
    /// to the routine (which does it when the handler returns): a release from another thread after
    /// the handler's last access never frees an item whose routine has not returned.
    ///
    /// # Safety
    /// The item is not queued, and if its routine runs, its handler no longer uses the
    /// `NtPassiveWork`; released once.
    pub(super) unsafe fn release(work: *mut NtPassiveWork, _pool: &Pool) {
        // SAFETY: per the caller; the pointer is taken out, so the item is released once.
        unsafe {
            let item = (*work).item.swap(ptr::null_mut(), Ordering::Relaxed);
            if item.is_null() {
                return;
            }
            let left_to_routine = (*header_of(item))
                .state
                .compare_exchange(RUNNING, RELEASE_PENDING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if !left_to_routine {
                free_item(item);
            }
        }
    }
}

/// A notification event (`KEVENT`).
pub struct NtEvent {
    event: UnsafeCell<MaybeUninit<sys::KEVENT>>,
}

// SAFETY: a KEVENT is a dispatcher object designed for use from any thread through Ke* routines.
unsafe impl Send for NtEvent {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtEvent {}

impl NtEvent {
    /// The KEVENT.
    pub(super) fn raw(&self) -> *mut sys::KEVENT {
        self.event.get().cast()
    }

    /// `event_init`: a notification event, not signalled.
    ///
    /// # Safety
    /// `event` is writable storage that stays in place while the event is used.
    pub(super) unsafe fn init(event: *mut NtEvent) {
        // SAFETY: per the caller.
        unsafe {
            let raw = UnsafeCell::raw_get(ptr::addr_of!((*event).event)).cast::<sys::KEVENT>();
            sys::KeInitializeEvent(raw, sys::NOTIFICATION_EVENT, false);
        }
    }
}
