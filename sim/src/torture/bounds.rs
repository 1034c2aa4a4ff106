//! Liveness and resource bounds of a torture run (PROTOCOL.md, L1/L2) and what ends a run that breaks them:
//! the monitor task's diagnosis, the abort payload, the wall-clock watchdog and panic reporting.
//!
//! The bounds, checked by a monitor task every two cycle periods (deterministic mode, simulated time)
//! or every millisecond (parallel mode):
//! - **pending garbage**: items retired and not yet disposed of may not exceed
//!   [`Bounds::pending_per_cpu`] (2048) per running CPU. A fixed cap per CPU rather than a rate
//!   formula, because the torture's retire rate is itself bounded (writers sleep 1–10 µs between
//!   retirements, work items and chains add a little) and its deliberate stalls hold reclamation for
//!   at most [`STALL_HOLD_CYCLES`] cycles: measured peaks of a correct core are about 260 items in
//!   150–200-seed deterministic batches, 640 in the 20 s parallel run and 1116 in the 60 s parallel
//!   soak with hot-adds (3–11 CPUs), i.e. at least 3.6x below the smallest cap that applies there.
//!   The peak is printed in every summary.
//! - **progress**: while garbage is pending, the released epoch must advance within
//!   [`STALL_HOLD_CYCLES`] + [`Bounds::progress_cycles`] (16 + 128) cycles. The torture's only readers
//!   that stay inside for long are its stallers, which exit every epoch they hold within 16 cycles;
//!   ordinary readers exit within 8 steps. The longest hold-back measured on a correct core is 66
//!   cycles (lazy, DPCs preempting PASSIVE readers), so anything past 144 is a reader the core lost
//!   or a cycle that does not release. A 20 ms deterministic run has 250–800 cycles, so a lost reader
//!   is caught within one run.
//! - **cycles**: while garbage is pending a new cycle must start within [`Bounds::cycle_gap_us`].
//! - **memory**: the process's resident set may not exceed [`Bounds::max_rss_bytes`] and the simulated
//!   allocator's live bytes may not exceed [`Bounds::max_live_bytes`].
//! - **deadline**: the run must end within its wall-clock deadline.
//!
//! In parallel mode a simulated CPU is an OS thread, and a busy host may not run it for a while: its
//! readers stay inside, its DPCs wait, while the other threads go on retiring and cycling. Pending
//! garbage, progress and new cycles are therefore judged in **scheduling rounds** as well (a round
//! ends when the host has run every machine thread — each running CPU's and the timer, passive and
//! hot-plug threads — since the last one; [`crate::machine::SchedulingProbe`]): one of these bounds
//! fails only once it has stayed broken for [`Bounds::scheduling_rounds`] rounds. A thread the host
//! does not run stops the rounds, so it cannot make a bound fail; a protocol that is stuck while every
//! thread runs fails as before, with the same diagnosis, after those rounds (a few hundred
//! milliseconds on an idle host). The deadline stays in wall time: it is the last resort against a
//! hang, and the parallel run itself always ends ([`crate::machine::Machine::run_parallel`]).
//!
//! Breaking a bound ends the run at once: in deterministic mode the monitor unwinds out of the
//! scheduler with an [`Abort`] payload (caught by the run); in parallel mode it stops the tasks, and
//! if the run has not wound down within [`GRACE`] the watchdog prints the diagnosis and the replay
//! command and exits the process with status 1. The watchdog does the same when the deadline passes
//! (a hang the monitor cannot see, e.g. every CPU spinning at DISPATCH).

use crate::machine::Bugcheck;
use std::any::Any;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Cycles a staller keeps its oldest epoch before exiting it (deliberate stalls are this long at most).
pub const STALL_HOLD_CYCLES: u64 = 16;
/// How long a parallel run that broke a bound may take to wind down before the watchdog exits.
pub const GRACE: Duration = Duration::from_secs(3);

/// Limits every run is held to (see the module documentation).
#[derive(Clone, Debug)]
pub struct Bounds {
    /// Wall-clock deadline of one run; `None`: derived from the run length ([`Bounds::deadline_for`]).
    pub deadline: Option<Duration>,
    /// Pending (retired, not yet disposed of) items allowed per running CPU.
    pub pending_per_cpu: u64,
    /// Cycles the released epoch may stay put beyond the longest deliberate stall.
    pub progress_cycles: u64,
    /// Resident set size allowed for the process, in bytes.
    pub max_rss_bytes: u64,
    /// Live bytes allowed in the simulated allocator.
    pub max_live_bytes: u64,
    /// Parallel mode: rounds in which the host ran every machine thread that pending garbage,
    /// progress or new cycles must stay out of bounds before the run fails.
    pub scheduling_rounds: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            deadline: None,
            pending_per_cpu: 2_048,
            progress_cycles: 128,
            max_rss_bytes: 2 << 30,
            max_live_bytes: 256 << 20,
            scheduling_rounds: 500,
        }
    }
}

impl Bounds {
    /// The deadline of a run of `duration_us` (simulated µs in deterministic mode, wall µs in parallel
    /// mode): the explicit one, else 30 s plus 1 s per simulated millisecond (deterministic runs take
    /// well under a millisecond of wall time per simulated millisecond) or twice the wall time.
    pub fn deadline_for(&self, parallel: bool, duration_us: u64) -> Duration {
        self.deadline.unwrap_or_else(|| {
            let base = Duration::from_secs(30);
            if parallel {
                base + Duration::from_micros(duration_us) * 2
            } else {
                base + Duration::from_millis(duration_us.div_ceil(1_000))
            }
        })
    }

    /// Longest time without a new cycle while garbage is pending, in µs of simulated time:
    /// [`Bounds::progress_cycles`] cycle periods, or in parallel mode (where simulated time is wall time
    /// and the OS may not schedule the timer thread for a while on a loaded machine) at least 2 s.
    pub fn cycle_gap_us(&self, parallel: bool) -> u64 {
        let periods = self.progress_cycles * u64::from(super::TORTURE_CYCLE_US);
        if parallel {
            periods.max(2_000_000)
        } else {
            periods
        }
    }

    /// One line stating the bounds, for summaries and failure reports.
    pub fn describe(&self, deadline: Duration) -> String {
        format!(
            "pending <= {} items per running CPU, released epoch advances within {} + {} cycles, a new cycle within {} us (deterministic) / {} us (parallel) while garbage is pending (parallel: each broken for {} rounds in which every machine thread ran), RSS <= {} MiB, simulated live bytes <= {} MiB, deadline {:.0} s",
            self.pending_per_cpu,
            STALL_HOLD_CYCLES,
            self.progress_cycles,
            self.cycle_gap_us(false),
            self.cycle_gap_us(true),
            self.scheduling_rounds,
            self.max_rss_bytes >> 20,
            self.max_live_bytes >> 20,
            deadline.as_secs_f64()
        )
    }
}

/// How long one liveness bound has stayed broken, in scheduling rounds (see the module
/// documentation): the monitor keeps one per bound.
#[derive(Debug, Default)]
pub(super) struct BrokenClock {
    /// The round at which the bound was first seen broken since it last held.
    since_round: Option<u64>,
}

impl BrokenClock {
    /// Records whether the bound is `broken` at scheduling round `round`. Returns the rounds it has
    /// stayed broken once that reaches `needed` (0: fails at the first broken observation), `None`
    /// while it holds or has not been broken that long. A bound that holds starts the clock over.
    pub(super) fn fails(&mut self, broken: bool, round: u64, needed: u64) -> Option<u64> {
        if !broken {
            self.since_round = None;
            return None;
        }
        let broken_for = round - *self.since_round.get_or_insert(round);
        (broken_for >= needed).then_some(broken_for)
    }
}

/// Panic payload with which the monitor unwinds out of a deterministic run that broke a bound.
#[derive(Debug)]
pub struct Abort(pub String);

/// The text of a panic payload: an [`Abort`], the machine's [`Bugcheck`], a `String` or a `&str`.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(abort) = payload.downcast_ref::<Abort>() {
        abort.0.clone()
    } else if let Some(bugcheck) = payload.downcast_ref::<Bugcheck>() {
        bugcheck.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        format!("panic: {text}")
    } else if let Some(text) = payload.downcast_ref::<&str>() {
        format!("panic: {text}")
    } else {
        "panic with a payload that is not text".into()
    }
}

/// Installs (once per process) a panic hook that stays silent for the panics a run reports itself —
/// the machine's [`Bugcheck`] — and hands every other panic to the previous hook.
pub fn quiet_reported_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Bugcheck>().is_none() {
                previous(info);
            }
        }));
    });
}

/// Resident set size of this process now, in bytes (`/proc/self/statm`), or 0 if unknown.
pub fn current_rss() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    pages * crate::machine::page_size() as u64
}

/// Peak resident set size of this process so far, in bytes (`getrusage`).
pub fn peak_rss() -> u64 {
    // SAFETY: a zeroed rusage is a valid out-parameter; getrusage only writes it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    (usage.ru_maxrss.max(0) as u64) * 1024
}

#[derive(Default)]
struct WatchState {
    done: bool,
    failure: Option<(String, Instant)>,
    snapshot: String,
}

/// The wall-clock watchdog of one run: a thread that ends the process, with the diagnosis and the
/// replay command, when the run neither finishes by its deadline nor winds down within [`GRACE`] of
/// breaking a bound.
#[derive(Clone)]
pub struct Watchdog {
    state: Arc<(Mutex<WatchState>, Condvar)>,
}

impl Watchdog {
    /// Starts the watchdog. `context` (seed, replay command) is printed after the diagnosis.
    pub fn start(deadline: Duration, context: String) -> Watchdog {
        let state = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let watched = state.clone();
        let start = Instant::now();
        std::thread::Builder::new()
            .name("torture-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*watched;
                let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if st.done {
                        return;
                    }
                    let now = Instant::now();
                    let limit = match &st.failure {
                        Some((_, at)) => (*at + GRACE).min(start + deadline),
                        None => start + deadline,
                    };
                    if now >= limit {
                        let text = match &st.failure {
                            Some((text, _)) => format!(
                                "{text}\n(the run did not wind down within {GRACE:?} of the violation; ending the process)"
                            ),
                            None => format!(
                                "deadline: the run did not finish within {:.1} s (a hang); last monitor snapshot: {}",
                                deadline.as_secs_f64(),
                                if st.snapshot.is_empty() { "none" } else { &st.snapshot }
                            ),
                        };
                        let mut err = std::io::stderr().lock();
                        let _ = writeln!(err, "kepoch-sim torture: VIOLATION: {text}");
                        let _ = write!(err, "{context}");
                        let _ = writeln!(err, "peak RSS {} MiB", peak_rss() >> 20);
                        let _ = err.flush();
                        std::process::exit(1);
                    }
                    st = cv
                        .wait_timeout(st, limit - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })
            .expect("spawn the torture watchdog");
        Watchdog { state }
    }

    fn with(&self, f: impl FnOnce(&mut WatchState)) {
        let (lock, cv) = &*self.state;
        f(&mut lock.lock().unwrap_or_else(|e| e.into_inner()));
        cv.notify_all();
    }

    /// The run broke a bound: from now on it has [`GRACE`] to finish.
    pub fn failed(&self, text: &str) {
        self.with(|st| {
            if st.failure.is_none() {
                st.failure = Some((text.to_string(), Instant::now()));
            }
        });
    }

    /// The latest state of the run, printed if the deadline passes.
    pub fn snapshot(&self, text: String) {
        self.with(|st| st.snapshot = text);
    }

    /// The run finished: the watchdog thread ends.
    pub fn finish(&self) {
        self.with(|st| st.done = true);
    }
}

#[cfg(test)]
mod tests {
    use super::BrokenClock;

    #[test]
    fn a_bound_that_holds_never_fails() {
        let mut clock = BrokenClock::default();
        assert!((0..1_000).all(|round| clock.fails(false, round, 0).is_none()));
    }

    #[test]
    fn without_a_round_requirement_a_broken_bound_fails_at_once() {
        assert_eq!(BrokenClock::default().fails(true, 7, 0), Some(0));
    }

    #[test]
    fn a_broken_bound_fails_after_the_rounds_it_needs_and_not_before() {
        let mut clock = BrokenClock::default();
        assert_eq!(clock.fails(true, 10, 5), None);
        assert_eq!(clock.fails(true, 14, 5), None);
        assert_eq!(clock.fails(true, 15, 5), Some(5));
        assert_eq!(clock.fails(true, 40, 5), Some(30));
    }

    #[test]
    fn a_bound_broken_while_the_rounds_stand_still_does_not_fail() {
        // A thread the host does not run stops the rounds: however often the bound is seen broken
        // meanwhile, it has not been broken for any round.
        let mut clock = BrokenClock::default();
        assert!((0..10_000).all(|_| clock.fails(true, 3, 5).is_none()));
        assert_eq!(clock.fails(true, 8, 5), Some(5));
    }

    #[test]
    fn a_bound_that_holds_again_starts_over() {
        let mut clock = BrokenClock::default();
        assert_eq!(clock.fails(true, 10, 5), None);
        assert_eq!(clock.fails(false, 14, 5), None);
        assert_eq!(clock.fails(true, 16, 5), None);
        assert_eq!(clock.fails(true, 20, 5), None);
        assert_eq!(clock.fails(true, 21, 5), Some(5));
    }
}
