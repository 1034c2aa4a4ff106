//! Helpers of the tests (each test file uses some of them): bounded waits, so that a test that
//! cannot finish fails with a message instead of hanging, and a record that counts its drops.
#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, ScopedJoinHandle};
use std::time::{Duration, Instant};

/// How long a test waits for anything before it fails (generous: the machine may be busy).
pub const LIMIT: Duration = Duration::from_secs(60);

/// Polls `done` until it holds; fails the test after [`LIMIT`].
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "not within {LIMIT:?}: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Joins a scoped thread within [`LIMIT`]. A thread that does not finish cannot be abandoned (the
/// scope would wait for it), so that ends the test process with a message instead of hanging.
pub fn join<T>(handle: ScopedJoinHandle<'_, T>) -> thread::Result<T> {
    let deadline = Instant::now() + LIMIT;
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            let _ = writeln!(
                std::io::stderr(),
                "test thread {:?} did not finish within {LIMIT:?}: aborting the test process",
                handle.thread().name()
            );
            std::process::abort();
        }
        thread::sleep(Duration::from_millis(1));
    }
    handle.join()
}

/// What readers look up: a serial number and its complement, which a record freed under a reader
/// (and its memory reused) would not keep paired. Counts its drops.
#[derive(Debug)]
pub struct Record {
    pub serial: u64,
    complement: u64,
    drops: Arc<AtomicU64>,
}

impl Record {
    pub fn new(serial: u64, drops: &Arc<AtomicU64>) -> Self {
        Record {
            serial,
            complement: !serial,
            drops: Arc::clone(drops),
        }
    }

    pub fn intact(&self) -> bool {
        self.complement == !self.serial
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}
