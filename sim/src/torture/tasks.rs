//! The torture's tasks: readers, writers, the synchronizer, stallers that fill reader tables, flush
//! storms and stats/holdback pollers (the monitor that enforces the run's bounds is in `monitor`).

use super::bounds::STALL_HOLD_CYCLES;
use super::{fault, Shared, CELLS};
use crate::machine::{StepContext, StepOutcome, Task};
use crate::objects::{self, ChainLink, Object, SimDomain};
use kepoch::platform::{Irql, Platform};
use kepoch::RawGuard;
use rand::Rng;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A reader: enters (sometimes nested, sometimes at DISPATCH), reads and re-checks objects and chains
/// across several steps, migrates between steps when at PASSIVE, exits.
pub(super) struct Reader {
    shared: Arc<Shared>,
    tokens: Vec<RawGuard>,
    held: Vec<(NonNull<Object>, u64)>,
    chains: Vec<NonNull<ChainLink>>,
    steps_left: u32,
    dispatch_irql: Option<Irql>,
    /// Global epoch right after the outermost enter (an upper bound of the reader's epoch).
    entered_at: u64,
}

// SAFETY: the held pointers are only dereferenced under the epoch the reader's tokens keep open.
unsafe impl Send for Reader {}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Reader {
            shared,
            tokens: Vec::new(),
            held: Vec::new(),
            chains: Vec::new(),
            steps_left: 0,
            dispatch_irql: None,
            entered_at: 0,
        }
    }

    fn read_cell(&mut self, domain: &SimDomain, ctx: &mut StepContext<'_>) {
        if let Some(held) = self.shared.read_cell(domain, ctx) {
            self.held.push(held);
        }
        let chain = self.shared.chain_cell.load(Ordering::Acquire);
        if let Some(chain) = NonNull::new(chain) {
            self.shared.check_chain(chain, ctx.cpu().index);
            self.chains.push(chain);
        }
    }

    fn exit_all(&mut self, domain: &SimDomain, ctx: &mut StepContext<'_>) {
        self.held.clear();
        self.chains.clear();
        while let Some(token) = self.tokens.pop() {
            // SAFETY: tokens come from this domain's `enter_raw` and are exited once.
            unsafe { domain.exit_raw(token) };
        }
        if let Some(previous) = self.dispatch_irql.take() {
            domain.platform().lower_irql(previous);
            ctx.hold_dispatch(false);
        }
    }
}

impl Task for Reader {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        let guard = shared.domain();
        let Some(domain) = guard.as_deref() else {
            return StepOutcome::Done;
        };
        if self.tokens.is_empty() {
            if shared.stop.load(Ordering::Relaxed) {
                return StepOutcome::Done;
            }
            if ctx.rng().gen_ratio(1, 4) {
                self.dispatch_irql = Some(domain.platform().raise_to_dispatch());
                ctx.hold_dispatch(true);
            }
            // SAFETY: exited in `exit_all` before the domain is unloaded (the run waits for every task).
            self.tokens.push(unsafe { domain.enter_raw() });
            // The reader's epoch is at most the global epoch after the enter.
            self.entered_at = domain.global_epoch();
            fault::set_reader(self.entered_at, ctx.cpu().index);
            if ctx.rng().gen_ratio(1, 4) {
                // SAFETY: as above.
                self.tokens.push(unsafe { domain.enter_raw() });
            }
            self.read_cell(domain, ctx);
            fault::clear_reader();
            self.steps_left = ctx.rng().gen_range(1..8);
            return StepOutcome::Continue;
        }
        fault::set_reader(self.entered_at, ctx.cpu().index);
        for &(object, id) in &self.held {
            shared.check(domain, object, id, ctx.cpu().index);
        }
        for &chain in &self.chains {
            shared.check_chain(chain, ctx.cpu().index);
        }
        if ctx.rng().gen_ratio(1, 3) {
            self.read_cell(domain, ctx);
        }
        fault::clear_reader();
        self.steps_left -= 1;
        if self.steps_left == 0 || shared.stop.load(Ordering::Relaxed) {
            self.exit_all(domain, ctx);
            let pause = ctx.rng().gen_range(0..20);
            return StepOutcome::Sleep(pause);
        }
        if self.dispatch_irql.is_none() && ctx.rng().gen_ratio(1, 4) {
            return shared.migrate(ctx);
        }
        StepOutcome::Continue
    }
}

/// A writer: publishes a new object in a random cell and retires the one it replaced; now and then
/// replaces the chain (whose links' destructors retire each other); moves between CPUs.
pub(super) struct Writer {
    pub shared: Arc<Shared>,
}

impl Task for Writer {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        shared.step_unless_stopped(|domain| Self::publish_and_retire(&shared, domain, ctx))
    }
}

impl Writer {
    fn publish_and_retire(
        shared: &Shared,
        domain: &SimDomain,
        ctx: &mut StepContext<'_>,
    ) -> StepOutcome {
        // The writer's own epoch keeps the old object alive while it records the retirement epoch.
        let epoch = domain.enter();
        if let Some((object, _)) = shared.new_object(domain) {
            let cell = ctx.rng().gen_range(0..CELLS);
            // SAFETY: every object in the cells came from `new_object` of this domain.
            match unsafe { objects::replace(domain, &shared.cells[cell], object) } {
                Ok(true) => {
                    shared.retires.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(error) => {
                    shared.violation(format!("retire of an unlinked object failed: {error:?}"))
                }
            }
        }
        if shared.workloads.chains && ctx.rng().gen_ratio(1, 8) {
            let len = ctx.rng().gen_range(1..=4);
            let first = shared.next_id.fetch_add(len as u64, Ordering::Relaxed);
            if let Some(head) = objects::new_chain(domain, first, len, &shared.chain_stats) {
                let old = shared.chain_cell.swap(head.as_ptr(), Ordering::AcqRel);
                if let Some(old) = NonNull::new(old) {
                    // SAFETY: unlinked just now; allocated by this domain by `new_chain`.
                    match unsafe { domain.retire(old) } {
                        Ok(_) => {
                            shared.retires.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => shared
                            .violation(format!("retire of an unlinked chain failed: {error:?}")),
                    }
                }
            }
        }
        drop(epoch);
        if ctx.rng().gen_ratio(1, 3) {
            return shared.migrate(ctx);
        }
        StepOutcome::Sleep(ctx.rng().gen_range(1..10))
    }
}

/// Calls `synchronize` now and then, from PASSIVE, outside any epoch.
pub(super) struct Synchronizer {
    pub shared: Arc<Shared>,
}

impl Task for Synchronizer {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        shared.step_unless_stopped(|domain| {
            domain.synchronize();
            shared.syncs.fetch_add(1, Ordering::Relaxed);
            StepOutcome::Sleep(ctx.rng().gen_range(200..2_000))
        })
    }
}

/// A reader that stays inside across many cycles at PASSIVE on one CPU, entering again whenever the
/// global epoch moved, so that its CPU's reader table holds more distinct epochs than it has entries.
/// It exits its oldest epoch once it is [`STALL_HOLD_CYCLES`] cycles old (so its stall is bounded and
/// the monitor's progress bound allows for it), re-checks every object it holds each step, and now and
/// then migrates with its epochs held (remote exits).
pub(super) struct Staller {
    shared: Arc<Shared>,
    /// (token, global epoch after the enter, CPU of the enter, object read then).
    held: std::collections::VecDeque<Held>,
}

/// One epoch a staller holds: token, global epoch after the enter, CPU of the enter, object read then.
type Held = (RawGuard, u64, u32, Option<(NonNull<Object>, u64)>);

// SAFETY: as for `Reader`.
unsafe impl Send for Staller {}

/// Epochs a staller holds at most.
const STALL_DEPTH: usize = 12;

impl Staller {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Staller {
            shared,
            held: Default::default(),
        }
    }
}

impl Task for Staller {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        let guard = shared.domain();
        let Some(domain) = guard.as_deref() else {
            return StepOutcome::Done;
        };
        let stopping = shared.stop.load(Ordering::Relaxed);
        let global = domain.global_epoch();
        for (_, entered, _, object) in &self.held {
            if let Some((object, id)) = *object {
                fault::set_reader(*entered, ctx.cpu().index);
                shared.check(domain, object, id, ctx.cpu().index);
            }
        }
        fault::clear_reader();
        while let Some(&(_, entered, _, _)) = self.held.front() {
            if !stopping && global.saturating_sub(entered) < STALL_HOLD_CYCLES {
                break;
            }
            if let Some((token, _, _, _)) = self.held.pop_front() {
                // SAFETY: entered by this task on this domain; exited once.
                unsafe { domain.exit_raw(token) };
            }
        }
        if stopping {
            return StepOutcome::Done;
        }
        let newest = self.held.back().map_or(0, |h| h.1);
        if self.held.len() < STALL_DEPTH && (self.held.is_empty() || global > newest) {
            // SAFETY: exited above, at the latest when the run stops (before unload).
            let token = unsafe { domain.enter_raw() };
            let entered = domain.global_epoch();
            fault::set_reader(entered, ctx.cpu().index);
            let object = shared.read_cell(domain, ctx);
            fault::clear_reader();
            let cpu = ctx.cpu().index;
            self.held.push_back((token, entered, cpu, object));
            let mut epochs: Vec<u64> = self
                .held
                .iter()
                .filter(|h| h.2 == cpu)
                .map(|h| h.1)
                .collect();
            epochs.dedup();
            shared
                .max_depth
                .fetch_max(epochs.len() as u64, Ordering::Relaxed);
        }
        if ctx.rng().gen_ratio(1, 50) {
            return shared.migrate(ctx);
        }
        StepOutcome::Sleep(ctx.rng().gen_range(10..40))
    }
}

/// Bursts of `flush` (at PASSIVE and at DISPATCH) and now and then a `synchronize`.
pub(super) struct FlushStorm {
    pub shared: Arc<Shared>,
}

impl Task for FlushStorm {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        shared.step_unless_stopped(|domain| {
            let burst = ctx.rng().gen_range(1..32);
            let at_dispatch = ctx.rng().gen_ratio(1, 2);
            let previous = at_dispatch.then(|| domain.platform().raise_to_dispatch());
            for _ in 0..burst {
                domain.flush();
            }
            if let Some(previous) = previous {
                domain.platform().lower_irql(previous);
            }
            shared.flushes.fetch_add(burst, Ordering::Relaxed);
            if ctx.rng().gen_ratio(1, 8) {
                domain.synchronize();
                shared.syncs.fetch_add(1, Ordering::Relaxed);
            }
            if ctx.rng().gen_ratio(1, 4) {
                return shared.migrate(ctx);
            }
            StepOutcome::Sleep(ctx.rng().gen_range(50..500))
        })
    }
}

/// Calls `stats()` and `holdback()` at PASSIVE and checks that they are consistent.
pub(super) struct Poller {
    pub shared: Arc<Shared>,
    pub released: u64,
}

impl Task for Poller {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        shared.step_unless_stopped(|domain| {
            let stats = domain.stats();
            let hold = domain.holdback();
            shared.polls.fetch_add(1, Ordering::Relaxed);
            if stats.freed > stats.retired {
                shared.violation(format!(
                    "stats: freed {} > retired {}",
                    stats.freed, stats.retired
                ));
            }
            if hold.released_epoch > hold.global_epoch {
                shared.violation(format!(
                    "holdback: released epoch {} is ahead of the global epoch {}",
                    hold.released_epoch, hold.global_epoch
                ));
            }
            // The core publishes the maximum of what its cycles release (epoch/PROTOCOL.md, "The
            // released epoch only grows"): any decrease is a bug.
            if hold.released_epoch < self.released {
                shared.violation(format!(
                    "holdback: released epoch went back from {} to {}",
                    self.released, hold.released_epoch
                ));
            }
            if let Some((holder, epoch)) = hold.oldest_reader {
                if epoch > hold.global_epoch {
                    shared.violation(format!(
                        "holdback: {holder} holds epoch {epoch}, ahead of the global epoch {}",
                        hold.global_epoch
                    ));
                }
            }
            self.released = hold.released_epoch;
            if ctx.rng().gen_ratio(1, 4) {
                return shared.migrate(ctx);
            }
            StepOutcome::Sleep(ctx.rng().gen_range(50..500))
        })
    }
}
