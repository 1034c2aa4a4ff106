//! Per-participant state: a prepared processor's slot, or the shared overflow slot that serves
//! processors without one (S2: enter never fails).

use crate::deferred::RetiredList;
use crate::domain::Domain;
use crate::platform::{Platform, ProcessorNumber};
use crate::readers::ReaderTable;
use crate::stats::ParticipantCounters;
use crate::sync::{AtomicBool, AtomicPtr, AtomicU64};
use core::mem::MaybeUninit;
use core::ptr;

/// What every participant of the reclamation cycle has: readers, retired items, its copy of the
/// epoch and whether it takes part in cycles. `repr(C)` keeps what a steady-state enter reads
/// (`local_epoch`, `participating`) and what a join writes (the counters) on one cache line, right
/// after the reader table, with the slot's `ready` on the next.
#[repr(C)]
pub(crate) struct Participant {
    pub(crate) readers: ReaderTable,
    /// The epoch new readers here enter: set by the cycle's visit and on joining.
    pub(crate) local_epoch: AtomicU64,
    /// In the cycle: written only by the owner (join on first use, leave when idle during a visit).
    pub(crate) participating: AtomicBool,
    pub(crate) counters: ParticipantCounters,
    pub(crate) retired: RetiredList,
    /// Oldest reader epoch already reported as stalled, so that a stall is reported once.
    pub(crate) stall_reported: AtomicU64,
    /// Set by `join`, cleared by the next ring snapshot; only the `release-while-joining` mutation
    /// reads it.
    #[cfg(feature = "mutations")]
    pub(crate) joined_since_snapshot: AtomicBool,
}

impl Participant {
    /// A participant that is not in the cycle (the overflow slot's, built once at load).
    pub(crate) fn new() -> Self {
        let mut part = MaybeUninit::uninit();
        // SAFETY: `write_idle` initialises every field of the fresh, aligned place.
        unsafe {
            Self::write_idle(part.as_mut_ptr());
            part.assume_init()
        }
    }

    /// Writes a participant that is not in the cycle at `place`, field by field, so that a processor
    /// slot is built where it was allocated instead of on the stack and copied in (what a lazy
    /// first enter would pay at DISPATCH).
    ///
    /// # Safety
    /// `place` is valid for writes and aligned; what it held is overwritten without being dropped.
    pub(crate) unsafe fn write_idle(place: *mut Participant) {
        // SAFETY: per the caller; every field is written once, through raw pointers to the fields.
        unsafe {
            ReaderTable::write_empty(ptr::addr_of_mut!((*place).readers));
            ptr::addr_of_mut!((*place).local_epoch).write(AtomicU64::new(0));
            ptr::addr_of_mut!((*place).participating).write(AtomicBool::new(false));
            ptr::addr_of_mut!((*place).retired).write(RetiredList::new());
            ptr::addr_of_mut!((*place).counters).write(ParticipantCounters::default());
            ptr::addr_of_mut!((*place).stall_reported).write(AtomicU64::new(u64::MAX));
            #[cfg(feature = "mutations")]
            ptr::addr_of_mut!((*place).joined_since_snapshot).write(AtomicBool::new(false));
        }
    }

    /// Records a join for the `release-while-joining` mutation (nothing without the feature).
    #[inline(always)]
    pub(crate) fn mark_joined(&self) {
        #[cfg(feature = "mutations")]
        self.joined_since_snapshot
            .store(true, crate::sync::Ordering::Relaxed);
    }

    /// Whether the participant joined since the last snapshot, clearing the mark (always false
    /// without the feature).
    #[inline(always)]
    pub(crate) fn take_joined_mark(&self) -> bool {
        #[cfg(feature = "mutations")]
        return self
            .joined_since_snapshot
            .swap(false, crate::sync::Ordering::Relaxed);
        #[cfg(not(feature = "mutations"))]
        false
    }
}

/// The per-CPU slot of one prepared processor. Cache-line aligned; allocated through the platform and
/// never moved (its message object is bound in place).
#[repr(C, align(64))]
pub(crate) struct Slot<P: Platform> {
    pub(crate) part: Participant,
    /// Ready to receive messages: set at once for `lazy`/`eager`, at AddComplete for `callback`.
    pub(crate) ready: AtomicBool,
    /// The processor this slot belongs to.
    pub(crate) processor: ProcessorNumber,
    /// The domain that owns the slot (message handlers find it here).
    pub(crate) domain: *const Domain<P>,
    /// Next member of the in-flight cycle's ring; written only when a cycle starts.
    pub(crate) next_in_cycle: AtomicPtr<Slot<P>>,
    /// Next slot in the domain's registry (under the registry lock).
    pub(crate) next_registered: AtomicPtr<Slot<P>>,
    /// The per-CPU message (DPC) bound to `processor`.
    pub(crate) message: MaybeUninit<P::Message>,
}

impl<P: Platform> Slot<P> {
    /// The slot whose participant is `part`.
    ///
    /// # Safety
    /// `part` points to the `part` field of a live `Slot<P>` (not to the overflow participant) and
    /// was derived from a pointer to the whole slot, not from a reference to the field.
    #[inline(always)]
    pub(crate) unsafe fn of_participant<'a>(part: *const Participant) -> &'a Slot<P> {
        // SAFETY: per the caller, `part` lies `offset_of!(Slot<P>, part)` bytes into a live slot.
        unsafe {
            &*part
                .cast::<u8>()
                .sub(core::mem::offset_of!(Slot<P>, part))
                .cast::<Slot<P>>()
        }
    }
}
