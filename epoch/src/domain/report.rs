//! Statistics and the holdback diagnosis, gathered from every participant under the core's locks.

use super::*;

/// Where a reader sits: a prepared processor's slot or the shared overflow slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The slot of this processor.
    Processor(ProcessorNumber),
    /// The shared overflow slot (processors without a usable slot).
    Overflow,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Processor(p) => write!(f, "processor {p}"),
            Holder::Overflow => f.write_str("the overflow slot"),
        }
    }
}

/// What holds reclamation back: a diagnosis for stall reports and failing tortures. A racy snapshot
/// (readers keep entering and exiting while it is taken); never used for reclamation itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holdback {
    /// The global epoch.
    pub global_epoch: u64,
    /// The newest released epoch.
    pub released_epoch: u64,
    /// The participant with the oldest active reader and that reader's epoch, if any reader is
    /// inside.
    pub oldest_reader: Option<(Holder, u64)>,
    /// Items retired and not yet disposed of.
    pub pending: u64,
}

impl<P: Platform> Domain<P> {
    /// A snapshot of every counter. A [`Stats`] is about 40 KB: kernel code, whose stack is 24 KiB,
    /// uses [`Domain::stats_into`] with a buffer it owns instead.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        self.stats_into(&mut stats);
        stats
    }

    /// Writes a snapshot of every counter into `stats`, in place (no [`Stats`] on the stack).
    pub fn stats_into(&self, stats: &mut Stats) {
        stats.clear();
        stats.version = STATS_VERSION;
        stats.size = mem::size_of::<Stats>() as u32;
        stats.strategy = self.config.strategy.registry_value();
        stats.callback_state = self.callback_state() as u32;
        stats.max_reported = self.platform.max_processor_count();
        stats.active = self.platform.active_processor_count();
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        stats.cpus_prepared = load(&c.cpus_prepared);
        stats.per_cpu_bytes = load(&c.per_cpu_bytes);
        stats.prepare_at_dispatch = load(&c.prepare_at_dispatch);
        stats.prepare_passive = load(&c.prepare_passive);
        stats.prepare_failures = load(&c.prepare_failures);
        stats.fallback_uses = load(&c.fallback_uses);
        stats.remote_exits = load(&c.remote_exits);
        stats.double_retires = load(&c.double_retires);
        stats.stalls_reported = load(&c.stalls_reported);
        stats.cycles = load(&c.cycles);
        stats.work_items_run = load(&c.work_items_run);
        stats.hot_add_start = load(&c.hot_add_start);
        stats.hot_add_complete = load(&c.hot_add_complete);
        stats.hot_add_failure = load(&c.hot_add_failure);
        stats.replayed_add_start = load(&c.replayed_add_start);
        stats.replayed_add_complete = load(&c.replayed_add_complete);
        stats.replayed_add_failure = load(&c.replayed_add_failure);
        stats.visits_cut_short = load(&c.visits_cut_short);
        stats.leaked_readers = load(&c.leaked_readers);
        stats
            .cycle_latency_ns
            .copy_from(&self.locked(&self.cycle_latency));
        {
            let visits = self.locked(self.visits());
            stats.visit_ns.copy_from(&visits.duration_ns);
            stats.frees_per_visit.copy_from(&visits.frees);
        }
        stats.global_epoch = self.global_epoch.load(Ordering::Relaxed);
        stats.released_epoch = self.released_epoch.load(Ordering::Relaxed);
        let mut add = |part: &Participant| {
            let pc = &part.counters;
            let (enters, local_exits) = part.readers.totals();
            stats.enters += enters;
            stats.exits += local_exits;
            stats.retired += load(&pc.retires);
            stats.freed += load(&pc.freed);
            stats.messages += load(&pc.messages);
            stats.joins += load(&pc.joins);
            stats.leaves += load(&pc.leaves);
        };
        {
            let registry = self.locked(&self.registry);
            let mut cursor = registry.head;
            while !cursor.is_null() {
                // SAFETY: registry slots are valid while the lock is held.
                let slot = unsafe { &*cursor };
                add(&slot.part);
                cursor = slot.next_registered.load(Ordering::Relaxed);
            }
        }
        add(&self.locked(&self.overflow));
        stats.exits += stats.remote_exits;
        stats.pending = stats.retired.saturating_sub(stats.freed);
    }

    /// What holds reclamation back (see [`Holdback`]). Any IRQL up to DISPATCH.
    pub fn holdback(&self) -> Holdback {
        let mut oldest: Option<(Holder, u64)> = None;
        // Pending as `stats()` counts it, without building a 40 KB `Stats` on a DISPATCH-level stack.
        let (mut retired, mut freed) = (0u64, 0u64);
        let mut consider = |holder: Holder, part: &Participant| {
            retired += part.counters.retires.load(Ordering::Relaxed);
            freed += part.counters.freed.load(Ordering::Relaxed);
            // Read from whatever processor calls: the owner's counts may be seen mid-update.
            if let Some(epoch) = part.readers.oldest_active_epoch_seen_elsewhere() {
                if !matches!(oldest, Some((_, e)) if e <= epoch) {
                    oldest = Some((holder, epoch));
                }
            }
        };
        {
            let registry = self.locked(&self.registry);
            let mut cursor = registry.head;
            while !cursor.is_null() {
                // SAFETY: registry slots are valid while the lock is held.
                let slot = unsafe { &*cursor };
                consider(Holder::Processor(slot.processor), &slot.part);
                cursor = slot.next_registered.load(Ordering::Relaxed);
            }
        }
        consider(Holder::Overflow, &self.locked(&self.overflow));
        Holdback {
            global_epoch: self.global_epoch.load(Ordering::Relaxed),
            released_epoch: self.released_epoch.load(Ordering::Relaxed),
            oldest_reader: oldest,
            pending: retired.saturating_sub(freed),
        }
    }

    /// Items retired on `processor`'s slot and not yet disposed of (0 without a slot): what the C
    /// API's `ebpf_epoch_is_free_list_empty` reports. A racy snapshot, like [`Domain::holdback`].
    /// Any IRQL up to DISPATCH.
    pub fn pending_on(&self, processor: ProcessorNumber) -> u64 {
        let registry = self.locked(&self.registry);
        let mut cursor = registry.head;
        while !cursor.is_null() {
            // SAFETY: registry slots are valid while the lock is held.
            let slot = unsafe { &*cursor };
            if slot.processor == processor {
                let counters = &slot.part.counters;
                return counters
                    .retires
                    .load(Ordering::Relaxed)
                    .saturating_sub(counters.freed.load(Ordering::Relaxed));
            }
            cursor = slot.next_registered.load(Ordering::Relaxed);
        }
        0
    }
}
