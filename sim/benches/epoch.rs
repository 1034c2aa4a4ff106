//! Criterion benchmarks of the kepoch hot paths against crossbeam-epoch and seize, on the minimal
//! benchmark platform (`kepoch_sim::bench`). `cargo bench -p kepoch-sim --bench epoch`.
//!
//! The full table with targets, ratios and the cycle figures is produced by `benches/report.rs`
//! (`test-scripts/bench.sh`).

mod common;

use common::{CrossbeamPin, FirstEnter, KepochEnterExit, KepochRetire, SeizeRetire, Workload};
use criterion::{criterion_group, criterion_main, Criterion};
use kepoch::Strategy;
use std::time::Duration;

fn enter_exit(c: &mut Criterion) {
    let mut group = c.benchmark_group("enter_exit");
    let mut kepoch = KepochEnterExit::new();
    group.bench_function("kepoch", |b| b.iter_custom(|iters| kepoch.run(iters)));
    group.bench_function("crossbeam-epoch pin", |b| {
        b.iter_custom(|iters| CrossbeamPin.run(iters))
    });
    group.finish();
}

fn alloc_retire(c: &mut Criterion) {
    let mut group = c.benchmark_group("enter_alloc_retire_exit");
    let mut kepoch = KepochRetire::new();
    group.bench_function("kepoch", |b| b.iter_custom(|iters| kepoch.run(iters)));
    let mut seize = SeizeRetire::new();
    group.bench_function("seize", |b| b.iter_custom(|iters| seize.run(iters)));
    group.finish();
}

fn first_enter(c: &mut Criterion) {
    let mut group = c.benchmark_group("first_enter_new_cpu");
    for (name, strategy, steady) in [
        ("callback (pre-warmed)", Strategy::Callback, false),
        ("lazy (with preparation)", Strategy::Lazy, false),
        ("steady state, same CPU rotation", Strategy::Callback, true),
    ] {
        let mut workload = FirstEnter { strategy, steady };
        group.bench_function(name, |b| b.iter_custom(|iters| workload.run(iters)));
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = enter_exit, alloc_retire, first_enter
}
criterion_main!(benches);
