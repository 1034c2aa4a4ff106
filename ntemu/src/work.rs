//! Work items (`IoAllocateWorkItem`, `IoQueueWorkItem`, `IoFreeWorkItem`) and the system worker
//! threads that run them at PASSIVE. A queued item references its device until its routine returns.

use core::ffi::c_void;
use std::collections::{HashMap, VecDeque};
use std::format;
use std::sync::Arc;
use std::time::Duration;

use super::io::release_device;
use super::kernel::{enter, with_context, Kernel, Rule, PASSIVE};
use super::pool::free_checked;
use super::preempt::{start_driver_code, stop_driver_code};
use super::stack::{on_kernel_stack, StackKind};
use crate::nt::{DEVICE_OBJECT, IO_WORKITEM_ROUTINE, PIO_WORKITEM, PIO_WORKITEM_ROUTINE};

/// Pool tag of the emulation's own work items.
const WORK_ITEM_TAG: u32 = u32::from_le_bytes(*b"IoWk");

struct WorkItem {
    device: usize,
    queued: bool,
    running_on: Option<u64>,
}

struct QueuedWork {
    item: usize,
    routine: IO_WORKITEM_ROUTINE,
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
}

/// `IoAllocateWorkItem`: the `PIO_WORKITEM` is the address of the emulation's block (0 on failure).
///
/// # Safety
/// `device` is a live device object of the driver.
#[no_mangle]
pub unsafe extern "system" fn IoAllocateWorkItem(device: *const DEVICE_OBJECT) -> PIO_WORKITEM {
    let (kernel, _) = enter("IoAllocateWorkItem", Rule::AtMostDispatch);
    if !kernel
        .lock()
        .io
        .devices
        .iter()
        .any(|d| d.address == device as usize && !d.deleted)
    {
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
                device: device as usize,
                queued: false,
                running_on: None,
            },
        );
    }
    item as PIO_WORKITEM
}

/// `IoQueueWorkItem`: the item's device is referenced until the routine has returned.
///
/// # Safety
/// `item` came from `IoAllocateWorkItem`; `routine` may run with `context` at PASSIVE.
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
    // SAFETY: the driver converted an IO_WORKITEM_ROUTINE (`nt::work_item_routine`); this restores its
    // type (function pointers of the same size).
    let routine = unsafe {
        core::mem::transmute::<unsafe extern "system" fn(), IO_WORKITEM_ROUTINE>(routine)
    };
    if !(0..=2).contains(&queue) {
        kernel.fail(format!("IoQueueWorkItem: unknown WORK_QUEUE_TYPE {queue}"));
    }
    let mut state = kernel.lock();
    let Some(work) = state.work.items.get_mut(&(item as usize)) else {
        drop(state);
        kernel.fail(format!(
            "IoQueueWorkItem({item:#x}): not an allocated work item"
        ));
        return;
    };
    if work.queued {
        drop(state);
        kernel.fail(format!("IoQueueWorkItem({item:#x}): already queued"));
        return;
    }
    work.queued = true;
    let device = work.device;
    if let Some(d) = state.io.devices.iter_mut().find(|d| d.address == device) {
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

/// `IoFreeWorkItem`: allowed while not queued, or from the item's own routine.
///
/// # Safety
/// `item` came from `IoAllocateWorkItem` and is freed once.
#[no_mangle]
pub unsafe extern "system" fn IoFreeWorkItem(item: PIO_WORKITEM) {
    let (kernel, _) = enter("IoFreeWorkItem", Rule::AtMostDispatch);
    let me = with_context(|c| c.thread);
    let problem = {
        let mut state = kernel.lock();
        match state.work.items.get(&(item as usize)) {
            None => Some("not an allocated work item"),
            Some(w) if w.queued => Some("freed while queued"),
            Some(w) if w.running_on.is_some_and(|t| t != me) => {
                Some("freed while its routine runs on another thread")
            }
            Some(_) => {
                state.work.items.remove(&(item as usize));
                None
            }
        }
    };
    match problem {
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
        let device = match state.work.items.get_mut(&work.item) {
            Some(w) => {
                w.queued = false;
                w.running_on = Some(me);
                w.device
            }
            None => 0,
        };
        drop(state);
        start_driver_code(&kernel);
        on_kernel_stack(
            &kernel,
            StackKind::Thread,
            || format!("work item routine {:p}", work.routine as *const ()),
            // SAFETY: the driver queued this routine with this context for its device, which the
            // queued item references, at PASSIVE on a system worker thread.
            || unsafe { (work.routine)(device as *mut DEVICE_OBJECT, work.context as *mut c_void) },
        );
        let irql = with_context(|c| c.irql);
        if irql != PASSIVE {
            kernel.fail(format!("work item routine returned at IRQL {irql}"));
        }
        stop_driver_code(&kernel, false);
        {
            let mut state = kernel.lock();
            if let Some(w) = state.work.items.get_mut(&work.item) {
                w.running_on = None;
            }
            if let Some(d) = state.io.devices.iter_mut().find(|d| d.address == device) {
                d.references -= 1;
            }
            state.work.in_progress -= 1;
        }
        release_device(&kernel, device);
        kernel.changed.notify_all();
    }
}
