//! The test platform: a minimal single-threaded platform on which the test decides which CPU runs,
//! when queued messages are delivered and when the timer fires. Its processors may span several
//! groups ([`TestPlatform::grouped`]).

use crate::platform::*;
use core::alloc::Layout;
use core::cell::Cell;
use core::fmt;
use core::ptr::NonNull;
use std::collections::{BTreeMap, VecDeque};
use std::string::{String, ToString};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

std::thread_local! {
    pub(super) static CPU: Cell<usize> = const { Cell::new(0) };
    pub(super) static IRQL: Cell<u8> = const { Cell::new(0) };
}

#[derive(Default)]
pub(super) struct State {
    pub(super) cpus: usize,
    /// Processors per group: processor `i` is (`i / group_size`, `i % group_size`), index `i`.
    pub(super) group_size: usize,
    pub(super) max_reported: u32,
    pub(super) messages: VecDeque<(usize, usize)>, // (cpu, message id)
    pub(super) bound: BTreeMap<usize, (usize, HandlerBox)>,
    pub(super) next_id: usize,
    pub(super) timer: Option<HandlerBox>,
    /// The timer is started (its handler runs at each tick).
    pub(super) timer_armed: bool,
    /// `timer_start` and `timer_stop` calls so far.
    pub(super) timer_starts: usize,
    pub(super) timer_stops: usize,
    pub(super) passive: VecDeque<HandlerBox>,
    pub(super) live: BTreeMap<usize, Layout>,
    pub(super) fail_allocations: usize,
    pub(super) delivered: Vec<usize>,
    /// Pool tags of `allocate_tagged` calls, in order.
    pub(super) tags: Vec<PoolTag>,
    /// The tag of each live block from `allocate_tagged` (its free must name it, as on NT).
    pub(super) live_tags: BTreeMap<usize, PoolTag>,
    pub(super) logs: Vec<String>,
    /// Processor-change registration exists.
    pub(super) callback_api: bool,
    /// The registered callback and its context.
    pub(super) callback: Option<(ProcessorChangeFn, ContextPtr)>,
    /// Registration replay: this Start (0-based) fails, as if another registrant vetoed it.
    pub(super) veto_start: Option<usize>,
    /// Registration replay sends AddStart twice per processor.
    pub(super) replay_start_twice: bool,
    /// Messages sent to a processor that is not running (S3).
    pub(super) misrouted: usize,
    /// Live hot-adds the callback vetoed (an error from AddStart; kepoch never vetoes).
    pub(super) vetoes: usize,
    /// The test clock.
    pub(super) clock_ns: u64,
    /// Broken IRQL rules: a core spin lock taken below DISPATCH, a routine called at the wrong IRQL.
    pub(super) irql_faults: Vec<String>,
    /// Runs after every clock reading, outside the state lock (a test's hook into the cycle).
    pub(super) on_clock: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Runs at the start of every `event_wait`, outside the state lock (a test's hook into a
    /// waiter, which may call the domain again: nested, as a DPC or another thread would).
    pub(super) on_wait: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Queued passive work stays queued (a worker thread that has not run yet).
    pub(super) passive_held: bool,
    /// A waiter runs one queued passive work item per round instead of all of them.
    pub(super) passive_one_per_wait: bool,
}

/// The registration context, kept as a pointer (not an integer) so Miri tracks its provenance.
#[derive(Clone, Copy)]
pub(super) struct ContextPtr(pub(super) *const ());
// SAFETY: test-only; the context is used on the single test thread.
unsafe impl Send for ContextPtr {}

#[derive(Clone, Copy)]
pub(super) struct HandlerBox(pub(super) Handler);
// SAFETY: test-only; handlers are run on the single test thread.
unsafe impl Send for HandlerBox {}

#[derive(Clone)]
pub(super) struct TestPlatform(pub(super) Arc<Mutex<State>>);

/// Message storage: an id into the platform's table.
pub(super) struct TestMessage(Cell<usize>);
// SAFETY: test-only, single-threaded.
unsafe impl Sync for TestMessage {}

/// An event: its state and how often it was signalled. A wait that began before a signal is
/// satisfied by it even if another waiter (nested on this one thread) reset the event before this
/// wait looked again, as NT satisfies every waiter of a notification event when it is set.
pub(super) struct TestEvent(Cell<bool>, Cell<u64>);
// SAFETY: test-only, single-threaded.
unsafe impl Sync for TestEvent {}

impl State {
    /// Processor `cpu` of this machine: its (group, number) and its index `cpu`.
    pub(super) fn processor(&self, cpu: usize) -> CurrentProcessor {
        CurrentProcessor {
            number: ProcessorNumber::new(
                (cpu / self.group_size) as u16,
                (cpu % self.group_size) as u8,
            ),
            index: cpu as u32,
        }
    }

    /// The processor `number` names, as the test's CPU number (its index).
    fn cpu_of(&self, number: ProcessorNumber) -> usize {
        usize::from(number.group) * self.group_size + usize::from(number.number)
    }
}

impl TestPlatform {
    /// Frees a block `allocate` recorded (tagged or not).
    ///
    /// # Safety
    /// `ptr` came from this platform with `layout` and is not used afterwards.
    unsafe fn free_untagged(&self, ptr: NonNull<u8>, layout: Layout) {
        let recorded = self.0.lock().unwrap().live.remove(&(ptr.as_ptr() as usize));
        assert_eq!(
            recorded,
            Some(layout),
            "free of an unknown block or with the wrong layout"
        );
        // SAFETY: allocated by `allocate` with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
    }

    /// A machine of `cpus` running processors in one group (64 per group, as on NT).
    pub(super) fn new(cpus: usize, max_reported: u32) -> Self {
        Self::grouped(cpus, max_reported, 64)
    }

    /// A machine whose groups hold `group_size` processors each: with fewer than `cpus`, the
    /// processors span several groups, and numbers repeat across them.
    pub(super) fn grouped(cpus: usize, max_reported: u32, group_size: usize) -> Self {
        assert!((1..=64).contains(&group_size), "group size {group_size}");
        TestPlatform(Arc::new(Mutex::new(State {
            cpus,
            group_size,
            max_reported,
            callback_api: true,
            ..State::default()
        })))
    }

    /// Processor `cpu` of this machine.
    pub(super) fn processor(&self, cpu: usize) -> CurrentProcessor {
        self.0.lock().unwrap().processor(cpu)
    }
    pub(super) fn on_cpu<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
        let old = CPU.with(|c| c.replace(cpu));
        let r = f();
        CPU.with(|c| c.set(old));
        r
    }
    /// Delivers queued messages until none is left; returns how many ran.
    pub(super) fn run_messages(&self) -> usize {
        let mut ran = 0;
        while self.deliver_one() {
            ran += 1;
        }
        ran
    }
    /// Delivers the oldest queued message (one DPC, at DISPATCH on its processor); false when none
    /// is queued.
    pub(super) fn deliver_one(&self) -> bool {
        let next = self.0.lock().unwrap().messages.pop_front();
        let Some((cpu, id)) = next else { return false };
        let handler = self.0.lock().unwrap().bound[&id].1;
        self.0.lock().unwrap().delivered.push(cpu);
        Self::on_cpu(cpu, || {
            let old = IRQL.with(|i| i.replace(2));
            // SAFETY: the slot owning the message is alive while it is bound.
            unsafe { handler.0.invoke() };
            IRQL.with(|i| i.set(old));
        });
        true
    }
    /// One timer period: the timer's handler runs (if the timer is started), then every queued
    /// message and passive work item.
    pub(super) fn tick(&self) {
        self.fire_timer();
        self.run_messages();
        self.run_passive();
    }
    /// Runs the timer's handler at DISPATCH on the current CPU if the timer is started (nothing
    /// else: what it queues stays queued). Returns whether it ran.
    pub(super) fn fire_timer(&self) -> bool {
        let timer = {
            let state = self.0.lock().unwrap();
            state.timer.filter(|_| state.timer_armed)
        };
        let Some(timer) = timer else { return false };
        let old = IRQL.with(|i| i.replace(2));
        // SAFETY: the domain is alive while its timer is armed.
        unsafe { timer.0.invoke() };
        IRQL.with(|i| i.set(old));
        true
    }
    pub(super) fn run_passive(&self) {
        while self.run_one_passive() {}
    }
    /// Runs the oldest queued passive work item, unless held; returns whether one ran.
    fn run_one_passive(&self) -> bool {
        let next = {
            let mut state = self.0.lock().unwrap();
            if state.passive_held {
                None
            } else {
                state.passive.pop_front()
            }
        };
        let Some(work) = next else { return false };
        // SAFETY: queued work items are alive until they run.
        unsafe { work.0.invoke() };
        true
    }
    /// A live hot-add of the next processor: AddStart (not running yet), then AddComplete (running)
    /// or AddFailure. Returns the new processor's number.
    pub(super) fn hot_add(&self, fail: bool) -> usize {
        self.hot_add_with_window(fail, |_| {})
    }

    /// [`TestPlatform::hot_add`] with `window` run between AddStart and AddComplete (or AddFailure),
    /// given the new processor's number: code running on the new processor in that window (a DPC
    /// another driver targeted at it, an interrupt), and cycles the test runs meanwhile.
    pub(super) fn hot_add_with_window(&self, fail: bool, window: impl FnOnce(usize)) -> usize {
        let (callback, context, cpu, processor) = {
            let state = self.0.lock().unwrap();
            let (callback, ContextPtr(context)) = state.callback.expect("registered");
            (callback, context, state.cpus, state.processor(state.cpus))
        };
        // SAFETY: the domain that registered is alive (it deregisters at unload).
        unsafe {
            let vetoed = !callback(context, ProcessorChange::AddStart, processor).is_success();
            if vetoed {
                // As NT: the processor is not added; AddFailure follows.
                self.0.lock().unwrap().vetoes += 1;
            }
            window(cpu);
            if fail || vetoed {
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
    pub(super) fn irql_faults(&self) -> Vec<String> {
        self.0.lock().unwrap().irql_faults.clone()
    }
    pub(super) fn live_allocations(&self) -> usize {
        self.0.lock().unwrap().live.len()
    }
    /// Whether the timer is started, and how many times it was started and stopped.
    pub(super) fn timer_state(&self) -> (bool, usize, usize) {
        let state = self.0.lock().unwrap();
        (state.timer_armed, state.timer_starts, state.timer_stops)
    }
    pub(super) fn delivered(&self) -> Vec<usize> {
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
        self.processor(CPU.with(Cell::get))
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
        let state = self.0.lock().unwrap();
        if (index as usize) < state.cpus {
            Ok(state.processor(index as usize).number)
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
    fn allocate_tagged(&self, layout: Layout, tag: PoolTag) -> Option<NonNull<u8>> {
        self.0.lock().unwrap().tags.push(tag);
        let block = self.allocate(layout)?;
        self.0
            .lock()
            .unwrap()
            .live_tags
            .insert(block.as_ptr() as usize, tag);
        Some(block)
    }
    unsafe fn free_tagged(&self, ptr: NonNull<u8>, layout: Layout, tag: PoolTag) {
        let recorded = self
            .0
            .lock()
            .unwrap()
            .live_tags
            .remove(&(ptr.as_ptr() as usize));
        assert_eq!(
            recorded,
            Some(tag),
            "a block freed with another tag than its own"
        );
        // SAFETY: per the caller.
        unsafe { self.free_untagged(ptr, layout) }
    }
    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        let tagged = self
            .0
            .lock()
            .unwrap()
            .live_tags
            .contains_key(&(ptr.as_ptr() as usize));
        assert!(!tagged, "a tagged block freed without its tag");
        // SAFETY: per the caller.
        unsafe { self.free_untagged(ptr, layout) }
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
        let cpu = state.cpu_of(target);
        state.bound.insert(id, (cpu, HandlerBox(handler)));
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
    fn timer_start(&self, _timer: &(), _period_us: u32) {
        let mut state = self.0.lock().unwrap();
        state.timer_armed = true;
        state.timer_starts += 1;
    }
    fn timer_stop(&self, _timer: &()) {
        // It waits for a running handler: never from that handler, never at DISPATCH.
        self.verify_irql("timer_stop", IrqlRule::Passive);
        let mut state = self.0.lock().unwrap();
        state.timer_armed = false;
        state.timer_stops += 1;
    }
    unsafe fn timer_release(&self, _timer: *mut ()) {
        let mut state = self.0.lock().unwrap();
        if state.timer_armed {
            state
                .irql_faults
                .push("the timer was released while started".to_string());
        }
        state.timer = None;
    }
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
        unsafe { event.write(TestEvent(Cell::new(false), Cell::new(0))) };
    }
    fn event_signal(&self, event: &TestEvent) {
        event.0.set(true);
        event.1.set(event.1.get() + 1);
    }
    fn event_reset(&self, event: &TestEvent) {
        event.0.set(false);
    }
    fn event_wait(&self, event: &TestEvent) {
        let signals = event.1.get();
        let hook = self.0.lock().unwrap().on_wait.clone();
        if let Some(hook) = hook {
            hook();
        }
        // Single thread: waiting means letting queued messages and work run.
        for _ in 0..1000 {
            if event.0.get() || event.1.get() != signals {
                return;
            }
            self.run_messages();
            let (held, one) = {
                let state = self.0.lock().unwrap();
                (state.passive_held, state.passive_one_per_wait)
            };
            if one {
                self.run_one_passive();
            } else if !held {
                self.run_passive();
            }
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
            let processor = self.processor(cpu);
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
    fn verify_slot_owner(&self, routine: &'static str, owner: ProcessorNumber) {
        let here = self.current_processor().number;
        // A panic, like a bug check: another processor's slot written with plain stores is
        // corrupted state (and on one test thread nothing else could report it later).
        assert_eq!(
            here, owner,
            "{routine} on processor {here} used the slot of processor {owner}"
        );
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
