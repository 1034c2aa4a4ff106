//! Passive work items (`IO_WORKITEM` in the domain's pool, for the driver object or a device
//! object) and events (`KEVENT`).

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

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
    /// The `IO_WORKITEM` storage (null once released).
    item: AtomicPtr<u8>,
    /// Its size (`IoSizeofWorkItem`).
    size: usize,
    handler: UnsafeCell<MaybeUninit<Handler>>,
}

// SAFETY: the work item is used only through Io* routines; the handler is written once before queuing.
unsafe impl Send for NtPassiveWork {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtPassiveWork {}

unsafe extern "system" fn passive_work(
    _object: *mut c_void,
    context: *mut c_void,
    _item: sys::PIO_WORKITEM,
) {
    // The handler may release this very item (and free the memory holding it) as its last act, so
    // take a copy of it first and hold no reference into the item while it runs.
    // SAFETY: `context` is the NtPassiveWork that queued this item, initialised until passive_release,
    // which can only happen inside the handler invoked below.
    let handler: Handler = unsafe {
        let work = context.cast::<NtPassiveWork>();
        (*(*work).handler.get()).assume_init()
    };
    // SAFETY: the handler's context is alive while the work item runs (the core's contract).
    unsafe { handler.invoke() };
}

fn item_layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size, core::mem::align_of::<usize>()).ok()
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
        let item = pool
            .allocate(layout)
            .ok_or(Status::INSUFFICIENT_RESOURCES)?;
        // SAFETY: `item` is `size` bytes of non-paged pool; the owner is the driver object or one of
        // its devices and outlives the item (the caller's contract); the storage is per the caller.
        unsafe {
            sys::IoInitializeWorkItem(owner.io_object(), item.as_ptr() as sys::PIO_WORKITEM);
            work.write(NtPassiveWork {
                item: AtomicPtr::new(item.as_ptr()),
                size,
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

    /// `passive_release`: uninitialises and frees the item.
    ///
    /// # Safety
    /// The item is neither queued nor running (or this is its own routine's last act); `pool` is the
    /// one `init` used.
    pub(super) unsafe fn release(work: *mut NtPassiveWork, pool: &Pool) {
        // SAFETY: per the caller; uninitialised and freed once (the pointer is taken out).
        unsafe {
            let size = (*work).size;
            let item = (*work).item.swap(ptr::null_mut(), Ordering::Relaxed);
            if let (Some(item), Some(layout)) = (NonNull::new(item), item_layout(size)) {
                sys::IoUninitializeWorkItem(item.as_ptr() as sys::PIO_WORKITEM);
                pool.free(item, layout);
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
