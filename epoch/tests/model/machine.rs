//! The model machine's state: processors with DISPATCH exclusion, message and work queues, the
//! timer, processor-change notifications and the memory the core allocates, and what the scenarios
//! drive directly (delivering messages, running work, firing the timer, hot-adds).

use super::{rt, CPUS};
use kepoch::platform::*;
use kepoch::Domain;
use rt::atomic::{AtomicBool as ModelBool, Ordering};
use std::alloc::Layout;
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};

rt::thread_local! {
    pub(super) static CPU: Cell<usize> = Cell::new(0);
    pub(super) static IRQL: Cell<u8> = Cell::new(0);
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
pub(super) fn begin_dispatch_section() {
    SECTION.with(|s| {
        s.set(DispatchSection {
            base: stack_address(),
            ..DispatchSection::default()
        })
    });
}

/// Records a signal at DISPATCH and panics when signals keep coming deeper (L3).
pub(super) fn check_stack_growth() {
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
pub(super) fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` with the calling model thread on processor `cpu` (a migration if it was elsewhere).
pub fn on_cpu<R>(cpu: usize, f: impl FnOnce() -> R) -> R {
    CPU.with(|c| c.set(cpu));
    f()
}

/// Lifecycle of a platform object (message, work item), kept in the object itself.
pub(super) mod object_state {
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
pub(super) struct Memory {
    pub(super) live: HashMap<usize, Layout>,
    pub(super) freed: Vec<(usize, Layout)>,
}

/// A message in the delivery queue: the message object's address and its queue sequence number.
pub(super) struct Queued {
    pub(super) message: usize,
    pub(super) seq: u64,
}

/// The domain's timer, as the machine sees it.
pub(super) struct TimerState {
    /// Address of the timer object (inside the domain).
    pub(super) object: usize,
    pub(super) handler: Handler,
    pub(super) armed: bool,
    pub(super) released: bool,
}

/// Shared state of the model machine. Bookkeeping that the protocol does not synchronise through
/// (memory accounting, routing checks, failure switches) uses plain std types, which the checkers do
/// not see and which therefore add no happens-before edges that could hide a missing ordering.
pub struct Machine {
    /// DISPATCH on CPU `i` is held (model atomics: exclusion on one processor orders its code).
    pub(super) dispatch: Vec<ModelBool>,
    /// CPU `i` runs (false for a hot-add slot before AddStart is followed by the start).
    pub(super) running: Vec<AtomicBool>,
    /// CPU `i` has run epoch code (asked for its current processor): S4.
    pub(super) used: Vec<AtomicBool>,
    /// Allocations made on CPU `i` fail.
    pub(super) fail_alloc: Vec<AtomicBool>,
    /// Whether a message to a processor that never ran epoch code is a violation (not for `eager`).
    pub(super) check_idle_messages: AtomicBool,
    /// Queued messages (a model lock: the DPC queue's lock orders send before run).
    pub(super) messages: rt::Mutex<VecDeque<Queued>>,
    /// Sequence numbers of messages queued or running.
    pub(super) messages_pending: StdMutex<BTreeSet<u64>>,
    pub(super) next_message_seq: AtomicU64,
    /// Queued passive work items (addresses).
    pub(super) passive: rt::Mutex<VecDeque<usize>>,
    /// Every queued work item runs on a model thread of its own (a system worker thread), started
    /// by `passive_queue`; otherwise waiters and [`ModelPlatform::run_passive_work`] run them.
    pub(super) worker_threads: AtomicBool,
    /// The worker threads started so far, joined by [`check_unloaded`].
    pub(super) workers: StdMutex<Vec<rt::thread::JoinHandle<()>>>,
    pub(super) timer: StdMutex<Option<TimerState>>,
    /// Held while the timer handler runs; `timer_stop` takes it to wait for a running handler.
    pub(super) timer_firing: ModelBool,
    pub(super) callback: StdMutex<Option<(ProcessorChangeFn, usize)>>,
    pub(super) memory: StdMutex<Memory>,
    /// Processors per group: CPU `i` is (`i / group_size`, `i % group_size`), index `i`.
    pub(super) group_size: usize,
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
pub struct ModelPlatform(pub(super) Arc<Machine>);

/// A per-CPU message (KDPC), inline in a slot.
pub struct ModelMessage {
    pub(super) cpu: usize,
    pub(super) handler: Handler,
    pub(super) state: AtomicU8,
}

/// A passive work item, inline in a work block.
pub struct ModelWork {
    pub(super) handler: Handler,
    pub(super) state: AtomicU8,
}

/// A notification event, inline in the domain. Signal and reset are read-modify-writes, so that
/// (like `KeSetEvent`/`KeResetEvent` under the dispatcher lock) a reset that comes after a signal
/// is ordered after everything before the signal.
pub struct ModelEvent(pub(super) ModelBool);

/// Releases a processor's DISPATCH flag when dropped, also when a check panics at DISPATCH.
pub(super) struct DispatchHeld<'a> {
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
    /// A machine whose CPUs `0..running` run (the others are hot-add slots), `group_size` per
    /// group: with fewer than [`CPUS`], the processors span several groups and their numbers repeat
    /// across groups.
    pub fn grouped(running: usize, group_size: usize) -> Self {
        assert!((1..=64).contains(&group_size), "group size {group_size}");
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
            group_size,
        }))
    }

    /// The machine's processor `cpu`: its (group, number) and its index `cpu`.
    pub fn processor(&self, cpu: usize) -> CurrentProcessor {
        let size = self.0.group_size;
        CurrentProcessor {
            number: ProcessorNumber::new((cpu / size) as u16, (cpu % size) as u8),
            index: cpu as u32,
        }
    }

    /// The CPU `number` names.
    pub(super) fn cpu_of(&self, number: ProcessorNumber) -> usize {
        usize::from(number.group) * self.0.group_size + usize::from(number.number)
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
    pub(super) fn check_alive(&self, address: usize, what: &str) {
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

    pub(super) fn lock_cpu(&self, cpu: usize) {
        while self.0.dispatch[cpu]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            rt::yield_now();
        }
    }

    pub(super) fn unlock_cpu(&self, cpu: usize) {
        self.0.dispatch[cpu].store(false, Ordering::Release);
    }

    /// Takes DISPATCH on `cpu` and makes the calling thread run there until the guard drops.
    pub(super) fn hold_dispatch(&self, cpu: usize) -> DispatchHeld<'_> {
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
    pub(super) fn deliver_one_before(&self, before: Option<u64>) -> bool {
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
    pub(super) fn run_passive_one(&self) -> bool {
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
        unsafe { callback(context as *const (), change, self.processor(cpu)) };
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
    pub(super) fn live_blocks(&self) -> usize {
        lock(&self.0.memory).live.len()
    }
}
