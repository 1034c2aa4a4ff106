//! Regression tests for what the second independent review found: each fails on the version it
//! reviewed (or with the mutation that re-introduces the bug) and passes on this one.

use super::*;

fn do_nothing(_: usize) {}

/// Domain `b` schedules domain `a`'s work item. An accepted item is taken back at once (cancelled,
/// and its entry disposed of by `b`'s cycles), so that a broken check fails the caller's assertion
/// instead of hanging an unload.
fn schedule_on_the_other_domain(
    b: &Domain<TestPlatform>,
    item: &crate::WorkItem<'_, TestPlatform>,
) -> Result<u64, RetireError> {
    let result = TestPlatform::on_cpu(0, || b.schedule_work(item));
    if result.is_ok() {
        assert!(b.cancel_work(item), "take the accepted item back");
        b.synchronize();
    }
    result
}

/// `Domain::schedule_work` (a safe function) took any `&WorkItem<'_, P>`: the block of domain A was
/// retired into domain B's lists, B counted and queued it, and its trampoline released and
/// decremented A. B's count never returned to zero (B's unload waited forever) and A's wrapped
/// (A's unload too). It is refused now, with an error that says why.
#[test]
fn a_work_item_of_one_domain_cannot_be_scheduled_on_another() {
    let platform = TestPlatform::new(1, 1);
    let a = Domain::create(platform.clone(), test_config(Strategy::Lazy)).expect("load a");
    let b = Domain::create(platform.clone(), test_config(Strategy::Lazy)).expect("load b");
    let item = a.new_work_item(do_nothing, 0).expect("work item");
    let refused = schedule_on_the_other_domain(&b, &item);
    drop(item);
    drop(b);
    drop(a);
    assert_eq!(
        refused,
        Err(RetireError::ForeignWorkItem),
        "domain B accepted (and would run and account for) a work item of domain A"
    );
    assert_eq!(platform.live_allocations(), 0);
}

static CROSS_DOMAIN_RUNS: AtomicUsize = AtomicUsize::new(0);

fn count_cross_domain_run(_: usize) {
    CROSS_DOMAIN_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// Successor of the review's "a cross-domain work item leaves the scheduling domain unable to
/// unload": B refuses A's item and cannot cancel it while A has it scheduled; A runs it once, and both
/// domains unload (the test platform's bounded wait panics with "event never signalled" where an
/// unload would wait forever).
#[test]
fn a_refused_cross_domain_work_item_leaves_both_domains_able_to_unload() {
    let platform = TestPlatform::new(1, 1);
    let a = Domain::create(platform.clone(), test_config(Strategy::Lazy)).expect("load a");
    let b = Domain::create(platform.clone(), test_config(Strategy::Lazy)).expect("load b");
    let item = a
        .new_work_item(count_cross_domain_run, 0)
        .expect("work item");
    let refused = schedule_on_the_other_domain(&b, &item);
    TestPlatform::on_cpu(0, || a.schedule_work(&item)).expect("its own domain schedules it");
    let cancelled_by_b = b.cancel_work(&item);
    if cancelled_by_b {
        // Only a broken check gets here: put the item back on A's schedule.
        a.schedule_work(&item).expect("reschedule");
    }
    a.synchronize();
    platform.run_passive();
    drop(item);
    drop(b);
    drop(a);
    assert_eq!(refused, Err(RetireError::ForeignWorkItem));
    assert!(
        !cancelled_by_b,
        "domain B cancelled a work item of domain A"
    );
    assert_eq!(CROSS_DOMAIN_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(platform.live_allocations(), 0, "leak at unload");
}

/// The use-after-free the cross-domain schedule allowed in safe code: A unloads (nothing of A refers
/// to the block, which waits in B's list), then B releases and queues the item, whose trampoline
/// reads A through the block, after A was freed. Only under Miri
/// (`cargo +nightly miri test -p kepoch -- a_cross_domain_work_item_runs_against_a_freed_domain`),
/// which would report the access to freed memory; natively it would write into freed heap memory.
#[test]
#[cfg_attr(
    not(miri),
    ignore = "writes into freed memory if the check is broken: run under Miri"
)]
fn a_cross_domain_work_item_runs_against_a_freed_domain() {
    let platform = TestPlatform::new(1, 1);
    let a = Domain::create(platform.clone(), test_config(Strategy::Lazy)).expect("load a");
    let b = Domain::create(platform.clone(), test_config(Strategy::Lazy)).expect("load b");
    let item = a.new_work_item(do_nothing, 0).expect("work item");
    let accepted = TestPlatform::on_cpu(0, || b.schedule_work(&item)).is_ok();
    drop(item);
    drop(a); // A is freed here; an accepted work block would still be in B's retired list.
    if accepted {
        b.synchronize(); // B disposes of the block; the item runs and touches A.
        platform.run_passive();
        core::mem::forget(b); // its unload would wait forever for the item accounted to A
    } else {
        drop(b);
    }
    assert!(!accepted, "a work item of domain A was scheduled on B");
}

static RESCHEDULED_RUNS: AtomicUsize = AtomicUsize::new(0);

fn count_rescheduled_run(_: usize) {
    RESCHEDULED_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// A work item cancelled and scheduled again waits for a new grace period: a reader that entered
/// after the first schedule but before the second holds it back. The cancelled entry (stamped at the
/// first schedule) is released by a cycle while that reader is inside; disposing of it must retire
/// the item again with a fresh stamp, not run it (mutation `reschedule-keeps-stamp`).
#[test]
fn a_rescheduled_work_item_waits_for_readers_that_entered_before_the_second_schedule() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let item = domain
        .new_work_item(count_rescheduled_run, 0)
        .expect("work item");
    let first = domain.schedule_work(&item).expect("schedule");
    assert!(domain.cancel_work(&item));
    // One cycle: the epoch moves past the first stamp, which the next cycle's visit releases.
    platform.tick();
    assert!(domain.global_epoch() > first);
    let reader = domain.enter();
    let second = domain.schedule_work(&item).expect("schedule again");
    assert!(
        second > first,
        "the second schedule waits for a later epoch"
    );
    for _ in 0..6 {
        platform.tick();
    }
    assert_eq!(
        RESCHEDULED_RUNS.load(Ordering::SeqCst),
        0,
        "the rescheduled item ran while a reader that entered before its second schedule was inside"
    );
    drop(reader);
    for _ in 0..6 {
        platform.tick();
    }
    assert_eq!(RESCHEDULED_RUNS.load(Ordering::SeqCst), 1);
    drop(item);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak at unload");
}

/// `stats()` counts every exit, wherever it ran: readers that exit on another processor than they
/// entered on (their slot's table keeps those apart from the owner's counts, in `remote_exits`), an
/// overflow reader that exits on another processor, and readers counted in entries that later
/// cycles drained and reused. Enters and exits balance once every reader is out, and differ by the
/// readers still inside before that.
#[test]
fn stats_count_exits_on_other_processors() {
    let (platform, domain) = domain(4, Strategy::Lazy);
    let rounds = 12;
    for round in 0..rounds {
        let (home, away) = (round % 3, (round + 1) % 3);
        let stays = TestPlatform::on_cpu(home, || domain.enter());
        let migrates = TestPlatform::on_cpu(home, || domain.enter());
        TestPlatform::on_cpu(away, || drop(migrates));
        let stats = domain.stats();
        assert_eq!(
            stats.enters - stats.exits,
            1,
            "round {round}: one reader is inside"
        );
        TestPlatform::on_cpu(home, || drop(stays));
        // The cycle moves every member to a new epoch: drained entries are reused.
        platform.tick();
    }
    // CPU 3 has no slot and cannot get one: its reader uses the overflow slot and exits on CPU 0.
    platform.0.lock().unwrap().fail_allocations = 1;
    let overflow_reader = TestPlatform::on_cpu(3, || domain.enter());
    assert_eq!(domain.stats().fallback_uses, 1);
    TestPlatform::on_cpu(0, || drop(overflow_reader));
    let stats = domain.stats();
    let readers = 2 * rounds as u64 + 1;
    assert_eq!(stats.enters, readers);
    assert_eq!(
        stats.exits, readers,
        "every exit is counted, those on other processors included"
    );
    assert_eq!(stats.remote_exits, rounds as u64);
}

/// `holdback()` runs on any processor and reads every slot's reader counts while their owners
/// update them with plain stores. Here it runs while CPU 0 reuses the entry of a reader that
/// entered there and exited on CPU 1 (the reset of `enters` is visible, not yet that of the remote
/// exit): the first version subtracted what it loaded and overflowed (a panic in debug builds, a
/// phantom reader on CPU 0 in release). No reader is inside.
#[test]
fn holdback_from_another_processor_while_an_entry_is_reused() {
    let (_platform, domain) = domain(2, Strategy::Lazy);
    // SAFETY: exited once, just below, on CPU 1 (a migrated reader).
    let token = TestPlatform::on_cpu(0, || unsafe { domain.enter_raw() });
    let (participant, entry) = (token.participant, token.entry());
    // SAFETY: the token came from this domain's `enter_raw` and is exited once.
    TestPlatform::on_cpu(1, || unsafe { domain.exit_raw(token) });
    // SAFETY: the participant is CPU 0's slot, which lives as long as the domain.
    unsafe { &*participant }.readers.begin_reuse(entry);
    let holdback = TestPlatform::on_cpu(1, || domain.holdback());
    assert_eq!(holdback.oldest_reader, None, "no reader is inside");
}

/// The cycle timer stops once the domain is idle (energy: an idle machine is not woken every period)
/// and the next retirement starts it again: the timer's cycles alone (no flush, no `synchronize`)
/// free what is retired after the stop (mutation `timer-never-restarts`).
#[test]
fn an_idle_domain_stops_its_timer_and_a_later_retirement_restarts_it() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    assert_eq!(platform.timer_state(), (true, 1, 0), "started at load");
    TestPlatform::on_cpu(1, || {
        drop(domain.enter());
        retire_new(&domain, &drops);
    });
    for _ in 0..6 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(
        platform.timer_state(),
        (false, 1, 1),
        "nothing participates any more: the timer stopped"
    );
    let cycles = domain.stats().cycles;
    platform.tick();
    assert_eq!(
        domain.stats().cycles,
        cycles,
        "a stopped timer runs no cycle"
    );

    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    for _ in 0..6 {
        platform.tick();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        2,
        "an item retired while the timer was stopped is freed by the timer's cycles"
    );
    assert_eq!(
        platform.timer_state(),
        (false, 2, 2),
        "restarted, then idle again"
    );

    // `synchronize` on a stopped timer.
    TestPlatform::on_cpu(1, || retire_new(&domain, &drops));
    domain.synchronize();
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak at unload");
    assert!(
        platform.irql_faults().is_empty(),
        "{:?}",
        platform.irql_faults()
    );
}

/// A retirement that lands while the stopper is queued (the handler found the domain idle, the
/// stopper has not run): the stopper stops the timer and starts it again, and the timer's cycles
/// free the item.
#[test]
fn a_retirement_while_the_timer_is_stopping_restarts_it() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    assert!(platform.fire_timer());
    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    platform.run_passive(); // the stopper
    assert_eq!(
        platform.timer_state(),
        (true, 2, 1),
        "stopped by the stopper, and started again for the retirement"
    );
    for _ in 0..6 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak at unload");
}

/// Unload while the stopper is queued: it waits for the stopper, which leaves the timer alone, and
/// releases the timer stopped.
#[test]
fn unload_while_the_timer_is_stopping() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    assert!(platform.fire_timer());
    drop(domain);
    assert!(!platform.timer_state().0, "the timer is stopped");
    assert_eq!(platform.live_allocations(), 0, "leak at unload");
    assert!(
        platform.irql_faults().is_empty(),
        "{:?}",
        platform.irql_faults()
    );
}
