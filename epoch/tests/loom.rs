//! loom models of the protocol: two or three CPUs plus a cycle driver, every interleaving of their
//! atomic operations up to a preemption bound. Each model asserts S1 (no object is freed while a reader
//! that could see it is inside), S3 (no message to a CPU before AddComplete) and S5 (a joining CPU
//! cannot let a cycle release past it) on every path.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p kepoch --release --test loom` (bound 2, CI).
//! Deeper: `LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test -p kepoch --release --test loom`.
#![cfg(loom)]

use kepoch::platform::*;
use kepoch::{Config, Domain, DomainBox, Mutation, Mutations, Strategy};
use loom::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::alloc::Layout;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::ptr::{self, NonNull};

const CPUS: usize = 3;

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
    static IRQL: Cell<u8> = Cell::new(0);
}

#[derive(Clone, Copy)]
struct SendHandler(Handler);
// SAFETY: handlers point into the domain, which outlives every model thread's use of them.
unsafe impl Send for SendHandler {}

/// Shared state of the model machine.
struct Machine {
    /// DISPATCH on CPU `i` is held.
    dispatch: Vec<AtomicBool>,
    /// CPU `i` runs (false for a hot-add slot before AddComplete).
    running: Vec<AtomicBool>,
    /// Queued messages: (target CPU, handler).
    queue: Mutex<VecDeque<(usize, SendHandler)>>,
    /// A message was sent to a CPU that is not running (S3 violated).
    misrouted: AtomicBool,
    /// The domain's periodic timer handler (fired by waiters: time passes while they wait).
    timer: Mutex<Option<SendHandler>>,
    /// Registered processor-change callback.
    callback: Mutex<Option<(ProcessorChangeFn, usize)>>,
}

#[derive(Clone)]
struct LoomPlatform(Arc<Machine>);

struct LoomMessage {
    cpu: usize,
    handler: SendHandler,
}
// SAFETY: plain data.
unsafe impl Sync for LoomMessage {}
// SAFETY: plain data.
unsafe impl Send for LoomMessage {}

struct LoomEvent(AtomicBool);

impl LoomPlatform {
    fn new(running: usize) -> Self {
        LoomPlatform(Arc::new(Machine {
            dispatch: (0..CPUS).map(|_| AtomicBool::new(false)).collect(),
            running: (0..CPUS).map(|i| AtomicBool::new(i < running)).collect(),
            queue: Mutex::new(VecDeque::new()),
            misrouted: AtomicBool::new(false),
            timer: Mutex::new(None),
            callback: Mutex::new(None),
        }))
    }

    fn lock_cpu(&self, cpu: usize) {
        while self.0.dispatch[cpu]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            thread::yield_now();
        }
    }

    fn unlock_cpu(&self, cpu: usize) {
        self.0.dispatch[cpu].store(false, Ordering::Release);
    }

    /// Runs one queued message on its CPU (at DISPATCH there). False when none is queued.
    fn deliver_one(&self) -> bool {
        let next = self.0.queue.lock().unwrap().pop_front();
        let Some((cpu, handler)) = next else {
            return false;
        };
        let (old_cpu, old_irql) = (CPU.with(Cell::get), IRQL.with(Cell::get));
        self.lock_cpu(cpu);
        CPU.with(|c| c.set(cpu));
        IRQL.with(|i| i.set(2));
        // SAFETY: the slot the message belongs to lives until the domain is dropped, after flushing.
        unsafe { handler.0.invoke() };
        CPU.with(|c| c.set(old_cpu));
        IRQL.with(|i| i.set(old_irql));
        self.unlock_cpu(cpu);
        true
    }

    /// The periodic timer fires on the calling thread's CPU, at DISPATCH: time passes while a waiter
    /// waits, so a wait that needs the next timer cycle completes.
    fn fire_timer(&self) {
        let timer = *self.0.timer.lock().unwrap();
        match timer {
            Some(timer) => {
                let previous = self.raise_to_dispatch();
                // SAFETY: the handler's domain is alive until the timer is stopped at unload.
                unsafe { timer.0.invoke() };
                self.lower_irql(previous);
            }
            None => thread::yield_now(),
        }
    }

    fn deliver_all(&self) {
        while self.deliver_one() {}
    }

    /// Runs one reclamation cycle to its end from the calling thread.
    fn cycle(&self, domain: &Domain<LoomPlatform>) {
        domain.flush();
        self.deliver_all();
    }

    /// Sends a processor-change notification for `cpu` from the calling thread.
    fn notify(&self, cpu: usize, change: ProcessorChange) {
        let (callback, context) = self.0.callback.lock().unwrap().expect("registered");
        let processor = CurrentProcessor {
            number: ProcessorNumber::new(0, cpu as u8),
            index: cpu as u32,
        };
        // SAFETY: the domain is alive while the model runs.
        unsafe { callback(context as *const (), change, processor) };
    }
}

fn on_cpu<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    CPU.with(|c| c.set(cpu));
    f()
}

// SAFETY: DISPATCH exclusion per CPU comes from `dispatch[cpu]`; message handlers take it too.
unsafe impl Platform for LoomPlatform {
    type Message = LoomMessage;
    type Timer = ();
    type PassiveWork = ();
    type Event = LoomEvent;

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
        let old = IRQL.with(Cell::get);
        if old < 2 {
            self.lock_cpu(CPU.with(Cell::get));
            IRQL.with(|i| i.set(2));
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
        self.0
            .running
            .iter()
            .filter(|r| r.load(Ordering::SeqCst))
            .count() as u32
    }
    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status> {
        match self.0.running.get(index as usize) {
            Some(running) if running.load(Ordering::SeqCst) => {
                Ok(ProcessorNumber::new(0, index as u8))
            }
            _ => Err(Status::INVALID_PARAMETER),
        }
    }
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the core never asks for zero-sized blocks.
        NonNull::new(unsafe { std::alloc::alloc(layout) })
    }
    unsafe fn free(&self, ptr: NonNull<u8>, _layout: Layout) {
        // Never returned to the system during a model: a protocol bug then reads a dropped object
        // (its `freed` flag is set) instead of reused memory. The few bytes per iteration are leaked.
        let _ = ptr;
    }
    unsafe fn message_init(
        &self,
        message: *mut LoomMessage,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status> {
        // SAFETY: the core passes writable storage.
        unsafe {
            message.write(LoomMessage {
                cpu: target.number as usize,
                handler: SendHandler(handler),
            })
        };
        Ok(())
    }
    fn message_send(&self, message: &LoomMessage) {
        // S3 is checked when the model finishes (a panic here, under a CPU's DISPATCH lock, would
        // leave the other model threads spinning); the message still runs so the cycle completes.
        if !self.0.running[message.cpu].load(Ordering::SeqCst) {
            self.0.misrouted.store(true, Ordering::SeqCst);
        }
        self.0
            .queue
            .lock()
            .unwrap()
            .push_back((message.cpu, message.handler));
    }
    unsafe fn message_release(&self, _message: *mut LoomMessage) {}
    fn flush_messages(&self) {
        self.deliver_all();
    }
    unsafe fn timer_init(&self, _timer: *mut (), handler: Handler) -> Result<(), Status> {
        *self.0.timer.lock().unwrap() = Some(SendHandler(handler));
        Ok(())
    }
    fn timer_start(&self, _timer: &(), _period_us: u32) {}
    fn timer_stop(&self, _timer: &()) {
        *self.0.timer.lock().unwrap() = None;
    }
    unsafe fn timer_release(&self, _timer: *mut ()) {}
    unsafe fn passive_init(&self, _work: *mut (), _handler: Handler) -> Result<(), Status> {
        Err(Status::NOT_SUPPORTED)
    }
    fn passive_queue(&self, _work: &()) {}
    unsafe fn passive_release(&self, _work: *mut ()) {}
    unsafe fn event_init(&self, event: *mut LoomEvent) {
        // SAFETY: the core passes writable storage.
        unsafe { event.write(LoomEvent(AtomicBool::new(false))) };
    }
    fn event_signal(&self, event: &LoomEvent) {
        event.0.store(true, Ordering::SeqCst);
    }
    fn event_reset(&self, event: &LoomEvent) {
        event.0.store(false, Ordering::SeqCst);
    }
    fn event_wait(&self, event: &LoomEvent) {
        // A waiting thread lets queued messages run (it may deliver them itself).
        while !event.0.load(Ordering::SeqCst) {
            if !self.deliver_one() {
                self.fire_timer();
            }
            // Let the other model threads run: the thread this wait depends on may be preempted.
            thread::yield_now();
        }
    }
    unsafe fn processor_change_register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status> {
        *self.0.callback.lock().unwrap() = Some((callback, context as usize));
        let running: Vec<usize> = (0..CPUS)
            .filter(|&c| self.0.running[c].load(Ordering::SeqCst))
            .collect();
        for &cpu in &running {
            self.notify(cpu, ProcessorChange::AddStart);
        }
        for &cpu in &running {
            self.notify(cpu, ProcessorChange::AddComplete);
        }
        Ok(Some(NonNull::dangling()))
    }
    unsafe fn processor_change_deregister(&self, _handle: NonNull<()>) {
        *self.0.callback.lock().unwrap() = None;
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn log(&self, _level: LogLevel, _args: fmt::Arguments<'_>) {}
}

/// An object readers reach through a shared cell; its destructor sets `freed`. Freed blocks are
/// never returned to the system during a model, so a reader that outlives the object reads `true`.
struct Object {
    freed: AtomicBool,
}

impl Drop for Object {
    fn drop(&mut self) {
        self.freed.store(true, Ordering::SeqCst);
    }
}

struct World {
    platform: LoomPlatform,
    domain: DomainBox<LoomPlatform>,
    cell: AtomicPtr<Object>,
}

/// The mutation named by `KEPOCH_LOOM_MUTATION` (with the `mutations` feature), so that the mutation
/// test can prove these models catch re-introduced bugs.
fn mutations() -> Mutations {
    match std::env::var("KEPOCH_LOOM_MUTATION") {
        Ok(name) => Mutations::NONE.with(Mutation::from_name(&name).expect("known mutation")),
        Err(_) => Mutations::NONE,
    }
}

fn world(strategy: Strategy, running: usize) -> Arc<World> {
    let platform = LoomPlatform::new(running);
    let config = Config {
        mutations: mutations(),
        ..Config::with_strategy(strategy)
    };
    let domain = on_cpu(0, || {
        Domain::create(platform.clone(), config).expect("load")
    });
    let first = domain
        .alloc(Object {
            freed: AtomicBool::new(false),
        })
        .ok()
        .expect("alloc");
    Arc::new(World {
        platform,
        domain,
        cell: AtomicPtr::new(first.as_ptr()),
    })
}

impl World {
    /// A reader on `cpu`: enters, reads the cell, and checks the object is alive while inside (S1).
    fn read(&self, cpu: usize) {
        on_cpu(cpu, || {
            let guard = self.domain.enter();
            let object = self.cell.load(Ordering::Acquire);
            if let Some(object) = NonNull::new(object) {
                thread::yield_now();
                // SAFETY: the block is never returned to the system during the model (see `free`), so
                // reading it is sound even if the protocol freed the object too early.
                let freed = unsafe { object.as_ref() }.freed.load(Ordering::SeqCst);
                assert!(
                    !freed,
                    "S1: object freed while a reader on CPU {cpu} holds it"
                );
            }
            drop(guard);
        });
    }

    /// A writer on `cpu`: unlinks the current object, publishes a new one, retires the old one.
    fn replace(&self, cpu: usize) {
        on_cpu(cpu, || {
            let fresh = self
                .domain
                .alloc(Object {
                    freed: AtomicBool::new(false),
                })
                .ok()
                .expect("alloc");
            let old = self.cell.swap(fresh.as_ptr(), Ordering::AcqRel);
            if let Some(old) = NonNull::new(old) {
                // SAFETY: unlinked just now; allocated by this domain.
                unsafe { self.domain.retire(old) }.expect("retire");
            }
        });
    }

    /// Retires what is still published and unloads (S8): nothing may be left behind.
    fn finish(this: Arc<Self>) {
        let world = Arc::try_unwrap(this).ok().expect("threads joined");
        let last = world.cell.swap(ptr::null_mut(), Ordering::AcqRel);
        on_cpu(0, || {
            if let Some(last) = NonNull::new(last) {
                // SAFETY: unlinked; allocated by this domain.
                unsafe { world.domain.retire(last) }.expect("retire");
            }
            world.domain.synchronize();
        });
        assert!(
            !world.platform.0.misrouted.load(Ordering::SeqCst),
            "S3: a message was routed to a processor before AddComplete"
        );
        on_cpu(0, || drop(world.domain));
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    // A domain's life (load, prepare, cycles, unload) is thousands of atomic operations.
    builder.max_branches = 1_000_000;
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

#[test]
fn join_during_an_in_flight_cycle() {
    model(|| {
        let w = world(Strategy::Lazy, 2);
        // CPU 1 joins the cycle (lazy preparation at DISPATCH) while CPU 0 retires and runs cycles.
        let reader = {
            let w = w.clone();
            thread::spawn(move || w.read(1))
        };
        w.replace(0);
        w.platform.cycle(&w.domain);
        w.platform.cycle(&w.domain);
        reader.join().unwrap();
        World::finish(w);
    });
}

#[test]
fn leave_and_rejoin_while_retiring() {
    model(|| {
        let w = world(Strategy::Lazy, 2);
        w.read(1);
        // CPU 1 is idle now: the next cycles make it leave; it then re-joins concurrently.
        let reader = {
            let w = w.clone();
            thread::spawn(move || {
                w.platform.cycle(&w.domain);
                w.read(1);
            })
        };
        w.replace(0);
        w.platform.cycle(&w.domain);
        reader.join().unwrap();
        World::finish(w);
    });
}

#[test]
fn retirement_on_a_joining_cpu() {
    model(|| {
        let w = world(Strategy::Lazy, 2);
        // CPU 1's first epoch use is a retirement, racing with a reader on CPU 0 and a cycle.
        let writer = {
            let w = w.clone();
            thread::spawn(move || w.replace(1))
        };
        w.read(0);
        w.platform.cycle(&w.domain);
        writer.join().unwrap();
        World::finish(w);
    });
}

#[test]
fn migrating_reader_exits_on_another_cpu() {
    model(|| {
        let w = world(Strategy::Lazy, 2);
        let reader = {
            let w = w.clone();
            thread::spawn(move || {
                let token = on_cpu(0, || {
                    // SAFETY: exited below, before the domain is dropped.
                    let token = unsafe { w.domain.enter_raw() };
                    token
                });
                let object = w.cell.load(Ordering::Acquire);
                // Migrate: the thread now runs on CPU 1.
                on_cpu(1, || {
                    if let Some(object) = NonNull::new(object) {
                        // SAFETY: protected by the epoch entered on CPU 0.
                        assert!(
                            !unsafe { object.as_ref() }.freed.load(Ordering::SeqCst),
                            "S1 across migration"
                        );
                    }
                    // SAFETY: the token came from this domain and is exited once.
                    unsafe { w.domain.exit_raw(token) };
                });
            })
        };
        w.replace(1);
        w.platform.cycle(&w.domain);
        w.platform.cycle(&w.domain);
        reader.join().unwrap();
        World::finish(w);
    });
}

#[test]
fn hot_add_races_with_a_cycle_and_synchronize() {
    model(|| {
        let w = world(Strategy::Callback, 2);
        w.read(0);
        let hot_add = {
            let w = w.clone();
            thread::spawn(move || {
                w.platform.notify(2, ProcessorChange::AddStart);
                w.platform.0.running[2].store(true, Ordering::SeqCst);
                w.platform.notify(2, ProcessorChange::AddComplete);
                w.read(2);
            })
        };
        w.replace(1);
        w.platform.cycle(&w.domain);
        on_cpu(1, || w.domain.synchronize());
        hot_add.join().unwrap();
        assert_eq!(
            w.domain.stats().prepare_at_dispatch,
            0,
            "the hot-added CPU was pre-warmed"
        );
        World::finish(w);
    });
}

#[test]
fn add_failure_races_with_synchronize() {
    model(|| {
        let w = world(Strategy::Callback, 2);
        w.read(0);
        let hot_add = {
            let w = w.clone();
            thread::spawn(move || {
                w.platform.notify(2, ProcessorChange::AddStart);
                w.platform.notify(
                    2,
                    ProcessorChange::AddFailure(Status::INSUFFICIENT_RESOURCES),
                );
            })
        };
        w.replace(0);
        on_cpu(1, || w.domain.synchronize());
        hot_add.join().unwrap();
        assert_eq!(w.domain.stats().cpus_prepared, 2, "AddFailure rolls back");
        World::finish(w);
    });
}
