//! The platform's three threads and their queues: the dispatcher runs messages at DISPATCH as
//! their target processor (one at a time, so a message never runs concurrently with itself), the
//! timer thread runs periodic handlers at DISPATCH as each active processor in turn, the worker
//! runs passive work items at PASSIVE.

use crate::bounded::{bug_check, lock, panic_message, wait_until};
use crate::{seat, Shared};
use kepoch::platform::{Handler, Irql};
use std::collections::VecDeque;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A queue one platform thread serves, and the flag that ends it.
struct Queue<T> {
    items: VecDeque<T>,
    stopping: bool,
}

impl<T> Queue<T> {
    fn new() -> Self {
        Queue {
            items: VecDeque::new(),
            stopping: false,
        }
    }
}

/// Waits for the next item of `queue`; `None` once the platform stops. An idle wait, not bounded:
/// the thread has nothing to do.
fn next_item<T>(queue: &Mutex<Queue<T>>, arrived: &Condvar) -> Option<T> {
    let mut queue = lock(queue);
    loop {
        if let Some(item) = queue.items.pop_front() {
            return Some(item);
        }
        if queue.stopping {
            return None;
        }
        queue = arrived.wait(queue).unwrap_or_else(PoisonError::into_inner);
    }
}

/// The dispatcher's queue of messages: (target processor, handler).
pub(crate) struct Messages {
    queue: Mutex<Queue<(u32, Handler)>>,
    arrived: Condvar,
    /// (messages sent, messages whose handler returned), for `flush`.
    counts: Mutex<(u64, u64)>,
    finished: Condvar,
}

impl Messages {
    pub(crate) fn new() -> Self {
        Messages {
            queue: Mutex::new(Queue::new()),
            arrived: Condvar::new(),
            counts: Mutex::new((0, 0)),
            finished: Condvar::new(),
        }
    }

    /// Queues `handler` to run as processor `target`.
    pub(crate) fn send(&self, target: u32, handler: Handler) {
        lock(&self.counts).0 += 1;
        lock(&self.queue).items.push_back((target, handler));
        self.arrived.notify_one();
    }

    /// Waits until every message sent before the call has run (the dispatcher serves them in order).
    pub(crate) fn flush(&self, limit: Duration) {
        let counts = lock(&self.counts);
        let sent = counts.0;
        drop(wait_until(
            counts,
            &self.finished,
            limit,
            |counts| counts.1 >= sent,
            || {
                format!("flushing messages took more than {limit:?}: a message handler does not return, or its processor stays at DISPATCH_LEVEL")
            },
        ));
    }
}

/// The worker's queue of passive work items.
pub(crate) struct Work {
    queue: Mutex<Queue<Handler>>,
    arrived: Condvar,
}

impl Work {
    pub(crate) fn new() -> Self {
        Work {
            queue: Mutex::new(Queue::new()),
            arrived: Condvar::new(),
        }
    }

    /// Queues `handler` for the worker.
    pub(crate) fn queue(&self, handler: Handler) {
        lock(&self.queue).items.push_back(handler);
        self.arrived.notify_one();
    }
}

/// A timer of the table: its handler and, while started, its period and next expiry.
struct TimerEntry {
    id: u64,
    handler: Handler,
    running: Option<(Duration, Instant)>,
}

/// Every timer, which one's handler runs, and where the rotation over processors stands.
struct TimerTable {
    entries: Vec<TimerEntry>,
    next_id: u64,
    firing: Option<u64>,
    turn: u32,
    stopping: bool,
}

/// The timers the timer thread serves.
pub(crate) struct Timers {
    table: Mutex<TimerTable>,
    changed: Condvar,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Timers {
            table: Mutex::new(TimerTable {
                entries: Vec::new(),
                next_id: 1,
                firing: None,
                turn: 0,
                stopping: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// Adds a stopped timer with `handler`; returns its id.
    pub(crate) fn add(&self, handler: Handler) -> u64 {
        let mut table = lock(&self.table);
        let id = table.next_id;
        table.next_id += 1;
        table.entries.push(TimerEntry {
            id,
            handler,
            running: None,
        });
        id
    }

    /// Starts (or restarts) timer `id` with `period`.
    pub(crate) fn start(&self, id: u64, period: Duration) {
        let mut table = lock(&self.table);
        if let Some(entry) = table.entries.iter_mut().find(|e| e.id == id) {
            entry.running = Some((period, Instant::now() + period));
        }
        drop(table);
        self.changed.notify_all();
    }

    /// Stops timer `id`: once this returns its handler is not running and will not start.
    pub(crate) fn stop(&self, id: u64, limit: Duration) {
        let mut table = lock(&self.table);
        if let Some(entry) = table.entries.iter_mut().find(|e| e.id == id) {
            entry.running = None;
        }
        drop(wait_until(
            table,
            &self.changed,
            limit,
            |table| table.firing != Some(id),
            || format!("stopping a timer took more than {limit:?}: its handler does not return"),
        ));
    }

    /// Removes timer `id`.
    pub(crate) fn remove(&self, id: u64) {
        lock(&self.table).entries.retain(|e| e.id != id);
    }
}

/// The timer thread: fires each started timer when it expires, as the next active processor.
fn timer_thread(shared: &Arc<Shared>) {
    let timers = &shared.timers;
    let mut table = lock(&timers.table);
    loop {
        if table.stopping {
            return;
        }
        let now = Instant::now();
        let next = table
            .entries
            .iter()
            .enumerate()
            .filter_map(|(position, e)| e.running.map(|(_, due)| (due, position)))
            .min();
        let Some((due, position)) = next else {
            table = timers
                .changed
                .wait(table)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        if due > now {
            table = timers
                .changed
                .wait_timeout(table, due - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        let entry = &mut table.entries[position];
        let (id, handler) = (entry.id, entry.handler);
        if let Some((period, due)) = &mut entry.running {
            *due = now + *period;
        }
        let Some(processor) = shared.processors.next_active(table.turn) else {
            continue; // no processor has started yet: the tick is lost, as a masked interrupt
        };
        table.turn = processor + 1;
        table.firing = Some(id);
        drop(table);
        seat::run_as(shared, processor, "timer handler", || {
            // SAFETY: the timer is started, and the core stops it (waiting for this handler) before
            // it releases the timer or frees the handler's context.
            unsafe { handler.invoke() }
        });
        table = lock(&timers.table);
        table.firing = None;
        timers.changed.notify_all();
    }
}

/// The dispatcher: runs each message at DISPATCH as its target processor.
fn dispatcher_thread(shared: &Arc<Shared>) {
    let messages = &shared.messages;
    while let Some((target, handler)) = next_item(&messages.queue, &messages.arrived) {
        seat::run_as(shared, target, "message handler", || {
            // SAFETY: the core keeps a message (and its handler's context) alive while it is queued
            // or running: it releases messages only after `flush_messages`.
            unsafe { handler.invoke() }
        });
        lock(&messages.counts).1 += 1;
        messages.finished.notify_all();
    }
}

/// The worker: runs each passive work item at PASSIVE, as a processor it takes for the item only.
fn worker_thread(shared: &Arc<Shared>) {
    while let Some(handler) = next_item(&shared.work.queue, &shared.work.arrived) {
        let mut outcome = Ok(());
        seat::run_work_item(shared, || {
            // SAFETY: the core keeps a queued work item's context alive until its handler has run;
            // the platform does not touch the item after invoking it.
            outcome = catch_unwind(AssertUnwindSafe(|| unsafe { handler.invoke() }));
        });
        if let Err(payload) = outcome {
            bug_check(&format!(
                "a work item panicked on the platform's worker thread: {}",
                panic_message(payload.as_ref())
            ));
        }
        let irql = seat::irql(shared);
        if irql != Irql::PASSIVE {
            bug_check(&format!(
                "a work item returned at {irql:?} instead of PASSIVE_LEVEL (a raise_to_dispatch without its lower_irql)"
            ));
        }
    }
}

/// What a platform thread runs.
type ThreadJob = fn(&Arc<Shared>);

/// The running platform threads; dropping this stops and joins them.
pub(crate) struct Threads {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    /// Starts the dispatcher, the timer thread and the worker.
    pub(crate) fn spawn(shared: &Arc<Shared>) -> std::io::Result<Threads> {
        let mut threads = Threads {
            shared: Arc::clone(shared),
            handles: Vec::new(),
        };
        let jobs: [(&str, ThreadJob); 3] = [
            ("kepoch-user dispatcher", dispatcher_thread),
            ("kepoch-user timer", timer_thread),
            ("kepoch-user worker", worker_thread),
        ];
        for (name, job) in jobs {
            let shared = Arc::clone(shared);
            let handle = thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    // A panic here is one of the platform's own waits exceeding the limit (a
                    // handler's panic is reported where it runs): the machine cannot go on
                    // without this thread.
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(&shared))) {
                        bug_check(&format!(
                            "the platform's thread '{name}' stopped: {}",
                            panic_message(payload.as_ref())
                        ));
                    }
                    *lock(&shared.exited) += 1;
                    shared.thread_exited.notify_all();
                })?;
            threads.handles.push(handle);
        }
        Ok(threads)
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let shared = &self.shared;
        lock(&shared.messages.queue).stopping = true;
        shared.messages.arrived.notify_all();
        lock(&shared.work.queue).stopping = true;
        shared.work.arrived.notify_all();
        lock(&shared.timers.table).stopping = true;
        shared.timers.changed.notify_all();
        // Joined only once they have exited (bounded): a thread that hangs is reported and left.
        let limit = shared.settings.wait_limit;
        let deadline = Instant::now() + limit;
        let mut exited = lock(&shared.exited);
        let current = thread::current().id();
        let others = self
            .handles
            .iter()
            .filter(|h| h.thread().id() != current)
            .count();
        while (*exited as usize) < others {
            let now = Instant::now();
            if now >= deadline {
                let _ = writeln!(
                    std::io::stderr(),
                    "kepoch-user: the platform's threads did not stop within {limit:?} (a handler does not return); leaving them running"
                );
                return;
            }
            exited = shared
                .thread_exited
                .wait_timeout(exited, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(exited);
        for handle in self.handles.drain(..) {
            if handle.thread().id() != current {
                let _ = handle.join();
            }
        }
    }
}
