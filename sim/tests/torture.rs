//! The torture finds nothing in the correct protocol and finds every re-introduced bug.

use kepoch::{Mutations, Strategy};
use kepoch_sim::torture::{run, Mode, RunSpec};

fn spec(strategy: Strategy, seed: u64, mutations: Mutations) -> RunSpec {
    RunSpec {
        strategy,
        seed,
        mode: Mode::Deterministic,
        duration_us: 20_000,
        hot_add_rate: 50,
        mutations,
    }
}

#[test]
fn correct_protocol_has_no_violation_on_any_strategy() {
    for strategy in [Strategy::Lazy, Strategy::Eager, Strategy::Callback] {
        for seed in 0..20 {
            let outcome = run(&spec(strategy, seed, Mutations::NONE));
            assert!(
                outcome.violations.is_empty(),
                "{strategy} seed {seed}: {:?}",
                outcome.violations
            );
            assert!(
                outcome.stats.reads > 0 && outcome.stats.retires > 0 && outcome.stats.cycles > 0
            );
        }
    }
}

#[test]
fn same_seed_same_run() {
    let a = run(&spec(Strategy::Lazy, 7, Mutations::NONE));
    let b = run(&spec(Strategy::Lazy, 7, Mutations::NONE));
    assert_eq!(
        (a.stats.reads, a.stats.retires, a.stats.cycles),
        (b.stats.reads, b.stats.retires, b.stats.cycles)
    );
}

#[cfg(feature = "mutations")]
#[test]
fn every_mutation_is_caught_and_its_seed_replays() {
    use kepoch::Mutation::*;
    // The torture's share of the mutation score; the rest is caught by the unit tests, loom and the
    // controlled-schedule mode (test-scripts/mutation-score.sh prints the whole table).
    for mutation in [
        SkipReaderScan,
        LocalEpochStamp,
        RouteBeforeComplete,
        ReleaseWhileJoining,
        ChangeRingInFlight,
        ActivateRemote,
    ] {
        let mutations = Mutations::NONE.with(mutation);
        let failing = (0..200)
            .find(|&seed| {
                !run(&spec(Strategy::Callback, seed, mutations))
                    .violations
                    .is_empty()
            })
            .unwrap_or_else(|| panic!("mutation {mutation} was not caught in 200 seeds"));
        let first = run(&spec(Strategy::Callback, failing, mutations));
        let replay = run(&spec(Strategy::Callback, failing, mutations));
        assert_eq!(
            first.violations, replay.violations,
            "seed {failing} does not replay {mutation}"
        );
    }
}
