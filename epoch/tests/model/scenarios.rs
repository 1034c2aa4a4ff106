//! Directed scenarios: each is one model-checker iteration (loom explores its interleavings,
//! shuttle samples them). The loom and shuttle test files run the same functions, listed once in
//! [`every_scenario`].

pub use super::api::{
    api_failed_compare_exchange_hands_back_an_initialised_value,
    api_reader_holds_a_value_a_writer_swaps_and_retires, api_reader_sees_the_published_value,
};
pub use super::linked::{
    list_reader_on_a_removed_node_reaches_the_rest,
    list_reader_sees_every_node_during_an_insertion, map_replace_never_hides_the_key,
};
use super::{check_unloaded, on_cpu, retire_fresh_object, rt, Gate, World};
use kepoch::{Domain, Strategy};
use rt::atomic::Ordering;
use std::ptr::NonNull;

/// CPU 1 joins (lazy preparation at DISPATCH) while CPU 0 retires and runs cycles.
pub fn join_during_an_in_flight_cycle() {
    let w = World::new(Strategy::Lazy, 2);
    let reader = w.spawn(|w| w.read(1));
    w.replace(0);
    w.cycle();
    w.cycle();
    reader.join().unwrap();
    World::finish(w);
}

/// CPU 1 goes idle, the next cycles make it leave, and it re-joins while CPU 0 retires.
pub fn leave_and_rejoin_while_retiring() {
    let w = World::new(Strategy::Lazy, 2);
    w.read(1);
    let reader = w.spawn(|w| {
        w.cycle();
        w.read(1);
    });
    w.replace(0);
    w.cycle();
    reader.join().unwrap();
    World::finish(w);
}

/// CPU 1's first epoch use is a retirement, racing a reader on CPU 0 and a cycle.
pub fn retirement_on_a_joining_cpu() {
    let w = World::new(Strategy::Lazy, 2);
    let writer = w.spawn(|w| w.replace(1));
    w.read(0);
    w.cycle();
    writer.join().unwrap();
    World::finish(w);
}

/// A reader enters on CPU 0 and exits on CPU 1 (a remote exit) while CPU 0 retires what it read
/// and runs the cycles whose visit on CPU 0 counts that exit and frees the object: only the
/// release/acquire pair on the remote-exit counter orders the reader's read before the free. One
/// processor per group: CPU 0 is (0, 0) and CPU 1 is (1, 0), told apart by their group only.
pub fn migrating_reader_exits_on_another_cpu() {
    let w = World::grouped(Strategy::Lazy, 2, 1);
    let reader = w.spawn(|w| w.read_migrating(0, 1));
    w.replace(0);
    w.cycle();
    w.cycle();
    reader.join().unwrap();
    World::finish(w);
}

/// CPU 2 is hot-added (AddStart, start, AddComplete) and reads while CPU 1 retires, a cycle runs
/// and `synchronize` waits: no message before AddComplete (S3), the CPU was pre-warmed. Two
/// processors per group: CPU 2 is (1, 0), the first of a new group, and shares its number with
/// CPU 0.
pub fn hot_add_races_with_a_cycle_and_synchronize() {
    let w = World::grouped(Strategy::Callback, 2, 2);
    w.read(0);
    let hot_add = w.spawn(|w| {
        w.platform.hot_add(2, false);
        w.read(2);
    });
    w.replace(1);
    w.cycle();
    on_cpu(1, || w.domain.synchronize());
    hot_add.join().unwrap();
    assert_eq!(
        w.stats().prepare_at_dispatch,
        0,
        "the hot-added CPU was pre-warmed"
    );
    World::finish(w);
}

/// AddStart → AddFailure for CPU 2 while `synchronize` runs: the preparation is rolled back.
pub fn add_failure_races_with_synchronize() {
    let w = World::new(Strategy::Callback, 2);
    w.read(0);
    let hot_add = w.spawn(|w| w.platform.hot_add(2, true));
    w.replace(0);
    on_cpu(1, || w.domain.synchronize());
    hot_add.join().unwrap();
    assert_eq!(w.stats().cpus_prepared, 2, "AddFailure rolls back");
    World::finish(w);
}

/// CPU 1 cannot allocate its slot, so its readers use the overflow slot, which already takes part
/// (an earlier reader joined it). A reader enters there while CPU 0 unlinks and retires the object
/// and runs the cycles that fold the overflow in and free the object: the reader's fence after it
/// reads the global epoch is what orders its pointer load after the unlink.
pub fn overflow_reader_races_a_writer_and_the_fold_in() {
    let w = World::new(Strategy::Lazy, 2);
    w.platform.fail_allocations_on(1, true);
    w.read(1);
    assert_eq!(w.stats().fallback_uses, 1, "CPU 1 uses the overflow slot");
    let reader = w.spawn(|w| w.read(1));
    w.replace(0);
    w.cycle();
    w.cycle();
    reader.join().unwrap();
    w.platform.fail_allocations_on(1, false);
    World::finish(w);
}

/// Three threads after `setup`: a reader on CPU 1, a writer on CPU 2 (participating, with an item
/// pending) that unlinks and retires the object, and CPU 0 running two cycles. The writer is not
/// the cycle driver and every slot exists before the race, so only the protocol's own fences and
/// visits can order the three (preparing a slot would order them through the registry lock).
fn reader_writer_and_cycles_on_three_threads(setup: fn(&World)) {
    let w = World::new(Strategy::Lazy, 3);
    setup(&w);
    let reader = w.spawn(|w| w.read(1));
    let writer = w.spawn(|w| w.replace(2));
    w.cycle();
    w.cycle();
    reader.join().unwrap();
    writer.join().unwrap();
    World::finish(w);
}

/// The reader's CPU left the cycle (idle), so the reader re-joins: the cycle's fence between
/// publishing its epoch and reading `participating`, and the join's fences, order the snapshot
/// against the join.
pub fn join_races_a_writer_and_a_cycle() {
    reader_writer_and_cycles_on_three_threads(|w| {
        w.read(1);
        w.replace(2);
        w.cycle();
    });
}

/// Both CPUs take part (each with an item pending; CPU 1 is first in the ring), so the reader
/// enters its CPU's local epoch without joining: nothing but the fence before the writer's stamp
/// makes the stamp at least the epoch of a reader that could still see the unlinked object.
pub fn retirement_stamp_races_a_cycle() {
    reader_writer_and_cycles_on_three_threads(|w| {
        w.replace(1);
        w.replace(2);
        w.cycle();
    });
}

/// Unlinks the world's object and retires it on `cpu`, then flushes twice: a cycle is in flight
/// (its first message queued) and another one is asked for. Returns the world's parts, for a drop.
fn retire_the_object_and_ask_for_two_cycles(
    w: std::sync::Arc<World>,
    cpu: usize,
) -> (
    super::ModelPlatform,
    kepoch::DomainBox<super::ModelPlatform>,
) {
    let last = w.cell.swap(std::ptr::null_mut(), Ordering::AcqRel);
    on_cpu(cpu, || {
        // SAFETY: unlinked; allocated by this domain.
        unsafe { w.domain.retire(NonNull::new(last).expect("published")) }.expect("retire");
        w.domain.flush();
        w.domain.flush();
    });
    std::sync::Arc::try_unwrap(w)
        .ok()
        .expect("no other owner")
        .into_parts()
}

/// A cycle over CPUs 1 and 2 is in flight with another one requested when the domain is dropped;
/// a "DPC" thread runs the visits meanwhile. Unload must wait for the cycle in flight and no cycle
/// may start after unload saw none in flight: otherwise visits run on (and send messages to) slots
/// that unload frees.
pub fn unload_while_a_cycle_is_in_flight() {
    let w = World::new(Strategy::Lazy, 3);
    w.read(1);
    w.read(2);
    let (platform, domain) = retire_the_object_and_ask_for_two_cycles(w, 0);
    let dpc = {
        let platform = platform.clone();
        rt::thread::spawn(move || on_cpu(0, || platform.deliver_all()))
    };
    on_cpu(0, || drop(domain));
    dpc.join().unwrap();
    check_unloaded(&platform);
}

/// The last visit of a cycle chains the next one (a second flush asked for it) while the domain is
/// dropped on another processor. CPU 1 keeps an item retired in the current epoch, so the chained
/// cycle has a member and sends it a message. Unload must either see that cycle in flight and wait
/// for it, or the cycle must see unload and not start: a cycle that starts after unload found
/// none in flight leaves its message queued while unload releases it. The drop begins only once
/// the "DPC" thread has started (it opens a gate first), so the window is two preemptions deep.
pub fn a_chained_cycle_races_unload() {
    let w = World::new(Strategy::Lazy, 2);
    w.read(1);
    let (platform, domain) = retire_the_object_and_ask_for_two_cycles(w, 1);
    let delivering = std::sync::Arc::new(Gate::new());
    let dpc = {
        let platform = platform.clone();
        let delivering = delivering.clone();
        rt::thread::spawn(move || {
            delivering.open();
            on_cpu(1, || platform.deliver_all());
        })
    };
    delivering.wait();
    on_cpu(0, || drop(domain));
    dpc.join().unwrap();
    check_unloaded(&platform);
}

/// A work item that retires an object from its callback is scheduled and the domain dropped at
/// once: unload hands it to a worker thread of its own and waits for it. The worker's last access
/// to the domain must come before unload can see the work finished (S8), and what the callback
/// retires during unload must still be freed.
pub fn work_item_runs_while_the_domain_is_dropped() {
    let w = World::new(Strategy::Lazy, 2);
    w.platform.use_worker_threads();
    let last = w.cell.swap(std::ptr::null_mut(), Ordering::AcqRel);
    on_cpu(0, || {
        // SAFETY: unlinked; allocated by this domain.
        unsafe { w.domain.retire(NonNull::new(last).expect("published")) }.expect("retire");
        let domain: &Domain<_> = &w.domain;
        let item = domain
            .new_work_item(retire_fresh_object, domain as *const Domain<_> as usize)
            .expect("work item");
        domain.schedule_work(&item).expect("schedule");
    });
    let (platform, domain) = std::sync::Arc::try_unwrap(w)
        .ok()
        .expect("no other owner")
        .into_parts();
    on_cpu(0, || drop(domain));
    check_unloaded(&platform);
}

/// Two processors ask for cycles back to back while no processor takes part (every ring is
/// empty): the cycle that ends while another was requested starts it, which must not grow the
/// stack (L3; the machine checks the depth of every signal at DISPATCH).
pub fn flush_storm_chains_cycles_iteratively() {
    let w = World::new(Strategy::Lazy, 2);
    let storm = w.spawn(|w| {
        for _ in 0..6 {
            on_cpu(1, || w.domain.flush());
        }
    });
    for _ in 0..6 {
        on_cpu(0, || w.domain.flush());
    }
    storm.join().unwrap();
    World::finish(w);
}

/// CPU 1 left the cycle and CPU 2 takes part with an item pending (the setup of the join races).
fn cpu_1_left_and_cpu_2_takes_part() -> std::sync::Arc<World> {
    let w = World::new(Strategy::Lazy, 3);
    w.read(1);
    w.replace(2);
    w.cycle();
    w
}

/// A cycle publishes its epoch and snapshots the ring (CPU 2 only); then a reader on CPU 1 joins
/// and takes the object, and only then a writer on CPU 2 unlinks and retires it, before the cycle
/// visits CPU 2. The cycle's fence between its increment and its snapshot is what makes the
/// writer's stamp (read after the writer's fence, which follows the reader's join fence) see the
/// increment; without it the stamp is the epoch the reader entered, which that cycle releases
/// (mutation `cycle-no-fence`).
pub fn reader_joins_after_the_snapshot_then_a_writer_retires() {
    let w = cpu_1_left_and_cpu_2_takes_part();
    let reader = w.spawn(|w| {
        w.gates[0].wait();
        w.read_gated(1, 1, 2);
    });
    let writer = w.spawn(|w| {
        w.gates[1].wait();
        w.replace(2);
        w.gates[3].open();
    });
    on_cpu(0, || w.domain.flush());
    w.gates[0].open();
    w.gates[3].wait();
    w.platform.deliver_all();
    w.cycle();
    w.gates[2].open();
    reader.join().unwrap();
    writer.join().unwrap();
    World::finish(w);
}

/// A reader on CPU 1 joins while CPU 0's cycle publishes its epoch and snapshots the ring (CPU 2
/// only), and a writer on CPU 2 unlinks and retires the object the reader took. The cycle
/// publishes before it snapshots: a join the snapshot misses then reads the new epoch, and so does
/// the writer's stamp, which no cycle releases while the reader is inside. Snapshot first (mutation
/// `cycle-snapshot-before-publish`), a join between the two steps is missed at the old epoch, and
/// the writer's stamp can be the old epoch, which the cycle releases: the next cycle frees the
/// object under the reader. One preemption reaches it (the cycle's, between its two steps); loom
/// runs it at that bound (`tests/loom.rs`): three threads at bound 2 take more than ten minutes.
/// Not part of `every_scenario!`.
#[cfg(loom)]
pub fn a_reader_joins_while_a_cycle_publishes() {
    let w = cpu_1_left_and_cpu_2_takes_part();
    let reader = w.spawn(|w| {
        w.gates[0].wait();
        w.read_gated(1, 1, 2);
    });
    let writer = w.spawn(|w| {
        w.gates[1].wait();
        w.replace(2);
        w.gates[3].open();
    });
    w.gates[0].open();
    on_cpu(0, || w.domain.flush());
    w.gates[3].wait();
    w.platform.deliver_all();
    w.cycle();
    w.gates[2].open();
    reader.join().unwrap();
    writer.join().unwrap();
    World::finish(w);
}

/// CPU 0 unlinks and retires the object (stamped before the next cycle), then runs a cycle that
/// publishes its epoch and snapshots the ring (CPU 2 only); only then a reader on CPU 1 joins and
/// takes the object. The join's fence after its epoch load is what orders the reader's pointer
/// load after the unlink (the writer's fence came first); without it the reader takes the
/// unlinked object while no cycle accounts for it (mutation `join-no-fence`).
pub fn writer_retires_then_a_reader_joins_after_the_snapshot() {
    let w = cpu_1_left_and_cpu_2_takes_part();
    let reader = w.spawn(|w| {
        w.gates[0].wait();
        w.read_gated(1, 1, 2);
    });
    w.replace(2);
    on_cpu(0, || w.domain.flush());
    w.gates[0].open();
    w.gates[1].wait();
    w.platform.deliver_all();
    w.cycle();
    w.gates[2].open();
    reader.join().unwrap();
    World::finish(w);
}

/// CPUs 1 and 2 take part (CPU 1 first in the ring). A cycle visits CPU 1; then a reader enters
/// there (in the cycle's epoch, without joining) and takes the object, and only then a writer on
/// CPU 2 unlinks and retires it, before the cycle visits CPU 2. Nothing but the fence before the
/// writer's stamp makes the stamp see the epoch the reader entered: without it the stamp is older
/// and that cycle releases it (mutation `stamp-no-fence`).
pub fn reader_enters_after_its_visit_then_a_writer_retires() {
    let w = World::new(Strategy::Lazy, 3);
    w.replace(1);
    w.replace(2);
    w.cycle();
    let reader = w.spawn(|w| {
        w.gates[0].wait();
        w.read_gated(1, 1, 2);
    });
    let writer = w.spawn(|w| {
        w.gates[1].wait();
        w.replace(2);
        w.gates[3].open();
    });
    on_cpu(0, || w.domain.flush());
    assert!(w.platform.deliver_one(), "the cycle visits CPU 1 first");
    w.gates[0].open();
    w.gates[3].wait();
    w.platform.deliver_all();
    w.cycle();
    w.gates[2].open();
    reader.join().unwrap();
    writer.join().unwrap();
    World::finish(w);
}

/// CPU 1 cannot allocate its slot and the overflow slot takes part. CPU 0 unlinks and retires the
/// object on CPU 2 and starts a cycle (it publishes the next epoch); then a reader enters the
/// overflow slot and takes the object. Its fence after reading the global epoch is what orders
/// its pointer load after the unlink: without it the reader enters the new epoch yet takes the
/// unlinked object, whose older stamp the cycle then releases (mutation `overflow-enter-no-fence`).
pub fn overflow_reader_enters_after_a_writer_retired() {
    let w = World::new(Strategy::Lazy, 3);
    w.replace(2);
    w.cycle();
    w.platform.fail_allocations_on(1, true);
    w.read(1);
    let reader = w.spawn(|w| {
        w.gates[0].wait();
        w.read_gated(1, 1, 2);
    });
    w.replace(2);
    on_cpu(0, || w.domain.flush());
    w.gates[0].open();
    w.gates[1].wait();
    w.platform.deliver_all();
    w.cycle();
    w.gates[2].open();
    reader.join().unwrap();
    w.platform.fail_allocations_on(1, false);
    World::finish(w);
}

/// The timer's idle check races a retirement on a processor that is not in the cycle: the domain is
/// idle, so the timer's handler may stop the timer, while a writer on CPU 1 joins, retires and loads
/// the timer's idle flag. Either the check sees CPU 1 participating (fence FT after the flag's store
/// against fence FJ after the join's store) or the writer sees the flag and restarts the timer: the
/// timer's cycles alone (and the stopper it may have queued) then free the item. Without the restart
/// (mutation `timer-never-restarts`) the timer stays stopped and the item stays pending.
pub fn a_retirement_races_the_idle_timer() {
    let w = World::new(Strategy::Lazy, 2);
    let writer = w.spawn(|w| w.replace(1));
    on_cpu(0, || w.platform.fire_timer());
    writer.join().unwrap();
    // Only the timer from here: no flush, no synchronize.
    for _ in 0..3 {
        w.platform.run_passive_work();
        on_cpu(0, || w.platform.fire_timer());
        w.platform.deliver_all();
    }
    let pending = w.stats().pending;
    assert_eq!(
        pending, 0,
        "L1: {pending} item(s) retired while the timer stopped are left without cycles"
    );
    World::finish(w);
}

/// Calls `$test!` with the name of every directed scenario: each checker's test file turns the
/// list into one `#[test]` per scenario.
macro_rules! every_scenario {
    ($test:ident) => {
        $test! {
            join_during_an_in_flight_cycle,
            leave_and_rejoin_while_retiring,
            retirement_on_a_joining_cpu,
            migrating_reader_exits_on_another_cpu,
            hot_add_races_with_a_cycle_and_synchronize,
            add_failure_races_with_synchronize,
            overflow_reader_races_a_writer_and_the_fold_in,
            join_races_a_writer_and_a_cycle,
            retirement_stamp_races_a_cycle,
            unload_while_a_cycle_is_in_flight,
            a_chained_cycle_races_unload,
            work_item_runs_while_the_domain_is_dropped,
            flush_storm_chains_cycles_iteratively,
            reader_joins_after_the_snapshot_then_a_writer_retires,
            writer_retires_then_a_reader_joins_after_the_snapshot,
            reader_enters_after_its_visit_then_a_writer_retires,
            overflow_reader_enters_after_a_writer_retired,
            api_reader_sees_the_published_value,
            api_reader_holds_a_value_a_writer_swaps_and_retires,
            api_failed_compare_exchange_hands_back_an_initialised_value,
            list_reader_sees_every_node_during_an_insertion,
            list_reader_on_a_removed_node_reaches_the_rest,
            map_replace_never_hides_the_key,
            a_retirement_races_the_idle_timer,
        }
    };
}
pub(crate) use every_scenario;

/// Review 2026-12-06. A cycle races CPU 1's join: its snapshot misses CPU 1 (the join's store of
/// `participating` is not visible yet) while the join reads the global epoch from before the
/// cycle's increment (nothing orders the join's load before its fence). PROTOCOL.md shows this is
/// safe: every object the reader can see is stamped at or after the cycle's epoch. But the reader is
/// then counted at the older epoch, so the next cycle, which includes CPU 1, releases less than the
/// one before: `released_epoch` goes back. The simulator's stats/holdback poller
/// (`sim/src/torture/tasks.rs`, "released epoch went back") treats exactly that as a violation, and
/// `Domain::released_epoch`'s documentation reads as a monotonic bound. Not part of
/// `every_scenario!` (shuttle runs sequentially consistent schedules, where it cannot happen).
#[cfg(loom)]
pub fn released_epoch_never_goes_back_while_a_cpu_joins() {
    let w = cpu_1_left_and_cpu_2_takes_part();
    let reader = w.spawn(|w| w.read_gated(1, 1, 2));
    w.cycle();
    let first = w.domain.released_epoch();
    w.gates[1].wait();
    w.cycle();
    let second = w.domain.released_epoch();
    w.gates[2].open();
    reader.join().unwrap();
    assert!(
        second >= first,
        "released epoch went back from {first} to {second}: the cycle after a racing join counted the joiner at the epoch it read before the previous cycle's increment"
    );
    World::finish(w);
}
