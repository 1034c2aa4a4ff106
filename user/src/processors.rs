//! The virtual processors: which exist (are active), which live thread runs as each, the DISPATCH
//! exclusion of each, and processor-change notifications (registration with replay, a thread's new
//! processor arriving as AddStart and AddComplete, one notification at a time).

use crate::bounded::{lock, misuse, spin_until, wait_until};
use kepoch::platform::{
    CurrentProcessor, ProcessorChange, ProcessorChangeFn, ProcessorNumber, Status,
};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Group and group-relative number of a system-wide index: 64 processors per group, as on NT.
pub(crate) fn number_of(index: u32) -> ProcessorNumber {
    ProcessorNumber::new((index / 64) as u16, (index % 64) as u8)
}

/// System-wide index of a processor number.
pub(crate) fn index_of(number: ProcessorNumber) -> u32 {
    u32::from(number.group) * 64 + u32::from(number.number)
}

/// Bit of a processor's exclusion word: something runs as it at DISPATCH.
const HELD: u32 = 1;
/// Unit of a processor's exclusion word: a handler of the platform waits to run as it.
const WAITER: u32 = 2;

/// A processor-change registration.
#[derive(Clone, Copy)]
pub(crate) struct Registration {
    handle: usize,
    callback: ProcessorChangeFn,
    context: *const (),
}

// SAFETY: the context is what the core registered (its domain, which is Sync); the core keeps it
// valid until deregistration, and notifications are delivered one at a time.
unsafe impl Send for Registration {}

impl Registration {
    /// Delivers `change` for processor `index`.
    fn notify(&self, change: ProcessorChange, index: u32) -> Status {
        let processor = CurrentProcessor {
            number: number_of(index),
            index,
        };
        // SAFETY: the registration is live (deregistration waits while notifications are
        // delivered), so its context is valid; notifications are serialised by `notifying`.
        unsafe { (self.callback)(self.context, change, processor) }
    }
}

/// Who runs as which processor, and the registrations.
struct Roster {
    /// Per index: the live thread that runs as it (`None`: free, or not active yet).
    owners: Vec<Option<String>>,
    registrations: Vec<Registration>,
    next_handle: usize,
    /// A thread is delivering notifications: registrations and starts wait.
    notifying: bool,
}

/// A processor the calling thread claimed.
pub(crate) struct Claim {
    /// Its index.
    pub(crate) index: u32,
    /// `Some`: it was not active yet; these registrations must hear AddStart and AddComplete.
    pub(crate) start: Option<Vec<Registration>>,
}

/// Why a thread got no processor.
pub(crate) enum ClaimError {
    /// The index is not below the maximum.
    OutOfRange,
    /// Another live thread runs as it.
    Taken(String),
    /// Every processor is taken: the owners, for the diagnosis.
    AllTaken(Vec<String>),
}

/// The platform's processors.
pub(crate) struct Processors {
    max: u32,
    limit: Duration,
    /// Per index: [`HELD`] while something runs as that processor at DISPATCH, plus [`WAITER`] for
    /// each handler of the platform waiting to.
    exclusion: Box<[AtomicU32]>,
    /// Per index: started (set after AddStart, before AddComplete, as on NT the processor then runs).
    active: Box<[AtomicBool]>,
    active_count: AtomicU32,
    roster: Mutex<Roster>,
    roster_changed: Condvar,
}

/// Clears `notifying` when notifications end, also if a callback panicked.
struct Notifying<'a>(&'a Processors);

impl Drop for Notifying<'_> {
    fn drop(&mut self) {
        lock(&self.0.roster).notifying = false;
        self.0.roster_changed.notify_all();
    }
}

impl Processors {
    /// `max` processors, none active; waits end after `limit`.
    pub(crate) fn new(max: u32, limit: Duration) -> Self {
        Processors {
            max,
            limit,
            exclusion: (0..max).map(|_| AtomicU32::new(0)).collect(),
            active: (0..max).map(|_| AtomicBool::new(false)).collect(),
            active_count: AtomicU32::new(0),
            roster: Mutex::new(Roster {
                owners: vec![None; max as usize],
                registrations: Vec::new(),
                next_handle: 1,
                notifying: false,
            }),
            roster_changed: Condvar::new(),
        }
    }

    /// The maximum number of processors.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    /// Processors started so far.
    pub(crate) fn active_count(&self) -> u32 {
        self.active_count.load(Ordering::SeqCst)
    }

    /// Whether processor `index` was started.
    pub(crate) fn is_active(&self, index: u32) -> bool {
        self.active
            .get(index as usize)
            .is_some_and(|active| active.load(Ordering::SeqCst))
    }

    /// The first active processor at or after `from` (wrapping), for the timer's rotation.
    pub(crate) fn next_active(&self, from: u32) -> Option<u32> {
        (0..self.max)
            .map(|offset| (from + offset) % self.max)
            .find(|&index| self.is_active(index))
    }

    /// The thread that runs as `index`, for diagnoses.
    pub(crate) fn owner(&self, index: u32) -> String {
        lock(&self.roster).owners[index as usize]
            .clone()
            .unwrap_or_else(|| "no thread (a handler of the platform)".to_string())
    }

    fn wait_for_notifications<'a>(
        &'a self,
        roster: std::sync::MutexGuard<'a, Roster>,
    ) -> std::sync::MutexGuard<'a, Roster> {
        wait_until(
            roster,
            &self.roster_changed,
            self.limit,
            |roster| !roster.notifying,
            || {
                format!("processor-change notifications have run for more than {:?}: a processor-change callback does not return", self.limit)
            },
        )
    }

    /// Claims processor `wanted` (or, with `None`, a free active one, else the lowest one not
    /// started) for the thread `thread`. A claim that starts a processor leaves `notifying` set:
    /// the caller then calls [`Processors::start`].
    pub(crate) fn claim(&self, wanted: Option<u32>, thread: &str) -> Result<Claim, ClaimError> {
        let mut roster = self.wait_for_notifications(lock(&self.roster));
        let index = match wanted {
            Some(index) if index >= self.max => return Err(ClaimError::OutOfRange),
            Some(index) => match &roster.owners[index as usize] {
                Some(owner) => return Err(ClaimError::Taken(owner.clone())),
                None => index,
            },
            None => {
                let free = |active: bool| {
                    (0..self.max).find(|&i| {
                        roster.owners[i as usize].is_none() && self.is_active(i) == active
                    })
                };
                match free(true).or_else(|| free(false)) {
                    Some(index) => index,
                    None => {
                        let owners = roster.owners.iter().flatten().take(8).cloned().collect();
                        return Err(ClaimError::AllTaken(owners));
                    }
                }
            }
        };
        roster.owners[index as usize] = Some(thread.to_string());
        if self.is_active(index) {
            return Ok(Claim { index, start: None });
        }
        roster.notifying = true;
        Ok(Claim {
            index,
            start: Some(roster.registrations.clone()),
        })
    }

    /// Starts claimed processor `index` on the claiming thread, which already runs as it, at
    /// PASSIVE: AddStart to every registration, then the processor is active, then AddComplete.
    /// If a callback vetoes AddStart, those that accepted hear AddFailure, the processor stays
    /// stopped and unclaimed, and the veto is returned.
    pub(crate) fn start(&self, index: u32, registrations: &[Registration]) -> Result<(), Status> {
        let _notifying = Notifying(self);
        for (heard, registration) in registrations.iter().enumerate() {
            let status = registration.notify(ProcessorChange::AddStart, index);
            if !status.is_success() {
                for accepted in &registrations[..heard] {
                    accepted.notify(ProcessorChange::AddFailure(status), index);
                }
                self.release(index);
                return Err(status);
            }
        }
        self.active[index as usize].store(true, Ordering::SeqCst);
        self.active_count.fetch_add(1, Ordering::SeqCst);
        for registration in registrations {
            registration.notify(ProcessorChange::AddComplete, index);
        }
        Ok(())
    }

    /// The thread that ran as `index` no longer does (it exited or moved): the processor stays
    /// active, free for the next thread.
    pub(crate) fn release(&self, index: u32) {
        lock(&self.roster).owners[index as usize] = None;
    }

    /// Registers a processor-change callback and replays AddStart and AddComplete for every active
    /// processor, on the calling thread (which must already run as a processor). A veto during the
    /// replay undoes the registration and is returned.
    pub(crate) fn register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<NonNull<()>, Status> {
        let mut roster = self.wait_for_notifications(lock(&self.roster));
        let registration = Registration {
            handle: roster.next_handle,
            callback,
            context,
        };
        roster.next_handle += 1;
        roster.registrations.push(registration);
        roster.notifying = true;
        drop(roster);
        let notifying = Notifying(self);
        for index in (0..self.max).filter(|&index| self.is_active(index)) {
            let status = registration.notify(ProcessorChange::AddStart, index);
            if !status.is_success() {
                drop(notifying);
                self.deregister(registration.handle);
                return Err(status);
            }
            registration.notify(ProcessorChange::AddComplete, index);
        }
        // Handles start at 1, so the pointer is never null.
        Ok(NonNull::new(registration.handle as *mut ()).unwrap_or(NonNull::dangling()))
    }

    /// Removes the registration `handle`; no notification of it runs once this returns.
    pub(crate) fn deregister(&self, handle: usize) {
        let mut roster = self.wait_for_notifications(lock(&self.roster));
        roster.registrations.retain(|r| r.handle != handle);
    }

    /// Takes the DISPATCH exclusion of processor `index` for `who`: waits while anything else runs
    /// as it at DISPATCH. A handler of the platform (`interrupting`) is served first, as an
    /// interrupt is: once it waits, the processor's own thread cannot take the exclusion again
    /// until the handler has had it. Past the limit, panics naming the processor and its owner.
    pub(crate) fn exclude(&self, index: u32, interrupting: bool, who: impl FnOnce() -> String) {
        let state = &self.exclusion[index as usize];
        let take = if interrupting {
            state.fetch_add(WAITER, Ordering::Relaxed);
            |state: &AtomicU32| {
                let now = state.load(Ordering::Relaxed);
                now & HELD == 0
                    && state
                        .compare_exchange_weak(
                            now,
                            now - WAITER + HELD,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
            }
        } else {
            |state: &AtomicU32| {
                state
                    .compare_exchange_weak(0, HELD, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            }
        };
        spin_until(
            self.limit,
            || take(state),
            || {
                format!(
                    "{} waited more than {:?} for virtual processor {index} ({}), which stayed at DISPATCH_LEVEL all that time (its thread: {}). Nothing may block at DISPATCH_LEVEL: lower the IRQL before waiting",
                    who(),
                    self.limit,
                    number_of(index),
                    self.owner(index),
                )
            },
        );
    }

    /// Gives up the DISPATCH exclusion of processor `index`.
    pub(crate) fn unexclude(&self, index: u32) {
        self.exclusion[index as usize].fetch_sub(HELD, Ordering::Release);
    }
}

/// Panics for a thread that found every processor taken.
pub(crate) fn all_taken(thread: &str, max: u32, owners: &[String]) -> ! {
    misuse(&format!(
        "thread {thread} needs a virtual processor, but all {max} are taken by live threads (among them {}). Each thread that uses a domain runs as a processor of its own until it exits: build the platform with more, UserPlatform::builder().max_processors(n)",
        owners.join(", ")
    ))
}
