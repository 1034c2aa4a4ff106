//! Waits that end: every wait of the platform has a limit, and what happens when it is exceeded or
//! when a rule is broken (a panic naming the misuse, or a bug check for what cannot be unwound).

use std::any::Any;
use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Locks `mutex`. The platform runs no foreign code under its mutexes, so a poisoned one (a panic
/// in a diagnosis) still holds consistent data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` until `done` holds for the guarded state. Past `limit`, panics with
/// `diagnosis()`: a wait that does not end is reported, never left hanging.
pub(crate) fn wait_until<'a, T>(
    mut guard: MutexGuard<'a, T>,
    condvar: &Condvar,
    limit: Duration,
    mut done: impl FnMut(&mut T) -> bool,
    diagnosis: impl FnOnce() -> String,
) -> MutexGuard<'a, T> {
    let deadline = Instant::now() + limit;
    while !done(&mut guard) {
        let now = Instant::now();
        if now >= deadline {
            drop(guard);
            misuse(&diagnosis());
        }
        guard = condvar
            .wait_timeout(guard, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    guard
}

/// Spins, then yields, then sleeps until `attempt` succeeds. Past `limit`, panics with
/// `diagnosis()`.
pub(crate) fn spin_until(
    limit: Duration,
    mut attempt: impl FnMut() -> bool,
    diagnosis: impl FnOnce() -> String,
) {
    let mut deadline = None;
    let mut tries: u32 = 0;
    while !attempt() {
        tries = tries.saturating_add(1);
        if tries < 64 {
            std::hint::spin_loop();
            continue;
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limit);
        if Instant::now() >= deadline {
            misuse(&diagnosis());
        }
        if tries < 1_000 {
            thread::yield_now();
        } else {
            thread::sleep(Duration::from_micros(50));
        }
    }
}

/// A misuse the caller can unwind from: panics with the platform's prefix.
pub(crate) fn misuse(message: &str) -> ! {
    panic!("kepoch-user: {message}")
}

/// A broken rule that cannot be unwound from (a kernel would bug-check): the caller may be inside
/// the core at DISPATCH_LEVEL, holding its locks or a cycle in flight. Writes the diagnosis to the
/// process's standard error (not to a test's captured output, which an abort would lose) and aborts.
pub(crate) fn bug_check(message: &str) -> ! {
    let _ = writeln!(
        std::io::stderr(),
        "kepoch-user: {message}\nkepoch-user: aborting (a kernel would bug-check here: the domain's state cannot be recovered)"
    );
    std::process::abort()
}

/// The message of a panic payload (without the platform's prefix, which the bug check adds), for a
/// bug check that reports it.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    let text = if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "(a panic without a message)"
    };
    text.strip_prefix("kepoch-user: ").unwrap_or(text)
}

/// The calling thread, for diagnoses: its name and id.
pub(crate) fn thread_label() -> String {
    let thread = thread::current();
    format!(
        "'{}' ({:?})",
        thread.name().unwrap_or("unnamed"),
        thread.id()
    )
}
