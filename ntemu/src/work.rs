//! Work items and the system worker threads that run them at PASSIVE: allocated by the kernel
//! (`IoAllocateWorkItem`, `IoFreeWorkItem`) or initialised in the driver's non-paged pool
//! (`IoSizeofWorkItem`, `IoInitializeWorkItem`, `IoUninitializeWorkItem`), for a device object or
//! the driver object, queued with `IoQueueWorkItem` (device objects only) or `IoQueueWorkItemEx`. A
//! queued item references its device until its routine returns; the image stays loaded while any
//! item is queued or running.

use core::ffi::c_void;
use std::collections::{HashMap, VecDeque};
use std::format;
use std::string::String;
use std::sync::Arc;
use std::time::Duration;
use std::vec::Vec;

use super::io::release_device;
use super::kernel::{enter, with_context, Kernel, Rule, PASSIVE};
use super::pool::free_checked;
use super::preempt::{start_driver_code, stop_driver_code};
use super::stack::{on_kernel_stack, StackKind};
use crate::nt::{
    DEVICE_OBJECT, IO_WORKITEM_ROUTINE, IO_WORKITEM_ROUTINE_EX, PIO_WORKITEM, PIO_WORKITEM_ROUTINE,
    PIO_WORKITEM_ROUTINE_EX,
};

/// Pool tag of the emulation's own work items.
const WORK_ITEM_TAG: u32 = u32::from_le_bytes(*b"IoWk");
/// `IoSizeofWorkItem()`: bytes of an `IO_WORKITEM` (x64).
const WORK_ITEM_SIZE: u32 = 0x58;

struct WorkItem {
    /// The device object, or the driver object (`IoInitializeWorkItem` only).
    owner: usize,
    /// Whether `owner` is a device object (`IoQueueWorkItem` needs one).
    owner_is_device: bool,
    /// Initialised in the driver's storage (`IoInitializeWorkItem`), not allocated by the kernel.
    in_driver_storage: bool,
    queued: bool,
    running_on: Option<u64>,
}

/// The routine a queued item runs.
#[derive(Clone, Copy)]
enum Routine {
    /// `IoQueueWorkItem`'s.
    Device(IO_WORKITEM_ROUTINE),
    /// `IoQueueWorkItemEx`'s.
    Ex(IO_WORKITEM_ROUTINE_EX),
}

impl Routine {
    /// The routine's address, for failure messages.
    fn address(self) -> *const () {
        match self {
            Routine::Device(routine) => routine as *const (),
            Routine::Ex(routine) => routine as *const (),
        }
    }
}

struct QueuedWork {
    item: usize,
    routine: Routine,
    context: usize,
}

/// Work items by address and the queue of the worker threads.
#[derive(Default)]
pub(super) struct WorkState {
    items: HashMap<usize, WorkItem>,
    queue: VecDeque<QueuedWork>,
    /// Work items queued or running.
    pub(super) in_progress: u32,
}

impl WorkState {
    /// Work items not freed (leak report).
    pub(super) fn allocated(&self) -> usize {
        self.items.len()
    }

    /// Describes the work items initialised in `[start, start + len)`: pool holding one must not be
    /// freed before `IoUninitializeWorkItem`.
    pub(super) fn busy_in(&self, start: usize, len: usize) -> Vec<String> {
        self.items
            .iter()
            .filter(|(a, w)| w.in_driver_storage && **a >= start && **a < start + len)
            .map(|(a, w)| {
                format!(
                    "IO_WORKITEM at +{:#x} still initialised{}",
                    a - start,
                    if w.queued { " and queued" } else { "" }
                )
            })
            .collect()
    }

    /// Forgets the work items inside a freed range.
    pub(super) fn forget(&mut self, start: usize, len: usize) {
        self.items
            .retain(|a, w| !(w.in_driver_storage && *a >= start && *a < start + len));
    }
}

/// Whether `object` is a live device object of the driver.
fn is_live_device(kernel: &Kernel, object: usize) -> bool {
    kernel
        .lock()
        .io
        .devices
        .iter()
        .any(|d| d.address == object && !d.deleted)
}

/// `IoAllocateWorkItem`: the `PIO_WORKITEM` is the address of the emulation's block (0 on failure).
///
/// # Safety
/// `device` is a live device object of the driver.
#[no_mangle]
pub unsafe extern "system" fn IoAllocateWorkItem(device: *const DEVICE_OBJECT) -> PIO_WORKITEM {
    let (kernel, _) = enter("IoAllocateWorkItem", Rule::AtMostDispatch);
    if !is_live_device(&kernel, device as usize) {
        kernel.fail(format!(
            "IoAllocateWorkItem({device:p}): not a live device object"
        ));
        return 0;
    }
    let item = kernel.pool.allocate(64, WORK_ITEM_TAG, true);
    if !item.is_null() {
        kernel.lock().work.items.insert(
            item as usize,
            WorkItem {
                owner: device as usize,
                owner_is_device: true,
                in_driver_storage: false,
                queued: false,
                running_on: None,
            },
        );
    }
    item as PIO_WORKITEM
}

/// `IoQueueWorkItem`: the item's device is referenced until the routine has returned. The item must
/// belong to a device object.
///
/// # Safety
/// `item` is an allocated or initialised work item; `routine` may run with `context` at PASSIVE.
#[no_mangle]
pub unsafe extern "system" fn IoQueueWorkItem(
    item: PIO_WORKITEM,
    routine: PIO_WORKITEM_ROUTINE,
    queue: i32,
    context: *const c_void,
) {
    let (kernel, _) = enter("IoQueueWorkItem", Rule::AtMostDispatch);
    let Some(routine) = routine else {
        kernel.fail("IoQueueWorkItem without a routine".into());
        return;
    };
    // SAFETY: the driver converted an IO_WORKITEM_ROUTINE (windows-sys's type has no parameters);
    // this restores its type (function pointers of the same size).
    let routine = unsafe {
        core::mem::transmute::<unsafe extern "system" fn(), IO_WORKITEM_ROUTINE>(routine)
    };
    queue_work(
        &kernel,
        "IoQueueWorkItem",
        item,
        Routine::Device(routine),
        queue,
        context,
    );
}

/// `IoQueueWorkItemEx`: like `IoQueueWorkItem` for an item of a device or of the driver object; the
/// routine also gets the item.
///
/// # Safety
/// `item` is an allocated or initialised work item; `routine` may run with `context` at PASSIVE.
#[no_mangle]
pub unsafe extern "system" fn IoQueueWorkItemEx(
    item: PIO_WORKITEM,
    routine: PIO_WORKITEM_ROUTINE_EX,
    queue: i32,
    context: *const c_void,
) {
    let (kernel, _) = enter("IoQueueWorkItemEx", Rule::AtMostDispatch);
    let Some(routine) = routine else {
        kernel.fail("IoQueueWorkItemEx without a routine".into());
        return;
    };
    // SAFETY: as in IoQueueWorkItem, for IO_WORKITEM_ROUTINE_EX.
    let routine = unsafe {
        core::mem::transmute::<unsafe extern "system" fn(), IO_WORKITEM_ROUTINE_EX>(routine)
    };
    queue_work(
        &kernel,
        "IoQueueWorkItemEx",
        item,
        Routine::Ex(routine),
        queue,
        context,
    );
}

/// Queues `item` for the worker threads, referencing its device.
fn queue_work(
    kernel: &Kernel,
    what: &str,
    item: PIO_WORKITEM,
    routine: Routine,
    queue: i32,
    context: *const c_void,
) {
    if !(0..=2).contains(&queue) {
        kernel.fail(format!("{what}: unknown WORK_QUEUE_TYPE {queue}"));
    }
    let mut state = kernel.lock();
    let Some(work) = state.work.items.get_mut(&(item as usize)) else {
        drop(state);
        kernel.fail(format!(
            "{what}({item:#x}): not an allocated or initialised work item"
        ));
        return;
    };
    if work.queued {
        drop(state);
        kernel.fail(format!("{what}({item:#x}): already queued"));
        return;
    }
    if matches!(routine, Routine::Device(_)) && !work.owner_is_device {
        drop(state);
        kernel.fail(format!(
            "{what}({item:#x}): the item was initialised for the driver object; IoQueueWorkItem \
             needs a device object's item (IoQueueWorkItemEx takes either)"
        ));
        return;
    }
    work.queued = true;
    let owner = work.owner;
    if let Some(d) = state.io.devices.iter_mut().find(|d| d.address == owner) {
        d.references += 1;
    }
    state.work.in_progress += 1;
    state.work.queue.push_back(QueuedWork {
        item: item as usize,
        routine,
        context: context as usize,
    });
    drop(state);
    kernel.changed.notify_all();
}

/// `IoSizeofWorkItem`: the bytes `IoInitializeWorkItem` needs.
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn IoSizeofWorkItem() -> u32 {
    enter("IoSizeofWorkItem", Rule::Any);
    WORK_ITEM_SIZE
}

/// `IoInitializeWorkItem`: a work item in the driver's non-paged pool, for `object` (the driver
/// object or one of its live devices).
///
/// # Safety
/// `item` points to `IoSizeofWorkItem()` writable bytes.
#[no_mangle]
pub unsafe extern "system" fn IoInitializeWorkItem(object: *const c_void, item: PIO_WORKITEM) {
    let (kernel, _) = enter("IoInitializeWorkItem", Rule::Any);
    let object = object as usize;
    let owner_is_device = is_live_device(&kernel, object);
    if !owner_is_device && !kernel.lock().image.driver_objects.contains(&object) {
        kernel.fail(format!(
            "IoInitializeWorkItem({object:#x}, {item:#x}): the object is neither the driver object nor a live device of the driver"
        ));
        return;
    }
    if kernel
        .pool
        .size_of(item as usize)
        .is_none_or(|size| size < WORK_ITEM_SIZE as usize)
    {
        kernel.fail(format!(
            "IoInitializeWorkItem({item:#x}): not the start of a pool block of IoSizeofWorkItem() = {WORK_ITEM_SIZE} bytes (the emulation wants the item at the start of its own block)"
        ));
        return;
    }
    let mut state = kernel.lock();
    if state.work.items.contains_key(&(item as usize)) {
        drop(state);
        kernel.fail(format!(
            "IoInitializeWorkItem({item:#x}): already initialised (IoUninitializeWorkItem first)"
        ));
        return;
    }
    state.work.items.insert(
        item as usize,
        WorkItem {
            owner: object,
            owner_is_device,
            in_driver_storage: true,
            queued: false,
            running_on: None,
        },
    );
}

/// `IoUninitializeWorkItem`: allowed while not queued (also while its routine runs, as on NT).
///
/// # Safety
/// `item` was initialised by `IoInitializeWorkItem`.
#[no_mangle]
pub unsafe extern "system" fn IoUninitializeWorkItem(item: PIO_WORKITEM) {
    let (kernel, _) = enter("IoUninitializeWorkItem", Rule::Any);
    if let Some(problem) = remove_item(&kernel, item, true) {
        kernel.fail(format!("IoUninitializeWorkItem({item:#x}): {problem}"));
    }
}

/// Removes `item` (made by `IoInitializeWorkItem` when `in_driver_storage`, else by
/// `IoAllocateWorkItem`), or says why it may not go now.
fn remove_item(
    kernel: &Kernel,
    item: PIO_WORKITEM,
    in_driver_storage: bool,
) -> Option<&'static str> {
    let mut state = kernel.lock();
    match state.work.items.get(&(item as usize)) {
        None => Some("not an allocated or initialised work item"),
        Some(w) if w.in_driver_storage != in_driver_storage => Some(if in_driver_storage {
            "allocated by IoAllocateWorkItem (free it with IoFreeWorkItem)"
        } else {
            "initialised by IoInitializeWorkItem (undo it with IoUninitializeWorkItem)"
        }),
        Some(w) if w.queued => Some("while queued"),
        // Freeing an item whose routine still runs on another thread is what NT allows: the I/O
        // manager takes what it needs before it calls the routine and touches the item no more, so
        // a driver may free it once the routine made its last access (the pool's poison and
        // quarantine catch a routine that uses it later).
        Some(_) => {
            state.work.items.remove(&(item as usize));
            None
        }
    }
}

/// `IoFreeWorkItem`: allowed while not queued (also while its routine runs, as on NT).
///
/// # Safety
/// `item` came from `IoAllocateWorkItem` and is freed once.
#[no_mangle]
pub unsafe extern "system" fn IoFreeWorkItem(item: PIO_WORKITEM) {
    let (kernel, _) = enter("IoFreeWorkItem", Rule::AtMostDispatch);
    match remove_item(&kernel, item, false) {
        Some(problem) => kernel.fail(format!("IoFreeWorkItem({item:#x}): {problem}")),
        None => free_checked(&kernel, item as usize, WORK_ITEM_TAG, "IoFreeWorkItem"),
    }
}

/// A system worker thread: runs queued work items at PASSIVE until shutdown.
pub(super) fn worker_loop(kernel: Arc<Kernel>) {
    let me = with_context(|c| c.thread);
    loop {
        let mut state = kernel.lock();
        let work = loop {
            if state.shutdown {
                return;
            }
            if let Some(work) = state.work.queue.pop_front() {
                break work;
            }
            state = kernel
                .changed
                .wait_timeout(state, Duration::from_millis(20))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        let owner = match state.work.items.get_mut(&work.item) {
            Some(w) => {
                w.queued = false;
                w.running_on = Some(me);
                w.owner
            }
            None => 0,
        };
        drop(state);
        start_driver_code(&kernel);
        on_kernel_stack(
            &kernel,
            StackKind::Thread,
            || format!("work item routine {:p}", work.routine.address()),
            // SAFETY: the driver queued this routine with this context for its device or driver
            // object, which the queued item references, at PASSIVE on a system worker thread.
            || unsafe {
                match work.routine {
                    Routine::Device(routine) => {
                        routine(owner as *mut DEVICE_OBJECT, work.context as *mut c_void)
                    }
                    Routine::Ex(routine) => routine(
                        owner as *mut c_void,
                        work.context as *mut c_void,
                        work.item as PIO_WORKITEM,
                    ),
                }
            },
        );
        let irql = with_context(|c| c.irql);
        if irql != PASSIVE {
            kernel.fail(format!("work item routine returned at IRQL {irql}"));
        }
        stop_driver_code(&kernel, false);
        {
            let mut state = kernel.lock();
            // The item may have been freed meanwhile (and its address reused): only our own run ends.
            if let Some(w) = state.work.items.get_mut(&work.item) {
                if w.running_on == Some(me) {
                    w.running_on = None;
                }
            }
            if let Some(d) = state.io.devices.iter_mut().find(|d| d.address == owner) {
                d.references -= 1;
            }
            state.work.in_progress -= 1;
        }
        release_device(&kernel, owner);
        kernel.changed.notify_all();
    }
}
