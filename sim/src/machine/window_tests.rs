//! The hot-add window: the hook runs once per add, at DISPATCH on the new CPU, after AddStart and
//! before AddComplete or AddFailure, and a message to that CPU inside the window is a routing
//! violation.

use std::sync::{Arc, Mutex};

use kepoch::platform::{Irql, Platform};

use super::*;

/// What the hook saw: (processor index it ran on, IRQL, AddComplete already counted).
type Seen = Arc<Mutex<Vec<(u32, Irql, u64)>>>;

fn machine_with_hook(seed: u64) -> (Machine, Seen) {
    let m = Machine::new(MachineConfig {
        max_reported: 8,
        active_at_boot: 2,
        hot_add_slots: 2,
        seed,
        ..MachineConfig::default()
    })
    .expect("valid config");
    let seen: Seen = Arc::default();
    let (record, p) = (seen.clone(), m.platform());
    m.set_add_window_hook(Some(Arc::new(move |cpu| {
        let here = p.current_processor().index;
        assert_eq!(here, cpu, "the window code runs on the new CPU");
        let completes = p.machine().counters().hot_add_complete;
        record
            .lock()
            .unwrap()
            .push((here, p.current_irql(), completes));
    })));
    (m, seen)
}

#[test]
fn window_code_runs_once_per_add_at_dispatch_before_add_complete_or_failure() {
    for seed in 0..20 {
        let (m, seen) = machine_with_hook(seed);
        m.schedule_hot_add(100, 1, true);
        m.schedule_hot_add(300, 1, false);
        m.run_for(1_000);
        let c = m.counters();
        assert_eq!(
            (c.hot_add_complete, c.hot_add_failure),
            (1, 1),
            "seed {seed}"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(2, Irql::DISPATCH, 0), (2, Irql::DISPATCH, 0)],
            "seed {seed}: the failed add and the retry each ran the window code before completing"
        );
        assert!(
            m.violations().is_empty(),
            "seed {seed}: {:?}",
            m.violations()
        );
    }
}
