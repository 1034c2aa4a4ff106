//! Counters: cheap enough to stay on in release builds. Per-processor counters are written only by
//! their owner with plain stores; the rare slow-path events use shared atomics.

use crate::sync::{owner_add, AtomicU64, Ordering};

/// Counters of one participant, written only by its owner (the processor at DISPATCH, or the holder of
/// the overflow lock).
#[derive(Default)]
pub(crate) struct ParticipantCounters {
    pub(crate) enters: AtomicU64,
    pub(crate) exits: AtomicU64,
    pub(crate) retires: AtomicU64,
    pub(crate) freed: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) joins: AtomicU64,
    pub(crate) leaves: AtomicU64,
}

impl ParticipantCounters {
    /// Owner-side increment.
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        owner_add(counter, 1);
    }
}

/// Slow-path counters shared by the whole domain.
#[derive(Default)]
pub(crate) struct DomainCounters {
    pub(crate) remote_exits: AtomicU64,
    pub(crate) prepare_at_dispatch: AtomicU64,
    pub(crate) prepare_passive: AtomicU64,
    pub(crate) prepare_failures: AtomicU64,
    pub(crate) fallback_uses: AtomicU64,
    pub(crate) double_retires: AtomicU64,
    pub(crate) stalls_reported: AtomicU64,
    pub(crate) cycles: AtomicU64,
    pub(crate) work_items_run: AtomicU64,
    pub(crate) per_cpu_bytes: AtomicU64,
    pub(crate) cpus_prepared: AtomicU64,
    pub(crate) hot_add_start: AtomicU64,
    pub(crate) hot_add_complete: AtomicU64,
    pub(crate) hot_add_failure: AtomicU64,
    pub(crate) leaked_readers: AtomicU64,
}

impl DomainCounters {
    /// Shared increment (a locked add; slow paths only).
    pub(crate) fn add(counter: &AtomicU64, delta: u64) {
        counter.fetch_add(delta, Ordering::Relaxed);
    }
}

/// How the `callback` strategy ended up running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CallbackState {
    /// Strategy is not `callback`.
    NotUsed = 0,
    /// Registered: processors are prepared in notifications.
    Registered = 1,
    /// The routine does not exist on this host: running as `lazy`.
    ApiMissing = 2,
    /// Registration failed: running as `lazy`.
    RegistrationFailed = 3,
}

/// Version of [`Stats`]; bumped on any layout change.
pub const STATS_VERSION: u32 = 1;

/// A snapshot of a domain's counters. `repr(C)` and versioned: the driver returns it through an IOCTL
/// and user-mode tools decode it, so fields are only ever appended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// [`STATS_VERSION`].
    pub version: u32,
    /// `size_of::<Stats>()`, so that a reader can tell versions apart.
    pub size: u32,
    /// Configured strategy (registry value).
    pub strategy: u32,
    /// [`CallbackState`] as a number.
    pub callback_state: u32,
    /// Reported maximum processor count.
    pub max_reported: u32,
    /// Active processor count at the snapshot.
    pub active: u32,
    /// Processors with prepared per-CPU state.
    pub cpus_prepared: u64,
    /// Bytes of per-CPU state (slots and group tables).
    pub per_cpu_bytes: u64,
    /// Preparations paid on the hot path, at DISPATCH.
    pub prepare_at_dispatch: u64,
    /// Preparations done at PASSIVE/APC (load, notifications).
    pub prepare_passive: u64,
    /// Preparations that failed (allocation or binding).
    pub prepare_failures: u64,
    /// Enters and retirements served by the shared overflow slot.
    pub fallback_uses: u64,
    /// Epoch enters.
    pub enters: u64,
    /// Epoch exits (local and migrated).
    pub exits: u64,
    /// Exits on a processor other than the one the reader entered on.
    pub remote_exits: u64,
    /// Items retired (memory and work items).
    pub retired: u64,
    /// Items disposed of (freed or handed to a passive thread).
    pub freed: u64,
    /// Items retired but not yet disposed of.
    pub pending: u64,
    /// Rejected second retirements of the same item.
    pub double_retires: u64,
    /// Completed reclamation cycles.
    pub cycles: u64,
    /// Per-CPU messages delivered.
    pub messages: u64,
    /// Stalled readers reported.
    pub stalls_reported: u64,
    /// Times a processor joined the cycle.
    pub joins: u64,
    /// Times a processor left the cycle (idle deactivation).
    pub leaves: u64,
    /// Processor-change AddStart notifications seen.
    pub hot_add_start: u64,
    /// AddComplete notifications seen.
    pub hot_add_complete: u64,
    /// AddFailure notifications seen.
    pub hot_add_failure: u64,
    /// Hot-adds vetoed by kepoch (always 0: kepoch never vetoes).
    pub hot_add_vetoed: u64,
    /// Work items run at PASSIVE.
    pub work_items_run: u64,
    /// Current global epoch.
    pub global_epoch: u64,
    /// Newest released epoch.
    pub released_epoch: u64,
    /// Readers still inside an epoch at shutdown (a caller bug, reported).
    pub leaked_readers: u64,
}
