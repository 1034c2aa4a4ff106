//! Overlapping callback barriers on the single-threaded test platform: a second barrier starts
//! (nested in the first one's wait, as another thread would) while the first barrier's round is in
//! progress, and must still wait for its own callback, queued after that round started; and a
//! round that runs while a callback is being counted.

use super::*;
use crate::WorkItem;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// What the wait hook has done so far.
const HOOK_IDLE: usize = 0;
const HOOK_SECOND_BARRIER_RAN: usize = 1;
const HOOK_PASSIVE_RELEASED: usize = 2;

/// Callback `a` is queued (round 0 will drain it) and held; the first barrier starts round 0 and
/// waits. In that wait, callback `b` is scheduled and a second barrier called: its grace periods
/// queue `b` in the next generation while `a` is still held. Once the second barrier waits for its
/// round, the held work is released one item per wait: `a` completes round 0 before `b` runs. The
/// second barrier must not return then (`barrier-joins-round-in-progress` does): `b` was scheduled
/// before it.
#[test]
fn a_barrier_started_during_another_barriers_round_waits_for_its_own_callback() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let flag = |ran: &Arc<AtomicBool>| {
        let ran = Arc::clone(ran);
        move || ran.store(true, Ordering::SeqCst)
    };
    let (a_ran, b_ran) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let a = domain.work_item(flag(&a_ran)).expect("work item");
    let b = domain.work_item(flag(&b_ran)).expect("work item");
    platform.0.lock().unwrap().passive_held = true;
    domain.schedule_work(&a).expect("schedule a");
    run_cycles_until_work_is_queued(&platform);
    assert_eq!(platform.0.lock().unwrap().passive.len(), 1, "a is queued");

    let stage = Arc::new(AtomicUsize::new(HOOK_IDLE));
    let b_ran_before_return = Arc::new(AtomicBool::new(false));
    let waits_at_second_barrier = Arc::new(AtomicU64::new(0));
    let hook = {
        let (stage, b_ran, seen) = (
            Arc::clone(&stage),
            Arc::clone(&b_ran),
            Arc::clone(&b_ran_before_return),
        );
        let waits_at_second_barrier = Arc::clone(&waits_at_second_barrier);
        let platform = platform.clone();
        // The domain and the item outlive the hook: it is removed before either is dropped.
        let domain_address = &*domain as *const Domain<TestPlatform> as usize;
        let b_address = &b as *const WorkItem<'_, TestPlatform> as usize;
        move || {
            // SAFETY: both are alive until the hook is removed, below in the test.
            let (domain, b) = unsafe {
                (
                    &*(domain_address as *const Domain<TestPlatform>),
                    &*(b_address as *const WorkItem<'_, TestPlatform>),
                )
            };
            let waits = domain.barrier_round_waits.load(Ordering::SeqCst);
            match stage.load(Ordering::SeqCst) {
                // The first barrier waits for round 0 (and `a`).
                HOOK_IDLE if waits > 0 => {
                    stage.store(HOOK_SECOND_BARRIER_RAN, Ordering::SeqCst);
                    waits_at_second_barrier.store(waits, Ordering::SeqCst);
                    domain.schedule_work(b).expect("schedule b");
                    domain.callback_barrier();
                    seen.store(b_ran.load(Ordering::SeqCst), Ordering::SeqCst);
                }
                // The second barrier waits for its round: let `a`, then `b`, run.
                HOOK_SECOND_BARRIER_RAN
                    if waits > waits_at_second_barrier.load(Ordering::SeqCst) =>
                {
                    stage.store(HOOK_PASSIVE_RELEASED, Ordering::SeqCst);
                    let mut state = platform.0.lock().unwrap();
                    assert_eq!(state.passive.len(), 2, "a and b are queued, neither ran");
                    state.passive_held = false;
                    state.passive_one_per_wait = true;
                }
                _ => {}
            }
        }
    };
    platform.0.lock().unwrap().on_wait = Some(Arc::new(hook));
    domain.callback_barrier();
    platform.0.lock().unwrap().on_wait = None;

    assert_eq!(
        stage.load(Ordering::SeqCst),
        HOOK_PASSIVE_RELEASED,
        "the barriers did not overlap as planned"
    );
    assert!(
        b_ran_before_return.load(Ordering::SeqCst),
        "the second barrier returned before the callback scheduled before it had run"
    );
    assert!(a_ran.load(Ordering::SeqCst) && b_ran.load(Ordering::SeqCst));
    drop((a, b));
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

/// A visit queues callback `a` while, between its read of the barrier generation and its count, a
/// barrier on another processor starts and completes a round (the test hook
/// `between_phase_read_and_count` is there). The queue's re-check moves the count to the new
/// phase, so the next barrier's round waits for `a`. Without it (`queue-phase-no-recheck`) the
/// count sits in the phase of the round that just completed, which the next round does not drain:
/// the next barrier returns before `a` has run.
#[test]
fn a_round_run_while_a_callback_is_counted_still_leaves_it_to_the_next_barrier() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let ran = Arc::new(AtomicBool::new(false));
    let a = domain
        .work_item({
            let ran = Arc::clone(&ran);
            move || ran.store(true, Ordering::SeqCst)
        })
        .expect("work item");
    platform.0.lock().unwrap().passive_held = true;
    let rounds_run = Arc::new(AtomicUsize::new(0));
    {
        let rounds_run = Arc::clone(&rounds_run);
        // The domain outlives the hook: it is removed below, before the domain is dropped.
        let domain_address = &*domain as *const Domain<TestPlatform> as usize;
        domain
            .between_phase_read_and_count
            .set(Some(Arc::new(move || {
                if rounds_run.fetch_add(1, Ordering::SeqCst) == 0 {
                    // SAFETY: alive until the hook is removed, below in the test.
                    let domain = unsafe { &*(domain_address as *const Domain<TestPlatform>) };
                    assert!(
                        domain.run_an_empty_barrier_round(),
                        "nothing else is queued"
                    );
                }
            })));
    }
    domain.schedule_work(&a).expect("schedule a");
    run_cycles_until_work_is_queued(&platform);
    domain.between_phase_read_and_count.set(None);
    assert_eq!(platform.0.lock().unwrap().passive.len(), 1, "a is queued");
    assert!(
        rounds_run.load(Ordering::SeqCst) >= 1,
        "the round ran inside the count"
    );

    // From the barrier's first wait for its round on, waits run the queued work.
    let release = {
        let platform = platform.clone();
        let domain_address = &*domain as *const Domain<TestPlatform> as usize;
        move || {
            // SAFETY: the hook is removed below, before the domain is dropped.
            let domain = unsafe { &*(domain_address as *const Domain<TestPlatform>) };
            if domain.barrier_round_waits.load(Ordering::SeqCst) > 0 {
                platform.0.lock().unwrap().passive_held = false;
            }
        }
    };
    platform.0.lock().unwrap().on_wait = Some(Arc::new(release));
    domain.callback_barrier();
    let ran_at_return = ran.load(Ordering::SeqCst);
    {
        // Unload may still run it (when the barrier did not wait for it).
        let mut state = platform.0.lock().unwrap();
        state.on_wait = None;
        state.passive_held = false;
    }
    assert!(
        ran_at_return,
        "the barrier returned before a callback scheduled before it had run"
    );
    drop(a);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}
