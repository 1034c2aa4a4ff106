//! Regression tests for the bugs an independent review found in the first version: each fails on
//! that version (or with the mutation that re-introduces the bug) and passes on this one.

use super::*;
#[cfg(feature = "mutations")]
use crate::Mutation;

/// A pointer to the domain under test, for destructors and work callbacks that use it the way a
/// driver's would (through a global or a context pointer).
#[derive(Clone, Copy)]
struct DomainRef(*const Domain<TestPlatform>);
// SAFETY: test-only; the domain outlives every use (unload waits for work items and destructors).
unsafe impl Send for DomainRef {}
// SAFETY: as above; `Domain` is Sync.
unsafe impl Sync for DomainRef {}

impl DomainRef {
    fn get(&self) -> &Domain<TestPlatform> {
        // SAFETY: see the Send impl.
        unsafe { &*self.0 }
    }
}

fn domain_with(cpus: usize, config: Config) -> (TestPlatform, DomainBox<TestPlatform>) {
    let platform = TestPlatform::new(cpus, cpus as u32);
    let domain = Domain::create(platform.clone(), config).expect("load");
    (platform, domain)
}

/// Same-CPU deadlock (bugcheck 0x133): `stats()` from the stats IOCTL, AddStart's preparation and
/// AddFailure's rollback run at PASSIVE and take locks a DPC also takes. Every core spin lock must
/// be held at DISPATCH, raised by the lock itself.
fn passive_callers_take_locks(config: Config) -> Vec<String> {
    let platform = TestPlatform::new(2, 4);
    let domain = Domain::create(
        platform.clone(),
        Config {
            strategy: Strategy::Callback,
            ..config
        },
    )
    .expect("load");
    let drops = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(1, || retire_new(&domain, &drops));
    let _ = domain.stats();
    let _ = domain.holdback();
    platform.hot_add(true);
    platform.hot_add(false);
    platform.tick();
    drop(domain);
    platform.irql_faults()
}

#[test]
fn passive_callers_take_every_spin_lock_at_dispatch() {
    let faults = passive_callers_take_locks(test_config(Strategy::Callback));
    assert!(faults.is_empty(), "{faults:?}");
}

#[cfg(feature = "mutations")]
#[test]
fn lock_without_raise_is_reported() {
    let faults = passive_callers_take_locks(Config {
        mutations: crate::Mutations::NONE.with(Mutation::LockWithoutRaise),
        ..test_config(Strategy::Callback)
    });
    assert!(
        faults.iter().any(|f| f.contains("acquired at IRQL 0")),
        "{faults:?}"
    );
}

/// Unbounded recursion: with an empty ring a cycle finishes inline, and a flush from another CPU
/// that lands meanwhile made the first version start the next one by recursion. The clock hook
/// plays that CPU: each reading inside a cycle flushes once more. Returns the stack growth in bytes
/// between the shallowest and the deepest clock reading.
fn stack_growth_under_a_flush_storm(config: Config, flushes: usize) -> usize {
    let (platform, domain) = domain_with(1, config);
    let target = DomainRef(&*domain);
    let left = Arc::new(AtomicUsize::new(flushes));
    let depth = Arc::new(Mutex::new((usize::MAX, 0usize)));
    let hook = {
        let (left, depth) = (left.clone(), depth.clone());
        Arc::new(move || {
            let marker = 0u8;
            let here = core::ptr::addr_of!(marker) as usize;
            {
                let mut d = depth.lock().unwrap();
                d.0 = d.0.min(here);
                d.1 = d.1.max(here);
            }
            if left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                target.get().flush();
            }
        })
    };
    platform.0.lock().unwrap().on_clock = Some(hook);
    // Each outer flush chains a bounded number of cycles; keep flushing (as the timer would) until
    // the storm is spent.
    while left.load(Ordering::SeqCst) != 0 {
        domain.flush();
    }
    platform.0.lock().unwrap().on_clock = None;
    assert_eq!(left.load(Ordering::SeqCst), 0, "the storm ran");
    let cycles = domain.stats().cycles;
    assert!(cycles >= 8, "the storm chained only {cycles} cycles");
    let (low, high) = *depth.lock().unwrap();
    high - low
}

#[test]
#[cfg_attr(
    miri,
    ignore = "Miri gives every local its own allocation: stack addresses mean nothing"
)]
fn a_flush_storm_does_not_grow_the_stack() {
    let growth = stack_growth_under_a_flush_storm(test_config(Strategy::Lazy), 1000);
    assert!(growth < 16 * 1024, "stack grew {growth} bytes");
}

#[cfg(feature = "mutations")]
#[test]
#[cfg_attr(
    miri,
    ignore = "Miri gives every local its own allocation: stack addresses mean nothing"
)]
fn recursive_chaining_grows_the_stack() {
    let growth = stack_growth_under_a_flush_storm(
        Config {
            mutations: crate::Mutations::NONE.with(Mutation::RecursiveChaining),
            ..test_config(Strategy::Lazy)
        },
        1000,
    );
    assert!(growth >= 16 * 1024, "stack grew only {growth} bytes");
}

/// A value whose destructor retires another object of the same domain (a node that owns a child).
struct RetiresOnDrop {
    domain: DomainRef,
    drops: Arc<AtomicUsize>,
}

impl Drop for RetiresOnDrop {
    fn drop(&mut self) {
        retire_new(self.domain.get(), &self.drops);
    }
}

static WORK_DOMAIN: Mutex<Option<DomainRef>> = Mutex::new(None);
static WORK_DROPS: Mutex<Option<Arc<AtomicUsize>>> = Mutex::new(None);
static SYNC_RETURNED: AtomicUsize = AtomicUsize::new(0);

/// A work callback that retires an object and synchronizes, as a driver's cleanup work might.
fn retire_from_work(_: usize) {
    let domain = WORK_DOMAIN.lock().unwrap().expect("set by the test");
    let drops = WORK_DROPS.lock().unwrap().clone().expect("set by the test");
    retire_new(domain.get(), &drops);
    domain.get().synchronize();
    SYNC_RETURNED.fetch_add(1, Ordering::SeqCst);
}

/// Leak and self-deadlock at unload: a destructor and a work callback retire while the domain
/// unloads, on a processor that has no slot (the first version then prepared one under the registry
/// lock its own unload held). Returns (objects dropped, blocks still allocated).
fn unload_with_retiring_destructors(config: Config) -> (usize, usize) {
    let (platform, domain) = domain_with(2, config);
    let drops = Arc::new(AtomicUsize::new(0));
    *WORK_DOMAIN.lock().unwrap() = Some(DomainRef(&*domain));
    *WORK_DROPS.lock().unwrap() = Some(drops.clone());
    TestPlatform::on_cpu(0, || {
        let parent = domain
            .alloc(RetiresOnDrop {
                domain: DomainRef(&*domain),
                drops: drops.clone(),
            })
            .expect("alloc");
        // SAFETY: never published to readers.
        unsafe { domain.retire(parent) }.expect("retire");
        let work = domain
            .new_work_item(retire_from_work, 0)
            .expect("work item");
        domain.schedule_work(&work).expect("schedule");
        drop(work);
    });
    // Unload on CPU 1, which never ran epoch code: it has no slot.
    TestPlatform::on_cpu(1, || drop(domain));
    *WORK_DOMAIN.lock().unwrap() = None;
    (drops.load(Ordering::SeqCst), platform.live_allocations())
}

#[test]
fn unload_disposes_of_what_destructors_and_work_items_retire() {
    let (dropped, live) = unload_with_retiring_destructors(test_config(Strategy::Lazy));
    assert_eq!(
        dropped, 2,
        "the child and the work item's object are disposed of"
    );
    assert_eq!(live, 0, "leak at unload");
    assert!(
        SYNC_RETURNED.load(Ordering::SeqCst) >= 1,
        "synchronize in a work item during unload returned"
    );
}

#[cfg(feature = "mutations")]
#[test]
fn unload_drain_once_leaks() {
    let (_, live) = unload_with_retiring_destructors(Config {
        mutations: crate::Mutations::NONE.with(Mutation::UnloadDrainOnce),
        ..test_config(Strategy::Lazy)
    });
    assert_ne!(
        live, 0,
        "the mutation leaks what unload's own disposals retire"
    );
}

static RESCHEDULED_RUNS: AtomicUsize = AtomicUsize::new(0);

fn count_rescheduled(_: usize) {
    RESCHEDULED_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// `cancel_work` then `schedule_work` was refused until a cycle disposed of the cancelled entry. A
/// rescheduled item must run once, and only after the readers inside at the reschedule exited.
#[test]
fn a_cancelled_work_item_can_be_scheduled_again_at_once() {
    let (platform, domain) = domain_with(1, test_config(Strategy::Lazy));
    let item = domain.new_work_item(count_rescheduled, 0).unwrap();
    domain.schedule_work(&item).unwrap();
    assert!(domain.cancel_work(&item));
    let guard = domain.enter();
    domain
        .schedule_work(&item)
        .expect("a cancelled item can be scheduled again");
    assert_eq!(
        domain.schedule_work(&item),
        Err(RetireError::AlreadyScheduled(
            crate::WorkState::WaitingForGracePeriod
        ))
    );
    for _ in 0..6 {
        platform.tick();
    }
    assert_eq!(
        RESCHEDULED_RUNS.load(Ordering::SeqCst),
        0,
        "ran while a reader that entered before the reschedule was inside"
    );
    drop(guard);
    for _ in 0..6 {
        platform.tick();
    }
    assert_eq!(RESCHEDULED_RUNS.load(Ordering::SeqCst), 1);
    // Cancel the rescheduled state too: it must not run.
    domain.schedule_work(&item).unwrap();
    assert!(domain.cancel_work(&item));
    domain.schedule_work(&item).unwrap();
    assert!(domain.cancel_work(&item));
    for _ in 0..6 {
        platform.tick();
    }
    assert_eq!(RESCHEDULED_RUNS.load(Ordering::SeqCst), 1);
    drop(item);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
    assert!(
        platform.irql_faults().is_empty(),
        "{:?}",
        platform.irql_faults()
    );
}
