//! The monitor task: checks the run's bounds periodically and ends the run with a diagnosis when one
//! breaks.

use super::bounds::{current_rss, Abort, BrokenClock, STALL_HOLD_CYCLES};
use super::{Mode, Shared};
use crate::machine::{SchedulingProbe, StepContext, StepOutcome, Task};
use crate::objects::SimDomain;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Checks the run's bounds periodically (see [`super::bounds`]); ends the run with a diagnosis
/// when one breaks.
pub(super) struct Monitor {
    shared: Arc<Shared>,
    /// Released epoch last seen, and the global epoch when it last changed.
    released: u64,
    released_changed_at: u64,
    /// Global epoch last seen, and the simulated time when it last changed.
    global: u64,
    global_changed_us: u64,
    /// How long pending garbage (L2), progress (L1) and new cycles have been out of bounds.
    garbage: BrokenClock,
    progress: BrokenClock,
    cycles: BrokenClock,
    /// Rounds in which the host ran every machine thread, counted at the checks.
    rounds: u64,
    probe: SchedulingProbe,
    rss_checked: Option<Instant>,
    interval_us: u64,
}

impl Monitor {
    /// A monitor of `shared`'s run that checks every `interval_us` of simulated time.
    pub(super) fn new(shared: Arc<Shared>, interval_us: u64) -> Monitor {
        let probe = shared.machine.scheduling_probe();
        Monitor {
            shared,
            released: 0,
            released_changed_at: 0,
            global: 0,
            global_changed_us: 0,
            garbage: BrokenClock::default(),
            progress: BrokenClock::default(),
            cycles: BrokenClock::default(),
            rounds: 0,
            probe,
            rss_checked: None,
            interval_us,
        }
    }

    /// Rounds a liveness bound must stay broken before the run fails: none in deterministic mode; in
    /// parallel mode [`super::bounds::Bounds::scheduling_rounds`] (a simulated CPU whose thread the
    /// host did not run is not a stuck protocol).
    fn rounds_needed(&self) -> u64 {
        match self.shared.mode {
            Mode::Deterministic => 0,
            Mode::Parallel => self.shared.bounds.scheduling_rounds,
        }
    }

    /// " (for N rounds in which the host ran every machine thread)" in parallel mode; nothing in
    /// deterministic mode.
    fn rounds_text(&self, rounds: u64) -> String {
        match self.shared.mode {
            Mode::Deterministic => String::new(),
            Mode::Parallel => {
                format!(" (for {rounds} rounds in which the host ran every machine thread)")
            }
        }
    }

    fn check(&mut self, domain: &SimDomain, now_us: u64) -> Option<String> {
        let shared = &*self.shared;
        let bounds = &shared.bounds;
        if self.probe.every_thread_ran() {
            self.rounds += 1;
        }
        let (round, needed) = (self.rounds, self.rounds_needed());
        let hold = domain.holdback();
        shared
            .cycles_seen
            .store(domain.stats().cycles, Ordering::Relaxed);
        let cpus = shared.machine.running_indexes().len() as u64;
        shared
            .peak_pending
            .fetch_max(hold.pending, Ordering::Relaxed);
        if hold.released_epoch != self.released {
            self.released = hold.released_epoch;
            self.released_changed_at = hold.global_epoch;
        }
        if hold.global_epoch != self.global {
            self.global = hold.global_epoch;
            self.global_changed_us = now_us;
        }
        if hold.pending == 0 {
            // Nothing to reclaim: a released epoch that stays put holds nothing back.
            self.released_changed_at = hold.global_epoch;
        }
        let still = hold.global_epoch.saturating_sub(self.released_changed_at);
        shared.max_no_release.fetch_max(still, Ordering::Relaxed);
        let snapshot = shared.describe_holdback(&hold);
        shared.watchdog.snapshot(snapshot.clone());
        let over = hold.pending > bounds.pending_per_cpu * cpus.max(1);
        if let Some(rounds) = self.garbage.fails(over, round, needed) {
            return Some(format!(
                "bounded garbage (L2): {} items pending exceed {} per running CPU x {cpus} CPU(s){}; {snapshot}",
                hold.pending,
                bounds.pending_per_cpu,
                self.rounds_text(rounds)
            ));
        }
        let stuck = still > STALL_HOLD_CYCLES + bounds.progress_cycles;
        if let Some(rounds) = self.progress.fails(stuck, round, needed) {
            return Some(format!(
                "no progress (L1): the released epoch {} has not advanced for {still} cycles (bound {} + {}){}; {snapshot}",
                hold.released_epoch,
                STALL_HOLD_CYCLES,
                bounds.progress_cycles,
                self.rounds_text(rounds)
            ));
        }
        let idle_for = now_us.saturating_sub(self.global_changed_us);
        let gap = bounds.cycle_gap_us(shared.mode == Mode::Parallel);
        let no_cycle = hold.pending > 0 && idle_for > gap;
        if let Some(rounds) = self.cycles.fails(no_cycle, round, needed) {
            return Some(format!(
                "no cycle: {} items pending and no cycle started for {idle_for} us (bound {gap} us){}; {snapshot}",
                hold.pending,
                self.rounds_text(rounds)
            ));
        }
        if shared.started.elapsed() > shared.deadline {
            return Some(format!(
                "deadline: the run did not finish within {:.1} s; {snapshot}",
                shared.deadline.as_secs_f64()
            ));
        }
        if self
            .rss_checked
            .is_none_or(|t| t.elapsed().as_millis() >= 10)
        {
            self.rss_checked = Some(Instant::now());
            let rss = current_rss();
            if rss > bounds.max_rss_bytes {
                return Some(format!(
                    "memory: resident set {} MiB exceeds {} MiB; {snapshot}",
                    rss >> 20,
                    bounds.max_rss_bytes >> 20
                ));
            }
            let live = shared.machine.alloc_stats().live_bytes;
            if live > bounds.max_live_bytes {
                return Some(format!(
                    "memory: the simulated allocator holds {} MiB live, over {} MiB; {snapshot}",
                    live >> 20,
                    bounds.max_live_bytes >> 20
                ));
            }
        }
        None
    }
}

impl Task for Monitor {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let shared = self.shared.clone();
        if shared.monitor_stop.load(Ordering::Acquire) {
            return StepOutcome::Done;
        }
        let verdict = {
            let guard = shared.domain();
            let Some(domain) = guard.as_deref() else {
                return StepOutcome::Done;
            };
            self.check(domain, ctx.now_us())
        };
        if let Some(text) = verdict {
            shared.fail(text.clone());
            if shared.mode == Mode::Deterministic {
                // Unwind out of the scheduler (and out of any wait that pumps it) to the run.
                std::panic::resume_unwind(Box::new(Abort(text)));
            }
            shared.stop.store(true, Ordering::Relaxed);
            return StepOutcome::Done;
        }
        StepOutcome::Sleep(self.interval_us)
    }
}
