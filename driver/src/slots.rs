//! Load-thread slots. A new system thread may start running, and read its parameters, before
//! `PsCreateSystemThread` has returned its handle to the creator, which then stores the handle. So the
//! parameters the thread reads and the handle the creator writes live in separate cells, and the thread
//! is given a pointer to its parameters only: the two never touch the same memory, whatever the timing.

use core::cell::UnsafeCell;
use core::ffi::c_void;

/// One thread's slot: parameters `P` (written before the thread exists, then only read) and the
/// creator's handle `H` (written after creation, read and cleared by the reaper).
pub struct ThreadSlot<P: Copy, H: Copy> {
    params: UnsafeCell<P>,
    handle: UnsafeCell<Option<H>>,
}

impl<P: Copy, H: Copy> ThreadSlot<P, H> {
    /// An idle slot holding `params`.
    pub const fn new(params: P) -> Self {
        Self {
            params: UnsafeCell::new(params),
            handle: UnsafeCell::new(None),
        }
    }

    /// Sets the parameters of the next thread and clears the handle.
    ///
    /// # Safety
    /// No thread of this slot runs or is being created, and the caller has exclusive use of the slot
    /// (the driver: under its control lock, after reaping).
    pub unsafe fn prepare(&self, params: P) {
        // SAFETY: per the caller nobody else reads or writes either cell now.
        unsafe {
            *self.params.get() = params;
            *self.handle.get() = None;
        }
    }

    /// The context to pass to the thread's start routine: a pointer to the parameters only.
    pub fn context(&self) -> *mut c_void {
        self.params.get().cast()
    }

    /// The thread's copy of its parameters (what its start routine does first).
    ///
    /// # Safety
    /// `context` came from [`ThreadSlot::context`] of a slot prepared before the thread was created,
    /// which stays in place and is not prepared again until the thread has been reaped.
    pub unsafe fn thread_params(context: *mut c_void) -> P {
        // SAFETY: per the caller `context` points at the initialised parameter cell, which is only read
        // while the thread may run.
        unsafe { context.cast::<P>().read() }
    }

    /// Stores the handle of the thread just created (it may already be running).
    ///
    /// # Safety
    /// Only the creator calls this, with exclusive use of the handle cell (the driver: under its control
    /// lock).
    pub unsafe fn publish_handle(&self, handle: H) {
        // SAFETY: the thread never touches the handle cell; the caller is its only user.
        unsafe { *self.handle.get() = Some(handle) };
    }

    /// Takes the handle out of the slot (for the reaper), leaving it empty.
    ///
    /// # Safety
    /// As for [`ThreadSlot::publish_handle`].
    pub unsafe fn take_handle(&self) -> Option<H> {
        // SAFETY: as in publish_handle.
        unsafe { (*self.handle.get()).take() }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Params {
        rate: u32,
        seconds: u32,
        processor: Option<u32>,
    }

    struct Shared(ThreadSlot<Params, usize>);
    /// The start routine's context pointer, sent to the new thread.
    struct Context(*mut c_void);
    // SAFETY: it points at a slot's parameters, which outlive the thread and are only read by it.
    unsafe impl Send for Context {}
    // SAFETY: the test follows ThreadSlot's contract: one creator, the thread reads only the params.
    unsafe impl Sync for Shared {}
    // SAFETY: as above.
    unsafe impl Send for Shared {}

    /// Creator and new thread overlap the way PsCreateSystemThread lets them: the thread reads its
    /// parameters while the creator stores the handle. Run under Miri (test-all.sh does) this is checked
    /// for data races; copying the whole slot in the thread, as the first version did, is one.
    #[test]
    fn the_new_thread_reads_its_parameters_while_the_creator_stores_the_handle() {
        let idle = Params {
            rate: 0,
            seconds: 0,
            processor: None,
        };
        let slots: Arc<Vec<Shared>> =
            Arc::new((0..4).map(|_| Shared(ThreadSlot::new(idle))).collect());
        let mut threads = Vec::new();
        for (index, slot) in slots.iter().enumerate() {
            let params = Params {
                rate: 100 * (index as u32 + 1),
                seconds: 5,
                processor: Some(index as u32),
            };
            // SAFETY: no thread of this slot exists yet.
            unsafe { slot.0.prepare(params) };
            let context = Context(slot.0.context());
            threads.push(thread::spawn(move || {
                let context = context;
                // SAFETY: the context of a prepared slot that outlives this thread (joined below).
                unsafe { ThreadSlot::<Params, usize>::thread_params(context.0) }
            }));
            // SAFETY: this test is the only creator.
            unsafe { slot.0.publish_handle(index + 10) };
            assert_eq!(params.processor, Some(index as u32));
        }
        for (index, thread) in threads.into_iter().enumerate() {
            let seen = thread.join().expect("thread");
            assert_eq!(seen.rate, 100 * (index as u32 + 1));
            assert_eq!(seen.processor, Some(index as u32));
            // SAFETY: the thread has ended; this test is the only reaper.
            assert_eq!(unsafe { slots[index].0.take_handle() }, Some(index + 10));
            // SAFETY: as above.
            assert_eq!(unsafe { slots[index].0.take_handle() }, None);
        }
    }
}
