//! A minimal [`Platform`] for hot-path benchmarks.
//!
//! The simulated machine of [`crate::machine`] emulates DISPATCH with a per-CPU spin lock, which adds a
//! locked read-modify-write to every enter and exit that the kernel does not have. This platform
//! removes that cost so that benchmarks measure the core, not the emulation:
//!
//! - every benchmark thread is pinned to one simulated CPU, kept in a thread-local
//!   ([`BenchPlatform::pin_current_thread`]). One thread per CPU is what gives exclusion on a CPU;
//! - `raise_to_dispatch` / `lower_irql` only swap a thread-local IRQL value (the real kernel writes CR8,
//!   also a cheap, non-locked instruction); `current_processor` reads the thread-local (the kernel
//!   reads the PRCB through `gs`);
//! - `allocate` is `std::alloc`; cache-aligned requests (the core's per-CPU slots ask for 64-byte
//!   alignment) are served from a plain allocation, over-allocated and aligned by hand, because glibc's `memalign`
//!   path bypasses its per-thread cache and costs about three times a `malloc` (the kernel serves small
//!   blocks from per-processor lookaside lists, `ExAllocatePool2`);
//! - messages are queued in one FIFO and run by [`BenchPlatform::pump`] on the calling thread, which
//!   takes the identity of the target CPU at DISPATCH while the handler runs. Message *delivery* (the
//!   IPI and the DPC queue of a real kernel) is therefore not included in any figure, only the work the
//!   core does per message. Every send is counted ([`BenchPlatform::messages_sent`]);
//! - the timer never fires on its own: benchmarks drive cycles with [`kepoch::Domain::flush`] and
//!   [`BenchPlatform::pump`];
//! - processor-change notifications are replayed at registration for the active CPUs and delivered by
//!   [`BenchPlatform::add_processor`], on the calling thread, at PASSIVE.
//!
//! `pump` may only be used while no other thread runs epoch code on the CPUs it pumps for: the
//! multi-threaded benchmarks never run cycles.

use kepoch::platform::{
    CurrentProcessor, Handler, Irql, LogLevel, Platform, ProcessorChange, ProcessorChangeFn,
    ProcessorNumber, Status,
};
use std::alloc::Layout;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

thread_local! {
    /// Simulated CPU index of the calling thread.
    static CPU: Cell<u32> = const { Cell::new(0) };
    /// Simulated IRQL of the calling thread, a full word like CR8: a byte that was just stored is
    /// read back through the store buffer (about 7 cycles on AMD Zen 3, twice per enter+exit), while
    /// a full word is forwarded at no cost, as the kernel's register read is.
    static IRQL: Cell<u32> = const { Cell::new(0) };
}

/// Largest alignment served by a plain allocation (glibc's `malloc` guarantees 16).
const SMALL_ALIGN: usize = 16;
/// Bytes below an over-aligned block that remember where its allocation starts.
const HEADER: usize = 8;

/// The plain allocation that holds an over-aligned block of `layout`.
fn outer_layout(layout: Layout) -> Option<Layout> {
    Layout::from_size_align(layout.size() + layout.align() + HEADER, SMALL_ALIGN).ok()
}

/// Processor number of a system-wide index: 64 processors per group.
pub fn processor_of_index(index: u32) -> ProcessorNumber {
    ProcessorNumber::new((index / 64) as u16, (index % 64) as u8)
}

/// A per-CPU message: the target and the handler it runs there.
pub struct BenchMessage {
    target: u32,
    handler: Handler,
}

/// The cycle timer: never fires by itself.
pub struct BenchTimer {
    running: AtomicBool,
}

/// A passive work item: its handler runs in [`BenchPlatform::pump`] at PASSIVE.
pub struct BenchPassiveWork {
    handler: Handler,
}

/// A notification event.
pub struct BenchEvent {
    signalled: AtomicBool,
}

/// What is queued for [`BenchPlatform::pump`].
enum Queued {
    Message(u32, Handler),
    Passive(Handler),
}

/// The processor-change registration, if any.
#[derive(Clone, Copy)]
struct Registration {
    callback: ProcessorChangeFn,
    context: *const (),
}

// SAFETY: the context is the domain, which is Sync; the core guarantees it outlives the registration.
unsafe impl Send for Registration {}

struct Inner {
    max: u32,
    active: AtomicU32,
    queue: Mutex<VecDeque<Queued>>,
    messages: AtomicU64,
    registration: Mutex<Option<Registration>>,
    epoch: Instant,
}

/// The benchmark platform. Cheap to clone; clones share the machine.
#[derive(Clone)]
pub struct BenchPlatform {
    inner: Arc<Inner>,
}

impl BenchPlatform {
    /// A machine reporting `max` processors of which `active` are running (indexes `0..active`).
    pub fn new(max: u32, active: u32) -> Self {
        BenchPlatform {
            inner: Arc::new(Inner {
                max,
                active: AtomicU32::new(active),
                queue: Mutex::new(VecDeque::new()),
                messages: AtomicU64::new(0),
                registration: Mutex::new(None),
                epoch: Instant::now(),
            }),
        }
    }

    /// Pins the calling thread to simulated CPU `index` (at PASSIVE).
    pub fn pin_current_thread(index: u32) {
        CPU.with(|c| c.set(index));
        IRQL.with(|i| i.set(Irql::PASSIVE.0.into()));
    }

    /// The simulated CPU the calling thread is pinned to.
    pub fn current_index() -> u32 {
        CPU.with(|c| c.get())
    }

    /// Messages sent since the machine was created.
    pub fn messages_sent(&self) -> u64 {
        self.inner.messages.load(Ordering::Relaxed)
    }

    /// Runs queued messages and passive work on the calling thread until the queue is empty. Each
    /// message runs at DISPATCH with the calling thread pinned to its target CPU; the thread's own CPU
    /// and IRQL are restored afterwards. Returns how many items ran.
    pub fn pump(&self) -> usize {
        let home = Self::current_index();
        let home_irql = IRQL.with(|i| i.get());
        let mut ran = 0;
        loop {
            let next = self.inner.queue.lock().unwrap().pop_front();
            let Some(item) = next else { break };
            ran += 1;
            match item {
                Queued::Message(target, handler) => {
                    CPU.with(|c| c.set(target));
                    IRQL.with(|i| i.set(Irql::DISPATCH.0.into()));
                    // SAFETY: messages are only queued for initialised, unreleased message objects,
                    // and the core keeps their slots alive until the message has run.
                    unsafe { handler.invoke() };
                }
                Queued::Passive(handler) => {
                    CPU.with(|c| c.set(home));
                    IRQL.with(|i| i.set(Irql::PASSIVE.0.into()));
                    // SAFETY: work items stay alive while queued (the core holds a reference).
                    unsafe { handler.invoke() };
                }
            }
        }
        CPU.with(|c| c.set(home));
        IRQL.with(|i| i.set(home_irql));
        ran
    }

    /// Hot-adds the next processor index: makes it active and delivers AddStart and AddComplete to the
    /// registered callback (if any) on the calling thread, at PASSIVE. Returns the new index.
    pub fn add_processor(&self) -> u32 {
        let index = self.inner.active.fetch_add(1, Ordering::SeqCst);
        let registration = *self.inner.registration.lock().unwrap();
        if let Some(registration) = registration {
            Self::notify(registration, index);
        }
        index
    }

    fn notify(registration: Registration, index: u32) {
        let processor = CurrentProcessor {
            number: processor_of_index(index),
            index,
        };
        for change in [ProcessorChange::AddStart, ProcessorChange::AddComplete] {
            // SAFETY: the context stays valid until deregistration (the core's contract), and
            // notifications are delivered one at a time.
            unsafe { (registration.callback)(registration.context, change, processor) };
        }
    }
}

// SAFETY: exclusion on a CPU holds because each simulated CPU is one thread (or the single pumping
// thread); message handlers run at DISPATCH with the target CPU's identity, one at a time; `allocate`
// is `std::alloc` with the requested layout.
unsafe impl Platform for BenchPlatform {
    type Message = BenchMessage;
    type Timer = BenchTimer;
    type PassiveWork = BenchPassiveWork;
    type Event = BenchEvent;

    #[inline]
    fn current_processor(&self) -> CurrentProcessor {
        let index = CPU.with(|c| c.get());
        CurrentProcessor {
            number: processor_of_index(index),
            index,
        }
    }

    #[inline]
    fn current_irql(&self) -> Irql {
        Irql(IRQL.with(|i| i.get()) as u8)
    }

    #[inline]
    fn raise_to_dispatch(&self) -> Irql {
        IRQL.with(|i| Irql(i.replace(Irql::DISPATCH.0.into()) as u8))
    }

    #[inline]
    fn lower_irql(&self, previous: Irql) {
        IRQL.with(|i| i.set(previous.0.into()));
    }

    fn max_processor_count(&self) -> u32 {
        self.inner.max
    }

    fn active_processor_count(&self) -> u32 {
        self.inner.active.load(Ordering::SeqCst)
    }

    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status> {
        if index < self.active_processor_count() {
            Ok(processor_of_index(index))
        } else {
            Err(Status::INVALID_PARAMETER)
        }
    }

    #[inline]
    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        if layout.size() == 0 {
            return None;
        }
        if layout.align() <= SMALL_ALIGN {
            // SAFETY: the layout has a non-zero size.
            return NonNull::new(unsafe { std::alloc::alloc(layout) });
        }
        // Over-aligned: a plain allocation with room to align and to remember where it started.
        let outer = outer_layout(layout)?;
        // SAFETY: `outer` has a non-zero size.
        let raw = NonNull::new(unsafe { std::alloc::alloc(outer) })?;
        let start = raw.as_ptr() as usize + HEADER;
        let aligned = (start + layout.align() - 1) & !(layout.align() - 1);
        let offset = aligned - raw.as_ptr() as usize;
        // SAFETY: `HEADER <= offset <= HEADER + align - 1` and `outer` has `align + HEADER` spare bytes,
        // so both the stored word (just below `aligned`, 8-byte aligned) and the block are in bounds.
        unsafe {
            let block = raw.as_ptr().add(offset);
            block.sub(HEADER).cast::<usize>().write(offset);
            Some(NonNull::new_unchecked(block))
        }
    }

    #[inline]
    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.align() <= SMALL_ALIGN {
            // SAFETY: per the contract, `ptr` came from `allocate(layout)`, i.e. `std::alloc::alloc`.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
            return;
        }
        // SAFETY: `allocate` stored the offset to the start of the outer block just below `ptr`, and
        // `outer_layout` succeeded for this layout when it was allocated.
        unsafe {
            let offset = ptr.as_ptr().sub(HEADER).cast::<usize>().read();
            let outer = outer_layout(layout).unwrap_unchecked();
            std::alloc::dealloc(ptr.as_ptr().sub(offset), outer);
        }
    }

    unsafe fn message_init(
        &self,
        message: *mut BenchMessage,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status> {
        let target = u32::from(target.group) * 64 + u32::from(target.number);
        // SAFETY: the caller passes writable storage for a message.
        unsafe { message.write(BenchMessage { target, handler }) };
        Ok(())
    }

    fn message_send(&self, message: &BenchMessage) {
        self.inner.messages.fetch_add(1, Ordering::Relaxed);
        self.inner
            .queue
            .lock()
            .unwrap()
            .push_back(Queued::Message(message.target, message.handler));
    }

    unsafe fn message_release(&self, _message: *mut BenchMessage) {}

    fn flush_messages(&self) {
        self.pump();
    }

    unsafe fn timer_init(&self, timer: *mut BenchTimer, _handler: Handler) -> Result<(), Status> {
        // SAFETY: the caller passes writable storage for a timer.
        unsafe {
            timer.write(BenchTimer {
                running: AtomicBool::new(false),
            })
        };
        Ok(())
    }

    fn timer_start(&self, timer: &BenchTimer, _period_us: u32) {
        timer.running.store(true, Ordering::Relaxed);
    }

    fn timer_stop(&self, timer: &BenchTimer) {
        timer.running.store(false, Ordering::Relaxed);
    }

    unsafe fn timer_release(&self, _timer: *mut BenchTimer) {}

    unsafe fn passive_init(
        &self,
        work: *mut BenchPassiveWork,
        handler: Handler,
    ) -> Result<(), Status> {
        // SAFETY: the caller passes writable storage for a work item.
        unsafe { work.write(BenchPassiveWork { handler }) };
        Ok(())
    }

    fn passive_queue(&self, work: &BenchPassiveWork) {
        self.inner
            .queue
            .lock()
            .unwrap()
            .push_back(Queued::Passive(work.handler));
    }

    unsafe fn passive_release(&self, _work: *mut BenchPassiveWork) {}

    unsafe fn event_init(&self, event: *mut BenchEvent) {
        // SAFETY: the caller passes writable storage for an event.
        unsafe {
            event.write(BenchEvent {
                signalled: AtomicBool::new(false),
            })
        };
    }

    fn event_signal(&self, event: &BenchEvent) {
        event.signalled.store(true, Ordering::SeqCst);
    }

    fn event_reset(&self, event: &BenchEvent) {
        event.signalled.store(false, Ordering::SeqCst);
    }

    fn event_wait(&self, event: &BenchEvent) {
        // Single-threaded simulation: whatever would signal the event is in the queue.
        while !event.signalled.load(Ordering::SeqCst) {
            if self.pump() == 0 {
                std::thread::yield_now();
            }
        }
    }

    unsafe fn processor_change_register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status> {
        let registration = Registration { callback, context };
        *self.inner.registration.lock().unwrap() = Some(registration);
        for index in 0..self.active_processor_count() {
            Self::notify(registration, index);
        }
        Ok(Some(NonNull::dangling()))
    }

    unsafe fn processor_change_deregister(&self, _handle: NonNull<()>) {
        *self.inner.registration.lock().unwrap() = None;
    }

    fn now_ns(&self) -> u64 {
        self.inner.epoch.elapsed().as_nanos() as u64
    }

    fn log(&self, _level: LogLevel, _args: fmt::Arguments<'_>) {}
}

impl fmt::Debug for BenchPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchPlatform")
            .field("max", &self.inner.max)
            .field("active", &self.active_processor_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kepoch::{Config, Domain, Strategy};

    #[test]
    fn cycles_visit_only_participating_cpus() {
        let platform = BenchPlatform::new(2048, 8);
        let domain = Domain::create(platform.clone(), Config::with_strategy(Strategy::Callback))
            .expect("create");
        for cpu in 0..3 {
            BenchPlatform::pin_current_thread(cpu);
            drop(domain.enter());
        }
        BenchPlatform::pin_current_thread(0);
        let before = platform.messages_sent();
        domain.flush();
        platform.pump();
        assert_eq!(platform.messages_sent() - before, 3);
        let value = domain.alloc(7u64).expect("alloc");
        // SAFETY: never published to readers.
        unsafe { domain.retire(value) }.expect("retire");
        domain.synchronize();
        assert_eq!(domain.stats().pending, 0);
    }

    #[test]
    fn hot_added_cpu_is_prepared_by_the_callback() {
        let platform = BenchPlatform::new(64, 1);
        let domain = Domain::create(platform.clone(), Config::with_strategy(Strategy::Callback))
            .expect("create");
        let index = platform.add_processor();
        BenchPlatform::pin_current_thread(index);
        drop(domain.enter());
        let stats = domain.stats();
        assert_eq!(stats.cpus_prepared, 2);
        assert_eq!(stats.prepare_at_dispatch, 0);
        assert_eq!(stats.fallback_uses, 0);
    }
}
