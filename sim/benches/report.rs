//! The kepoch benchmark report: measures every figure of the performance table with its peers in the
//! same run (crossbeam-epoch, seize, liburcu, the machine's floor), prints it and, with `--out FILE`,
//! writes that file (`BENCHMARKS.md`), keeping the sections of other CPU vendors already in it.
//!
//! `cargo bench -p kepoch-sim --bench report -- [--quick] [--out FILE]`; `test-scripts/bench.sh` runs
//! the quick mode and regenerates `BENCHMARKS.md` at the repository root.

#[path = "report/amortized.rs"]
mod amortized;
mod common;
#[path = "report/cycles.rs"]
mod cycles;
#[path = "report/doc.rs"]
mod doc;
#[path = "report/dpc.rs"]
mod dpc;
#[path = "report/maps.rs"]
mod maps;
#[path = "report/rounds.rs"]
mod rounds;

use common::peers::{self, Flavour, UrcuReadSide};
use common::{
    crossbeam_throughput, domain, kepoch_throughput, private_loop_throughput, CrossbeamPin,
    FirstEnter, Floor, FullFence, KepochEnterExit, KepochRetire, SeizeRetire, Workload,
};
use doc::{load_average, Machine, Row};
use kepoch::Strategy;
use kepoch_sim::bench::BenchPlatform;
use rounds::{median, ns, Rounds, Spread};
use std::fmt::Write as _;
use std::time::Instant;

/// How much to measure.
#[derive(Clone, Copy)]
struct Effort {
    rounds: usize,
    scale: u64,
    /// Rounds of each strategy in the lab's `retire-storm` runs of the DPC row.
    lab_rounds: u32,
}

/// Per-CPU bytes after CPUs 0..4 ran epoch code, with the given reported maximum.
fn per_cpu_bytes(max: u32, strategy: Strategy) -> u64 {
    let (_platform, domain) = domain(max, 4, strategy, true);
    for cpu in 0..4 {
        BenchPlatform::pin_current_thread(cpu);
        drop(domain.enter());
    }
    BenchPlatform::pin_current_thread(0);
    domain.stats().per_cpu_bytes
}

/// Enter+exit against crossbeam-epoch, liburcu and the floor; the context table of per-operation
/// costs goes to `extra`.
fn enter_exit_rows(effort: Effort, rows: &mut Vec<Row>, extra: &mut String) -> f64 {
    let urcu = peers::available();
    let (mut kepoch, mut crossbeam, mut floor) = (KepochEnterExit::new(), CrossbeamPin, Floor);
    let (mut memb, mut qsbr) = (UrcuReadSide(Flavour::Memb), UrcuReadSide(Flavour::Qsbr));
    let mut workloads: Vec<&mut dyn Workload> = vec![&mut kepoch, &mut crossbeam, &mut floor];
    if urcu.is_none() {
        workloads.push(&mut memb);
        workloads.push(&mut qsbr);
    }
    let r = Rounds::run(&mut workloads, 1_000_000 * effort.scale, effort.rounds);
    let steady = r.median_ns(0);
    let vs_crossbeam = r.ratio(0, 1);
    let vs_floor = r.ratio(0, 2);
    let kepoch_vs_floor = format!(
        "kepoch's enter+exit is {vs_floor} the floor (a thread-local counter increment, {})",
        ns(r.median_ns(2))
    );
    rows.push(Row {
        figure: "enter+exit, steady state, per CPU",
        kepoch: ns(steady),
        peer: format!("crossbeam-epoch `pin()`+drop: {}", ns(r.median_ns(1))),
        ratio: vs_crossbeam.to_string(),
        target: "≤ 0.5×",
        pass: vs_crossbeam.median <= 0.5,
        why_missed: {
            // The floor is what any reader must do at least (one thread-local load and store): when
            // the floor alone is above half of crossbeam's pin here, no implementation can pass.
            let floor_vs_crossbeam = r.ratio(2, 1);
            format!(
                "{kepoch_vs_floor} in the same rounds; the floor itself is {floor_vs_crossbeam} crossbeam's `pin()` here{}.",
                if floor_vs_crossbeam.median > 0.5 {
                    ", so the ≤ 0.5× target is below the floor on this CPU"
                } else {
                    ""
                }
            )
        },
    });
    match urcu {
        None => {
            let vs_memb = r.ratio(0, 3);
            rows.push(Row {
                figure: "enter+exit, steady state, per CPU",
                kepoch: ns(steady),
                peer: format!(
                    "liburcu-memb `rcu_read_lock`+`unlock` (inline fast path, {}): {}",
                    if peers::memb_uses_membarrier() {
                        "sys_membarrier: compiler barrier"
                    } else {
                        "no sys_membarrier: full fence"
                    },
                    ns(r.median_ns(3))
                ),
                ratio: vs_memb.to_string(),
                target: "≤ 1.0×",
                pass: vs_memb.median <= 1.0,
                why_missed: {
                    // liburcu-memb's read side stores a copy of the global counter and a nesting
                    // count, no increment that the next one waits for: about the floor. A counting
                    // reader cannot be below the floor.
                    let memb_vs_floor = r.ratio(3, 2);
                    format!(
                        "liburcu-memb's read side is a thread-local nesting counter and costs {memb_vs_floor} the floor here; {kepoch_vs_floor}{}.",
                        if memb_vs_floor.median <= 1.1 {
                            ", so ≤ 1.0× would take an enter+exit at the floor: a reader counted per processor, as kepoch's are, increments at least one counter that the next enter waits for"
                        } else {
                            ""
                        }
                    )
                },
            });
        }
        Some(reason) => {
            eprintln!("SKIPPED: liburcu peers: {reason}");
            let _ = writeln!(extra, "- **SKIPPED: liburcu peers: {reason}.**");
        }
    }
    let _ = writeln!(
        extra,
        "Per-operation costs in the same rounds ({} rounds of {} operations, CPU time of the thread):\n\n| workload | median | kepoch enter+exit / this: median (min–max) |\n|---|---:|---:|",
        effort.rounds,
        1_000_000 * effort.scale
    );
    let names = [
        "kepoch enter+exit",
        "crossbeam-epoch `pin()`+drop",
        "floor: thread-local counter increment (relaxed load + store)",
        "liburcu-memb read lock+unlock",
        "liburcu-qsbr read lock+unlock (empty by design; QSBR pays in `quiescent_state`)",
    ];
    for (w, name) in names.iter().enumerate().take(r.ns.len()) {
        let _ = writeln!(
            extra,
            "| {name} | {} | {} |",
            ns(r.median_ns(w)),
            r.ratio(0, w)
        );
    }
    let _ = writeln!(extra);
    steady
}

fn measure(effort: Effort, extra: &mut String) -> Vec<Row> {
    let mut rows = Vec::new();
    let rounds = effort.rounds;
    let steady = enter_exit_rows(effort, &mut rows, extra);

    let r = Rounds::run(
        &mut [&mut KepochRetire::new(), &mut SeizeRetire::new()],
        100_000 * effort.scale,
        rounds,
    );
    let ratio = r.ratio(0, 1);
    rows.push(Row {
        figure: "enter + allocate + retire + exit (cycles and frees included)",
        kepoch: ns(r.median_ns(0)),
        peer: format!(
            "seize `enter` + `Box::new` + `defer_retire` + drop: {}",
            ns(r.median_ns(1))
        ),
        ratio: ratio.to_string(),
        target: "≤ 1.0×",
        pass: ratio.median <= 1.0,
        why_missed: RETIRE_MISS.into(),
    });

    for (strategy, figure, target, limit) in [
        (
            Strategy::Callback,
            "first enter+exit on a newly added CPU, `callback` (pre-warmed)",
            "≤ 1.5× (steady + one full fence)",
            1.5,
        ),
        (
            Strategy::Lazy,
            "first enter+exit on a newly added CPU, `lazy` (preparation included)",
            "≤ 10×",
            10.0,
        ),
    ] {
        let r = Rounds::run(
            &mut [
                &mut FirstEnter {
                    strategy,
                    steady: false,
                },
                &mut FirstEnter {
                    strategy,
                    steady: true,
                },
                &mut FullFence,
                &mut Floor,
            ],
            1024,
            rounds,
        );
        let ratio = r.ratio(0, 1);
        // The least a join can cost: one full fence (the fence loop less the floor loop it wraps).
        let fence = (r.median_ns(2) - r.median_ns(3)).max(0.0);
        let bound = (r.median_ns(1) + fence) / r.median_ns(1);
        // `callback`'s join must keep fence FJ: its target is relative to the steady state plus
        // one fence measured in the same rounds; `lazy`'s is relative to the steady state.
        let reference = if strategy == Strategy::Callback {
            r.median_ns(1) + fence
        } else {
            r.median_ns(1)
        };
        let versus_reference = r.median_ns(0) / reference;
        rows.push(Row {
            figure,
            kepoch: ns(r.median_ns(0)),
            peer: format!(
                "steady-state enter+exit, same CPU rotation: {} (hot, one CPU: {}); one full fence here: {}{}",
                ns(r.median_ns(1)),
                ns(steady),
                ns(fence),
                if strategy == Strategy::Callback {
                    format!("; first / (steady + fence): {versus_reference:.2}×")
                } else {
                    String::new()
                }
            ),
            ratio: ratio.to_string(),
            target,
            pass: versus_reference <= limit,
            why_missed: if strategy == Strategy::Callback {
                format!(
                    "{JOIN_MISS} On this CPU the fence alone costs {} against {} for a steady-state enter+exit, so a join that keeps fence FJ (PROTOCOL.md, S5) costs about {bound:.2}× the steady state or more{}.",
                    ns(fence),
                    ns(r.median_ns(1)),
                    if bound > limit {
                        ": a target of 1.5× the steady state alone would be out of reach on this CPU"
                            .to_string()
                    } else {
                        String::new()
                    }
                )
            } else {
                "preparing the slot at DISPATCH: allocation, message binding, publishing under the registry lock, and a group table per 64 CPUs.".into()
            },
        });
    }

    let big = per_cpu_bytes(2048, Strategy::Callback);
    let small = per_cpu_bytes(4, Strategy::Callback);
    let ratio = big as f64 / small as f64;
    rows.push(Row {
        figure: "per-CPU memory, reported max 2048, 4 active (`callback`)",
        kepoch: format!("{big} B"),
        peer: format!("reported max 4: {small} B"),
        ratio: format!("{ratio:.2}×"),
        target: "≤ 1.1×",
        pass: ratio <= 1.1,
        why_missed: "per-CPU state grew with the reported maximum.".into(),
    });
    amortized::amortized_rows(rounds, 100_000 * effort.scale, &mut rows, extra);
    maps::map_rows(rounds, 100_000 * effort.scale, &mut rows);
    cycles::cycle_rows(rounds, &mut rows, extra);
    throughput_row(effort, &mut rows, extra);
    dpc::dpc_row(effort.lab_rounds, &mut rows, extra);
    rows
}

/// 2-thread scaling of enter+exit, median of several runs, with crossbeam-epoch and the floor loop
/// as controls.
fn throughput_row(effort: Effort, rows: &mut Vec<Row>, extra: &mut String) {
    let runs = (effort.rounds / 4).max(7);
    let (mut k, mut c, mut b) = (Vec::new(), Vec::new(), Vec::new());
    let (mut k1s, mut k2s) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (b1, b2) = (
            private_loop_throughput(1, 20_000_000 * effort.scale),
            private_loop_throughput(2, 20_000_000 * effort.scale),
        );
        let (k1, k2) = (
            kepoch_throughput(1, 5_000_000 * effort.scale),
            kepoch_throughput(2, 5_000_000 * effort.scale),
        );
        let (c1, c2) = (
            crossbeam_throughput(1, 2_000_000 * effort.scale),
            crossbeam_throughput(2, 2_000_000 * effort.scale),
        );
        b.push(b2 / b1);
        k.push(k2 / k1);
        c.push(c2 / c1);
        k1s.push(k1);
        k2s.push(k2);
    }
    let (scaling, control, crossbeam) = (Spread::of(&k), Spread::of(&b), Spread::of(&c));
    let why_missed = if control.median < 1.8 {
        format!(
            "the machine did not give the run two cores: the control (the floor loop, nothing shared) \
             scaled {control} in the same runs (load average at the end: {}). Rerun on an idle machine.",
            load_average()
        )
    } else {
        format!(
            "kepoch scaled less than the control loop ({control}) in the same runs: look for a write \
             to a shared cache line on the hot path."
        )
    };
    rows.push(Row {
        figure: "enter+exit throughput, 2 threads on 2 cores vs 1",
        kepoch: format!(
            "{:.0} M/s vs {:.0} M/s",
            median(&mut k2s) / 1e6,
            median(&mut k1s) / 1e6
        ),
        peer: format!("crossbeam-epoch: {crossbeam}; control, the floor loop: {control}"),
        ratio: scaling.to_string(),
        target: "≥ 1.8× (median of ≥ 5 runs)",
        pass: scaling.median >= 1.8,
        why_missed,
    });
    let _ = writeln!(
        extra,
        "Throughput: {runs} runs of each configuration (wall time from a common start to the last thread's end), ratio per run; median (min–max) over the runs.\n"
    );
}

const RETIRE_MISS: &str = "\
kepoch and seize do the same allocator work per item (glibc's `malloc` and `free`, about a third of \
kepoch's profile); kepoch adds the retire header in front of every block, one locked instruction per \
retirement (the double-retire check's `lock cmpxchg`, which on x86-64 is also the stamp's fence FW that \
PROTOCOL.md needs) and, per cycle, the visit's work-clock readings (one per 32 frees). A ratio whose \
minimum and maximum straddle 1.0× is parity within this machine's spread. Profile: `perf record` of \
`cargo bench -p kepoch-sim --bench epoch -- --profile-time 4 enter_alloc_retire_exit/kepoch`.";

const JOIN_MISS: &str = "\
the join's full fence (PROTOCOL.md, \"Joining\"), which a first enter pays once and a steady-state \
enter never does. Profile: `perf record` of `cargo bench -p kepoch-sim --bench epoch -- \
--profile-time 4 first_enter_new_cpu/callback`.";

const PLATFORM_NOTE: &str = "\
kepoch runs on `kepoch_sim::bench::BenchPlatform`, not on the simulated machine (whose DISPATCH emulation \
takes a per-CPU spin lock, a locked instruction the kernel does not execute). On the benchmark platform each \
benchmark thread is one simulated CPU: `current_processor` is one thread-local load of the CPU index (the \
kernel reads the PRCB through `gs`, also one load); raising to DISPATCH and lowering swap a thread-local \
IRQL word (the kernel reads and writes CR8, plain, non-locked instructions; a byte-wide emulation would add \
a store-to-load forwarding delay per raise that the register does not have); allocation is `std::alloc` \
(the kernel: `ExAllocatePool2`), with the core's 64-byte-aligned per-CPU slots over-allocated from `malloc` and \
aligned by hand (glibc's `memalign` path bypasses its thread cache; the NT pool serves small blocks from \
per-processor lookaside lists). **Included**: everything the core does on enter, exit, alloc, retire, in \
a cycle's visits and when preparing a processor, plus those platform calls. **Not included**: DPC/IPI \
delivery of cycle messages (messages are queued in a FIFO and run by the driving thread, which takes the \
target CPU's identity at DISPATCH; the queue's mutex is included in the cycle figures), timer interrupts \
(cycles are started with `flush`), and the processor-change notification itself (AddStart/AddComplete run \
before the clock starts for `callback`). Peers run their normal user-mode code in the same process, in \
the same rounds as kepoch (the order rotates from round to round): crossbeam-epoch (default collector, \
`pin()`), seize (`Collector::new()`, default batch), liburcu 0.13 (`urcu-memb` and `urcu-qsbr`, the \
inline read side of `_LGPL_SOURCE`, each thread registered; the loops run in a C shim compiled with -O2, \
see `sim/benches/urcu/shim.c`), and the floor (a thread-local counter increment). Every loop drops its \
guard at once, without `black_box` on it. Single-threaded figures are timed in the thread's CPU time \
(`CLOCK_THREAD_CPUTIME_ID`), so that time descheduled on a busy machine is not counted; the throughput \
figure is wall time. A ratio is the median of the per-round ratios, with their minimum and maximum. \
The DPC row is the exception: it runs the lab (`kepoch-sim ab --scenario retire-storm`, parallel mode), whose \
simulated machine runs each CPU on a host thread, delivers every visit as a DPC at DISPATCH and frees into the \
checking pool (records, poisoning, quarantine); a visit's figure is the lower of its wall time and its \
thread's CPU time, and the control is timed by the same rule on a thread of its own during the same runs.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned());
    let command = std::env::var("KEPOCH_BENCH_COMMAND")
        .unwrap_or_else(|_| "cargo bench -p kepoch-sim --bench report".into());
    let effort = if quick {
        Effort {
            rounds: 31,
            scale: 2,
            lab_rounds: 3,
        }
    } else {
        Effort {
            rounds: 101,
            scale: 5,
            lab_rounds: 8,
        }
    };
    let machine = Machine::here();
    let load_start = load_average();
    let start = Instant::now();
    let mut extra = String::new();
    let rows = measure(effort, &mut extra);
    let took = start.elapsed().as_secs_f64();
    let header = format!(
        "Generated by `{command}` on {} ({} mode, {} rounds per figure, {took:.0} s of measurement).",
        doc::utc_now(),
        if quick { "quick" } else { "full" },
        effort.rounds
    );
    let section = doc::section(
        &rows,
        &extra,
        &header,
        &machine,
        (&load_start, &load_average()),
    );
    print!("{section}");
    if let Some(path) = out {
        let previous = std::fs::read_to_string(&path).unwrap_or_default();
        let document = doc::document(
            INTRO,
            (&machine.vendor, &section),
            &previous,
            &format!("## What the figures include\n\n{PLATFORM_NOTE}\n"),
        );
        std::fs::write(&path, document).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        eprintln!("wrote {path}");
    }
}

const INTRO: &str = "\
# kepoch benchmarks

Regenerated by `bash test-scripts/bench.sh`. One section per CPU vendor: a run replaces the section \
of the vendor it ran on and keeps the others as they were, with the date and machine of their run. \
Absolute times move with the machine and its load; the ratios compare workloads measured in the same \
rounds, and each is given as the median of the per-round ratios with their minimum and maximum.";
