//! The [`Platform`] implementation: each call mapped onto the threads, processors, queues and
//! events of the user-mode machine, with the IRQL rules checked.

use crate::bounded::{bug_check, misuse, thread_label};
use crate::event::{self, UserEvent};
use crate::processors::{index_of, number_of};
use crate::{seat, UserPlatform};
use kepoch::platform::{
    CurrentProcessor, Handler, Irql, IrqlRule, LogLevel, Platform, ProcessorChangeFn,
    ProcessorNumber, Status,
};
use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A per-CPU message (a KDPC bound to a processor), stored inline in a per-CPU slot.
pub struct UserMessage {
    target: u32,
    handler: Handler,
}

/// A cycle timer, stored inline in the domain: its entry in the platform's timer table.
pub struct UserTimer {
    id: u64,
}

/// A passive work item, stored inline in a work block.
pub struct UserWork {
    handler: Handler,
}

/// The name NT gives an IRQL.
fn irql_name(irql: Irql) -> &'static str {
    match irql {
        Irql::PASSIVE => "PASSIVE_LEVEL",
        Irql::APC => "APC_LEVEL",
        Irql::DISPATCH => "DISPATCH_LEVEL",
        _ => "an IRQL above DISPATCH_LEVEL",
    }
}

impl UserPlatform {
    /// Bug-checks unless the caller is at PASSIVE: `what` may wait.
    fn require_passive(&self, what: &str) {
        let irql = seat::irql(&self.shared);
        if irql != Irql::PASSIVE {
            bug_check(&format!(
                "{what} on thread {} at {}: it waits, which only PASSIVE_LEVEL may",
                thread_label(),
                irql_name(irql)
            ));
        }
    }

    fn limit(&self) -> Duration {
        self.shared.settings.wait_limit
    }
}

// SAFETY: raising takes the processor's exclusion, held until the matching lower, and every handler
// of a message or timer runs holding its processor's exclusion, so nothing else runs as a processor
// at DISPATCH while one thing does; messages run one at a time on the dispatcher, each as its
// target; `allocate` is `std::alloc` with the requested layout.
unsafe impl Platform for UserPlatform {
    type Message = UserMessage;
    type Timer = UserTimer;
    type PassiveWork = UserWork;
    type Event = UserEvent;

    fn current_processor(&self) -> CurrentProcessor {
        let index = seat::processor(&self.shared);
        CurrentProcessor {
            number: number_of(index),
            index,
        }
    }

    fn current_irql(&self) -> Irql {
        seat::irql(&self.shared)
    }

    fn raise_to_dispatch(&self) -> Irql {
        seat::raise(&self.shared)
    }

    fn lower_irql(&self, previous: Irql) {
        seat::lower(&self.shared, previous)
    }

    fn max_processor_count(&self) -> u32 {
        self.shared.processors.max()
    }

    fn active_processor_count(&self) -> u32 {
        self.shared.processors.active_count()
    }

    fn processor_number_from_index(&self, index: u32) -> Result<ProcessorNumber, Status> {
        if self.shared.processors.is_active(index) {
            Ok(number_of(index))
        } else {
            Err(Status::INVALID_PARAMETER)
        }
    }

    fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let block = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        self.shared.blocks.fetch_add(1, Ordering::SeqCst);
        Some(block)
    }

    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        self.shared.blocks.fetch_sub(1, Ordering::SeqCst);
        // SAFETY: per the contract, `ptr` came from `allocate(layout)`, i.e. `std::alloc::alloc`.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
    }

    unsafe fn message_init(
        &self,
        message: *mut UserMessage,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status> {
        let target = index_of(target);
        if target >= self.shared.processors.max() {
            return Err(Status::INVALID_PARAMETER);
        }
        // SAFETY: the caller passes writable storage for a message.
        unsafe { message.write(UserMessage { target, handler }) };
        Ok(())
    }

    fn message_send(&self, message: &UserMessage) {
        self.shared.messages.send(message.target, message.handler);
    }

    unsafe fn message_release(&self, _message: *mut UserMessage) {}

    fn flush_messages(&self) {
        self.require_passive("flushing messages");
        self.shared.messages.flush(self.limit());
    }

    unsafe fn timer_init(&self, timer: *mut UserTimer, handler: Handler) -> Result<(), Status> {
        let id = self.shared.timers.add(handler);
        // SAFETY: the caller passes writable storage for a timer.
        unsafe { timer.write(UserTimer { id }) };
        Ok(())
    }

    fn timer_start(&self, timer: &UserTimer, period_us: u32) {
        let period = Duration::from_micros(u64::from(period_us.max(1)));
        self.shared.timers.start(timer.id, period);
    }

    fn timer_stop(&self, timer: &UserTimer) {
        self.require_passive("stopping a timer");
        self.shared.timers.stop(timer.id, self.limit());
    }

    unsafe fn timer_release(&self, timer: *mut UserTimer) {
        // SAFETY: the caller passes an initialised timer.
        self.shared.timers.remove(unsafe { (*timer).id });
    }

    unsafe fn passive_init(&self, work: *mut UserWork, handler: Handler) -> Result<(), Status> {
        // SAFETY: the caller passes writable storage for a work item.
        unsafe { work.write(UserWork { handler }) };
        Ok(())
    }

    fn passive_queue(&self, work: &UserWork) {
        self.shared.work.queue(work.handler);
    }

    unsafe fn passive_release(&self, _work: *mut UserWork) {}

    unsafe fn event_init(&self, event: *mut UserEvent) {
        // SAFETY: the caller passes writable storage for an event.
        unsafe { event.write(UserEvent::new()) };
    }

    fn event_signal(&self, event: &UserEvent) {
        // Take what the wake-up needs before the signal: after it, neither `self` nor the event
        // may be touched (the waiter may free both).
        event::signal(event, Arc::clone(&self.shared.wakeup));
    }

    fn event_reset(&self, event: &UserEvent) {
        event.reset();
    }

    fn event_wait(&self, event: &UserEvent) {
        self.require_passive("waiting for an event");
        let limit = self.limit();
        event::wait(event, &self.shared.wakeup, limit, || {
            format!(
                "thread {} waited more than {limit:?} for a domain event (the end of a reclamation cycle, or of the last work item at unload): no cycle finished in that time — a thread stays at DISPATCH_LEVEL or a handler does not return",
                thread_label()
            )
        });
    }

    unsafe fn processor_change_register(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status> {
        // The replay runs on this thread, whose core spin locks need a processor to raise on.
        seat::processor(&self.shared);
        self.shared.processors.register(callback, context).map(Some)
    }

    unsafe fn processor_change_deregister(&self, handle: NonNull<()>) {
        self.shared.processors.deregister(handle.as_ptr() as usize);
    }

    fn now_ns(&self) -> u64 {
        self.shared.started.elapsed().as_nanos() as u64
    }

    fn log(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        if level >= self.shared.settings.log_level {
            eprintln!("[{level:?}] {args}");
        }
    }

    fn verify_irql(&self, routine: &'static str, rule: IrqlRule) {
        let irql = seat::irql(&self.shared);
        if rule.allows(irql) {
            return;
        }
        let allowed = match rule {
            IrqlRule::Passive => "at PASSIVE_LEVEL only",
            IrqlRule::BelowDispatch => "below DISPATCH_LEVEL only",
            IrqlRule::Dispatch => "at DISPATCH_LEVEL only",
        };
        bug_check(&format!(
            "{routine} was called at {} on thread {}; it may be called {allowed}. Code at DISPATCH_LEVEL (the destructor of a retired value, a message or timer handler, a thread between raise_to_dispatch and lower_irql) must not wait",
            irql_name(irql),
            thread_label()
        ));
    }

    fn verify_slot_owner(&self, routine: &'static str, owner: ProcessorNumber) {
        let here = number_of(seat::processor(&self.shared));
        if here != owner {
            bug_check(&format!(
                "kepoch's {routine} on thread {} (virtual processor {here}) used the per-processor slot of processor {owner}, which only that processor may write",
                thread_label()
            ));
        }
    }

    fn synchronize_called(&self, readers_here: &dyn Fn() -> u64) {
        let readers = readers_here();
        if readers == 0 {
            return;
        }
        misuse(&format!(
            "Domain::synchronize was called inside an epoch on thread {}: {readers} reader(s) that entered on this thread (virtual processor {}) have not exited. synchronize waits for every reader that entered before it, these too, so it would never return: drop the guard first (a guard moved to another thread counts until it is dropped)",
            thread_label(),
            seat::processor(&self.shared)
        ));
    }
}
