//! The model machine's [`Platform`] implementation and the checks it makes on every path (S3, S4,
//! S8, S9, L3, use after free of the platform's own objects).

use super::machine::{
    begin_dispatch_section, check_stack_growth, lock, object_state, on_cpu, ModelEvent,
    ModelMessage, ModelPlatform, ModelWork, Queued, TimerState, CPU, IRQL,
};
use super::{rt, CPUS};
use kepoch::platform::*;
use rt::atomic::{AtomicBool as ModelBool, Ordering};
use std::alloc::Layout;
use std::cell::Cell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU8;
use std::sync::PoisonError;

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
        self.processor(cpu)
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
            cpu if cpu < CPUS && self.is_running(cpu) => Ok(self.processor(cpu).number),
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
                cpu: self.cpu_of(target),
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
    fn verify_slot_owner(&self, routine: &'static str, owner: ProcessorNumber) {
        let here = self.processor(CPU.with(Cell::get)).number;
        assert_eq!(
            here, owner,
            "S1: {routine} on processor {here} used the slot of processor {owner}"
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
