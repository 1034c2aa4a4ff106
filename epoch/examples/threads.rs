//! Four reader threads and one writer on the user-mode platform (`kepoch-user`), for two seconds.
//! Readers enter, load the current record through `kepoch::atomic`, check it and exit; the writer
//! swaps in new records, retires the old ones and calls `synchronize` every 1,000 swaps. Prints one
//! line with the numbers of records retired and freed, and exits non-zero if they differ (or a
//! reader saw a record that was not intact).
//!
//! `cargo run --release -p kepoch --example threads`

use kepoch::{Atomic, Config, Domain, Owned};
use kepoch_user::UserPlatform;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const READERS: usize = 4;
const RUN_FOR: Duration = Duration::from_secs(2);
const SYNCHRONIZE_EVERY: u64 = 1_000;

/// Records whose destructor has run.
static FREED: AtomicU64 = AtomicU64::new(0);

/// What readers look up: a serial number and its complement. A record freed under a reader (and
/// its memory reused) would not keep the two paired.
#[derive(Debug)]
struct Record {
    serial: u64,
    complement: u64,
}

impl Record {
    fn new(serial: u64) -> Self {
        Record {
            serial,
            complement: !serial,
        }
    }

    fn intact(&self) -> bool {
        self.complement == !self.serial
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        FREED.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() -> ExitCode {
    let domain = match Domain::create(UserPlatform::new(), Config::default()) {
        Ok(domain) => domain,
        Err(error) => {
            eprintln!("threads: creating the domain failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let current = Atomic::new(Owned::new(&domain, Record::new(0)).expect("memory for a record"));
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let broken = AtomicU64::new(0);

    let mut retired = thread::scope(|s| {
        for _ in 0..READERS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let guard = domain.enter();
                    if current.load(&guard).is_some_and(|record| !record.intact()) {
                        broken.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(guard);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let writer = s.spawn(|| {
            let started = Instant::now();
            let mut retired = 0;
            let mut serial = 0;
            while started.elapsed() < RUN_FOR {
                serial += 1;
                let fresh = Owned::new(&domain, Record::new(serial)).expect("memory for a record");
                if let Some(old) = current.swap(fresh) {
                    old.retire();
                    retired += 1;
                }
                if serial % SYNCHRONIZE_EVERY == 0 {
                    domain.synchronize();
                }
            }
            retired
        });
        let retired = writer.join();
        stop.store(true, Ordering::Relaxed);
        retired.expect("the writer panicked")
    });

    // The last record too: unlink it, retire it, and wait until everything retired is freed.
    if let Some(last) = current.take() {
        last.retire();
        retired += 1;
    }
    domain.synchronize();
    let freed = FREED.load(Ordering::SeqCst);
    let broken = broken.load(Ordering::SeqCst);
    println!(
        "retired {retired}, freed {freed} ({} reads by {READERS} readers, {} cycles)",
        reads.load(Ordering::SeqCst),
        domain.stats().cycles
    );
    if retired != freed || broken != 0 {
        eprintln!(
            "threads: FAILED: {retired} records retired but {freed} freed, {broken} reads of a record that was not intact"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
