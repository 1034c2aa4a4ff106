//! The reader table of one participant: which epochs its active readers entered, without a list of
//! readers and without any allocation.
//!
//! A processor keeps [`READER_ENTRIES`] entries, each an epoch with a count of readers that entered
//! it. The owning processor updates the counts at DISPATCH with plain loads and stores (no locked
//! instruction on the hot path). A reader that migrated and exits on another processor adds to that
//! entry's `remote_exits` counter with one atomic add; those counters sit on their own cache line so
//! that the owner's hot line is never written by anyone else.
//!
//! When every entry is in use and a reader enters a newer epoch, it is counted in the newest entry,
//! whose epoch is older than or equal to its own: recording a reader as older than it is only holds
//! reclamation back longer, so the table stays safe at any size.

use crate::sync::{owner_add, AtomicU64, Ordering};
use core::ptr;

/// Entries per participant. Readers in more distinct epochs than this share the newest entry.
pub const READER_ENTRIES: usize = 8;

/// Masks an entry index into the table. Indexes are always in range (they come from the table); the
/// mask replaces a bounds check and its panic branch on the hot path with one `and`.
const INDEX_MASK: usize = READER_ENTRIES - 1;
const _: () = assert!(READER_ENTRIES.is_power_of_two());

/// Epoch value of an entry that holds no readers.
const UNUSED: u64 = u64::MAX;

/// Index of an entry in a [`ReaderTable`]; a guard remembers it to exit.
pub(crate) type EntryIndex = u8;

/// One epoch and its owner-side counts.
struct Entry {
    epoch: AtomicU64,
    enters: AtomicU64,
    exits: AtomicU64,
}

/// Counters written by other processors, kept apart from the owner's line.
#[repr(align(64))]
struct RemoteExits([AtomicU64; READER_ENTRIES]);

/// The readers of one participant (a processor slot or the shared overflow slot). `newest` and the
/// first entries share the table's first cache line, which is what a steady-state enter touches.
#[repr(C, align(64))]
pub(crate) struct ReaderTable {
    /// Index of the most recently opened entry.
    newest: AtomicU64,
    entries: [Entry; READER_ENTRIES],
    /// Enters and local exits counted in entries before they were reused: with the live counts they
    /// give the participant's totals (the statistics derive `enters`/`exits` from them).
    closed_enters: AtomicU64,
    closed_exits: AtomicU64,
    remote_exits: RemoteExits,
}

impl ReaderTable {
    /// An empty table on the stack (the tests' tables).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn new() -> Self {
        let mut table = core::mem::MaybeUninit::uninit();
        // SAFETY: `write_empty` initialises every field of the fresh, aligned place.
        unsafe {
            Self::write_empty(table.as_mut_ptr());
            table.assume_init()
        }
    }

    /// Writes an empty table at `place`, field by field: a slot is built where it was allocated
    /// (lazy preparation runs at DISPATCH on a first enter), never on the stack and copied.
    ///
    /// # Safety
    /// `place` is valid for writes and aligned; what it held is overwritten without being dropped.
    pub(crate) unsafe fn write_empty(place: *mut ReaderTable) {
        // SAFETY: per the caller; every field is written once, through raw pointers to the fields.
        unsafe {
            ptr::addr_of_mut!((*place).newest).write(AtomicU64::new(0));
            let entries = ptr::addr_of_mut!((*place).entries).cast::<Entry>();
            let remote = ptr::addr_of_mut!((*place).remote_exits.0).cast::<AtomicU64>();
            for i in 0..READER_ENTRIES {
                entries.add(i).write(Entry {
                    epoch: AtomicU64::new(UNUSED),
                    enters: AtomicU64::new(0),
                    exits: AtomicU64::new(0),
                });
                remote.add(i).write(AtomicU64::new(0));
            }
            ptr::addr_of_mut!((*place).closed_enters).write(AtomicU64::new(0));
            ptr::addr_of_mut!((*place).closed_exits).write(AtomicU64::new(0));
        }
    }

    /// Entry `i`'s counts: (enters, local exits, remote exits). The remote exits are loaded first,
    /// with acquire: the visit that counts a migrated reader's exit sees that reader's loads done.
    fn counts(&self, i: usize) -> (u64, u64, u64) {
        let entry = &self.entries[i];
        let remote = self.remote_exits.0[i].load(Ordering::Acquire);
        (
            entry.enters.load(Ordering::Relaxed),
            entry.exits.load(Ordering::Relaxed),
            remote,
        )
    }

    /// Readers still inside entry `i`, counted by the owner: exact. Every exit the owner finds in an
    /// entry (its own, or a migrated reader's remote exit) belongs to a reader whose enter it counted
    /// there earlier, and an entry is reset only once no reader is left in it (its last remote exit
    /// seen), so no exit of an earlier use arrives after a reset: the difference is never negative.
    fn active(&self, i: usize) -> u64 {
        let (enters, exits, remote) = self.counts(i);
        enters - exits - remote
    }

    /// Readers inside entry `i` as another processor sees them, at least 0. The owner writes its
    /// counts with plain stores and resets a reused entry field by field; elsewhere they can be seen
    /// in another order (a reset `enters` with the old `exits`, a remote exit without its enter), so
    /// the difference can be "negative": that entry counts as holding no reader. Only diagnostics
    /// read this way (a racy snapshot anyway); reclamation reads the owner's counts.
    fn active_seen_elsewhere(&self, i: usize) -> u64 {
        let (enters, exits, remote) = self.counts(i);
        enters.saturating_sub(exits).saturating_sub(remote)
    }

    /// Records a reader entering `epoch` and returns its entry: [`ReaderTable::open`] then
    /// [`ReaderTable::enter_newest`]. Owner only (at DISPATCH on the owning processor, or under the
    /// overflow lock). `epoch` must not be older than any epoch recorded before.
    #[inline]
    pub(crate) fn enter(&self, epoch: u64) -> EntryIndex {
        self.open(epoch);
        self.enter_newest()
    }

    /// Records a reader in the newest entry and returns it: the hot path of a processor's slot, whose
    /// newest entry was opened for its `local_epoch` when that was set (join, visit), so it needs no
    /// epoch comparison. The entry's epoch is the last opened one or, if the table was full then,
    /// older: recording a reader as older only holds reclamation back longer. Owner only.
    #[inline(always)]
    pub(crate) fn enter_newest(&self) -> EntryIndex {
        let newest = self.newest.load(Ordering::Relaxed) as usize & INDEX_MASK;
        owner_add(&self.entries[newest].enters, 1);
        newest as EntryIndex
    }

    /// Makes the newest entry one for `epoch`, where the next readers are counted: keeps it if it is
    /// already for `epoch`, else reuses an unused or drained entry; when every entry holds readers
    /// the newest (older) entry stays. Owner only. `epoch` must not be older than any epoch opened
    /// before.
    #[inline]
    pub(crate) fn open(&self, epoch: u64) {
        let newest = self.newest.load(Ordering::Relaxed) as usize & INDEX_MASK;
        let entry = &self.entries[newest];
        let current = entry.epoch.load(Ordering::Relaxed);
        if current == UNUSED {
            // A fresh table (the newest entry is unused only before the first open): its entry 0,
            // the one `open_slow` would pick, has zero counts. A processor's first join takes this.
            entry.epoch.store(epoch, Ordering::Relaxed);
        } else if current != epoch {
            self.open_slow(epoch);
        }
    }

    #[cold]
    fn open_slow(&self, epoch: u64) {
        let free = (0..READER_ENTRIES).find(|&i| {
            let unused = self.entries[i].epoch.load(Ordering::Relaxed) == UNUSED;
            unused || self.active(i) == 0
        });
        // Full: the newest entry stays; its epoch is not newer than `epoch`.
        if let Some(i) = free {
            let entry = &self.entries[i];
            if entry.epoch.load(Ordering::Relaxed) == UNUSED {
                // Never used (only `write_empty` makes an entry unused): its counts are all zero
                // already, so a first join touches neither the remote line nor the totals.
                entry.epoch.store(epoch, Ordering::Relaxed);
                self.newest.store(i as u64, Ordering::Relaxed);
                return;
            }
            // No reader holds entry `i` (active == 0 has seen every remote exit), so nobody else
            // writes its counters any more: resetting them is safe.
            owner_add(&self.closed_enters, entry.enters.load(Ordering::Relaxed));
            owner_add(&self.closed_exits, entry.exits.load(Ordering::Relaxed));
            entry.enters.store(0, Ordering::Relaxed);
            entry.exits.store(0, Ordering::Relaxed);
            self.remote_exits.0[i].store(0, Ordering::Relaxed);
            entry.epoch.store(epoch, Ordering::Relaxed);
            self.newest.store(i as u64, Ordering::Relaxed);
        }
    }

    /// Records the exit of a reader of entry `i`, on the owning processor. Owner only.
    #[inline]
    pub(crate) fn exit_local(&self, i: EntryIndex) {
        owner_add(&self.entries[i as usize & INDEX_MASK].exits, 1);
    }

    /// Records the exit of a reader of entry `i` from another processor (a migrated reader). The
    /// add is a release (`ordering`; only the `remote-exit-relaxed` mutation passes a weaker one): the
    /// visit that counts the exit acquires it, so the reader's loads happen before any free.
    pub(crate) fn exit_remote(&self, i: EntryIndex, ordering: Ordering) {
        self.remote_exits.0[i as usize & INDEX_MASK].fetch_add(1, ordering);
    }

    /// Every enter recorded in this table and every exit on the owning processor, since it was
    /// created: (enters, local exits). Racy when read from another processor, like all statistics.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let live = self.entries.iter();
        let enters = live.clone().map(|e| load(&e.enters)).sum::<u64>();
        let exits = live.map(|e| load(&e.exits)).sum::<u64>();
        (
            load(&self.closed_enters).wrapping_add(enters),
            load(&self.closed_exits).wrapping_add(exits),
        )
    }

    /// The oldest epoch any active reader entered, if there is an active reader. Owner only.
    /// This is the scan the reclamation cycle relies on: skipping it frees memory under readers.
    pub(crate) fn oldest_active_epoch(&self) -> Option<u64> {
        self.oldest_counted(Self::active)
    }

    /// [`ReaderTable::oldest_active_epoch`] from any processor: a racy snapshot for diagnostics
    /// (`holdback`), never for reclamation.
    pub(crate) fn oldest_active_epoch_seen_elsewhere(&self) -> Option<u64> {
        self.oldest_counted(Self::active_seen_elsewhere)
    }

    /// The oldest epoch of an entry in which `active` counts a reader.
    fn oldest_counted(&self, active: fn(&Self, usize) -> u64) -> Option<u64> {
        let mut oldest: Option<u64> = None;
        for i in 0..READER_ENTRIES {
            let epoch = self.entries[i].epoch.load(Ordering::Relaxed);
            if epoch != UNUSED && active(self, i) != 0 {
                oldest = Some(oldest.map_or(epoch, |o| o.min(epoch)));
            }
        }
        oldest
    }

    /// Number of readers inside any entry. Owner only.
    pub(crate) fn active_readers(&self) -> u64 {
        self.readers_counted(Self::active)
    }

    /// [`ReaderTable::active_readers`] from any processor (unload's leak report, which runs on
    /// whatever processor unloads): at least 0 per entry.
    pub(crate) fn active_readers_seen_elsewhere(&self) -> u64 {
        self.readers_counted(Self::active_seen_elsewhere)
    }

    /// Readers `active` counts in every entry in use.
    fn readers_counted(&self, active: fn(&Self, usize) -> u64) -> u64 {
        (0..READER_ENTRIES)
            .filter(|&i| self.entries[i].epoch.load(Ordering::Relaxed) != UNUSED)
            .map(|i| active(self, i))
            .sum()
    }

    /// Makes the first store of the owner's reuse of entry `i` (`enters = 0`) and no other: what
    /// another processor can see while the owner reuses the entry.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn begin_reuse(&self, i: EntryIndex) {
        self.entries[i as usize & INDEX_MASK]
            .enters
            .store(0, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn same_epoch_readers_share_an_entry() {
        let table = ReaderTable::new();
        let a = table.enter(5);
        let b = table.enter(5);
        assert_eq!(a, b);
        assert_eq!(table.active_readers(), 2);
        assert_eq!(table.oldest_active_epoch(), Some(5));
        table.exit_local(a);
        table.exit_remote(b, Ordering::Release);
        assert_eq!(table.active_readers(), 0);
        assert_eq!(table.oldest_active_epoch(), None);
    }

    #[test]
    fn oldest_epoch_is_the_minimum_of_open_entries() {
        let table = ReaderTable::new();
        let old = table.enter(3);
        let _new = table.enter(7);
        assert_eq!(table.oldest_active_epoch(), Some(3));
        table.exit_local(old);
        assert_eq!(table.oldest_active_epoch(), Some(7));
    }

    #[test]
    fn a_full_table_records_new_readers_as_older_never_newer() {
        let table = ReaderTable::new();
        let held: std::vec::Vec<_> = (0..READER_ENTRIES as u64)
            .map(|e| table.enter(10 + e))
            .collect();
        let overflow = table.enter(100);
        // Counted in the newest entry, epoch 17: older than its real epoch 100, which is safe.
        assert_eq!(overflow, held[READER_ENTRIES - 1]);
        for i in held {
            table.exit_local(i);
        }
        assert_eq!(
            table.oldest_active_epoch(),
            Some(10 + READER_ENTRIES as u64 - 1)
        );
        table.exit_local(overflow);
        assert_eq!(table.oldest_active_epoch(), None);
    }

    #[test]
    fn totals_survive_entry_reuse() {
        let table = ReaderTable::new();
        for epoch in 1..=20 {
            let i = table.enter(epoch);
            table.exit_local(i);
        }
        let held = table.enter(21);
        let migrated = table.enter(21);
        table.exit_remote(migrated, Ordering::Release);
        assert_eq!(table.totals(), (22, 20));
        table.exit_local(held);
        assert_eq!(table.totals(), (22, 21));
    }

    #[test]
    fn readers_after_an_open_are_counted_in_its_entry() {
        let table = ReaderTable::new();
        table.open(4);
        let a = table.enter_newest();
        table.open(6);
        let b = table.enter_newest();
        assert_ne!(a, b);
        assert_eq!(table.oldest_active_epoch(), Some(4));
        table.exit_local(a);
        assert_eq!(table.oldest_active_epoch(), Some(6));
        table.exit_local(b);
        assert_eq!(table.oldest_active_epoch(), None);
    }

    /// Another processor loads an entry's counts while the owner reuses it (after the reset of
    /// `enters`, before that of the remote exits): the first version subtracted them and
    /// overflowed, a panic in debug builds and a phantom reader in release.
    #[test]
    fn a_snapshot_from_another_processor_never_counts_below_zero() {
        let table = ReaderTable::new();
        let migrated = table.enter(3);
        table.exit_remote(migrated, Ordering::Release);
        let local = table.enter(3);
        table.exit_local(local);
        table.begin_reuse(migrated);
        assert_eq!(table.oldest_active_epoch_seen_elsewhere(), None);
        assert_eq!(table.active_readers_seen_elsewhere(), 0);
    }

    #[test]
    fn drained_entries_are_reused() {
        let table = ReaderTable::new();
        for epoch in 1..100 {
            let i = table.enter(epoch);
            table.exit_local(i);
        }
        let i = table.enter(200);
        assert_eq!(table.oldest_active_epoch(), Some(200));
        table.exit_local(i);
    }
}
