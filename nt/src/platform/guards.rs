//! The debug checks of guards per thread: a wait for a grace period inside an epoch, and guards still
//! held at unload, each reported with the thread that holds them.
//!
//! Compiled into builds with debug assertions and into every build for the emulated kernel (hosts
//! other than Windows, where the tests run, also in release); a release build for Windows has none of
//! it: the core's hooks keep their empty defaults and `PsGetCurrentThreadId` is not imported.
//!
//! # Why
//!
//! `synchronize`, `wait_for_grace_period` and `callback_barrier` wait until every reader that might
//! still see retired memory has exited. A thread that calls one of them while it holds a guard of the
//! same domain waits for itself: the wait can never return, and the thread hangs with whatever it holds
//! (locks, an IRP, unload). The check turns that hang into a bug check with a dump that names the
//! thread: failing fast beats a hung thread that is found hours later, and it exists only in debug
//! builds (and on the emulated kernel, which records the bug check as a failure). Before the wait, [`Platform::synchronize_called`](kepoch::platform::Platform) looks up the
//! calling thread; if it holds guards of this domain, kepoch-nt logs
//! `kepoch: thread 0x… waits for a grace period inside an epoch: it holds N guard(s) …; drop every
//! guard before synchronize / wait_for_grace_period / callback_barrier` at error level and calls
//! `KeBugCheckEx(MANUALLY_INITIATED_CRASH (0xE2), thread id, guards held, address of the domain's
//! platform, WAIT_INSIDE_EPOCH)`. A guard of another domain does not count: that domain's grace
//! periods are not this one's.
//!
//! # The table
//!
//! Each platform (each domain) has a table of [`ENTRIES`] entries: a thread id (`PsGetCurrentThreadId`;
//! 0 = free) and a word holding a generation and a count. It is one block of the domain's pool,
//! allocated with the platform and freed when it drops ([`Guards`]: a kilobyte that would otherwise
//! be copied on the kernel stack each time the platform moves); without that block the checks are off
//! for the domain (a warning says so). No allocation and no lock after that: atomics only. The core
//! calls [`GuardTable::entered`] after every enter and [`GuardTable::exited`] after every exit, at the
//! caller's IRQL.
//!
//! - **Only enters below DISPATCH_LEVEL count.** At DISPATCH the current thread may be whatever thread
//!   a DPC interrupted, so a DPC's guard would be charged to a thread that does not hold it. Only an
//!   enter below DISPATCH claims an entry (a compare-exchange of a free thread id to the caller's).
//! - **An exit at any IRQL decrements the current thread's count if it is above 0**, saturating. A
//!   DPC's exit may so decrement the thread it interrupted (and a guard entered at PASSIVE and dropped
//!   at DISPATCH decrements its own thread, correctly): an undercount, which can only miss a report.
//! - **An entry is released when its count reaches 0** (on an exit, at any IRQL): the generation is
//!   bumped, then the thread id cleared.
//! - **A full table counts nothing more** for a thread without an entry: its guards go uncounted, and
//!   since exits only ever decrement, their later exits (after the thread got an entry) can only make
//!   its count lower than the guards it holds, never higher.
//!
//! Only code running as thread T touches T's entry: T itself, and what interrupts T on its processor
//! (APCs, DPCs), which runs to its end before T goes on; no other processor runs as T meanwhile. So
//! the one race is an interrupter releasing T's entry while T is between finding it and updating it,
//! after which another thread may claim it. Every update therefore reads the word, checks that the
//! entry still belongs to T, and compare-exchanges the word: a release in between has bumped the
//! generation (before clearing the id), so the update fails and starts over from the lookup, and an
//! update never lands in an entry that another thread owns now.
//!
//! # Sound, with one premise
//!
//! For every thread T, T's count never exceeds the guards T entered below DISPATCH and has not exited
//! (each step above keeps that), so a report always names a thread that holds a guard: no false
//! reports, only missed ones (a DPC's exit, a full table, a guard entered at DISPATCH). The premise is
//! that **a guard or raw token entered below DISPATCH is exited on the thread that entered it** (at any
//! IRQL, or by what interrupts that thread), before that thread ends. A raw token handed to another
//! thread (kept in a request and exited at its completion, say) is exited there, so the entering
//! thread's count stays up, and its later wait would be reported although the grace period only waits
//! for the other thread's exit. A count left behind by a thread that ended also passes to the next
//! thread NT gives the same id (ids are reused), whose waits would then be reported. A driver that
//! hands tokens between threads turns the reports off with
//! [`NtPlatform::disable_guard_checks`](super::NtPlatform::disable_guard_checks); a guard that is never
//! exited at all is a leak, which the core reports at unload anyway.
//!
//! # Guards leaked across a return to PASSIVE
//!
//! When the platform drops (at unload, on the unloading thread, after the core's shutdown), every
//! thread whose count is still above 0 is logged at error level (`kepoch: thread 0x… still holds N
//! guard(s) of this domain at unload …`), next to the core's count of readers still inside (under the
//! same premise: a count above 0 there is a guard that thread entered and never exited). Checking a
//! thread when a work item (or the idle timer's stopper) returns would be cheap, but not sound: the
//! handler may free the domain, and the table with it, as its last act (`NtPassiveWork` touches only
//! its item's header after the handler), so only a table with a reference count could be read there.
//! It is not done; a work item that returns inside an epoch is still found by the unload report, and
//! by the wait check as soon as its worker thread waits for a grace period.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use kepoch::platform::LogLevel;

use crate::log::log_line;
use crate::pool::Pool;
use crate::sys;

/// Threads a domain's table follows at once: further threads' guards are not counted.
pub const ENTRIES: usize = 64;

/// The fourth parameter of the bug check: "KEPOCHWE" (kepoch, wait inside an epoch).
pub const WAIT_INSIDE_EPOCH: usize = 0x4B45_504F_4348_5745;

/// One thread's count.
struct Entry {
    /// `PsGetCurrentThreadId` of the owner; 0: free.
    thread: AtomicUsize,
    /// `generation << 32 | count`: the generation changes on every release, so that an update that
    /// read the word before a release fails.
    word: AtomicU64,
}

impl Entry {
    const fn free() -> Entry {
        Entry {
            thread: AtomicUsize::new(0),
            word: AtomicU64::new(0),
        }
    }
}

/// The count in a word.
fn count_of(word: u64) -> u32 {
    word as u32
}

/// The word with `count` in place of its count.
fn with_count(word: u64, count: u32) -> u64 {
    word & !u64::from(u32::MAX) | u64::from(count)
}

/// What an update of an entry did.
enum Update {
    /// The count is now this.
    Done(u32),
    /// The count was this and stays (a decrement at 0, an increment at the maximum).
    Unchanged(u32),
    /// The entry is no longer the thread's (released meanwhile): look it up again.
    Lost,
}

/// A domain's guard counts per thread (see the module documentation). All zeros is a valid, empty
/// table (every entry free, reports on).
pub struct GuardTable {
    entries: [Entry; ENTRIES],
    /// No more reports ([`GuardTable::disable_reports`]; counting goes on).
    reports_off: AtomicBool,
}

impl Default for GuardTable {
    fn default() -> Self {
        GuardTable {
            entries: [const { Entry::free() }; ENTRIES],
            reports_off: AtomicBool::new(false),
        }
    }
}

/// The platform's table: a block of the domain's pool, or none when it could not be allocated (then
/// nothing is counted or reported).
pub struct Guards {
    table: Option<NonNull<GuardTable>>,
    pool: Pool,
}

impl Guards {
    /// An empty table in `pool` (a warning and no checks when the allocation fails). IRQL <=
    /// DISPATCH_LEVEL.
    pub fn new(pool: &Pool) -> Guards {
        let table = pool.allocate(Layout::new::<GuardTable>()).map(|block| {
            let table = block.cast::<GuardTable>();
            // SAFETY: a fresh block with GuardTable's layout, written before any use; all zeros is an
            // empty table (atomics of zero: free entries, reports on).
            unsafe { table.as_ptr().write_bytes(0, 1) };
            table
        });
        if table.is_none() {
            log_line(
                LogLevel::Warning,
                format_args!(
                    "no memory for the table of the debug checks of guards per thread: they are off for this domain"
                ),
            );
        }
        Guards { table, pool: *pool }
    }

    /// The table, if there is one.
    pub fn table(&self) -> Option<&GuardTable> {
        // SAFETY: initialised by `new`, freed only when `self` drops.
        self.table.map(|table| unsafe { table.as_ref() })
    }
}

impl Drop for Guards {
    fn drop(&mut self) {
        if let Some(table) = self.table.take() {
            // SAFETY: allocated by `new` from this pool with this layout, freed once; nothing uses it
            // any more (the platform drops).
            unsafe { self.pool.free(table.cast(), Layout::new::<GuardTable>()) };
        }
    }
}

impl GuardTable {
    /// Thread `thread` entered an epoch, below DISPATCH_LEVEL when `below_dispatch`. Counted only then
    /// (and for a thread id other than 0) if the thread has an entry or gets a free one.
    pub fn entered(&self, thread: usize, below_dispatch: bool) {
        if thread == 0 || !below_dispatch {
            return;
        }
        loop {
            let Some(index) = self.find(thread).or_else(|| self.claim(thread)) else {
                return; // Full: not counted.
            };
            match self.update(index, thread, |count| count.checked_add(1)) {
                Update::Done(_) | Update::Unchanged(_) => return,
                Update::Lost => continue,
            }
        }
    }

    /// Thread `thread` (the current thread, at any IRQL) exited an epoch: its count goes down by one
    /// if it is above 0, and the entry is released at 0.
    pub fn exited(&self, thread: usize) {
        if thread == 0 {
            return;
        }
        loop {
            let Some(index) = self.find(thread) else {
                return;
            };
            match self.update(index, thread, |count| count.checked_sub(1)) {
                Update::Done(0) | Update::Unchanged(0) => {
                    self.release(index, thread);
                    return;
                }
                Update::Done(_) | Update::Unchanged(_) => return,
                Update::Lost => continue,
            }
        }
    }

    /// The guards counted for `thread` (the current thread).
    pub fn held(&self, thread: usize) -> u32 {
        if thread == 0 {
            return 0;
        }
        loop {
            let Some(index) = self.find(thread) else {
                return 0;
            };
            match self.update(index, thread, |_| None) {
                Update::Unchanged(count) | Update::Done(count) => return count,
                Update::Lost => continue,
            }
        }
    }

    /// Threads with a count above 0, and their counts (unload: nothing enters or exits any more).
    pub fn holders(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.entries.iter().filter_map(|entry| {
            let thread = entry.thread.load(Ordering::SeqCst);
            let count = count_of(entry.word.load(Ordering::SeqCst));
            (thread != 0 && count > 0).then_some((thread, count))
        })
    }

    /// Whether reports are made.
    pub fn reporting(&self) -> bool {
        !self.reports_off.load(Ordering::Relaxed)
    }

    /// No more reports from this table (the counts go on).
    pub fn disable_reports(&self) {
        self.reports_off.store(true, Ordering::Relaxed);
    }

    /// The wait check, before a wait for a grace period by the current thread: if it holds guards of
    /// this domain (counted below DISPATCH_LEVEL), logs the violation and bug checks with
    /// `MANUALLY_INITIATED_CRASH` (thread id, guards held, `platform`, [`WAIT_INSIDE_EPOCH`]). At
    /// DISPATCH_LEVEL nothing: the current thread may be one a DPC interrupted, and the core's IRQL
    /// check has reported the call already.
    pub fn check_wait(&self, platform: usize) {
        if sys::irql::current() >= sys::irql::DISPATCH_LEVEL || !self.reporting() {
            return;
        }
        let thread = sys::current_thread_id();
        let held = self.held(thread);
        if held == 0 {
            return;
        }
        log_line(
            LogLevel::Error,
            format_args!(
                "thread 0x{thread:x} waits for a grace period inside an epoch: it holds {held} \
                 guard(s) of this domain, entered on this thread and not exited, and the grace period \
                 waits for them, so the wait would never end; drop every guard before synchronize / \
                 wait_for_grace_period / callback_barrier (bug check 0xE2: thread id, guards, \
                 platform, 0x{WAIT_INSIDE_EPOCH:X})"
            ),
        );
        // SAFETY: KeBugCheckEx never returns; the parameters are plain values shown in the dump.
        unsafe {
            sys::bug_check(
                sys::MANUALLY_INITIATED_CRASH,
                [thread, held as usize, platform, WAIT_INSIDE_EPOCH],
            )
        }
    }

    /// The unload report: logs every thread that still holds guards of this domain.
    pub fn report_unload(&self) {
        if !self.reporting() {
            return;
        }
        for (thread, held) in self.holders() {
            log_line(
                LogLevel::Error,
                format_args!(
                    "thread 0x{thread:x} still holds {held} guard(s) of this domain at unload: \
                     entered below DISPATCH_LEVEL on that thread and never exited there (a leaked \
                     guard or raw token, or a raw token exited on another thread)"
                ),
            );
        }
    }

    /// The entry of `thread`, if it has one.
    fn find(&self, thread: usize) -> Option<usize> {
        self.entries
            .iter()
            .position(|entry| entry.thread.load(Ordering::SeqCst) == thread)
    }

    /// Claims a free entry for `thread` (which has none); `None` when the table is full.
    fn claim(&self, thread: usize) -> Option<usize> {
        self.entries.iter().position(|entry| {
            entry
                .thread
                .compare_exchange(0, thread, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
    }

    /// Applies `change` to the count of entry `index` while it belongs to `thread`: the word is read,
    /// then the owner checked, then the word compare-exchanged (a release in between changed the
    /// generation, so the exchange fails and the owner is checked again).
    fn update(&self, index: usize, thread: usize, change: impl Fn(u32) -> Option<u32>) -> Update {
        let entry = &self.entries[index];
        let mut word = entry.word.load(Ordering::SeqCst);
        loop {
            if entry.thread.load(Ordering::SeqCst) != thread {
                return Update::Lost;
            }
            let count = count_of(word);
            let Some(new) = change(count) else {
                return Update::Unchanged(count);
            };
            match entry.word.compare_exchange(
                word,
                with_count(word, new),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Update::Done(new),
                Err(current) => word = current,
            }
        }
    }

    /// Releases entry `index` of `thread` if its count is 0: a new generation, then the id cleared.
    /// Nothing if it changed meanwhile (an interrupter entered again, or released it already).
    fn release(&self, index: usize, thread: usize) {
        let entry = &self.entries[index];
        let word = entry.word.load(Ordering::SeqCst);
        if count_of(word) != 0 || entry.thread.load(Ordering::SeqCst) != thread {
            return;
        }
        let next = (word >> 32).wrapping_add(1) << 32;
        if entry
            .word
            .compare_exchange(word, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            entry.thread.store(0, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests;
