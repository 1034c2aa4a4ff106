//! Amortized freeing at a high retire rate: enter + allocate + retire + exit with a reclamation
//! cycle every [`HIGH_RATE_RETIRES_PER_CYCLE`] retirements (16 million retirements per second at
//! the kernel's 1 ms cycle), kepoch with its visits bounded to 256 frees (the default: the rest is
//! freed by the next, chained visit) and without the bound (the whole batch freed in one visit:
//! "before"), against seize and crossbeam-epoch doing the same operations, all in the same rounds.

use crate::common::{CpuInstant, KepochRetire, Node, SeizeRetire, Workload};
use crate::doc::Row;
use crate::rounds::{ns, Rounds};
use kepoch::{Config, Strategy};
use std::hint::black_box;
use std::time::Duration;

/// Retirements between two reclamation cycles in the high-rate workloads.
pub const HIGH_RATE_RETIRES_PER_CYCLE: u64 = 16_384;

/// kepoch's workload at the high rate with this bound and the time budget that goes with it
/// (0: neither, the whole batch in one visit).
fn kepoch_high_rate(max_frees_per_visit: u32) -> KepochRetire {
    KepochRetire::with(
        HIGH_RATE_RETIRES_PER_CYCLE,
        Config {
            max_frees_per_visit,
            visit_budget_us: kepoch::config::visit_budget_for(max_frees_per_visit),
            ..Config::with_strategy(Strategy::Callback)
        },
    )
}

/// crossbeam-epoch `pin()` + `Owned::new` + `defer_destroy` + drop on the default collector.
struct CrossbeamRetire;

impl Workload for CrossbeamRetire {
    fn run(&mut self, iters: u64) -> Duration {
        let start = CpuInstant::now();
        for _ in 0..iters {
            let guard = crossbeam_epoch::pin();
            let node =
                crossbeam_epoch::Owned::new(black_box([0u64; 4] as Node)).into_shared(&guard);
            // SAFETY: the node was never published, so no other thread can reach it.
            unsafe { guard.defer_destroy(node) };
            drop(guard);
        }
        start.elapsed()
    }
}

/// The two rows (against seize and against crossbeam-epoch) and the before/after context.
pub fn amortized_rows(rounds: usize, iters: u64, rows: &mut Vec<Row>, extra: &mut String) {
    use std::fmt::Write as _;
    let r = Rounds::run(
        &mut [
            &mut kepoch_high_rate(kepoch::config::DEFAULT_MAX_FREES_PER_VISIT),
            &mut kepoch_high_rate(0),
            &mut SeizeRetire::new(),
            &mut CrossbeamRetire,
        ],
        iters,
        rounds,
    );
    let why = "the same per-item costs as the low-rate row (see there; parity when the ratio's minimum and \
               maximum straddle 1.0×); amortized visits add a chained cycle per 256 frees.";
    for (peer, name) in [
        (2, "seize `enter` + `Box::new` + `defer_retire` + drop"),
        (
            3,
            "crossbeam-epoch `pin()` + `Owned::new` + `defer_destroy` + drop",
        ),
    ] {
        let ratio = r.ratio(0, peer);
        rows.push(Row {
            figure: if peer == 2 {
                "enter + allocate + retire + exit at a high retire rate (16,384 per cycle; 256 frees per visit) vs seize"
            } else {
                "enter + allocate + retire + exit at a high retire rate (16,384 per cycle; 256 frees per visit) vs crossbeam-epoch"
            },
            kepoch: ns(r.median_ns(0)),
            peer: format!("{name}: {}", ns(r.median_ns(peer))),
            ratio: ratio.to_string(),
            target: "≤ 1.0×",
            pass: ratio.median <= 1.0,
            why_missed: why.into(),
        });
    }
    let _ = writeln!(
        extra,
        "Amortized freeing at a high retire rate ({HIGH_RATE_RETIRES_PER_CYCLE} retirements per cycle, same rounds): \
         kepoch with 256 frees per visit {} per item, without the bound (the whole batch in one visit) {} \
         (bounded / unbounded: {}); seize {}; crossbeam-epoch {}.\n",
        ns(r.median_ns(0)),
        ns(r.median_ns(1)),
        r.ratio(0, 1),
        ns(r.median_ns(2)),
        ns(r.median_ns(3)),
    );
}
