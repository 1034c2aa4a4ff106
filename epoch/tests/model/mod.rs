//! The model machine shared by the loom models (`tests/loom.rs`) and the shuttle torture
//! (`tests/shuttle.rs`): a [`Platform`] whose processors are model threads, so that the checker
//! schedules (and, for loom, weakens) every shared access of the core.
//!
//! What the machine gives the scenarios:
//! - processors `0..CPUS` with DISPATCH exclusion (a per-processor flag that raising takes), a
//!   thread-local current processor and IRQL, and hot-add slots that run only after AddStart;
//! - per-CPU messages queued and run at DISPATCH on their processor by whichever model thread
//!   delivers them (a waiter, a cycle driver or a dedicated "DPC" thread); `flush_messages` waits
//!   only for what was queued or running when it was called, as `KeFlushQueuedDpcs` does;
//! - the periodic timer (fired by waiters: time passes while they wait), events, passive work items
//!   (run by waiters, or each on a worker thread of its own), processor-change notifications;
//! - allocation that fails on demand on a chosen processor (so the overflow slot is used);
//! - checks on every path: S1 (an object's payload sits in a model `UnsafeCell` that readers read
//!   and the destructor writes: loom reports an access not ordered by happens-before, and a reader
//!   that reads the destroyed value panics), S3 (no message to a processor that does not run), S4
//!   (no message to a processor that never ran epoch code), S8 (nothing leaked at unload), S9 (IRQL
//!   rules and spin locks at DISPATCH), and **use after free of the platform's own objects**: freed
//!   memory is kept until the machine is dropped and every later platform access to an object inside
//!   a freed block (an event, a message, a work item, the timer) panics with "use after free".
//!
//! Directed races and the checkers' search. loom's partial-order reduction only reorders steps
//! that touch the same loom object: a payload cell access is no scheduling point, and the
//! machine's std bookkeeping (freed blocks, routing checks) is invisible to it, so a race whose
//! harm shows only there (a destructor's write against a reader's late read, a free against a
//! late signal) needs preemptions in the middle of long paths that a bound of 2 rarely spends
//! there. Two means bring such races within reach without adding a happens-before edge: a
//! scenario orders its threads' steps with [`Gate`]s (std flags), and the machine yields where a
//! real thread may be delayed (a worker thread just started, a signaller about to signal), so
//! that the switch costs no preemption.

pub mod api;
pub mod linked;
pub mod rt;
pub mod scenarios;

use kepoch::platform::*;
use kepoch::{Config, Domain, DomainBox, Mutation, Mutations, Strategy};
use rt::atomic::{AtomicBool as ModelBool, AtomicPtr, Ordering};
use std::alloc::Layout;
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};

/// Processors of the model machine (the reported maximum).
pub const CPUS: usize = 3;

rt::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
    static IRQL: Cell<u8> = Cell::new(0);
    static SECTION: Cell<DispatchSection> = Cell::new(DispatchSection::default());
}

/// Stack depths seen in the current DISPATCH section (L3): a cycle that chains the next one by
/// recursion signals `cycle_done` deeper on the stack each time, an iterative one always from the
/// same frame (or, once, from the frame of the start's shutdown re-check): a second signal deeper
/// than all before it is recursion.
#[derive(Clone, Copy, Default)]
struct DispatchSection {
    /// Stack address when the section began.
    base: usize,
    /// Deepest `event_signal` so far in the section, in bytes below `base`.
    deepest: usize,
    /// How many times a signal came deeper than every one before it.
    deeper: u32,
}

/// An address in the caller's stack frame.
#[inline(never)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Starts a DISPATCH section on the calling thread (for the L3 check).
fn begin_dispatch_section() {
    SECTION.with(|s| {
        s.set(DispatchSection {
            base: stack_address(),
            ..DispatchSection::default()
        })
    });
}

/// Records a signal at DISPATCH and panics when signals keep coming deeper (L3).
fn check_stack_growth() {
    let depth = SECTION.with(|s| {
        let mut section = s.get();
        let depth = section.base.saturating_sub(stack_address());
        if depth > section.deepest {
            if section.deepest != 0 {
                section.deeper += 1;
            }
            section.deepest = depth;
        }
        s.set(section);
        section
    });
    assert!(
        depth.deeper < 2,
        "L3: chained cycles signal deeper and deeper on the stack ({} bytes below the start of this DISPATCH section): cycle chaining recurses",
        depth.deepest
    );
}

/// Locks a bookkeeping mutex; a panic elsewhere (a failed check) does not hide the first failure.
fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The model machine's processor `cpu` (group 0, index `cpu`).
fn processor(cpu: usize) -> CurrentProcessor {
    CurrentProcessor {
        number: ProcessorNumber::new(0, cpu as u8),
        index: cpu as u32,
    }
}

/// Runs `f` with the calling model thread on processor `cpu` (a migration if it was elsewhere).
pub fn on_cpu<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    CPU.with(|c| c.set(cpu));
    f()
}

/// Lifecycle of a platform object (message, work item), kept in the object itself.
mod object_state {
    /// Initialised, not queued.
    pub const IDLE: u8 = 0;
    /// Queued to run.
    pub const QUEUED: u8 = 1;
    /// Released by the core: any later use is a bug.
    pub const RELEASED: u8 = 2;
}

/// The machine's bookkeeping of platform memory: blocks handed out and blocks freed. Freed memory
/// is not returned to the system before the machine drops, so a late access reads stale bytes
/// (and is caught) instead of someone else's block.
#[derive(Default)]
struct Memory {
    live: HashMap<usize, Layout>,
    freed: Vec<(usize, Layout)>,
}

/// A message in the delivery queue: the message object's address and its queue sequence number.
struct Queued {
    message: usize,
    seq: u64,
}

/// The domain's timer, as the machine sees it.
struct TimerState {
    /// Address of the timer object (inside the domain).
    object: usize,
    handler: Handler,
    armed: bool,
    released: bool,
}

/// Shared state of the model machine. Bookkeeping that the protocol does not synchronise through
/// (memory accounting, routing checks, failure switches) uses plain std types, which the checkers do
/// not see and which therefore add no happens-before edges that could hide a missing ordering.
pub struct Machine {
    /// DISPATCH on CPU `i` is held (model atomics: exclusion on one processor orders its code).
    dispatch: Vec<ModelBool>,
    /// CPU `i` runs (false for a hot-add slot before AddStart is followed by the start).
    running: Vec<AtomicBool>,
    /// CPU `i` has run epoch code (asked for its current processor): S4.
    used: Vec<AtomicBool>,
    /// Allocations made on CPU `i` fail.
    fail_alloc: Vec<AtomicBool>,
    /// Whether a message to a processor that never ran epoch code is a violation (not for `eager`).
    check_idle_messages: AtomicBool,
    /// Queued messages (a model lock: the DPC queue's lock orders send before run).
    messages: rt::Mutex<VecDeque<Queued>>,
    /// Sequence numbers of messages queued or running.
    messages_pending: StdMutex<BTreeSet<u64>>,
    next_message_seq: AtomicU64,
    /// Queued passive work items (addresses).
    passive: rt::Mutex<VecDeque<usize>>,
    /// Every queued work item runs on a model thread of its own (a system worker thread), started
    /// by `passive_queue`; otherwise waiters and [`ModelPlatform::run_passive_work`] run them.
    worker_threads: AtomicBool,
    /// The worker threads started so far, joined by [`check_unloaded`].
    workers: StdMutex<Vec<rt::thread::JoinHandle<()>>>,
    timer: StdMutex<Option<TimerState>>,
    /// Held while the timer handler runs; `timer_stop` takes it to wait for a running handler.
    timer_firing: ModelBool,
    callback: StdMutex<Option<(ProcessorChangeFn, usize)>>,
    memory: StdMutex<Memory>,
}

impl Drop for Machine {
    fn drop(&mut self) {
        let memory = self
            .memory
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (address, layout) in memory.live.drain().chain(memory.freed.drain(..)) {
            // SAFETY: every block was allocated with this layout by `allocate` and nothing of the
            // model can reach it any more: its threads and its domain are gone.
            unsafe { std::alloc::dealloc(address as *mut u8, layout) };
        }
    }
}

/// The model platform: a handle on the shared [`Machine`].
#[derive(Clone)]
pub struct ModelPlatform(Arc<Machine>);

/// A per-CPU message (KDPC), inline in a slot.
pub struct ModelMessage {
    cpu: usize,
    handler: Handler,
    state: AtomicU8,
}

/// A passive work item, inline in a work block.
pub struct ModelWork {
    handler: Handler,
    state: AtomicU8,
}

/// A notification event, inline in the domain. Signal and reset are read-modify-writes, so that
/// (like `KeSetEvent`/`KeResetEvent` under the dispatcher lock) a reset that comes after a signal
/// is ordered after everything before the signal.
pub struct ModelEvent(ModelBool);

/// Releases a processor's DISPATCH flag when dropped, also when a check panics at DISPATCH.
struct DispatchHeld<'a> {
    platform: &'a ModelPlatform,
    cpu: usize,
    saved: (usize, u8),
}

impl Drop for DispatchHeld<'_> {
    fn drop(&mut self) {
        CPU.with(|c| c.set(self.saved.0));
        IRQL.with(|i| i.set(self.saved.1));
        self.platform.unlock_cpu(self.cpu);
    }
}

impl ModelPlatform {
    /// A machine whose CPUs `0..running` run; the others are hot-add slots.
    pub fn new(running: usize) -> Self {
        let flags = |f: &dyn Fn(usize) -> bool| (0..CPUS).map(|i| AtomicBool::new(f(i))).collect();
        ModelPlatform(Arc::new(Machine {
            dispatch: (0..CPUS).map(|_| ModelBool::new(false)).collect(),
            running: flags(&|i| i < running),
            used: flags(&|_| false),
            fail_alloc: flags(&|_| false),
            check_idle_messages: AtomicBool::new(true),
            messages: rt::Mutex::new(VecDeque::new()),
            messages_pending: StdMutex::new(BTreeSet::new()),
            next_message_seq: AtomicU64::new(0),
            passive: rt::Mutex::new(VecDeque::new()),
            worker_threads: AtomicBool::new(false),
            workers: StdMutex::new(Vec::new()),
            timer: StdMutex::new(None),
            timer_firing: ModelBool::new(false),
            callback: StdMutex::new(None),
            memory: StdMutex::new(Memory::default()),
        }))
    }

    /// Makes allocations on `cpu` fail (`true`) or succeed again.
    pub fn fail_allocations_on(&self, cpu: usize, fail: bool) {
        self.0.fail_alloc[cpu].store(fail, Ordering::SeqCst);
    }

    /// From now on every queued work item runs on a model thread of its own, concurrently with
    /// everything else (for instance with the unload that waits for it).
    pub fn use_worker_threads(&self) {
        self.0.worker_threads.store(true, Ordering::SeqCst);
    }

    /// Panics if `address` lies in a block the core freed: the core touched a platform object
    /// (`what`) after freeing the memory that holds it.
    fn check_alive(&self, address: usize, what: &str) {
        let memory = lock(&self.0.memory);
        if let Some((start, layout)) = memory
            .freed
            .iter()
            .find(|(start, layout)| (*start..*start + layout.size()).contains(&address))
        {
            panic!(
                "use after free: {what} at {address:#x}, inside the {}-byte block at {start:#x} freed earlier",
                layout.size()
            );
        }
    }

    fn lock_cpu(&self, cpu: usize) {
        while self.0.dispatch[cpu]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            rt::yield_now();
        }
    }

    fn unlock_cpu(&self, cpu: usize) {
        self.0.dispatch[cpu].store(false, Ordering::Release);
    }

    /// Takes DISPATCH on `cpu` and makes the calling thread run there until the guard drops.
    fn hold_dispatch(&self, cpu: usize) -> DispatchHeld<'_> {
        let saved = (CPU.with(Cell::get), IRQL.with(Cell::get));
        self.lock_cpu(cpu);
        CPU.with(|c| c.set(cpu));
        IRQL.with(|i| i.set(2));
        begin_dispatch_section();
        DispatchHeld {
            platform: self,
            cpu,
            saved,
        }
    }

    /// Runs one queued message (the oldest with a sequence number below `before`, if given) on its
    /// CPU at DISPATCH. False when there is none.
    fn deliver_one_before(&self, before: Option<u64>) -> bool {
        // Dequeue and clear the message's queued state under the queue lock, as NT does with a
        // DPC's Inserted flag: a send that comes after this queues the message again.
        let next = {
            let mut queue = self
                .0
                .messages
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let position = queue
                .iter()
                .position(|q| before.is_none_or(|limit| q.seq < limit));
            let next = position.and_then(|p| queue.remove(p));
            if let Some(Queued { message, .. }) = next {
                self.check_alive(message, "message handler of a freed slot");
                // SAFETY: the address came from `message_send` and its block is not freed
                // (checked above); freed memory is never returned to the system during a model.
                let message = unsafe { &*(message as *const ModelMessage) };
                message.state.store(object_state::IDLE, Ordering::SeqCst);
            }
            next
        };
        let Some(Queued { message, seq }) = next else {
            return false;
        };
        // SAFETY: as above; the slot cannot be freed while its message is pending (unload waits
        // for pending messages in `flush_messages`, and a later free is caught by the model).
        let message = unsafe { &*(message as *const ModelMessage) };
        let handler = message.handler;
        let held = self.hold_dispatch(message.cpu);
        // SAFETY: the message's slot is alive (checked above) and the handler runs at DISPATCH on
        // the message's processor, never concurrently with itself (one message object, dequeued).
        unsafe { handler.invoke() };
        drop(held);
        lock(&self.0.messages_pending).remove(&seq);
        true
    }

    /// Runs one queued message. False when none is queued.
    pub fn deliver_one(&self) -> bool {
        self.deliver_one_before(None)
    }

    /// Runs queued messages until none is queued (including those the handlers queue).
    pub fn deliver_all(&self) {
        while self.deliver_one() {}
    }

    /// Runs one queued passive work item at PASSIVE on the calling thread. False when none is queued.
    fn run_passive_one(&self) -> bool {
        let next = self
            .0
            .passive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let Some(work) = next else {
            return false;
        };
        assert_eq!(
            IRQL.with(Cell::get),
            0,
            "S9: passive work would run above PASSIVE"
        );
        self.check_alive(work, "work item handler of a freed work item");
        // SAFETY: queued by `passive_queue`, and its block is not freed (checked above).
        let work = unsafe { &*(work as *const ModelWork) };
        assert_eq!(
            work.state.swap(object_state::IDLE, Ordering::SeqCst),
            object_state::QUEUED,
            "a passive work item ran that was not queued"
        );
        let handler = work.handler;
        // SAFETY: the work block is alive (checked above); the handler runs once per queueing.
        unsafe { handler.invoke() };
        true
    }

    /// Runs every queued passive work item on the calling thread.
    pub fn run_passive_work(&self) {
        while self.run_passive_one() {}
    }

    /// The periodic timer fires on the calling thread's CPU, at DISPATCH, if it is armed: time
    /// passes while a waiter waits, so a wait that needs the next timer cycle completes.
    pub fn fire_timer(&self) {
        while self
            .0
            .timer_firing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            rt::yield_now();
        }
        let armed = {
            let timer = lock(&self.0.timer);
            match &*timer {
                Some(t) if t.armed => {
                    assert!(
                        !t.released,
                        "use after free: the timer fired after its release"
                    );
                    Some((t.object, t.handler))
                }
                _ => None,
            }
        };
        if let Some((object, handler)) = armed {
            self.check_alive(object, "timer handler of a freed domain");
            let held = self.hold_dispatch(CPU.with(Cell::get));
            // SAFETY: the timer is armed, not released and its domain not freed (checked above).
            unsafe { handler.invoke() };
            drop(held);
        }
        self.0.timer_firing.store(false, Ordering::Release);
    }

    /// Starts one reclamation cycle from the calling thread and runs it to its end.
    pub fn cycle(&self, domain: &Domain<ModelPlatform>) {
        domain.flush();
        self.deliver_all();
    }

    /// Sends a processor-change notification for `cpu` from the calling thread.
    pub fn notify(&self, cpu: usize, change: ProcessorChange) {
        let (callback, context) = lock(&self.0.callback).expect("registered");
        // SAFETY: the domain is alive while the registration is.
        unsafe { callback(context as *const (), change, processor(cpu)) };
    }

    /// Hot-adds `cpu`: AddStart, then the processor starts and AddComplete, or AddFailure when
    /// `fail` (the processor then never runs).
    pub fn hot_add(&self, cpu: usize, fail: bool) {
        self.notify(cpu, ProcessorChange::AddStart);
        if fail {
            self.notify(
                cpu,
                ProcessorChange::AddFailure(Status::INSUFFICIENT_RESOURCES),
            );
        } else {
            self.0.running[cpu].store(true, Ordering::SeqCst);
            self.notify(cpu, ProcessorChange::AddComplete);
        }
    }

    /// Whether `cpu` runs.
    pub fn is_running(&self, cpu: usize) -> bool {
        self.0.running[cpu].load(Ordering::SeqCst)
    }

    /// Blocks still allocated.
    fn live_blocks(&self) -> usize {
        lock(&self.0.memory).live.len()
    }
}

// SAFETY: DISPATCH exclusion per CPU comes from `dispatch[cpu]`, which raising and message delivery
// both take; a message object is queued at most once, so its handler never runs concurrently with
// itself; `allocate` returns blocks of the requested layout from the system allocator.
unsafe impl Platform for ModelPlatform {
    type Message = ModelMessage;
    type Timer = ();
    type PassiveWork = ModelWork;
    type Event = ModelEvent;

    fn current_processor(&self) -> CurrentProcessor {
        let cpu = CPU.with(Cell::get);
        self.0.used[cpu].store(true, Ordering::SeqCst);
        processor(cpu)
    }
    fn current_irql(&self) -> Irql {
        Irql(IRQL.with(Cell::get))
    }
    fn raise_to_dispatch(&self) -> Irql {
        let old = IRQL.with(Cell::get);
        if old < 2 {
            self.lock_cpu(CPU.with(Cell::get));
            IRQL.with(|i| i.set(2));
            begin_dispatch_section();
        }
        Irql(old)
    }
    fn lower_irql(&self, previous: Irql) {
        if previous.0 < 2 && IRQL.with(Cell::get) >= 2 {
            self.unlock_cpu(CPU.with(Cell::get));
        }
        IRQL.with(|i| i.set(previous.0));
    }
    fn max_processor_count(&self) -> u32 {
        CPUS as u32
    }
    fn active_processor_count(&self) -> u32 {
        (0..CPUS).filter(|&c| self.is_running(c)).count() as u32
    }
    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status> {
        match index as usize {
            cpu if cpu < CPUS && self.is_running(cpu) => Ok(ProcessorNumber::new(0, cpu as u8)),
            _ => Err(Status::INVALID_PARAMETER),
        }
    }
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        if self.0.fail_alloc[CPU.with(Cell::get)].load(Ordering::SeqCst) {
            return None;
        }
        // SAFETY: the core never asks for zero-sized blocks.
        let block = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        lock(&self.0.memory)
            .live
            .insert(block.as_ptr() as usize, layout);
        Some(block)
    }
    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        let address = ptr.as_ptr() as usize;
        let mut memory = lock(&self.0.memory);
        match memory.live.remove(&address) {
            Some(allocated) => assert_eq!(
                allocated, layout,
                "free of block {address:#x} with another layout than it was allocated with"
            ),
            None => {
                drop(memory);
                panic!("double free: block {address:#x} is not allocated");
            }
        }
        memory.freed.push((address, layout));
    }
    unsafe fn message_init(
        &self,
        message: *mut ModelMessage,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status> {
        // SAFETY: the core passes writable storage that stays put until `message_release`.
        unsafe {
            message.write(ModelMessage {
                cpu: target.number as usize,
                handler,
                state: AtomicU8::new(object_state::IDLE),
            })
        };
        Ok(())
    }
    fn message_send(&self, message: &ModelMessage) {
        let address = message as *const ModelMessage as usize;
        self.check_alive(address, "message_send to a freed slot");
        let mut queue = self
            .0
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = message.state.load(Ordering::SeqCst);
        assert_ne!(
            state,
            object_state::RELEASED,
            "use after free: message_send of a released message"
        );
        assert!(
            self.is_running(message.cpu),
            "S3: a message was routed to processor {} before AddComplete",
            message.cpu
        );
        assert!(
            !self.0.check_idle_messages.load(Ordering::SeqCst)
                || self.0.used[message.cpu].load(Ordering::SeqCst),
            "S4: a message was sent to processor {}, which never ran epoch code",
            message.cpu
        );
        if state == object_state::QUEUED {
            return; // KeInsertQueueDpc of a queued DPC does nothing.
        }
        message.state.store(object_state::QUEUED, Ordering::SeqCst);
        let seq = self.0.next_message_seq.fetch_add(1, Ordering::SeqCst);
        lock(&self.0.messages_pending).insert(seq);
        queue.push_back(Queued {
            message: address,
            seq,
        });
    }
    unsafe fn message_release(&self, message: *mut ModelMessage) {
        self.check_alive(message as usize, "message_release of a freed slot");
        // SAFETY: initialised by `message_init`, not freed (checked above).
        let state = unsafe { &(*message).state }.swap(object_state::RELEASED, Ordering::SeqCst);
        assert_eq!(
            state,
            object_state::IDLE,
            "a message was released while queued or twice"
        );
    }
    fn flush_messages(&self) {
        // KeFlushQueuedDpcs: wait for what is queued or running now, not for what those queue.
        let before = self.0.next_message_seq.load(Ordering::SeqCst);
        loop {
            let waiting = lock(&self.0.messages_pending)
                .first()
                .is_some_and(|&seq| seq < before);
            if !waiting {
                return;
            }
            if !self.deliver_one_before(Some(before)) {
                rt::yield_now();
            }
        }
    }
    unsafe fn timer_init(&self, timer: *mut (), handler: Handler) -> Result<(), Status> {
        *lock(&self.0.timer) = Some(TimerState {
            object: timer as usize,
            handler,
            armed: false,
            released: false,
        });
        Ok(())
    }
    fn timer_start(&self, _timer: &(), _period_us: u32) {
        if let Some(t) = &mut *lock(&self.0.timer) {
            t.armed = true;
        }
    }
    fn timer_stop(&self, _timer: &()) {
        // Wait for a running handler, then disarm: none runs or starts after this returns.
        while self
            .0
            .timer_firing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            rt::yield_now();
        }
        if let Some(t) = &mut *lock(&self.0.timer) {
            t.armed = false;
        }
        self.0.timer_firing.store(false, Ordering::Release);
    }
    unsafe fn timer_release(&self, _timer: *mut ()) {
        if let Some(t) = &mut *lock(&self.0.timer) {
            assert!(!t.armed, "the timer was released while armed");
            t.released = true;
        }
    }
    unsafe fn passive_init(&self, work: *mut ModelWork, handler: Handler) -> Result<(), Status> {
        // SAFETY: the core passes writable storage that stays put until `passive_release`.
        unsafe {
            work.write(ModelWork {
                handler,
                state: AtomicU8::new(object_state::IDLE),
            })
        };
        Ok(())
    }
    fn passive_queue(&self, work: &ModelWork) {
        let address = work as *const ModelWork as usize;
        self.check_alive(address, "passive_queue of a freed work item");
        let state = work.state.swap(object_state::QUEUED, Ordering::SeqCst);
        assert_eq!(
            state,
            object_state::IDLE,
            "a passive work item was queued while queued or after its release"
        );
        self.0
            .passive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(address);
        if self.0.worker_threads.load(Ordering::SeqCst) {
            let platform = self.clone();
            let worker = rt::thread::spawn(move || {
                on_cpu(CPUS - 1, || {
                    IRQL.with(|i| i.set(0));
                    platform.run_passive_one();
                })
            });
            lock(&self.0.workers).push(worker);
            // A system worker thread may start at once, before the queuer goes on: give it the
            // turn (a yield, not a preemption, so the checkers' bounds are not spent on it).
            rt::yield_now();
        }
    }
    unsafe fn passive_release(&self, work: *mut ModelWork) {
        self.check_alive(work as usize, "passive_release of a freed work item");
        // SAFETY: initialised by `passive_init`, not freed (checked above).
        let state = unsafe { &(*work).state }.swap(object_state::RELEASED, Ordering::SeqCst);
        assert_eq!(
            state,
            object_state::IDLE,
            "a passive work item was released while queued or twice"
        );
    }
    unsafe fn event_init(&self, event: *mut ModelEvent) {
        // SAFETY: the core passes writable storage.
        unsafe { event.write(ModelEvent(ModelBool::new(false))) };
    }
    fn event_signal(&self, event: &ModelEvent) {
        // A signaller may be delayed between deciding to signal and touching the event: let the
        // other threads run first (a yield, not a preemption), so that a waiter that can see the
        // decision before the signal, and free the event, does so. loom takes the yield as a free
        // switch point on every signal; under shuttle a yield also lowers the thread's PCT
        // priority, which at DISPATCH would steer the seeded torture away from the schedules it
        // samples, so there only signallers below DISPATCH (work items, `synchronize`) yield.
        if cfg!(loom) || IRQL.with(Cell::get) < 2 {
            rt::yield_now();
        }
        self.check_alive(
            event as *const ModelEvent as usize,
            "event_signal on an event inside freed memory",
        );
        if IRQL.with(Cell::get) >= 2 {
            check_stack_growth();
        }
        event.0.swap(true, Ordering::AcqRel);
    }
    fn event_reset(&self, event: &ModelEvent) {
        self.check_alive(
            event as *const ModelEvent as usize,
            "event_reset on an event inside freed memory",
        );
        event.0.swap(false, Ordering::AcqRel);
    }
    fn event_wait(&self, event: &ModelEvent) {
        self.verify_irql("event_wait", IrqlRule::Passive);
        let inline_work = !self.0.worker_threads.load(Ordering::SeqCst);
        loop {
            self.check_alive(
                event as *const ModelEvent as usize,
                "event_wait on an event inside freed memory",
            );
            if event.0.load(Ordering::Acquire) {
                return;
            }
            // A waiter lets queued messages and work run (it may run them itself), and time passes.
            let ran = self.deliver_one() || (inline_work && self.run_passive_one());
            if !ran {
                self.fire_timer();
            }
            rt::yield_now();
        }
    }
    unsafe fn processor_change_register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status> {
        *lock(&self.0.callback) = Some((callback, context as usize));
        let running: Vec<usize> = (0..CPUS).filter(|&c| self.is_running(c)).collect();
        for &cpu in &running {
            self.notify(cpu, ProcessorChange::AddStart);
        }
        for &cpu in &running {
            self.notify(cpu, ProcessorChange::AddComplete);
        }
        Ok(Some(NonNull::dangling()))
    }
    unsafe fn processor_change_deregister(&self, _handle: NonNull<()>) {
        *lock(&self.0.callback) = None;
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn log(&self, _level: LogLevel, _args: fmt::Arguments<'_>) {}
    fn verify_irql(&self, routine: &'static str, rule: IrqlRule) {
        let irql = self.current_irql();
        assert!(
            rule.allows(irql),
            "S9: {routine} called at IRQL {} ({rule:?} only)",
            irql.0
        );
    }
    fn spin_lock_acquired(&self, _lock: *const ()) {
        let irql = self.current_irql();
        assert!(
            irql >= Irql::DISPATCH,
            "S9: a core spin lock was acquired at IRQL {} (it must raise to DISPATCH first)",
            irql.0
        );
    }
}

/// Value of a live object's payload.
const ALIVE: u64 = 0xA11E;
/// Value the destructor writes into the payload.
const DESTROYED: u64 = 0xDEAD;

/// An object readers reach through the world's shared pointer. Its payload sits in a model
/// `UnsafeCell` that readers read and the destructor writes: loom reports the two accesses when
/// happens-before does not order them, and a reader that runs after the destructor reads
/// `DESTROYED`. The cell itself is never dropped (its memory is kept until the machine drops).
pub struct Object {
    payload: ManuallyDrop<rt::UnsafeCell<u64>>,
}

// SAFETY: the payload is only written by the destructor, which the protocol orders after every
// reader; that ordering is exactly what the models check.
unsafe impl Send for Object {}
// SAFETY: readers on several threads only read the payload; the one write (the destructor) is
// what the protocol orders after them, which is what the models check.
unsafe impl Sync for Object {}

impl Object {
    fn new() -> Self {
        Object {
            payload: ManuallyDrop::new(rt::UnsafeCell::new(ALIVE)),
        }
    }

    /// Reads the payload and panics if the destructor already ran (S1).
    fn check_alive(&self, reader: &str) {
        // SAFETY: a plain read; a concurrent destructor write is what loom reports.
        let value = self.payload.with(|p| unsafe { *p });
        assert_ne!(value, DESTROYED, "S1: object freed while {reader} holds it");
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: the destructor runs once the protocol released the object: no reader remains.
        self.payload.with_mut(|p| unsafe { *p = DESTROYED });
    }
}

/// The mutation named by `KEPOCH_MUTATION` (or the older `KEPOCH_LOOM_MUTATION`), so that the
/// mutation score can prove the models catch re-introduced bugs.
pub fn mutations() -> Mutations {
    let name = std::env::var("KEPOCH_MUTATION").or_else(|_| std::env::var("KEPOCH_LOOM_MUTATION"));
    let name = match name {
        Ok(name) if !name.is_empty() => name,
        _ => return Mutations::NONE,
    };
    let mutation = Mutation::from_name(&name)
        .unwrap_or_else(|| panic!("KEPOCH_MUTATION={name}: no such mutation"));
    let set = Mutations::NONE.with(mutation);
    assert!(
        set.active(mutation),
        "KEPOCH_MUTATION={name} needs the test built with `--features mutations`"
    );
    set
}

/// A domain on a model machine, with one shared pointer that readers follow and writers replace.
pub struct World {
    /// The machine.
    pub platform: ModelPlatform,
    /// The domain under test. Unloaded only by [`World::finish`] or a scenario that takes it out:
    /// a world dropped while a check panics leaks its domain instead of unloading it, so that the
    /// first failure is the one reported.
    pub domain: ManuallyDrop<DomainBox<ModelPlatform>>,
    /// The shared pointer.
    pub cell: AtomicPtr<Object>,
    /// Schedule gates of a directed scenario (see [`Gate`]).
    pub gates: [Gate; GATES],
}

/// Gates a [`World`] offers its scenario.
pub const GATES: usize = 4;

/// A point in a directed scenario that one model thread opens and another waits for: a plain std
/// flag, which neither checker sees. It fixes the order of two threads' steps, so that the checker
/// spends no preemptions on reaching the race, and adds no happens-before edge: loom still lets
/// every load return any value the memory model allows, as if the two threads raced.
pub struct Gate(AtomicBool);

impl Gate {
    /// A closed gate.
    const fn new() -> Self {
        Gate(AtomicBool::new(false))
    }

    /// Opens the gate.
    pub fn open(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits (giving the other model threads turns) until the gate is open.
    pub fn wait(&self) {
        while !self.0.load(std::sync::atomic::Ordering::Relaxed) {
            rt::yield_now();
        }
    }
}

impl World {
    /// The domain's counters in a heap buffer: a `Stats` (24 KB) on a model thread's small stack would
    /// overflow it.
    pub fn stats(&self) -> Box<kepoch::Stats> {
        let layout = Layout::new::<kepoch::Stats>();
        // SAFETY: `Stats` is made of integers only, so zeroed memory is a valid value; the layout is
        // that of `Stats` (not zero-sized) and a failed allocation is reported, not dereferenced.
        let mut stats = unsafe {
            let raw = std::alloc::alloc_zeroed(layout).cast::<kepoch::Stats>();
            if raw.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(raw)
        };
        self.domain.stats_into(&mut stats);
        stats
    }

    /// Loads a domain with `strategy` on a machine where CPUs `0..running` run.
    pub fn new(strategy: Strategy, running: usize) -> Arc<World> {
        let platform = ModelPlatform::new(running);
        platform
            .0
            .check_idle_messages
            .store(strategy != Strategy::Eager, Ordering::SeqCst);
        let config = Config {
            mutations: mutations(),
            ..Config::with_strategy(strategy)
        };
        let domain = on_cpu(0, || {
            Domain::create(platform.clone(), config).expect("load")
        });
        let first = domain.alloc(Object::new()).ok().expect("alloc");
        Arc::new(World {
            platform,
            domain: ManuallyDrop::new(domain),
            cell: AtomicPtr::new(first.as_ptr()),
            gates: [const { Gate::new() }; GATES],
        })
    }

    /// Runs `f` on a new model thread that shares this world.
    pub fn spawn(
        self: &Arc<Self>,
        f: impl FnOnce(&World) + Send + 'static,
    ) -> rt::thread::JoinHandle<()> {
        let world = Arc::clone(self);
        rt::thread::spawn(move || f(&world))
    }

    /// A reader on `cpu`: enters, follows the pointer, and checks the object is alive while inside.
    pub fn read(&self, cpu: usize) {
        self.read_migrating(cpu, cpu);
    }

    /// A reader that enters on `from`, follows the pointer, migrates to `to` (below DISPATCH a
    /// thread may), checks the object there and exits on `to`.
    pub fn read_migrating(&self, from: usize, to: usize) {
        // SAFETY: exited below, before the domain can be dropped (the world is borrowed).
        let token = on_cpu(from, || unsafe { self.domain.enter_raw() });
        let object = self.cell.load(Ordering::Acquire);
        rt::yield_now();
        on_cpu(to, || {
            // SAFETY: protected by the epoch entered above; freed memory is kept during a model,
            // so even a protocol bug reads stale bytes, which the check reports.
            if let Some(object) = unsafe { object.as_ref() } {
                object.check_alive(&format!("a reader that entered on CPU {from}"));
            }
            // SAFETY: the token came from this domain and is exited once.
            unsafe { self.domain.exit_raw(token) };
        });
    }

    /// A reader on `cpu` that, once it holds the object, opens gate `entered` and waits for gate
    /// `proceed` before it checks the object and exits.
    pub fn read_gated(&self, cpu: usize, entered: usize, proceed: usize) {
        // SAFETY: exited below, before the domain can be dropped (the world is borrowed).
        let token = on_cpu(cpu, || unsafe { self.domain.enter_raw() });
        let object = self.cell.load(Ordering::Acquire);
        self.gates[entered].open();
        self.gates[proceed].wait();
        on_cpu(cpu, || {
            // SAFETY: protected by the epoch entered above; freed memory is kept during a model.
            if let Some(object) = unsafe { object.as_ref() } {
                object.check_alive(&format!("a reader on CPU {cpu}"));
            }
            // SAFETY: the token came from this domain and is exited once.
            unsafe { self.domain.exit_raw(token) };
        });
    }

    /// A writer on `cpu`: publishes a new object, unlinking the current one, and retires that one.
    /// Does nothing if the allocation fails (allocations on `cpu` were made to fail).
    pub fn replace(&self, cpu: usize) {
        on_cpu(cpu, || {
            let Ok(fresh) = self.domain.alloc(Object::new()) else {
                return;
            };
            let old = self.cell.swap(fresh.as_ptr(), Ordering::AcqRel);
            if let Some(old) = NonNull::new(old) {
                // SAFETY: unlinked just now; allocated by this domain.
                unsafe { self.domain.retire(old) }.expect("retire");
            }
        });
    }

    /// Runs one cycle to its end from the calling thread.
    pub fn cycle(&self) {
        self.platform.cycle(&self.domain);
    }

    /// Retires what is still published, runs a few idle cycles and checks that everything retired
    /// was disposed of (L1: no reader is inside any more), then unloads and checks S8.
    pub fn finish(this: Arc<Self>) {
        let world = Arc::try_unwrap(this).ok().expect("threads joined");
        let last = world.cell.swap(ptr::null_mut(), Ordering::AcqRel);
        on_cpu(0, || {
            if let Some(last) = NonNull::new(last) {
                // SAFETY: unlinked; allocated by this domain.
                unsafe { world.domain.retire(last) }.expect("retire");
            }
            for _ in 0..3 {
                world.cycle();
            }
        });
        let pending = world.stats().pending;
        assert_eq!(
            pending, 0,
            "L1: {pending} retired item(s) still pending after three cycles with no reader inside"
        );
        let (platform, domain) = world.into_parts();
        on_cpu(0, || drop(domain));
        check_unloaded(&platform);
    }

    /// Takes the world apart for a scenario that unloads the domain itself.
    pub fn into_parts(self) -> (ModelPlatform, DomainBox<ModelPlatform>) {
        let World {
            platform, domain, ..
        } = self;
        (platform, ManuallyDrop::into_inner(domain))
    }
}

/// Checks S8 after the domain was dropped: nothing of it runs any more (leftover messages, work
/// items and timer firings run now, and any that touches the freed domain is a use after free) and
/// nothing is leaked.
pub fn check_unloaded(platform: &ModelPlatform) {
    let workers = std::mem::take(&mut *lock(&platform.0.workers));
    for worker in workers {
        worker.join().unwrap();
    }
    platform.deliver_all();
    platform.run_passive_work();
    platform.fire_timer();
    let live = platform.live_blocks();
    assert_eq!(live, 0, "S8: {live} block(s) leaked by unload");
}

/// A work callback that allocates an object in the domain at `context` and retires it at once:
/// what a work callback or a destructor retiring more during unload looks like.
pub fn retire_fresh_object(context: usize) {
    // SAFETY: the scenarios pass the address of a domain that outlives its work items (unload
    // waits for them).
    let domain = unsafe { &*(context as *const Domain<ModelPlatform>) };
    if let Ok(object) = domain.alloc(Object::new()) {
        // SAFETY: never published, allocated by this domain.
        unsafe { domain.retire(object) }.expect("retire");
    }
}
