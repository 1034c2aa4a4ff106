//! Typed work items, the callback barrier, the state a refused reschedule names, polled grace
//! periods and the "inside an epoch here" query, on the single-threaded test platform.

use super::*;
use crate::{GracePeriod, WorkState};

/// A context that counts its drops, so a test sees the closure's context dropped exactly once.
struct DropCounted(Arc<AtomicUsize>);
impl Drop for DropCounted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A typed closure runs with its own context (no cast), once per schedule, only after the readers
/// inside at the schedule exited; its context is dropped once, with the item, and nothing leaks.
#[test]
fn a_typed_work_item_runs_its_closure_after_a_grace_period_and_drops_its_context_once() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let runs = Arc::new(AtomicUsize::new(0));
    let drops = Arc::new(AtomicUsize::new(0));
    let (counter, context) = (Arc::clone(&runs), DropCounted(Arc::clone(&drops)));
    let item = domain
        .work_item(move || {
            let _owned_context = &context;
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .expect("work item");
    let guard = TestPlatform::on_cpu(1, || domain.enter());
    TestPlatform::on_cpu(0, || domain.schedule_work(&item)).expect("schedule");
    for _ in 0..5 {
        platform.tick();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "ran under a reader");
    TestPlatform::on_cpu(1, || drop(guard));
    for _ in 0..5 {
        platform.tick();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    domain
        .schedule_work(&item)
        .expect("runs again when scheduled again");
    domain.callback_barrier();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "context dropped while the item lives"
    );
    drop(item);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "context dropped with the item"
    );
    drop(domain);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(platform.live_allocations(), 0);
}

/// A scheduled item whose handle was dropped still runs, and unload drops its context.
#[test]
fn a_scheduled_typed_item_without_its_handle_runs_and_its_context_is_dropped_at_unload() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let context = DropCounted(Arc::clone(&drops));
    let item = domain
        .work_item(move || {
            let _owned_context = &context;
        })
        .expect("work item");
    domain.schedule_work(&item).expect("schedule");
    drop(item);
    assert_eq!(drops.load(Ordering::SeqCst), 0, "dropped while scheduled");
    drop(domain);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(platform.live_allocations(), 0);
}

/// Scheduling a scheduled item names where it is: waiting for its grace period, or queued.
#[test]
fn rescheduling_a_scheduled_item_names_its_state() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let item = domain.work_item(|| {}).expect("work item");
    domain.schedule_work(&item).expect("schedule");
    let waiting = domain.schedule_work(&item).expect_err("already scheduled");
    assert_eq!(
        waiting,
        RetireError::AlreadyScheduled(WorkState::WaitingForGracePeriod)
    );
    assert_eq!(
        waiting.to_string(),
        "the work item is already scheduled (waiting for a grace period)"
    );
    run_cycles_until_work_is_queued(&platform);
    let queued = domain.schedule_work(&item).expect_err("queued");
    assert_eq!(queued, RetireError::AlreadyScheduled(WorkState::Queued));
    assert!(queued
        .to_string()
        .contains("queued to run at PASSIVE_LEVEL"));
    platform.run_passive();
    domain
        .schedule_work(&item)
        .expect("after it ran it can be scheduled again");
    assert_eq!(domain.stats().double_retires, 2, "each refusal is counted");
    drop(item);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

/// The barrier returns only once every callback scheduled before it has run: one still waiting
/// for its grace period, one cancelled and scheduled again, and one already queued. A cancelled
/// item does not hold it up.
#[test]
fn the_callback_barrier_waits_for_every_callback_scheduled_before_it() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let runs = Arc::new(AtomicUsize::new(0));
    let counting = || {
        let counter = Arc::clone(&runs);
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    };
    let queued = domain.work_item(counting()).expect("work item");
    domain.schedule_work(&queued).expect("schedule");
    run_cycles_until_work_is_queued(&platform);
    let waiting = domain.work_item(counting()).expect("work item");
    let rescheduled = domain.work_item(counting()).expect("work item");
    let cancelled = domain.work_item(counting()).expect("work item");
    TestPlatform::on_cpu(1, || domain.schedule_work(&waiting)).expect("schedule");
    for item in [&rescheduled, &cancelled] {
        domain.schedule_work(item).expect("schedule");
        assert!(domain.cancel_work(item));
    }
    domain.schedule_work(&rescheduled).expect("schedule again");
    domain.callback_barrier();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the barrier returned before every callback scheduled before it had run"
    );
    domain.callback_barrier(); // nothing scheduled: returns
    drop((queued, waiting, rescheduled, cancelled));
    drop(domain);
    assert_eq!(runs.load(Ordering::SeqCst), 3, "the cancelled item ran");
    assert_eq!(platform.live_allocations(), 0);
    assert!(
        platform.irql_faults().is_empty(),
        "{:?}",
        platform.irql_faults()
    );
}

/// A polled grace period reads as elapsed only once what was retired before it is disposed of,
/// and then stays elapsed; the token and the query work at DISPATCH_LEVEL.
#[test]
fn a_polled_grace_period_elapses_only_after_what_was_retired_before_it_is_freed() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    retire_new(&domain, &drops);
    let previous = platform.raise_to_dispatch();
    let token = domain.grace_period();
    let elapsed_at_dispatch = domain.grace_period_elapsed(token);
    platform.lower_irql(previous);
    assert!(!elapsed_at_dispatch, "elapsed before any cycle");
    let later = domain.grace_period();
    assert!(later >= token, "tokens are ordered");
    let mut cycles = 0;
    while !domain.grace_period_elapsed(token) {
        cycles += 1;
        assert!(cycles <= 20, "not elapsed after 20 cycles");
        platform.fire_timer();
        platform.run_messages();
        if drops.load(Ordering::SeqCst) == 0 {
            assert!(
                !domain.grace_period_elapsed(token),
                "elapsed after {cycles} cycles while the object retired before it is not freed"
            );
        }
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(domain.grace_period_elapsed(token), "stays elapsed");
    drop(domain);
    assert!(
        platform.irql_faults().is_empty(),
        "{:?}",
        platform.irql_faults()
    );
}

/// The blocking wait returns once what was retired before the token is freed, not earlier.
#[test]
fn waiting_for_a_grace_period_frees_what_was_retired_before_it() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    retire_new(&domain, &drops);
    let token: GracePeriod = domain.grace_period();
    domain.wait_for_grace_period(token);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(domain.grace_period_elapsed(token));
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

/// The query answers for the current processor: inside a guard there, not on another one.
#[test]
fn inside_epoch_here_follows_the_current_processors_guards() {
    let (_platform, domain) = domain(2, Strategy::Lazy);
    assert!(!TestPlatform::on_cpu(0, || domain.inside_epoch_here()));
    let guard = TestPlatform::on_cpu(0, || domain.enter());
    assert!(TestPlatform::on_cpu(0, || domain.inside_epoch_here()));
    assert!(!TestPlatform::on_cpu(1, || domain.inside_epoch_here()));
    TestPlatform::on_cpu(0, || drop(guard));
    assert!(!TestPlatform::on_cpu(0, || domain.inside_epoch_here()));
}
