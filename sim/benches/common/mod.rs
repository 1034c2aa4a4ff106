//! Workloads shared by the criterion benchmarks (`benches/epoch.rs`) and the report harness
//! (`benches/report.rs`): kepoch on [`BenchPlatform`] and its peers, crossbeam-epoch, seize, liburcu
//! (`peers`) and the machine's floor.
//!
//! Single-threaded workloads are timed in the calling thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), so that time the thread spends descheduled on a busy machine is not
//! counted; on an idle machine it equals the wall time of these loops (no system calls in them).

#![allow(dead_code)]

pub mod peers;

use kepoch::{Config, Domain, DomainBox, Strategy};
use kepoch_sim::bench::BenchPlatform;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// A point in the calling thread's CPU time.
#[derive(Clone, Copy)]
pub struct CpuInstant(Duration);

impl CpuInstant {
    /// The calling thread's CPU time now.
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; the clock id is a constant Linux knows.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
        CpuInstant(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// CPU time the thread had used at `self`, from its start.
    pub fn since_thread_start(self) -> Duration {
        self.0
    }

    /// CPU time the calling thread used since `self`.
    pub fn elapsed(self) -> Duration {
        Self::now().0.saturating_sub(self.0)
    }
}

/// The value every alloc+retire workload allocates (32 bytes, like a small tree node).
pub type Node = [u64; 4];

/// Items retired between two reclamation cycles in the kepoch alloc+retire workload (the kernel's
/// timer would run a cycle every millisecond; at ~100 ns per item that is ~10 000 items).
pub const RETIRES_PER_CYCLE: u64 = 256;

/// Something timed in batches: `run(iters)` performs `iters` operations and returns the time they took
/// (set-up that is not part of the figure is excluded).
pub trait Workload {
    /// Runs `iters` operations.
    fn run(&mut self, iters: u64) -> Duration;
}

/// A domain on a fresh benchmark machine.
pub fn domain(
    max: u32,
    active: u32,
    strategy: Strategy,
    idle_deactivation: bool,
) -> (BenchPlatform, DomainBox<BenchPlatform>) {
    domain_with(
        max,
        active,
        Config {
            idle_deactivation,
            ..Config::with_strategy(strategy)
        },
    )
}

/// A domain with `config` on a fresh benchmark machine.
pub fn domain_with(
    max: u32,
    active: u32,
    config: Config,
) -> (BenchPlatform, DomainBox<BenchPlatform>) {
    let platform = BenchPlatform::new(max, active);
    let domain = Domain::create(platform.clone(), config).expect("creating a benchmark domain");
    (platform, domain)
}

/// kepoch enter+exit on one CPU, steady state (the CPU participates already).
///
/// The enter+exit loops here and in the peers' workloads drop each guard at once, as a caller does,
/// without passing it through `black_box`: that would store the guard to the stack and load it back,
/// which no caller does and which costs more for a larger guard. Nothing can be optimised away: every
/// enter and exit writes shared memory through atomics (both kepoch's and the peers').
pub struct KepochEnterExit {
    _platform: BenchPlatform,
    domain: DomainBox<BenchPlatform>,
}

impl KepochEnterExit {
    /// A 2-CPU machine, `callback` strategy, CPU 0 warmed up.
    pub fn new() -> Self {
        let (platform, domain) = domain(2, 2, Strategy::Callback, true);
        BenchPlatform::pin_current_thread(0);
        drop(domain.enter());
        KepochEnterExit {
            _platform: platform,
            domain,
        }
    }
}

impl Workload for KepochEnterExit {
    fn run(&mut self, iters: u64) -> Duration {
        BenchPlatform::pin_current_thread(0);
        let domain = black_box(&*self.domain);
        let start = CpuInstant::now();
        for _ in 0..iters {
            drop(domain.enter());
        }
        start.elapsed()
    }
}

/// crossbeam-epoch `pin()` + drop on the default collector, steady state.
pub struct CrossbeamPin;

impl Workload for CrossbeamPin {
    fn run(&mut self, iters: u64) -> Duration {
        drop(crossbeam_epoch::pin());
        let start = CpuInstant::now();
        for _ in 0..iters {
            drop(crossbeam_epoch::pin());
        }
        start.elapsed()
    }
}

/// kepoch enter + alloc + retire + exit, with a reclamation cycle every `per_cycle` items (cycle and
/// frees included in the figure).
pub struct KepochRetire {
    platform: BenchPlatform,
    domain: DomainBox<BenchPlatform>,
    count: u64,
    per_cycle: u64,
}

impl KepochRetire {
    /// A 2-CPU machine, `callback` strategy, a cycle every [`RETIRES_PER_CYCLE`] items.
    pub fn new() -> Self {
        Self::with(RETIRES_PER_CYCLE, Config::with_strategy(Strategy::Callback))
    }

    /// A 2-CPU machine with `config`, a cycle every `per_cycle` items.
    pub fn with(per_cycle: u64, config: Config) -> Self {
        let (platform, domain) = domain_with(2, 2, config);
        KepochRetire {
            platform,
            domain,
            count: 0,
            per_cycle,
        }
    }
}

impl Workload for KepochRetire {
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
            if self.count == self.per_cycle {
                self.count = 0;
                domain.flush();
                self.platform.pump();
            }
        }
        start.elapsed()
    }
}

/// seize `enter` + `Box` allocation + `defer_retire(reclaim::boxed)` + guard drop.
pub struct SeizeRetire {
    collector: seize::Collector,
}

impl SeizeRetire {
    /// A collector with seize's default batch size.
    pub fn new() -> Self {
        SeizeRetire {
            collector: seize::Collector::new(),
        }
    }
}

impl Workload for SeizeRetire {
    fn run(&mut self, iters: u64) -> Duration {
        use seize::Guard as _;
        let collector = black_box(&self.collector);
        let start = CpuInstant::now();
        for _ in 0..iters {
            let guard = collector.enter();
            let node = Box::into_raw(Box::new(black_box([0u64; 4] as Node)));
            // SAFETY: the node was never published; `boxed` matches `Box::into_raw`.
            unsafe { guard.defer_retire(node, seize::reclaim::boxed::<Node>) };
            drop(guard);
        }
        start.elapsed()
    }
}

/// CPUs added per machine by the first-enter workloads (4 groups: group tables are included).
pub const NEW_CPUS_PER_MACHINE: u32 = 256;

/// First enter+exit on a newly added CPU. `callback`: the CPU is hot-added through the processor-change
/// notification before the clock starts (pre-warmed), so the figure is the join plus the enter+exit.
/// `lazy`: the figure includes preparing the slot at DISPATCH (allocation, binding, publishing, and
/// one group table per 64 CPUs). With `steady`, each CPU is entered once before the clock starts, so
/// the loop (same CPU rotation) measures steady-state enters: the like-for-like reference.
pub struct FirstEnter {
    /// Activation strategy (`Callback` or `Lazy`).
    pub strategy: Strategy,
    /// Measure the second enter on each CPU instead of the first.
    pub steady: bool,
}

impl Workload for FirstEnter {
    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(u64::from(NEW_CPUS_PER_MACHINE)) as u32;
            left -= u64::from(n);
            let max = 1 + NEW_CPUS_PER_MACHINE;
            let active = if self.strategy == Strategy::Lazy {
                max
            } else {
                1
            };
            let (platform, domain) = domain(max, active, self.strategy, true);
            let first = if self.strategy == Strategy::Lazy {
                1
            } else {
                let first = platform.add_processor();
                for _ in 1..n {
                    platform.add_processor();
                }
                first
            };
            if self.steady {
                for cpu in first..first + n {
                    BenchPlatform::pin_current_thread(cpu);
                    drop(domain.enter());
                }
            }
            let domain_ref = black_box(&*domain);
            let start = CpuInstant::now();
            for cpu in first..first + n {
                BenchPlatform::pin_current_thread(cpu);
                drop(domain_ref.enter());
            }
            total += start.elapsed();
            BenchPlatform::pin_current_thread(0);
            drop(domain);
        }
        total
    }
}

/// Enter+exit throughput (operations per second) of `threads` threads, each pinned to its own
/// simulated CPU, `iters` operations each, on one `callback` domain.
pub fn kepoch_throughput(threads: u32, iters: u64) -> f64 {
    let (_platform, domain) = domain(threads.max(2), threads.max(2), Strategy::Callback, true);
    let domain = &*domain;
    run_threads(threads, iters, |cpu| {
        BenchPlatform::pin_current_thread(cpu);
        drop(domain.enter());
        move || {
            for _ in 0..iters {
                drop(domain.enter());
            }
        }
    })
}

/// crossbeam-epoch `pin()`+drop throughput of `threads` threads, `iters` operations each.
pub fn crossbeam_throughput(threads: u32, iters: u64) -> f64 {
    run_threads(threads, iters, |_| {
        drop(crossbeam_epoch::pin());
        move || {
            for _ in 0..iters {
                drop(crossbeam_epoch::pin());
            }
        }
    })
}

/// Runs `threads` threads: each calls `setup(index)` (untimed), waits for the start, then runs the
/// loop it returned. Returns the total operations per second, wall time from start to the last finish.
fn run_threads<S, L>(threads: u32, iters: u64, setup: S) -> f64
where
    S: Fn(u32) -> L + Sync,
    L: FnOnce(),
{
    let barrier = Barrier::new(threads as usize + 1);
    let elapsed = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|cpu| {
                let (barrier, setup) = (&barrier, &setup);
                scope.spawn(move || {
                    let body = setup(cpu);
                    barrier.wait();
                    body();
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("benchmark thread");
        }
        start.elapsed()
    });
    (u64::from(threads) * iters) as f64 / elapsed.as_secs_f64()
}

/// Throughput of the floor loop ([`Floor`]: a thread-local counter increment, nothing shared): how
/// well the machine itself scales at this moment, the control for the enter+exit throughput figures.
pub fn private_loop_throughput(threads: u32, iters: u64) -> f64 {
    run_threads(threads, iters, |_| move || floor_loop(iters))
}

thread_local! {
    /// The floor loop's counter.
    static FLOOR: AtomicU64 = const { AtomicU64::new(0) };
}

/// `iters` increments of a thread-local counter, each a relaxed load and store (two plain `mov`s, the
/// way the core counts its readers), which the compiler must keep.
#[inline(never)]
fn floor_loop(iters: u64) {
    for _ in 0..iters {
        FLOOR.with(|c| c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed));
    }
}

/// The machine's floor for a per-thread read side: an empty thread-local counter increment.
pub struct Floor;

impl Workload for Floor {
    fn run(&mut self, iters: u64) -> Duration {
        let start = CpuInstant::now();
        floor_loop(iters);
        start.elapsed()
    }
}

/// `iters` full fences, each after a store to a thread-local counter (so the store buffer has
/// something to drain, as after a join's `participating` store): what one `fence(SeqCst)` costs
/// this CPU on top of the floor loop.
#[inline(never)]
fn fence_loop(iters: u64) {
    for _ in 0..iters {
        FLOOR.with(|c| {
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
        });
    }
}

/// One full fence per operation (the floor loop plus `fence(SeqCst)`): the price of the step
/// PROTOCOL.md's join (fence FJ, S5) cannot do without, measured in the same rounds as the
/// first-enter figures.
pub struct FullFence;

impl Workload for FullFence {
    fn run(&mut self, iters: u64) -> Duration {
        let start = CpuInstant::now();
        fence_loop(iters);
        start.elapsed()
    }
}
