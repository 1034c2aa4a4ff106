//! Directed scenarios of the callback barrier: two PASSIVE threads each schedule a work item and
//! call [`Domain::callback_barrier`](kepoch::Domain::callback_barrier) at the same time; each
//! barrier must return only after its own thread's callback ran.
//!
//! The scenarios where two barriers overlap are shuttle only: a barrier that waits for another barrier to finish spins (with yields) on a flag
//! the other thread stores, and loom lets that spin read the old value for as long as its bounded
//! store history lasts, which ends the model in a spurious causality report, not a verdict. On
//! shuttle's sequentially consistent schedules the wait ends as on hardware.

use super::{on_cpu, World};
use kepoch::Strategy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// On `cpu`: schedules an item whose callback sets a flag, drops the handle, calls the barrier and
/// asserts the flag is set.
#[cfg(shuttle)]
fn schedule_then_barrier(w: &World, cpu: usize) {
    on_cpu(cpu, || {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let item = w
            .domain
            .work_item(move || flag.store(true, Ordering::SeqCst))
            .expect("work item");
        w.domain.schedule_work(&item).expect("schedule");
        drop(item);
        w.domain.callback_barrier();
        assert!(
            ran.load(Ordering::SeqCst),
            "a callback barrier on CPU {cpu} returned before the callback its thread scheduled before it had run"
        );
    });
}

#[cfg(shuttle)]
/// Two barriers overlap: the one that starts while the other's round is in progress must still
/// wait for its own callback, queued after that round started. It caught the first design, where
/// the later barrier flipped the phase back and waited for the other phase only;
/// `barrier-joins-round-in-progress` it does not reach within its schedules (the unit test
/// `tests::barrier_rounds` forces that one).
pub fn overlapping_barriers_each_wait_for_their_own_callbacks() {
    let w = World::new(Strategy::Lazy, 2);
    let other = w.spawn(|w| schedule_then_barrier(w, 1));
    schedule_then_barrier(&w, 0);
    other.join().unwrap();
    World::finish(w);
}

#[cfg(shuttle)]
/// Barriers with nothing of their own start and complete rounds while another thread's callback
/// is being queued (by a cycle that thread's wait runs): the callback may read the old generation
/// and count itself after the round completed. The second thread's barrier must still find it
/// (the queue re-checks the generation and moves its count).
pub fn a_barrier_flips_while_another_threads_callback_is_queued() {
    let w = World::new(Strategy::Lazy, 2);
    let other = w.spawn(|w| schedule_then_barrier(w, 1));
    on_cpu(0, || {
        for _ in 0..4 {
            w.domain.callback_barrier();
        }
    });
    other.join().unwrap();
    World::finish(w);
}

/// A barrier on CPU 0 runs while CPU 1 schedules a callback (after the barrier's grace periods
/// may have begun) and then acts as the "DPC" thread that runs the visits, one of which queues the
/// callback, possibly while the barrier flips the phase; a second barrier follows on CPU 0.
/// Callbacks run on worker threads of their own, so the callback may not have run when a barrier
/// looks. The loom model of the barrier: it catches `barrier-without-grace-period`. It was written
/// for `queue-phase-no-recheck` (the visit reads the phase before the first flip and counts the
/// callback after that barrier looked), which it does not reach within loom's bound; the unit test
/// `tests::barrier_rounds::a_round_run_while_a_callback_is_counted_still_leaves_it_to_the_next_barrier`
/// catches that one.
#[cfg(loom)]
pub fn a_callback_queued_across_a_barrier_flip_is_found_by_the_next_barrier() {
    let w = World::new(Strategy::Lazy, 2);
    w.platform.use_worker_threads();
    w.read(1);
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let scheduler = w.spawn(move |w| {
        on_cpu(1, || {
            let item = w
                .domain
                .work_item(move || flag.store(true, Ordering::SeqCst))
                .expect("work item");
            w.domain.schedule_work(&item).expect("schedule");
        });
        for _ in 0..4 {
            w.platform.deliver_all();
            super::rt::yield_now();
        }
    });
    on_cpu(0, || w.domain.callback_barrier());
    scheduler.join().unwrap();
    on_cpu(0, || w.domain.callback_barrier());
    assert!(
        ran.load(Ordering::SeqCst),
        "the second callback barrier returned before a callback scheduled before it had run"
    );
    World::finish(w);
}
