//! `load start --wait`: when the load has run (host-testable).

use kepoch::Stats;
use kepoch_driver::ioctl::limits;

/// The number of load threads the driver starts for `threads` (0 = one per active processor, as the
/// statistics report them) at `rate` operations/s: never more threads than operations per second, at
/// most [`limits::MAX_THREADS`].
pub fn expected_threads(threads: u32, rate: u32, active: u32) -> u32 {
    let wanted = if threads == 0 { active.max(1) } else { threads };
    wanted.min(rate).min(limits::MAX_THREADS)
}

/// How far the load has got since `before` (read just before the start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Load threads that made their first operation (each records one first-enter latency).
    pub first: u64,
    /// Later operations (each records one enter/exit latency).
    pub later: u64,
}

impl Progress {
    /// The progress between two snapshots of the statistics.
    pub fn between(before: &Stats, now: &Stats) -> Progress {
        Progress {
            first: now
                .first_enter_ns
                .count()
                .saturating_sub(before.first_enter_ns.count()),
            later: now
                .enter_exit_ns
                .count()
                .saturating_sub(before.enter_exit_ns.count()),
        }
    }

    /// Whether every one of `threads` threads made its first operation and at least `threads` later
    /// ones were made (every thread has run at least two operations when they are spread evenly).
    pub fn done(&self, threads: u32) -> bool {
        self.first >= u64::from(threads) && self.later >= u64::from(threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_follows_the_driver() {
        assert_eq!(expected_threads(2, 2000, 8), 2);
        assert_eq!(expected_threads(0, 2000, 8), 8);
        assert_eq!(expected_threads(0, 2000, 0), 1);
        assert_eq!(expected_threads(0, 2000, 200), 64);
        assert_eq!(expected_threads(4, 3, 8), 3);
    }

    #[test]
    fn done_needs_first_and_later_operations_of_every_thread() {
        let mut before = Stats::default();
        before.first_enter_ns.record(100);
        before.enter_exit_ns.record(100);
        let mut now = before;
        let p = Progress::between(&before, &now);
        assert_eq!(p, Progress { first: 0, later: 0 });
        assert!(!p.done(2));
        now.first_enter_ns.record(500);
        now.first_enter_ns.record(600);
        now.enter_exit_ns.record(200);
        let p = Progress::between(&before, &now);
        assert_eq!(p, Progress { first: 2, later: 1 });
        assert!(!p.done(2));
        now.enter_exit_ns.record(300);
        assert!(Progress::between(&before, &now).done(2));
        // A reset in between (counts below the baseline) is no progress, not an underflow.
        assert_eq!(
            Progress::between(&now, &Stats::default()),
            Progress { first: 0, later: 0 }
        );
    }
}
