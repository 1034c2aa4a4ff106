//! Notification events: a flag in the event itself (which lives in the domain) and one condition
//! variable per platform that every waiter sleeps on.

use crate::bounded::{lock, wait_until};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A notification event (`KEVENT`, `NotificationEvent`), stored inline in the domain.
pub struct UserEvent {
    signalled: AtomicBool,
}

impl UserEvent {
    /// A new event, not signalled.
    pub(crate) fn new() -> Self {
        UserEvent {
            signalled: AtomicBool::new(false),
        }
    }

    /// Clears the event.
    pub(crate) fn reset(&self) {
        self.signalled.store(false, Ordering::SeqCst);
    }
}

/// Where waiters of a platform's events sleep.
pub(crate) struct Wakeup {
    lock: Mutex<()>,
    condvar: Condvar,
}

impl Wakeup {
    pub(crate) fn new() -> Self {
        Wakeup {
            lock: Mutex::new(()),
            condvar: Condvar::new(),
        }
    }
}

/// Signals `event` and wakes its waiters. After the flag is set, touches only `wakeup` (its own
/// reference): a waiter may free the event, and the platform value it lives next to, at once.
pub(crate) fn signal(event: &UserEvent, wakeup: Arc<Wakeup>) {
    event.signalled.store(true, Ordering::SeqCst);
    // Notifying under the lock: a waiter that saw the flag clear is already asleep, or has not
    // looked yet and will see it set.
    let _waiters = lock(&wakeup.lock);
    wakeup.condvar.notify_all();
}

/// Waits until `event` is signalled; past `limit`, panics with `diagnosis()`.
pub(crate) fn wait(
    event: &UserEvent,
    wakeup: &Wakeup,
    limit: Duration,
    diagnosis: impl FnOnce() -> String,
) {
    drop(wait_until(
        lock(&wakeup.lock),
        &wakeup.condvar,
        limit,
        |_| event.signalled.load(Ordering::SeqCst),
        diagnosis,
    ));
}
