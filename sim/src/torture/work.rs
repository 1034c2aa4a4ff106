//! Work items as users drive them: create, schedule, cancel, reschedule after a cancel, drop the handle
//! of a scheduled item, and callbacks that retire an object and schedule another work item (chains of
//! bounded length) — also while the domain unloads, when a callback also flushes several times (at
//! PASSIVE and at DISPATCH: a flush storm from the processors the callbacks run on) and may call
//! `synchronize`, which must return although no cycle runs any more.
//!
//! Every item has a [`Ticket`] that says whether it is scheduled. A run consumes the schedule and a
//! successful cancel withdraws it; each swaps `armed` to false and must find it true, so a cancelled
//! item that runs, an item that runs twice, or a cancel that claims success after the run is caught. A
//! ticket still armed after unload is a scheduled item that never ran.

use super::{Shared, SimDomain};
use crate::machine::{SimPlatform, StepContext, StepOutcome, Task};
use kepoch::platform::Platform;
use kepoch::WorkItem;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Longest chain of work items scheduled by work callbacks.
const MAX_CHAIN: u32 = 3;
/// Work item handles one task keeps.
const HANDLES: usize = 4;

/// State shared by the work items of one machine lifetime and their callbacks.
pub(super) struct WorkEnv {
    /// The domain, set after load and cleared after unload (callbacks only run in between).
    pub domain: AtomicPtr<SimDomain>,
    /// The run, for violations and object ids.
    pub shared: Mutex<Weak<Shared>>,
    /// Every ticket ever handed out; freed with the environment after unload. Boxed: a ticket's
    /// address is its item's callback context and must not move when the list grows.
    #[allow(clippy::vec_box)]
    tickets: Mutex<Vec<Box<Ticket>>>,
    /// Choices of the callbacks (deterministic in deterministic mode: callbacks run in seed order).
    rng: Mutex<ChaCha8Rng>,
    /// Callbacks run.
    pub run: AtomicU64,
    /// Successful cancels.
    pub cancelled: AtomicU64,
    /// Callback barriers that returned.
    pub barriers: AtomicU64,
    /// Items scheduled by callbacks.
    pub chained: AtomicU64,
    /// Objects retired by callbacks.
    pub retired: AtomicU64,
    /// Set just before unload: callbacks that run from then on add the unload extras.
    pub unloading: AtomicBool,
    /// Flushes by callbacks during unload.
    pub unload_flushes: AtomicU64,
    /// `synchronize` calls by callbacks during unload that returned.
    pub unload_synchronizes: AtomicU64,
}

/// Whether one work item is scheduled; its address is the item's callback context.
pub(super) struct Ticket {
    env: *const WorkEnv,
    armed: AtomicBool,
    /// Schedule and cancel calls begun, and returned: a barrier is held only to a schedule whose
    /// call had returned when it began, and not to one a cancel begun since may have withdrawn.
    calls_begun: AtomicU64,
    calls_done: AtomicU64,
    depth: u32,
}

impl Ticket {
    /// Schedules `item`, this ticket's work item; the ticket is armed before the call, which may
    /// run the item at once. Returns whether the schedule was accepted.
    fn schedule(&self, domain: &SimDomain, item: &WorkItem<'_, SimPlatform>) -> bool {
        self.calls_begun.fetch_add(1, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
        let accepted = domain.schedule_work(item).is_ok();
        if !accepted {
            self.armed.store(false, Ordering::SeqCst);
        }
        self.calls_done.fetch_add(1, Ordering::SeqCst);
        accepted
    }

    /// Cancels `item`, this ticket's work item, and disarms the ticket if that succeeded. Returns
    /// whether it did, and whether the ticket was still armed then (a cancel that succeeds after
    /// the item ran is a violation).
    fn cancel(&self, domain: &SimDomain, item: &WorkItem<'_, SimPlatform>) -> (bool, bool) {
        self.calls_begun.fetch_add(1, Ordering::SeqCst);
        let cancelled = domain.cancel_work(item);
        let was_armed = cancelled && self.armed.swap(false, Ordering::SeqCst);
        self.calls_done.fetch_add(1, Ordering::SeqCst);
        (cancelled, was_armed)
    }

    /// The schedule a barrier beginning now must see run or cancelled: `Some(calls begun)` when the
    /// item is armed and no schedule or cancel call is in progress. A call in progress (another
    /// thread may be descheduled inside it for long on a busy machine) began after the barrier as
    /// far as the barrier can tell, and the ticket is left out. The count is read again last, so
    /// that the three reads belong to one moment between calls.
    fn pending_schedule(&self) -> Option<u64> {
        let begun = self.calls_begun.load(Ordering::SeqCst);
        let armed = self.armed.load(Ordering::SeqCst);
        let done = self.calls_done.load(Ordering::SeqCst);
        let unchanged = self.calls_begun.load(Ordering::SeqCst) == begun;
        (armed && done == begun && unchanged).then_some(begun)
    }

    /// After a barrier: whether the schedule it saw pending (`begun`, from
    /// [`Ticket::pending_schedule`]) is still pending, with no call on the item since.
    fn still_pending(&self, begun: u64) -> bool {
        self.armed.load(Ordering::SeqCst) && self.calls_begun.load(Ordering::SeqCst) == begun
    }
}

// SAFETY: a ticket's `env` points at the environment that owns the ticket (so it outlives it) and is
// only used for shared access; everything else in a ticket is atomic.
unsafe impl Send for Ticket {}
// SAFETY: as above.
unsafe impl Sync for Ticket {}

impl WorkEnv {
    pub(super) fn new(seed: u64) -> Arc<WorkEnv> {
        Arc::new(WorkEnv {
            domain: AtomicPtr::new(ptr::null_mut()),
            shared: Mutex::new(Weak::new()),
            tickets: Mutex::new(Vec::new()),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x776F_726B)),
            run: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            barriers: AtomicU64::new(0),
            chained: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            unloading: AtomicBool::new(false),
            unload_flushes: AtomicU64::new(0),
            unload_synchronizes: AtomicU64::new(0),
        })
    }

    fn violation(&self, text: String) {
        if let Some(shared) = self.shared.lock().upgrade() {
            shared.violation(text);
        }
    }

    fn ticket(&self, depth: u32) -> *const Ticket {
        let ticket = Box::new(Ticket {
            env: self,
            armed: AtomicBool::new(false),
            calls_begun: AtomicU64::new(0),
            calls_done: AtomicU64::new(0),
            depth,
        });
        let address: *const Ticket = &*ticket;
        self.tickets.lock().push(ticket);
        address
    }

    /// Schedules a new item of chain depth `depth` and drops its handle (the run goes on). Returns
    /// whether it was scheduled.
    fn schedule_new(&self, domain: &SimDomain, depth: u32) -> bool {
        let ticket = self.ticket(depth);
        let Some(item) = domain.new_work_item(on_work, ticket as usize) else {
            return false;
        };
        // SAFETY: tickets live as long as the environment, which outlives every callback.
        let ticket = unsafe { &*ticket };
        if !ticket.schedule(domain, &item) {
            self.violation("schedule of a new work item was refused".into());
            return false;
        }
        true
    }

    /// Calls `callback_barrier` and checks that every schedule pending before the call (its call
    /// returned) has run or was cancelled when it returns.
    fn barrier(&self, domain: &SimDomain) {
        let pending: Vec<(*const Ticket, u64)> = self
            .tickets
            .lock()
            .iter()
            .filter_map(|t| Some((&**t as *const Ticket, t.pending_schedule()?)))
            .collect();
        domain.callback_barrier();
        self.barriers.fetch_add(1, Ordering::Relaxed);
        let left = pending
            .iter()
            .filter(|&&(ticket, begun)| {
                // SAFETY: tickets live as long as the environment.
                unsafe { &*ticket }.still_pending(begun)
            })
            .count();
        if left > 0 {
            self.violation(format!(
                "callback_barrier returned with {left} work item(s) scheduled before it still not run"
            ));
        }
    }

    /// Scheduled items that never ran (checked after unload).
    pub(super) fn never_ran(&self) -> usize {
        self.tickets
            .lock()
            .iter()
            .filter(|t| t.armed.load(Ordering::SeqCst))
            .count()
    }
}

/// Retires one object (never published) and sometimes schedules the next item of a chain.
fn on_work(context: usize) {
    // SAFETY: the context is a ticket of a live environment (see `WorkEnv::ticket`).
    let ticket = unsafe { &*(context as *const Ticket) };
    // SAFETY: as above.
    let env = unsafe { &*ticket.env };
    if !ticket.armed.swap(false, Ordering::SeqCst) {
        env.violation("a work item ran that was not scheduled (cancelled, or run twice)".into());
    }
    env.run.fetch_add(1, Ordering::Relaxed);
    let domain = env.domain.load(Ordering::Acquire);
    // SAFETY: set before any item is scheduled and cleared only after unload, which waits for every
    // callback; the core promises the domain outlives the last callback (PROTOCOL.md, S8).
    let Some(domain) = (unsafe { domain.as_ref() }) else {
        env.violation("a work item ran after its domain was unloaded".into());
        return;
    };
    let Some(shared) = env.shared.lock().upgrade() else {
        return;
    };
    // The run's idle CPU must never run epoch code (the S4 check): a callback that the machine runs
    // there retires nothing.
    let here = domain.platform().current_processor().index;
    if Some(here) == shared.idle_cpu {
        return;
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if let Some(object) = crate::objects::new_object(domain, id) {
        // SAFETY: allocated just now by this domain, never published.
        match unsafe { domain.retire(object) } {
            Ok(_) => {
                env.retired.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => env.violation(format!("a work callback's retire failed: {error:?}")),
        }
    }
    if env.unloading.load(Ordering::Acquire) {
        while_unloading(env, domain);
    }
    let chain = ticket.depth < MAX_CHAIN && env.rng.lock().gen_ratio(1, 2);
    if chain && env.schedule_new(domain, ticket.depth + 1) {
        env.chained.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a callback adds while the domain unloads, as a driver's cleanup work might: a burst of
/// flushes, every other one at DISPATCH, and sometimes a `synchronize` after its retirement.
/// Unload must start no cycle for them, and `synchronize` must return (no cycle will run).
fn while_unloading(env: &WorkEnv, domain: &SimDomain) {
    let (flushes, synchronize) = {
        let mut rng = env.rng.lock();
        (rng.gen_range(1..=6u32), rng.gen_ratio(1, 2))
    };
    let platform = domain.platform();
    for k in 0..flushes {
        if k % 2 == 1 {
            let previous = platform.raise_to_dispatch();
            domain.flush();
            platform.lower_irql(previous);
        } else {
            domain.flush();
        }
        env.unload_flushes.fetch_add(1, Ordering::Relaxed);
    }
    if synchronize {
        domain.synchronize();
        env.unload_synchronizes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Schedules `count` new items (each may chain) on the way into unload.
pub(super) fn schedule_for_unload(env: &WorkEnv, domain: &SimDomain, count: u32) {
    for _ in 0..count {
        env.schedule_new(domain, 0);
    }
}

/// A task that creates, schedules, cancels, reschedules and drops work items at PASSIVE.
pub(super) struct WorkItems {
    pub shared: Arc<Shared>,
    pub env: Arc<WorkEnv>,
    items: Vec<(WorkItem<'static, SimPlatform>, *const Ticket)>,
}

// SAFETY: the tickets are owned by the environment and only used through atomics; the handles are
// Send.
unsafe impl Send for WorkItems {}

impl WorkItems {
    pub(super) fn new(shared: Arc<Shared>, env: Arc<WorkEnv>) -> Self {
        WorkItems {
            shared,
            env,
            items: Vec::new(),
        }
    }

    fn act(&mut self, domain: &SimDomain, ctx: &mut StepContext<'_>) {
        let env = &*self.env;
        if self.items.len() < HANDLES && ctx.rng().gen_ratio(1, 3) {
            let ticket = env.ticket(0);
            if let Some(item) = domain.new_work_item(on_work, ticket as usize) {
                // SAFETY: the task drops every handle before it finishes, and the run unloads the
                // domain only after every task finished; so the handle never outlives the domain.
                let item: WorkItem<'static, SimPlatform> = unsafe { std::mem::transmute(item) };
                self.items.push((item, ticket));
            }
            return;
        }
        if self.items.is_empty() {
            return;
        }
        let k = ctx.rng().gen_range(0..self.items.len());
        // SAFETY: tickets live as long as the environment.
        let ticket = unsafe { &*self.items[k].1 };
        match ctx.rng().gen_range(0..12) {
            10 => env.barrier(domain),
            0..=4 => {
                if !ticket.armed.load(Ordering::SeqCst) {
                    // Idle (never scheduled, ran, or cancelled): scheduling must be accepted.
                    if !ticket.schedule(domain, &self.items[k].0) {
                        self.shared.violation(
                            "schedule of an idle work item (never scheduled, run or cancelled) was refused"
                                .into(),
                        );
                    }
                }
            }
            5..=7 => {
                let (cancelled, was_armed) = ticket.cancel(domain, &self.items[k].0);
                if cancelled {
                    if !was_armed {
                        self.shared.violation(
                            "cancel succeeded on a work item that had already run".into(),
                        );
                    }
                    env.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                // Drop the handle; a scheduled run still happens.
                self.items.swap_remove(k);
            }
        }
    }
}

impl Task for WorkItems {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        let guard = shared.domain();
        match guard.as_deref() {
            Some(domain) if !shared.stop.load(Ordering::Relaxed) => {
                self.act(domain, ctx);
                StepOutcome::Sleep(ctx.rng().gen_range(5..100))
            }
            _ => {
                self.items.clear();
                StepOutcome::Done
            }
        }
    }
}
