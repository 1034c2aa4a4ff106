//! Amortized freeing at a high retire rate: enter + allocate + retire + exit with a reclamation
//! cycle every [`HIGH_RATE_RETIRES_PER_CYCLE`] retirements (16 million retirements per second at
//! the kernel's 1 ms cycle), kepoch with its visits bounded to 256 frees (the default: the rest is
//! freed by the next, chained visit) and without the bound (the whole batch freed in one visit:
//! "before"), against seize and crossbeam-epoch doing the same operations, all in the same rounds.

use crate::common::{domain_with, CpuInstant, Node, SeizeRetire, Workload};
use crate::doc::Row;
use crate::rounds::{ns, Rounds};
use kepoch::{Config, DomainBox, Strategy};
use kepoch_sim::bench::BenchPlatform;
use std::hint::black_box;
use std::time::Duration;

/// Retirements between two reclamation cycles in the high-rate workloads.
pub const HIGH_RATE_RETIRES_PER_CYCLE: u64 = 16_384;

/// kepoch's workload with a cycle every `per_cycle` retirements and `max_frees_per_visit`.
struct KepochHighRate {
    platform: BenchPlatform,
    domain: DomainBox<BenchPlatform>,
    count: u64,
}

impl KepochHighRate {
    /// A 2-CPU machine, `callback`, with this bound (0: none).
    fn new(max_frees_per_visit: u32) -> Self {
        let config = Config {
            max_frees_per_visit,
            ..Config::with_strategy(Strategy::Callback)
        };
        let (platform, domain) = domain_with(2, 2, config);
        KepochHighRate {
            platform,
            domain,
            count: 0,
        }
    }
}

impl Workload for KepochHighRate {
    fn run(&mut self, iters: u64) -> Duration {
        BenchPlatform::pin_current_thread(0);
        let domain = black_box(&*self.domain);
        let start = CpuInstant::now();
        for _ in 0..iters {
            let guard = domain.enter();
            let node = domain
                .alloc(black_box([0u64; 4] as Node))
                .expect("allocation");
            // SAFETY: the node was never published, so no reader can reach it.
            let _ = black_box(unsafe { domain.retire(node) });
            drop(guard);
            self.count += 1;
            if self.count == HIGH_RATE_RETIRES_PER_CYCLE {
                self.count = 0;
                domain.flush();
                self.platform.pump();
            }
        }
        start.elapsed()
    }
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
            &mut KepochHighRate::new(kepoch::config::DEFAULT_MAX_FREES_PER_VISIT),
            &mut KepochHighRate::new(0),
            &mut SeizeRetire::new(),
            &mut CrossbeamRetire,
        ],
        iters,
        rounds,
    );
    let why = "the same per-item costs as the low-rate row (the retirement's locked instruction, the retire \
               header); amortized visits add a chained cycle per 256 frees.";
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
