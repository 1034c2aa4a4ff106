//! The debug checks of guards per thread (`kepoch_nt::platform::guards`): a wait for a grace period
//! inside an epoch is a bug check naming the thread, never a hang; no false report from DPCs (their
//! own guards, and raw tokens one DPC enters and another exits), guards dropped at DISPATCH, a full
//! table or a raw token handed to another thread (with the checks turned off); guards still held at
//! unload are logged with their thread.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kepoch::{DomainBox, RawGuard};
use kepoch_nt::platform::guards::{ENTRIES, WAIT_INSIDE_EPOCH};
use kepoch_nt::{sys, NtPlatform};
use kepoch_ntemu::{Machine, MachineConfig};

use crate::common::*;

/// What the check logs before its bug check.
const INSIDE: &str = "waits for a grace period inside an epoch";

/// Sleeps 1 ms on the emulated kernel (the thread blocks: DPCs and other threads run).
fn nap() {
    let interval: i64 = -10_000;
    // SAFETY: a relative interval, readable; PASSIVE.
    unsafe { sys::KeDelayExecutionThread(sys::KERNEL_MODE, false, &interval) };
}

/// Naps until `done`, at most 20 s.
fn nap_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited for {what}"
        );
        nap();
    }
}

/// A wait for a grace period.
type Wait = fn(&DomainBox<NtPlatform>);

/// The thread a waiter inside an epoch ran on.
static WAITER: AtomicUsize = AtomicUsize::new(0);

/// On a new thread: enters `domain`, then `wait`s; returns the failures of the bug check (the thread
/// stays parked, holding its guard).
fn wait_inside(
    machine: &Machine,
    domain: &'static DomainBox<NtPlatform>,
    wait: Wait,
) -> (usize, Vec<String>) {
    let failures = machine
        .try_call("a wait inside an epoch", move || {
            let guard = domain.enter();
            WAITER.store(sys::current_thread_id(), Ordering::SeqCst);
            wait(domain);
            drop(guard);
        })
        .expect_err("the wait must bug check, not return or hang");
    (WAITER.load(Ordering::SeqCst), failures)
}

#[test]
fn a_wait_for_a_grace_period_inside_an_epoch_bug_checks_naming_the_thread() {
    let machine = Machine::start(MachineConfig::default().expect_error(INSIDE));
    let _driver = machine.load(driver_entry).expect("DriverEntry");
    let domain = borrowable(create(&machine, settings(tag(b"Wai1"), driver_owner())));
    let other = borrowable(create(&machine, settings(tag(b"Wai2"), driver_owner())));
    // A guard of another domain does not hold this one's grace periods.
    machine.call("synchronize inside another domain's epoch", move || {
        let guard = other.enter();
        domain.synchronize();
        domain.callback_barrier();
        drop(guard);
    });
    let waits: [(&str, Wait); 3] = [
        ("synchronize", |d| d.synchronize()),
        ("wait_for_grace_period", |d| {
            d.wait_for_grace_period(d.grace_period())
        }),
        ("callback_barrier", |d| d.callback_barrier()),
    ];
    for (name, wait) in waits {
        let (thread, failures) = wait_inside(&machine, domain, wait);
        assert_ne!(thread, 0);
        let bug_check = format!(
            "KeBugCheckEx({:#x}, {thread:#x}, 0x1, {:#x}, {WAIT_INSIDE_EPOCH:#x})",
            sys::MANUALLY_INITIATED_CRASH,
            domain.platform() as *const NtPlatform as usize
        );
        assert!(
            failures.iter().any(|f| f.contains(&bug_check)),
            "{name}: {bug_check} in {failures:?}"
        );
        let line = format!("kepoch: thread {thread:#x} {INSIDE}: it holds 1 guard(s)");
        assert!(
            machine
                .log()
                .iter()
                .any(|(level, text)| *level == sys::DPFLTR_ERROR_LEVEL
                    && text.starts_with(&line)
                    && text.contains("drop every guard before synchronize")),
            "{name}: {line} in {:?}",
            machine.log()
        );
    }
    // Each waiter is parked for good with its guard: the domains and the machine are left as they are
    // (a failed machine keeps what stuck threads may use).
}

/// Set to stop the readers of the no-false-report test.
static STOP: AtomicBool = AtomicBool::new(false);
/// Readers that stopped (the token DPCs go on until all did: a reader may still wait for a grace
/// period that waits for the token left by the last one).
static READERS_DONE: AtomicUsize = AtomicUsize::new(0);
/// Readers of the no-false-report test.
const READERS: usize = 4;
/// Runs of [`dpc_reader`] and [`dpc_token`].
static DPC_RUNS: AtomicU32 = AtomicU32::new(0);

/// A raw token one DPC entered and left for another DPC (on any processor, interrupting any thread)
/// to exit.
static DPC_TOKEN: Mutex<Option<RawGuard>> = Mutex::new(None);

/// A DPC's guard: entered at DISPATCH (charged to no thread), exited there (charged to the thread
/// the DPC interrupted).
fn dpc_guard(domain: &DomainBox<NtPlatform>) {
    let guard = domain.enter();
    // SAFETY: no arguments besides a null frequency pointer; any IRQL.
    unsafe { sys::KeQueryPerformanceCounter(core::ptr::null_mut()) };
    drop(guard);
    DPC_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// A reader's DPC: a guard of its own.
unsafe extern "system" fn dpc_reader(
    _dpc: *mut sys::KDPC,
    context: *mut core::ffi::c_void,
    _argument1: *mut core::ffi::c_void,
    _argument2: *mut core::ffi::c_void,
) {
    // SAFETY: the domain outlives every run: the test flushes the DPCs before dropping it.
    dpc_guard(unsafe { &*context.cast::<DomainBox<NtPlatform>>() });
}

/// The token DPC: exits the raw token an earlier run left, or enters one and leaves it; then a guard
/// of its own.
unsafe extern "system" fn dpc_token(
    _dpc: *mut sys::KDPC,
    context: *mut core::ffi::c_void,
    _argument1: *mut core::ffi::c_void,
    _argument2: *mut core::ffi::c_void,
) {
    // SAFETY: as in dpc_reader.
    let domain = unsafe { &*context.cast::<DomainBox<NtPlatform>>() };
    let mut token = DPC_TOKEN.lock().unwrap();
    match token.take() {
        // SAFETY: entered by an earlier run on this domain, exited once.
        Some(left) => unsafe { domain.exit_raw(left) },
        // SAFETY: exited once, by a later run or by the test before the domain drops.
        None => *token = Some(unsafe { domain.enter_raw() }),
    }
    drop(token);
    dpc_guard(domain);
}

/// A leaked KDPC running `routine` on `domain`.
fn leaked_dpc(domain: &'static DomainBox<NtPlatform>, routine: sys::KDEFERRED_ROUTINE) -> usize {
    // SAFETY: a KDPC is plain bytes until KeInitializeDpc; leaked, it stays valid while queued.
    let dpc = Box::into_raw(Box::new(unsafe { core::mem::zeroed::<sys::KDPC>() }));
    // SAFETY: as above; the context is the domain, which outlives the DPC's runs.
    unsafe {
        sys::KeInitializeDpc(
            dpc,
            sys::deferred_routine(routine),
            core::ptr::from_ref(domain).cast(),
        )
    };
    dpc as usize
}

/// Queues the leaked KDPC `dpc` to the current processor (a no-op if it is queued).
fn queue(dpc: usize) {
    // SAFETY: a leaked, initialised KDPC; any IRQL up to DISPATCH.
    unsafe {
        sys::KeInsertQueueDpc(
            dpc as *mut sys::KDPC,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
        )
    };
}

/// A reader thread: guards at PASSIVE with kernel calls inside (where DPCs queued to its processor
/// interrupt it), a guard dropped after raising to DISPATCH, one entered at DISPATCH and dropped at
/// PASSIVE, nested guards; between them it holds nothing and synchronizes now and then.
fn reader(domain: &'static DomainBox<NtPlatform>) {
    let dpc = leaked_dpc(domain, dpc_reader);
    let mut round = 0u32;
    while !STOP.load(Ordering::SeqCst) {
        round += 1;
        queue(dpc);
        let outer = domain.enter();
        let inner = domain.enter();
        // SAFETY: as in dpc_guard.
        unsafe { sys::KeQueryPerformanceCounter(core::ptr::null_mut()) };
        drop(inner);
        // Dropped at DISPATCH.
        // SAFETY: lowered below, on this thread.
        let previous = unsafe { sys::irql::raise_to_dispatch() };
        drop(outer);
        // Entered at DISPATCH, dropped at PASSIVE.
        let raised = domain.enter();
        // SAFETY: from the raise above.
        unsafe { sys::irql::lower(previous) };
        drop(raised);
        if round.is_multiple_of(8) {
            domain.synchronize();
        }
        if round.is_multiple_of(32) {
            domain.callback_barrier();
        }
    }
    READERS_DONE.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn guards_of_threads_and_dpcs_and_guards_dropped_at_dispatch_cause_no_false_report() {
    let machine = Machine::start(MachineConfig {
        dpc_latency: Duration::ZERO,
        ..MachineConfig::default()
    });
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let domain = borrowable(create(&machine, settings(tag(b"NoFp"), driver_owner())));
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            let machine = &machine;
            scope.spawn(move || machine.call("reader", move || reader(domain)));
        }
        // Queues the token DPC wherever it runs (it moves between processors), every millisecond,
        // until the readers are done; it holds no guard itself.
        scope.spawn(|| {
            machine.call("token DPCs", move || {
                let dpc = leaked_dpc(domain, dpc_token);
                while READERS_DONE.load(Ordering::SeqCst) < READERS {
                    queue(dpc);
                    nap();
                }
            })
        });
        // A thread that never holds a guard waits for grace periods all along.
        machine.call("synchronizer", move || {
            for round in 0..30u32 {
                match round % 3 {
                    0 => domain.synchronize(),
                    1 => domain.wait_for_grace_period(domain.grace_period()),
                    _ => domain.callback_barrier(),
                }
            }
        });
        STOP.store(true, Ordering::SeqCst);
    });
    machine.call("flush", move || {
        // SAFETY: no arguments; PASSIVE. Every DPC has run before the domain goes.
        unsafe { sys::KeFlushQueuedDpcs() };
        if let Some(left) = DPC_TOKEN.lock().unwrap().take() {
            // SAFETY: entered by a DPC on this domain, exited once.
            unsafe { domain.exit_raw(left) };
        }
    });
    assert!(DPC_RUNS.load(Ordering::SeqCst) > 0, "the DPCs ran");
    let stats = stats(&machine, domain);
    assert_eq!(stats.enters, stats.exits, "{stats:#?}");
    assert!(
        machine
            .log()
            .iter()
            .all(|(level, _)| *level != sys::DPFLTR_ERROR_LEVEL),
        "{:?}",
        machine.log()
    );
    // SAFETY: every machine call borrowing it returned.
    drop_domain(&machine, unsafe { reclaim(domain) });
    driver.unload();
    machine.finish();
}

/// Threads of the overflow test that started, hold their first guard, and finished each phase.
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
static HOLDING: AtomicUsize = AtomicUsize::new(0);
static EARLY_DROPPED: AtomicUsize = AtomicUsize::new(0);
static LATE_DONE: AtomicUsize = AtomicUsize::new(0);

/// Threads of the overflow test: more than the table has entries.
const HOLDERS: usize = ENTRIES + 16;

/// One holder: all hold a guard at once (the table overflows); the early half drops it; the late half
/// (some never counted) enter again (now counted), drop everything in another order, and all wait for
/// a grace period holding nothing.
fn holder(domain: &'static DomainBox<NtPlatform>) {
    let index = ARRIVED.fetch_add(1, Ordering::SeqCst);
    let early = index < HOLDERS / 2;
    let first = domain.enter();
    HOLDING.fetch_add(1, Ordering::SeqCst);
    nap_until("every holder", || HOLDING.load(Ordering::SeqCst) == HOLDERS);
    if early {
        drop(first);
        EARLY_DROPPED.fetch_add(1, Ordering::SeqCst);
    } else {
        let second = domain.enter();
        nap_until("the early half", || {
            EARLY_DROPPED.load(Ordering::SeqCst) == HOLDERS / 2
        });
        // Entries are free again: a holder the full table left out is counted from here.
        let third = domain.enter();
        drop(first);
        drop(second);
        drop(third);
        LATE_DONE.fetch_add(1, Ordering::SeqCst);
    }
    nap_until("the late half", || {
        LATE_DONE.load(Ordering::SeqCst) == HOLDERS - HOLDERS / 2
    });
    domain.synchronize();
}

#[test]
fn more_threads_than_entries_holding_guards_cause_no_false_report() {
    let machine = Machine::start(MachineConfig::default());
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let domain = borrowable(create(&machine, settings(tag(b"Full"), driver_owner())));
    std::thread::scope(|scope| {
        for _ in 0..HOLDERS {
            let machine = &machine;
            scope.spawn(move || machine.call("holder", move || holder(domain)));
        }
        // Without a guard, while the table is full and every holder is inside.
        machine.call("synchronizer", move || {
            nap_until("every holder", || HOLDING.load(Ordering::SeqCst) == HOLDERS);
            domain.synchronize();
        });
    });
    let stats = stats(&machine, domain);
    assert_eq!(stats.enters, stats.exits, "{stats:#?}");
    // SAFETY: every machine call borrowing it returned.
    drop_domain(&machine, unsafe { reclaim(domain) });
    driver.unload();
    machine.finish();
}

/// The token the handing-off thread entered, for the other thread to exit.
static HANDED: Mutex<Option<RawGuard>> = Mutex::new(None);
/// The other thread exited it.
static EXITED: AtomicBool = AtomicBool::new(false);

#[test]
fn a_raw_token_exited_on_another_thread_is_not_reported_with_the_checks_off() {
    let machine = Machine::start(MachineConfig::default());
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let domain = borrowable(create(&machine, settings(tag(b"Hand"), driver_owner())));
    // The entering thread's count stays up once another thread exits its token: the checks would
    // report its wait (the premise in the module documentation), so this driver turns them off.
    domain.platform().disable_guard_checks();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            machine.call("enters and hands off", move || {
                // SAFETY: exited once, by the other thread, before the domain drops.
                *HANDED.lock().unwrap() = Some(unsafe { domain.enter_raw() });
                nap_until("the exit", || EXITED.load(Ordering::SeqCst));
                domain.synchronize();
            })
        });
        machine.call("exits", move || {
            nap_until("the token", || HANDED.lock().unwrap().is_some());
            let token = HANDED.lock().unwrap().take().expect("the token");
            // SAFETY: from this domain's enter_raw, exited once.
            unsafe { domain.exit_raw(token) };
            EXITED.store(true, Ordering::SeqCst);
        });
    });
    // SAFETY: every machine call borrowing it returned.
    drop_domain(&machine, unsafe { reclaim(domain) });
    driver.unload();
    machine.finish();
}

#[test]
fn a_guard_never_exited_is_logged_with_its_thread_at_unload() {
    let machine = Machine::start(
        MachineConfig::default()
            .expect_error("still inside an epoch at unload")
            .expect_error("guard(s) of this domain at unload"),
    );
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let domain = borrowable(create(&machine, settings(tag(b"Leak"), driver_owner())));
    let thread = machine.call("leaks a token", move || {
        // SAFETY: never exited on purpose (the leak this test reports): a token has no destructor,
        // dropping it leaves the reader inside.
        let _leaked = unsafe { domain.enter_raw() };
        sys::current_thread_id()
    });
    // SAFETY: every machine call borrowing it returned.
    drop_domain(&machine, unsafe { reclaim(domain) });
    let line =
        format!("kepoch: thread {thread:#x} still holds 1 guard(s) of this domain at unload");
    assert!(
        machine
            .log()
            .iter()
            .any(|(level, text)| *level == sys::DPFLTR_ERROR_LEVEL && text.starts_with(&line)),
        "{line} in {:?}",
        machine.log()
    );
    driver.unload();
    machine.finish();
}
