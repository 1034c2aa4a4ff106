//! Epoch code on a hot-added CPU inside its add window (between AddStart and AddComplete or
//! AddFailure): a reader that checks an object and a writer that replaces one and retires the old,
//! as another driver's DPC on the new processor would. kepoch must keep that CPU on the overflow slot
//! and send it no message before its AddComplete; the machine reports any message to it.

use super::{Shared, CELLS};
use crate::machine::{Machine, StepOutcome};
use crate::objects::{self, SimDomain};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Installs the window code on `machine` for the run `shared`. It holds the run weakly: the machine
/// outlives it.
pub(super) fn install(machine: &Machine, shared: &Arc<Shared>, seed: u64) {
    let run = Arc::downgrade(shared);
    machine.set_add_window_hook(Some(Arc::new(move |cpu| {
        let Some(shared) = run.upgrade() else {
            return;
        };
        shared.step_unless_stopped(|domain| {
            window_code(&shared, domain, cpu, seed);
            StepOutcome::Done
        });
    })));
}

fn window_code(shared: &Shared, domain: &SimDomain, cpu: u32, seed: u64) {
    // Seeded by the run and the object counter, which only the (seeded) schedule advances.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ shared.next_id.load(Ordering::Relaxed));
    let guard = domain.enter();
    // SAFETY: inside the epoch `guard` holds; every object in the cells came from `new_object` of
    // this domain.
    if let Some((object, id)) = unsafe { objects::load_random(&shared.cells, &mut rng) } {
        shared.check(domain, object, id, cpu);
    }
    if let Some((object, _)) = shared.new_object(domain) {
        let cell = rng.gen_range(0..CELLS);
        // SAFETY: every object in the cells came from `new_object` of this domain.
        match unsafe { objects::replace(domain, &shared.cells[cell], object) } {
            Ok(true) => {
                shared.retires.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(error) => shared.violation(format!(
                "retire in a hot-add window on CPU {cpu} failed: {error:?}"
            )),
        }
    }
    drop(guard);
}
