//! Unit tests of the domain on a minimal single-threaded platform: the test decides which CPU runs,
//! when queued messages are delivered and when the timer fires. Small enough for Miri.

use crate::config::{Config, Strategy};
use crate::platform::*;
use crate::{Domain, DomainBox, RetireError};
use core::alloc::Layout;
use core::cell::Cell;
use core::fmt;
use core::ptr::NonNull;
use std::collections::{BTreeMap, VecDeque};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

std::thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
    static IRQL: Cell<u8> = const { Cell::new(0) };
}

#[derive(Default)]
struct State {
    cpus: usize,
    max_reported: u32,
    messages: VecDeque<(usize, usize)>, // (cpu, message id)
    bound: BTreeMap<usize, (usize, HandlerBox)>,
    next_id: usize,
    timer: Option<HandlerBox>,
    passive: VecDeque<HandlerBox>,
    live: BTreeMap<usize, Layout>,
    fail_allocations: usize,
    delivered: Vec<usize>,
    logs: Vec<String>,
    /// Processor-change registration exists.
    callback_api: bool,
    /// The registered callback and its context.
    callback: Option<(ProcessorChangeFn, ContextPtr)>,
    /// Registration replay: this Start (0-based) fails, as if another registrant vetoed it.
    veto_start: Option<usize>,
    /// Registration replay sends AddStart twice per processor.
    replay_start_twice: bool,
    /// Messages sent to a processor that is not running (S3).
    misrouted: usize,
    /// The test clock.
    clock_ns: u64,
    /// Broken IRQL rules: a core spin lock taken below DISPATCH, a routine called at the wrong IRQL.
    irql_faults: Vec<String>,
    /// Runs after every clock reading, outside the state lock (a test's hook into the cycle).
    on_clock: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The registration context, kept as a pointer (not an integer) so Miri tracks its provenance.
#[derive(Clone, Copy)]
struct ContextPtr(*const ());
// SAFETY: test-only; the context is used on the single test thread.
unsafe impl Send for ContextPtr {}

#[derive(Clone, Copy)]
struct HandlerBox(Handler);
// SAFETY: test-only; handlers are run on the single test thread.
unsafe impl Send for HandlerBox {}

#[derive(Clone)]
struct TestPlatform(Arc<Mutex<State>>);

/// Message storage: an id into the platform's table.
struct TestMessage(Cell<usize>);
// SAFETY: test-only, single-threaded.
unsafe impl Sync for TestMessage {}

struct TestEvent(Cell<bool>);
// SAFETY: test-only, single-threaded.
unsafe impl Sync for TestEvent {}

impl TestPlatform {
    fn new(cpus: usize, max_reported: u32) -> Self {
        TestPlatform(Arc::new(Mutex::new(State {
            cpus,
            max_reported,
            callback_api: true,
            ..State::default()
        })))
    }
    fn on_cpu<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
        let old = CPU.with(|c| c.replace(cpu));
        let r = f();
        CPU.with(|c| c.set(old));
        r
    }
    /// Delivers queued messages until none is left; returns how many ran.
    fn run_messages(&self) -> usize {
        let mut ran = 0;
        loop {
            let next = self.0.lock().unwrap().messages.pop_front();
            let Some((cpu, id)) = next else { return ran };
            let handler = self.0.lock().unwrap().bound[&id].1;
            self.0.lock().unwrap().delivered.push(cpu);
            Self::on_cpu(cpu, || {
                let old = IRQL.with(|i| i.replace(2));
                // SAFETY: the slot owning the message is alive while it is bound.
                unsafe { handler.0.invoke() };
                IRQL.with(|i| i.set(old));
            });
            ran += 1;
        }
    }
    fn tick(&self) {
        let timer = self.0.lock().unwrap().timer;
        if let Some(timer) = timer {
            let old = IRQL.with(|i| i.replace(2));
            // SAFETY: the domain is alive while its timer is armed.
            unsafe { timer.0.invoke() };
            IRQL.with(|i| i.set(old));
        }
        self.run_messages();
        self.run_passive();
    }
    fn run_passive(&self) {
        loop {
            let next = self.0.lock().unwrap().passive.pop_front();
            let Some(work) = next else { return };
            // SAFETY: queued work items are alive until they run.
            unsafe { work.0.invoke() };
        }
    }
    /// A live hot-add of the next processor: AddStart (not running yet), then AddComplete (running)
    /// or AddFailure. Returns the new processor's number.
    fn hot_add(&self, fail: bool) -> usize {
        self.hot_add_with_window(fail, |_| {})
    }

    /// [`TestPlatform::hot_add`] with `window` run between AddStart and AddComplete (or AddFailure),
    /// given the new processor's number: code running on the new processor in that window (a DPC
    /// another driver targeted at it, an interrupt), and cycles the test runs meanwhile.
    fn hot_add_with_window(&self, fail: bool, window: impl FnOnce(usize)) -> usize {
        let (callback, context, cpu) = {
            let state = self.0.lock().unwrap();
            let (callback, ContextPtr(context)) = state.callback.expect("registered");
            (callback, context, state.cpus)
        };
        let processor = CurrentProcessor {
            number: ProcessorNumber::new(0, cpu as u8),
            index: cpu as u32,
        };
        // SAFETY: the domain that registered is alive (it deregisters at unload).
        unsafe {
            callback(context, ProcessorChange::AddStart, processor);
            window(cpu);
            if fail {
                callback(
                    context,
                    ProcessorChange::AddFailure(Status::INSUFFICIENT_RESOURCES),
                    processor,
                );
            } else {
                self.0.lock().unwrap().cpus += 1;
                callback(context, ProcessorChange::AddComplete, processor);
            }
        }
        cpu
    }

    /// IRQL rules broken so far.
    fn irql_faults(&self) -> Vec<String> {
        self.0.lock().unwrap().irql_faults.clone()
    }
    fn live_allocations(&self) -> usize {
        self.0.lock().unwrap().live.len()
    }
    fn delivered(&self) -> Vec<usize> {
        core::mem::take(&mut self.0.lock().unwrap().delivered)
    }
}

// SAFETY: single-threaded tests; DISPATCH exclusion holds because nothing runs concurrently.
unsafe impl Platform for TestPlatform {
    type Message = TestMessage;
    type Timer = ();
    type PassiveWork = TestMessage;
    type Event = TestEvent;

    fn current_processor(&self) -> CurrentProcessor {
        let cpu = CPU.with(Cell::get);
        CurrentProcessor {
            number: ProcessorNumber::new(0, cpu as u8),
            index: cpu as u32,
        }
    }
    fn current_irql(&self) -> Irql {
        Irql(IRQL.with(Cell::get))
    }
    fn raise_to_dispatch(&self) -> Irql {
        Irql(IRQL.with(|i| i.replace(i.get().max(2))))
    }
    fn lower_irql(&self, previous: Irql) {
        IRQL.with(|i| i.set(previous.0));
    }
    fn max_processor_count(&self) -> u32 {
        self.0.lock().unwrap().max_reported
    }
    fn active_processor_count(&self) -> u32 {
        self.0.lock().unwrap().cpus as u32
    }
    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status> {
        if (index as usize) < self.0.lock().unwrap().cpus {
            Ok(ProcessorNumber::new(0, index as u8))
        } else {
            Err(Status::INVALID_PARAMETER)
        }
    }
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        let mut state = self.0.lock().unwrap();
        if state.fail_allocations > 0 {
            state.fail_allocations -= 1;
            return None;
        }
        // SAFETY: layouts from the core have a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        state.live.insert(ptr.as_ptr() as usize, layout);
        Some(ptr)
    }
    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        let recorded = self.0.lock().unwrap().live.remove(&(ptr.as_ptr() as usize));
        assert_eq!(
            recorded,
            Some(layout),
            "free of an unknown block or with the wrong layout"
        );
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
    }
    unsafe fn message_init(
        &self,
        message: *mut TestMessage,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status> {
        let mut state = self.0.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        state
            .bound
            .insert(id, (target.number as usize, HandlerBox(handler)));
        // SAFETY: the core passes writable storage.
        unsafe { message.write(TestMessage(Cell::new(id))) };
        Ok(())
    }
    fn message_send(&self, message: &TestMessage) {
        let mut state = self.0.lock().unwrap();
        let id = message.0.get();
        let cpu = state.bound[&id].0;
        if cpu >= state.cpus {
            state.misrouted += 1;
            return;
        }
        if !state.messages.iter().any(|&(_, queued)| queued == id) {
            state.messages.push_back((cpu, id));
        }
    }
    unsafe fn message_release(&self, message: *mut TestMessage) {
        // SAFETY: initialised by `message_init`.
        let id = unsafe { (*message).0.get() };
        self.0.lock().unwrap().bound.remove(&id);
    }
    fn flush_messages(&self) {
        self.run_messages();
    }
    unsafe fn timer_init(&self, _timer: *mut (), handler: Handler) -> Result<(), Status> {
        self.0.lock().unwrap().timer = Some(HandlerBox(handler));
        Ok(())
    }
    fn timer_start(&self, _timer: &(), _period_us: u32) {}
    fn timer_stop(&self, _timer: &()) {
        self.0.lock().unwrap().timer = None;
    }
    unsafe fn timer_release(&self, _timer: *mut ()) {}
    unsafe fn passive_init(&self, work: *mut TestMessage, handler: Handler) -> Result<(), Status> {
        let mut state = self.0.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        state.bound.insert(id, (usize::MAX, HandlerBox(handler)));
        // SAFETY: the core passes writable storage.
        unsafe { work.write(TestMessage(Cell::new(id))) };
        Ok(())
    }
    fn passive_queue(&self, work: &TestMessage) {
        let mut state = self.0.lock().unwrap();
        let handler = state.bound[&work.0.get()].1;
        state.passive.push_back(handler);
    }
    unsafe fn passive_release(&self, work: *mut TestMessage) {
        // SAFETY: initialised by `passive_init`.
        let id = unsafe { (*work).0.get() };
        self.0.lock().unwrap().bound.remove(&id);
    }
    unsafe fn event_init(&self, event: *mut TestEvent) {
        // SAFETY: the core passes writable storage.
        unsafe { event.write(TestEvent(Cell::new(false))) };
    }
    fn event_signal(&self, event: &TestEvent) {
        event.0.set(true);
    }
    fn event_reset(&self, event: &TestEvent) {
        event.0.set(false);
    }
    fn event_wait(&self, event: &TestEvent) {
        // Single thread: waiting means letting queued messages and work run.
        for _ in 0..1000 {
            if event.0.get() {
                return;
            }
            self.run_messages();
            self.run_passive();
        }
        panic!("event never signalled");
    }
    unsafe fn processor_change_register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status> {
        let (api, cpus, veto, twice) = {
            let state = self.0.lock().unwrap();
            (
                state.callback_api,
                state.cpus,
                state.veto_start,
                state.replay_start_twice,
            )
        };
        if !api {
            return Ok(None);
        }
        let notify = |cpu: usize, change| {
            let processor = CurrentProcessor {
                number: ProcessorNumber::new(0, cpu as u8),
                index: cpu as u32,
            };
            // SAFETY: the caller keeps `context` valid for the registration.
            unsafe { callback(context, change, processor) }
        };
        for cpu in 0..cpus {
            if veto == Some(cpu) {
                for started in 0..cpu {
                    notify(
                        started,
                        ProcessorChange::AddFailure(Status::INSUFFICIENT_RESOURCES),
                    );
                }
                return Err(Status::INSUFFICIENT_RESOURCES);
            }
            notify(cpu, ProcessorChange::AddStart);
            if twice {
                notify(cpu, ProcessorChange::AddStart);
            }
        }
        for cpu in 0..cpus {
            notify(cpu, ProcessorChange::AddComplete);
        }
        self.0.lock().unwrap().callback = Some((callback, ContextPtr(context)));
        Ok(Some(NonNull::dangling()))
    }
    unsafe fn processor_change_deregister(&self, _handle: NonNull<()>) {
        self.0.lock().unwrap().callback = None;
    }
    fn now_ns(&self) -> u64 {
        // Every reading advances a microsecond: cycles take a measurable, deterministic time.
        let (now, hook) = {
            let mut state = self.0.lock().unwrap();
            state.clock_ns += 1_000;
            (state.clock_ns, state.on_clock.clone())
        };
        if let Some(hook) = hook {
            hook();
        }
        now
    }
    fn verify_irql(&self, routine: &'static str, rule: IrqlRule) {
        let irql = self.current_irql();
        if !rule.allows(irql) {
            self.0.lock().unwrap().irql_faults.push(std::format!(
                "{routine} called at IRQL {} ({rule:?})",
                irql.0
            ));
        }
    }
    fn spin_lock_contended(&self, lock: *const ()) {
        // One thread runs everything here: a held lock can never be released while we spin.
        panic!("deadlock: core spin lock {lock:p} is held by the thread that now spins on it");
    }
    fn spin_lock_acquired(&self, lock: *const ()) {
        let irql = self.current_irql();
        if irql < Irql::DISPATCH {
            self.0.lock().unwrap().irql_faults.push(std::format!(
                "core spin lock {lock:p} acquired at IRQL {}",
                irql.0
            ));
        }
    }
    fn log(&self, _level: LogLevel, args: fmt::Arguments<'_>) {
        self.0.lock().unwrap().logs.push(args.to_string());
    }
}

/// The configuration tests create domains with: `strategy`, plus the mutation named by the
/// `KEPOCH_MUTATION` environment variable (with the `mutations` feature), so that
/// `test-scripts/mutation-score.sh` can run this whole suite against a re-introduced bug.
fn test_config(strategy: Strategy) -> Config {
    let mut mutations = crate::Mutations::NONE;
    if let Ok(name) = std::env::var("KEPOCH_MUTATION") {
        let mutation = crate::Mutation::from_name(&name)
            .unwrap_or_else(|| panic!("KEPOCH_MUTATION={name}: no such mutation"));
        mutations = mutations.with(mutation);
    }
    Config {
        mutations,
        ..Config::with_strategy(strategy)
    }
}

/// A retirable test object that counts its drops.
struct Tracked(Arc<AtomicUsize>);
impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn domain(cpus: usize, strategy: Strategy) -> (TestPlatform, DomainBox<TestPlatform>) {
    let platform = TestPlatform::new(cpus, cpus as u32);
    let domain = Domain::create(platform.clone(), test_config(strategy)).expect("load");
    (platform, domain)
}

fn retire_new(domain: &Domain<TestPlatform>, drops: &Arc<AtomicUsize>) -> u64 {
    let object = domain.alloc(Tracked(drops.clone())).ok().expect("alloc");
    // SAFETY: never published to readers.
    unsafe { domain.retire(object) }.expect("first retire")
}

#[test]
fn a_retired_object_is_freed_after_cycles_and_not_under_a_reader() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let guard = TestPlatform::on_cpu(1, || domain.enter());
    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    for _ in 0..5 {
        platform.tick();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "freed while a reader that entered before was inside"
    );
    TestPlatform::on_cpu(1, || drop(guard));
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0, "leak at unload");
}

#[test]
fn blocks_are_aligned_for_their_value_and_cache_aligned_on_request() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let small = domain.alloc(7u16).unwrap();
    let wide = domain.alloc(7u128).unwrap();
    let line = domain.alloc(crate::CacheAligned(7u8)).unwrap();
    assert_eq!(small.as_ptr() as usize % core::mem::align_of::<u16>(), 0);
    assert_eq!(wide.as_ptr() as usize % core::mem::align_of::<u128>(), 0);
    assert_eq!(
        line.as_ptr() as usize % 64,
        0,
        "a CacheAligned value starts a cache line"
    );
    assert_eq!(
        core::mem::size_of::<crate::CacheAligned<u8>>(),
        64,
        "and owns its line"
    );
    // SAFETY: allocated just above, never published or retired.
    unsafe {
        domain.free_now(small);
        domain.free_now(wide);
        domain.free_now(line);
    }
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn double_retire_is_refused_and_counted() {
    let (_platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let object = domain.alloc(Tracked(drops.clone())).ok().unwrap();
    // SAFETY: never published.
    unsafe {
        domain.retire(object).unwrap();
        assert_eq!(domain.retire(object), Err(RetireError::AlreadyRetired));
    }
    assert_eq!(domain.stats().double_retires, 1);
    drop(domain);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "unload frees what is retired, once"
    );
}

#[test]
fn migrated_reader_exits_on_another_cpu() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let guard = TestPlatform::on_cpu(0, || domain.enter());
    TestPlatform::on_cpu(1, || retire_new(&domain, &drops));
    platform.tick();
    platform.tick();
    TestPlatform::on_cpu(1, || drop(guard));
    assert_eq!(domain.stats().remote_exits, 1);
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn synchronize_frees_everything_retired_before_it() {
    let (platform, domain) = domain(3, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    for cpu in 0..3 {
        TestPlatform::on_cpu(cpu, || retire_new(&domain, &drops));
    }
    domain.synchronize();
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    let _ = platform;
}

#[test]
fn idle_cpus_leave_and_receive_no_more_messages() {
    let (platform, domain) = domain(4, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(2, || retire_new(&domain, &drops));
    for _ in 0..4 {
        platform.tick();
    }
    let first = platform.delivered();
    assert!(
        first.iter().all(|&cpu| cpu == 2),
        "only the CPU that ran epoch code is visited: {first:?}"
    );
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    for _ in 0..4 {
        platform.tick();
    }
    assert!(
        platform.delivered().is_empty(),
        "a CPU that left received messages"
    );
    assert_eq!(domain.stats().leaves, 1);
}

#[test]
fn eager_refuses_to_load_when_max_exceeds_active_and_lazy_loads() {
    let platform = TestPlatform::new(2, 8);
    let error = Domain::create(platform.clone(), test_config(Strategy::Eager))
        .err()
        .expect("eager must fail");
    assert_eq!(error.status, Status::INVALID_PARAMETER);
    assert!(
        error.to_string().contains("STATUS_INVALID_PARAMETER"),
        "{error}"
    );
    assert_eq!(
        platform.live_allocations(),
        0,
        "a failed load leaks nothing"
    );
    let domain = Domain::create(platform.clone(), test_config(Strategy::Lazy)).expect("lazy loads");
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn allocation_failure_at_dispatch_falls_back_to_the_overflow_slot() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    platform.0.lock().unwrap().fail_allocations = 1;
    let guard = TestPlatform::on_cpu(1, || domain.enter());
    let stats = domain.stats();
    assert_eq!(stats.prepare_failures, 1);
    assert_eq!(stats.fallback_uses, 1);
    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "overflow reader must hold reclamation back"
    );
    TestPlatform::on_cpu(1, || drop(guard));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn work_items_run_once_safe_and_can_be_cancelled() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    fn bump(_: usize) {
        RUNS.fetch_add(1, Ordering::SeqCst);
    }
    let (platform, domain) = domain(1, Strategy::Lazy);
    let item = domain.new_work_item(bump, 0).unwrap();
    let cancelled = domain.new_work_item(bump, 0).unwrap();
    let guard = domain.enter();
    domain.schedule_work(&item).unwrap();
    assert_eq!(
        domain.schedule_work(&item),
        Err(RetireError::AlreadyRetired)
    );
    domain.schedule_work(&cancelled).unwrap();
    assert!(domain.cancel_work(&cancelled));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        0,
        "work ran inside a reader's epoch"
    );
    drop(guard);
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    assert!(
        !domain.cancel_work(&item),
        "a work item that ran cannot be cancelled"
    );
    drop(item);
    drop(cancelled);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn stale_items_drain_without_further_activity() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(1, || retire_new(&domain, &drops));
    // Nothing else happens: only the periodic timer runs.
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(domain.stats().pending, 0);
}

#[test]
fn nested_epochs_hold_until_the_outermost_exits() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let outer = domain.enter();
    let inner = domain.enter();
    retire_new(&domain, &drops);
    drop(inner);
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "freed while the outer epoch was open"
    );
    drop(outer);
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn items_of_a_closed_epoch_are_freed_while_a_later_one_is_open() {
    let (platform, domain) = domain(2, Strategy::Lazy);
    let early = Arc::new(AtomicUsize::new(0));
    let late = Arc::new(AtomicUsize::new(0));
    TestPlatform::on_cpu(0, || retire_new(&domain, &early));
    platform.tick();
    platform.tick();
    // A reader enters after the early item's epoch has passed; an item retired now must wait for it.
    let reader = TestPlatform::on_cpu(1, || domain.enter());
    TestPlatform::on_cpu(0, || retire_new(&domain, &late));
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(
        early.load(Ordering::SeqCst),
        1,
        "an item of a closed epoch was held by a later reader"
    );
    assert_eq!(late.load(Ordering::SeqCst), 0);
    TestPlatform::on_cpu(1, || drop(reader));
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(late.load(Ordering::SeqCst), 1);
}

/// Epoch skew: CPU `lagging` has not been visited by the in-flight cycle (its local epoch lags) while
/// a reader on the visited CPU entered the newer epoch; what the lagging CPU retires now must outlive
/// that reader. Returns (the retirement stamp was the global epoch, the item was freed under the reader).
fn epoch_skew_scenario(mutations: crate::Mutations) -> (bool, bool) {
    let platform = TestPlatform::new(2, 2);
    let config = Config {
        mutations,
        ..test_config(Strategy::Lazy)
    };
    let domain = Domain::create(platform.clone(), config).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    // Both CPUs join the cycle.
    TestPlatform::on_cpu(0, || drop(domain.enter()));
    TestPlatform::on_cpu(1, || drop(domain.enter()));
    // Start a cycle and deliver only its first visit.
    let timer = platform.0.lock().unwrap().timer.unwrap();
    TestPlatform::on_cpu(0, || {
        IRQL.with(|i| i.set(2));
        // SAFETY: the domain is alive.
        unsafe { timer.0.invoke() };
        IRQL.with(|i| i.set(0));
    });
    let (visited, id) = platform
        .0
        .lock()
        .unwrap()
        .messages
        .pop_front()
        .expect("a visit is queued");
    let handler = platform.0.lock().unwrap().bound[&id].1;
    TestPlatform::on_cpu(visited, || {
        IRQL.with(|i| i.set(2));
        // SAFETY: the slot is alive.
        unsafe { handler.0.invoke() };
        IRQL.with(|i| i.set(0));
    });
    let lagging = 1 - visited;
    let reader = TestPlatform::on_cpu(visited, || domain.enter());
    let stamp = TestPlatform::on_cpu(lagging, || retire_new(&domain, &drops));
    let stamped_global = stamp == domain.global_epoch();
    for _ in 0..5 {
        platform.tick();
    }
    let freed_under_reader = drops.load(Ordering::SeqCst) != 0;
    TestPlatform::on_cpu(visited, || drop(reader));
    drop(domain);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    (stamped_global, freed_under_reader)
}

#[test]
fn a_lagging_cpu_stamps_retirement_with_the_global_epoch() {
    assert_eq!(epoch_skew_scenario(crate::Mutations::NONE), (true, false));
}

#[cfg(feature = "mutations")]
#[test]
fn the_epoch_skew_test_catches_local_epoch_stamping() {
    let mutated = crate::Mutations::NONE.with(crate::Mutation::LocalEpochStamp);
    assert_eq!(epoch_skew_scenario(mutated), (false, true));
}

#[test]
fn a_stalled_reader_blocks_reclamation_and_is_reported_once() {
    let platform = TestPlatform::new(2, 2);
    let config = Config {
        stall_threshold_cycles: 3,
        ..test_config(Strategy::Lazy)
    };
    let domain = Domain::create(platform.clone(), config).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let stalled = TestPlatform::on_cpu(1, || domain.enter());
    TestPlatform::on_cpu(0, || retire_new(&domain, &drops));
    for _ in 0..20 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    assert_eq!(
        domain.stats().stalls_reported,
        1,
        "reported once, not per cycle"
    );
    let logs = platform.0.lock().unwrap().logs.clone();
    assert!(
        logs.iter()
            .any(|l| l.contains("processor 0:1") && l.contains("reclamation is blocked")),
        "{logs:?}"
    );
    TestPlatform::on_cpu(1, || drop(stalled));
    for _ in 0..3 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

fn callback_domain(platform: &TestPlatform) -> DomainBox<TestPlatform> {
    Domain::create(platform.clone(), test_config(Strategy::Callback)).expect("callback loads")
}

#[test]
fn callback_prewarms_the_active_subset_and_pays_nothing_at_dispatch() {
    let platform = TestPlatform::new(2, 64);
    let domain = callback_domain(&platform);
    assert_eq!(domain.callback_state(), crate::CallbackState::Registered);
    let stats = domain.stats();
    assert_eq!(
        (
            stats.cpus_prepared,
            stats.prepare_passive,
            stats.hot_add_start,
            stats.hot_add_complete
        ),
        (2, 2, 2, 2)
    );
    for cpu in 0..2 {
        TestPlatform::on_cpu(cpu, || drop(domain.enter()));
    }
    assert_eq!(domain.stats().prepare_at_dispatch, 0);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn hot_added_cpu_is_prepared_at_add_start_and_ready_only_at_add_complete() {
    let platform = TestPlatform::new(2, 8);
    let domain = callback_domain(&platform);
    let drops = Arc::new(AtomicUsize::new(0));
    // A cycle and a reader are in flight while the processor arrives.
    let reader = TestPlatform::on_cpu(0, || domain.enter());
    TestPlatform::on_cpu(1, || retire_new(&domain, &drops));
    platform.tick();
    let added = platform.hot_add(false);
    // The reader migrates onto the new processor and exits there.
    let guard = TestPlatform::on_cpu(added, || domain.enter());
    TestPlatform::on_cpu(added, || drop(reader));
    let stats = domain.stats();
    assert_eq!(
        stats.prepare_at_dispatch, 0,
        "the hot-added processor was pre-warmed"
    );
    assert_eq!(stats.remote_exits, 1);
    for _ in 0..4 {
        platform.tick();
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    TestPlatform::on_cpu(added, || drop(guard));
    domain.synchronize();
    assert_eq!(
        platform.0.lock().unwrap().misrouted,
        0,
        "a message went to a processor that was not running"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn add_failure_rolls_back_completely_and_a_retry_works() {
    let platform = TestPlatform::new(2, 8);
    let domain = callback_domain(&platform);
    let before = domain.stats();
    platform.hot_add(true);
    let after_failure = domain.stats();
    assert_eq!(after_failure.cpus_prepared, before.cpus_prepared);
    assert_eq!(
        after_failure.per_cpu_bytes, before.per_cpu_bytes,
        "{after_failure:?}"
    );
    assert_eq!(after_failure.hot_add_failure, 1);
    let retried = platform.hot_add(false);
    assert_eq!(domain.stats().cpus_prepared, before.cpus_prepared + 1);
    TestPlatform::on_cpu(retried, || drop(domain.enter()));
    assert_eq!(domain.stats().prepare_at_dispatch, 0);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn replayed_add_start_is_idempotent() {
    let platform = TestPlatform::new(3, 3);
    platform.0.lock().unwrap().replay_start_twice = true;
    let domain = callback_domain(&platform);
    let stats = domain.stats();
    assert_eq!(stats.hot_add_start, 6);
    assert_eq!(
        stats.cpus_prepared, 3,
        "a second AddStart must not prepare a second slot"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn registration_failing_halfway_rolls_back_and_runs_as_lazy() {
    let platform = TestPlatform::new(4, 4);
    platform.0.lock().unwrap().veto_start = Some(2);
    let domain = callback_domain(&platform);
    assert_eq!(
        domain.callback_state(),
        crate::CallbackState::RegistrationFailed
    );
    let stats = domain.stats();
    assert_eq!(
        (
            stats.hot_add_start,
            stats.hot_add_failure,
            stats.cpus_prepared
        ),
        (2, 2, 0)
    );
    TestPlatform::on_cpu(3, || drop(domain.enter()));
    assert_eq!(
        domain.stats().prepare_at_dispatch,
        1,
        "the lazy path takes over"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

#[test]
fn missing_callback_api_runs_as_lazy_and_says_so() {
    let platform = TestPlatform::new(2, 2);
    platform.0.lock().unwrap().callback_api = false;
    let domain = callback_domain(&platform);
    assert_eq!(domain.callback_state(), crate::CallbackState::ApiMissing);
    let logs = platform.0.lock().unwrap().logs.clone();
    assert!(
        logs.iter()
            .any(|l| l.contains("missing") && l.contains("lazy")),
        "{logs:?}"
    );
}

#[test]
fn allocation_failure_at_add_start_never_vetoes_and_leaves_the_cpu_to_the_lazy_path() {
    let platform = TestPlatform::new(2, 8);
    let domain = callback_domain(&platform);
    platform.0.lock().unwrap().fail_allocations = 1;
    let added = platform.hot_add(false);
    let stats = domain.stats();
    assert_eq!(
        (
            stats.prepare_failures,
            stats.hot_add_complete,
            stats.hot_add_vetoed
        ),
        (1, 3, 0)
    );
    // The lazy path prepares it on first use; if that fails too, the overflow slot serves it.
    platform.0.lock().unwrap().fail_allocations = 1;
    let guard = TestPlatform::on_cpu(added, || domain.enter());
    assert_eq!(domain.stats().fallback_uses, 1);
    drop(guard);
    for _ in 0..3 {
        platform.tick();
    }
    TestPlatform::on_cpu(added, || drop(domain.enter()));
    assert_eq!(domain.stats().prepare_at_dispatch, 1);
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

mod atomic;
mod hardware;
mod hot_add_window;
mod review;
