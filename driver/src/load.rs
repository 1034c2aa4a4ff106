//! The built-in load generator: system threads doing enter / read / exit / replace / retire on a
//! shared item at a given rate (`LOAD_START`, `LOAD_STOP`).

use core::ffi::c_void;
use core::mem;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use kepoch::platform::LogLevel;
use kepoch::{Atomic, Owned};
use kepoch_nt::sys as nt;
use kepoch_nt::{log_line, performance_counter, NtPlatform};

use crate::driver::DeviceState;
use crate::ioctl::{self, LoadRequest};
use crate::slots::ThreadSlot;
use crate::support::{nth_set_bit, ops_due, thread_rate, ticks_to_ns};

/// Most load threads ([`ioctl::limits::MAX_THREADS`]).
const MAX_LOAD_THREADS: usize = ioctl::limits::MAX_THREADS as usize;

/// The object load threads read and replace: one block of the domain, published through
/// [`LoadGenerator::shared`].
pub(crate) struct LoadItem {
    value: u64,
}

/// One load thread's parameters (in a [`ThreadSlot`] of [`LoadGenerator::threads`], at a fixed address
/// while it runs; its handle is kept apart in the slot).
#[derive(Clone, Copy)]
pub(crate) struct LoadThread {
    state: *const DeviceState,
    rate: u32,
    seconds: u32,
    /// Group-0 processor number to pin to, if any.
    processor: Option<u32>,
}

impl LoadThread {
    pub(crate) const IDLE: LoadThread = LoadThread {
        state: ptr::null(),
        rate: 0,
        seconds: 0,
        processor: None,
    };
}

/// The built-in load generator: system threads doing enter / read / exit / replace / retire on
/// [`LoadGenerator::shared`] at a given rate.
pub(crate) struct LoadGenerator {
    /// Prepared, published and reaped under `DeviceState::control`; a running thread reads only its
    /// parameters.
    pub(crate) threads: [ThreadSlot<LoadThread, nt::HANDLE>; MAX_LOAD_THREADS],
    pub(crate) stop: AtomicBool,
    /// Threads that have not finished their loop yet.
    pub(crate) running: AtomicU32,
    /// The item readers look up and writers replace, through the core's safe pointer API (detached
    /// from the domain's borrow: both live in the same [`DeviceState`], which drops it first).
    pub(crate) shared: Atomic<'static, LoadItem, NtPlatform>,
}

/// `InitializeObjectAttributes(name, attributes, root, NULL)`.
fn object_attributes(
    name: *mut nt::UNICODE_STRING,
    attributes: u32,
    root: nt::HANDLE,
) -> nt::OBJECT_ATTRIBUTES {
    nt::OBJECT_ATTRIBUTES {
        Length: mem::size_of::<nt::OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: root,
        ObjectName: name,
        Attributes: attributes,
        SecurityDescriptor: ptr::null_mut(),
        SecurityQualityOfService: ptr::null_mut(),
    }
}

impl DeviceState {
    /// LOAD_START: refuses while a previous run is still going; reaps a finished one first.
    pub(crate) fn start_load(&self, request: LoadRequest) -> i32 {
        self.control.with(|| {
            if self.load.running.load(Ordering::Acquire) != 0 {
                return ioctl::status::DEVICE_BUSY;
            }
            // SAFETY: under `control`.
            unsafe { self.reap_threads() };
            // SAFETY: callable at any IRQL.
            let mask = unsafe { nt::KeQueryActiveProcessors() } as u64;
            let wanted = if request.threads == 0 {
                mask.count_ones().max(1)
            } else {
                request.threads
            };
            // No thread with a zero rate.
            let count = wanted.min(request.rate).min(MAX_LOAD_THREADS as u32);
            self.load.stop.store(false, Ordering::Release);
            for index in 0..count {
                let slot = &self.load.threads[index as usize];
                // SAFETY: under `control`; no load thread runs (reaped above).
                unsafe {
                    slot.prepare(LoadThread {
                        state: self,
                        rate: thread_rate(request.rate, count, index),
                        seconds: request.seconds,
                        processor: nth_set_bit(mask, index),
                    });
                }
                let attributes =
                    object_attributes(ptr::null_mut(), nt::OBJ_KERNEL_HANDLE, ptr::null_mut());
                self.load.running.fetch_add(1, Ordering::AcqRel);
                let mut handle: nt::HANDLE = ptr::null_mut();
                // SAFETY: the slot stays in place and its parameters unchanged until the thread is reaped
                // (under `control`); a kernel handle because we run in the caller's process.
                let status = unsafe {
                    nt::PsCreateSystemThread(
                        &mut handle,
                        nt::THREAD_ALL_ACCESS,
                        &attributes,
                        ptr::null_mut(),
                        ptr::null_mut(),
                        nt::start_routine(load_thread),
                        slot.context(),
                    )
                };
                if status < 0 {
                    self.load.running.fetch_sub(1, Ordering::AcqRel);
                    log_line(
                        LogLevel::Error,
                        format_args!("PsCreateSystemThread failed: 0x{:08X}", status as u32),
                    );
                    self.load.stop.store(true, Ordering::Release);
                    // SAFETY: under `control`.
                    unsafe { self.reap_threads() };
                    return status;
                }
                // SAFETY: under `control`; the new thread (maybe running already) reads only its
                // parameters, never the handle cell.
                unsafe { slot.publish_handle(handle) };
            }
            log_line(
                LogLevel::Info,
                format_args!(
                    "load started: {} operations/s over {count} thread(s) for {} s",
                    request.rate, request.seconds
                ),
            );
            nt::STATUS_SUCCESS
        })
    }

    /// LOAD_STOP and unload: stops the threads, waits for them and retires the last shared item.
    pub(crate) fn stop_load(&self) {
        self.control.with(|| {
            self.load.stop.store(true, Ordering::Release);
            // SAFETY: under `control`.
            let reaped = unsafe { self.reap_threads() };
            if let Some(last) = self.load.shared.take() {
                last.retire();
            }
            if reaped != 0 {
                log_line(
                    LogLevel::Info,
                    format_args!("load stopped ({reaped} thread(s))"),
                );
            }
        })
    }

    /// Waits for every created load thread to end and closes its handle. Returns how many there were.
    ///
    /// # Safety
    /// The caller holds `control`.
    unsafe fn reap_threads(&self) -> usize {
        let mut reaped = 0;
        for slot in &self.load.threads {
            // SAFETY: per the caller (`control` is held).
            let Some(handle) = (unsafe { slot.take_handle() }) else {
                continue;
            };
            // SAFETY: our kernel handle to a thread we created; an untimed wait at PASSIVE returns once
            // the thread has terminated; closed once (taken out of the slot above).
            unsafe {
                nt::ZwWaitForSingleObject(handle, false, ptr::null());
                nt::ZwClose(handle);
            }
            reaped += 1;
        }
        reaped
    }

    /// One load operation: a timed enter / read / exit, then replace the shared item and retire the old
    /// one.
    fn load_operation(&self, first: bool, value: u64, frequency: u64) {
        let domain = &*self.domain;
        let (start, _) = performance_counter();
        let guard = domain.enter();
        let (entered, _) = performance_counter();
        if let Some(item) = self.load.shared.load(&guard) {
            // Read through an optimisation barrier, so the lookup is not optimised away.
            core::hint::black_box(item.value);
        }
        drop(guard);
        let (exited, _) = performance_counter();
        if first {
            self.first_enter
                .record(ticks_to_ns(entered.wrapping_sub(start), frequency));
        } else {
            self.enter_exit
                .record(ticks_to_ns(exited.wrapping_sub(start), frequency));
        }
        if let Ok(new) = Owned::new(domain, LoadItem { value }) {
            self.load.shared.store(new);
        }
    }
}

/// Start routine of a load thread: pin to its processor, run at its rate until stopped or its time is
/// up, then end.
unsafe extern "system" fn load_thread(context: *mut c_void) {
    // SAFETY: `context` is the context of the thread's slot, prepared before the thread was created and
    // unchanged until it is reaped; its DeviceState outlives every load thread (unload and LOAD_STOP reap
    // them first).
    let (slot, state) = unsafe {
        let slot = ThreadSlot::<LoadThread, nt::HANDLE>::thread_params(context);
        (slot, &*slot.state)
    };
    // SAFETY: a system thread may set its own system affinity to an active processor's bit.
    let previous = slot
        .processor
        .map(|p| unsafe { nt::KeSetSystemAffinityThreadEx(1usize << p) });

    let (start, frequency) = performance_counter();
    let end = u64::from(slot.seconds).saturating_mul(frequency);
    let mut done = 0u64;
    while !state.load.stop.load(Ordering::Acquire) {
        let (now, _) = performance_counter();
        let elapsed = now.wrapping_sub(start);
        if elapsed >= end {
            break;
        }
        let due = ops_due(elapsed, frequency, slot.rate);
        let mut batch = 0;
        while done < due && batch < 1024 {
            state.load_operation(done == 0, done, frequency);
            done += 1;
            batch += 1;
        }
        if done >= due {
            // 1 ms, relative (negative: 100 ns units from now).
            let interval: i64 = -10_000;
            // SAFETY: a kernel-mode, non-alertable delay at PASSIVE_LEVEL with a valid interval.
            unsafe { nt::KeDelayExecutionThread(nt::KERNEL_MODE, false, &interval) };
        }
    }

    if let Some(previous) = previous {
        // SAFETY: restores the affinity returned by KeSetSystemAffinityThreadEx above.
        unsafe { nt::KeRevertToUserAffinityThreadEx(previous) };
    }
    state.load.running.fetch_sub(1, Ordering::AcqRel);
    // SAFETY: ends this system thread; LOAD_STOP/unload wait on its handle before the image can go.
    unsafe { nt::PsTerminateSystemThread(nt::STATUS_SUCCESS) };
}
