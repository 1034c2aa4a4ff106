//! Whether DPCs queued to a processor actually run: one probe DPC per platform, in the platform's
//! pool, waited for up to the embedding driver's limit.
//!
//! On an NT kernel it runs within microseconds. Wine 8 accepts `KeInsertQueueDpc` but never runs the
//! DPC; there per-CPU slots cannot be bound (a reclamation cycle would wait forever for their
//! messages), so the platform refuses to bind them and every processor uses the core's shared overflow
//! slot (a spin-locked participant whose cycles need no DPC).

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::pool::Pool;
use crate::sys;

/// Whether and how long a platform checks that DPCs are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpcDelivery {
    /// Trust that they are (a real NT kernel): no probe, per-CPU slots are bound.
    Assume,
    /// Queue one DPC to the current processor and wait up to this many milliseconds (in 10 ms steps)
    /// for it; when it has not run by then, no per-CPU slot is bound (every processor uses the shared
    /// overflow slot). kepoch.sys waits 500 ms, which covers Wine.
    Probe {
        /// The longest wait.
        milliseconds: u32,
    },
}

/// The probe's DPC and its flag, in pool: a probe DPC that runs after the wait gave up still finds
/// valid memory. The platform keeps it until it drops, and flushes queued DPCs before freeing it.
#[repr(C)]
pub(super) struct ProbeBlock {
    dpc: sys::KDPC,
    ran: AtomicBool,
}

unsafe extern "system" fn probe_dpc(
    _dpc: *mut sys::KDPC,
    context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    // SAFETY: `context` is the ProbeBlock holding this DPC, freed only after a flush (ProbeBlock::free).
    unsafe {
        (*context.cast::<ProbeBlock>())
            .ran
            .store(true, Ordering::Release)
    };
}

impl ProbeBlock {
    /// Queues the probe DPC to the current processor and waits up to `milliseconds` for it. Returns the
    /// block (to be freed with [`ProbeBlock::free`]) and whether the DPC ran; `None` when the block
    /// could not be allocated. PASSIVE_LEVEL.
    pub(super) fn run(pool: &Pool, milliseconds: u32) -> Option<(NonNull<ProbeBlock>, bool)> {
        let block = pool
            .allocate(Layout::new::<ProbeBlock>())?
            .cast::<ProbeBlock>();
        let raw = block.as_ptr();
        let mut number = sys::PROCESSOR_NUMBER::default();
        // SAFETY: fresh block; the flag is written before the KDPC is initialised and queued; the
        // block stays allocated until `free`, which flushes queued DPCs first.
        unsafe {
            ptr::addr_of_mut!((*raw).ran).write(AtomicBool::new(false));
            let dpc = ptr::addr_of_mut!((*raw).dpc);
            sys::KeGetCurrentProcessorNumberEx(&mut number);
            sys::KeInitializeDpc(dpc, sys::deferred_routine(probe_dpc), raw.cast());
            sys::KeSetTargetProcessorDpcEx(dpc, &number);
            sys::KeInsertQueueDpc(dpc, ptr::null(), ptr::null());
        }
        // SAFETY: the flag was initialised above and the block lives until `free`.
        let ran = || unsafe { (*raw).ran.load(Ordering::Acquire) };
        for _ in 0..milliseconds.div_ceil(10) {
            if ran() {
                break;
            }
            super::delay_passive(10);
        }
        Some((block, ran()))
    }

    /// Waits for the probe DPC (`KeFlushQueuedDpcs`) and frees the block. PASSIVE_LEVEL.
    ///
    /// # Safety
    /// `block` came from [`ProbeBlock::run`] with `pool` and is freed once.
    pub(super) unsafe fn free(block: NonNull<ProbeBlock>, pool: &Pool) {
        // SAFETY: after the flush the DPC is neither queued nor running (on NT; Wine never runs it and
        // its flush returns at once, and its DPC never touches the memory); freed once per the caller.
        unsafe {
            sys::KeFlushQueuedDpcs();
            pool.free(block.cast(), Layout::new::<ProbeBlock>());
        }
    }
}
