//! The debug checks of guards per thread (`kepoch_nt::platform::guards`): a wait for a grace period
//! inside an epoch is a bug check naming the thread, never a hang; no false report from DPCs (their
//! own guards, and raw tokens one DPC enters and another exits), guards dropped at DISPATCH, a full
//! table or a raw token handed to another thread (with the checks turned off); guards still held at
//! unload are logged with their thread.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kepoch::{Atomic, DomainBox, Owned, RawGuard};
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
/// period that waits for a token).
static READERS_DONE: AtomicUsize = AtomicUsize::new(0);
/// Readers of the no-false-report test.
const READERS: usize = 4;
/// Runs of [`dpc_reader`], [`dpc_token_enter`] and [`dpc_token_exit`].
static DPC_RUNS: AtomicU32 = AtomicU32::new(0);

/// A raw token a DPC on processor (0, 0) entered, for a DPC on processor (0, 2) to exit: each runs
/// as whatever thread it interrupted there.
static DPC_TOKEN: Mutex<Option<RawGuard>> = Mutex::new(None);
/// The KDPC of [`dpc_token_exit`], targeted at processor (0, 2).
static EXIT_DPC: AtomicUsize = AtomicUsize::new(0);

/// A DPC's guard: entered at DISPATCH (charged to no thread), exited there (charged to the thread
/// the DPC interrupted).
fn dpc_guard(domain: &DomainBox<NtPlatform>) {
    let guard = domain.enter();
    // SAFETY: no arguments besides a null frequency pointer; any IRQL.
    unsafe { sys::KeQueryPerformanceCounter(core::ptr::null_mut()) };
    drop(guard);
    DPC_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// The domain a DPC's context points to.
///
/// # Safety
/// `context` is a `DomainBox` that outlives the DPC's run (the test flushes the DPCs before dropping
/// it).
unsafe fn domain_of<'d>(context: *mut core::ffi::c_void) -> &'d DomainBox<NtPlatform> {
    // SAFETY: per the caller.
    unsafe { &*context.cast::<DomainBox<NtPlatform>>() }
}

/// A reader's DPC: a guard of its own.
unsafe extern "system" fn dpc_reader(
    _dpc: *mut sys::KDPC,
    context: *mut core::ffi::c_void,
    _argument1: *mut core::ffi::c_void,
    _argument2: *mut core::ffi::c_void,
) {
    // SAFETY: the reader DPCs' context is the domain, which outlives them.
    dpc_guard(unsafe { domain_of(context) });
}

/// On processor (0, 0): enters a raw token (unless one is left) and queues [`dpc_token_exit`] to
/// processor (0, 2) to exit it; then a guard of its own.
unsafe extern "system" fn dpc_token_enter(
    _dpc: *mut sys::KDPC,
    context: *mut core::ffi::c_void,
    _argument1: *mut core::ffi::c_void,
    _argument2: *mut core::ffi::c_void,
) {
    // SAFETY: as in dpc_reader.
    let domain = unsafe { domain_of(context) };
    let mut token = DPC_TOKEN.lock().unwrap();
    if token.is_none() {
        // SAFETY: exited once, by dpc_token_exit or by the test before the domain drops.
        *token = Some(unsafe { domain.enter_raw() });
    }
    drop(token);
    queue(EXIT_DPC.load(Ordering::SeqCst));
    dpc_guard(domain);
}

/// On processor (0, 2): exits the token [`dpc_token_enter`] left; then a guard of its own.
unsafe extern "system" fn dpc_token_exit(
    _dpc: *mut sys::KDPC,
    context: *mut core::ffi::c_void,
    _argument1: *mut core::ffi::c_void,
    _argument2: *mut core::ffi::c_void,
) {
    // SAFETY: as in dpc_reader.
    let domain = unsafe { domain_of(context) };
    if let Some(left) = DPC_TOKEN.lock().unwrap().take() {
        // SAFETY: entered by dpc_token_enter on this domain, exited once.
        unsafe { domain.exit_raw(left) };
    }
    dpc_guard(domain);
}

/// A leaked KDPC running `routine` on `domain`, targeted at processor (0, `number`).
fn targeted_dpc(
    domain: &'static DomainBox<NtPlatform>,
    routine: sys::KDEFERRED_ROUTINE,
    number: u8,
) -> usize {
    let dpc = leaked_dpc(domain, routine);
    let target = sys::PROCESSOR_NUMBER {
        Group: 0,
        Number: number,
        Reserved: 0,
    };
    // SAFETY: an initialised KDPC, not queued; a boot processor.
    let status = unsafe { sys::KeSetTargetProcessorDpcEx(dpc as *mut sys::KDPC, &target) };
    assert_eq!(status, 0);
    dpc
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
        // Leaves the host's processors to the DPCs and the clock now and then.
        if round.is_multiple_of(4) {
            nap();
        }
    }
    READERS_DONE.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn guards_of_threads_and_dpcs_and_guards_dropped_at_dispatch_cause_no_false_report() {
    // The default DPC latency: with none, DPCs that are always due on a processor (the cycle's
    // visits, the token DPCs) can keep a reader preempted there inside its guard for seconds, which
    // holds every grace period up (the emulated DPCs are slow next to NT's).
    let machine = Machine::start(MachineConfig::default());
    let driver = machine.load(driver_entry).expect("DriverEntry");
    let domain = borrowable(create(&machine, settings(tag(b"NoFp"), driver_owner())));
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            let machine = &machine;
            scope.spawn(move || machine.call("reader", move || reader(domain)));
        }
        // Queues the token DPCs every millisecond until the readers are done (it holds no guard).
        scope.spawn(|| {
            machine.call("token DPCs", move || {
                let enter = targeted_dpc(domain, dpc_token_enter, 0);
                EXIT_DPC.store(targeted_dpc(domain, dpc_token_exit, 2), Ordering::SeqCst);
                while READERS_DONE.load(Ordering::SeqCst) < READERS {
                    queue(enter);
                    nap();
                }
            })
        });
        // A thread that never holds a guard retires a value and waits for grace periods all along:
        // at least 30 rounds, a second and 100 DPC runs (at most 20 s).
        machine.call("synchronizer", move || {
            let value = Atomic::new(Owned::new(domain, 0u32).expect("memory"));
            let start = Instant::now();
            let mut round = 0u32;
            while (round < 30
                || start.elapsed() < Duration::from_secs(1)
                || DPC_RUNS.load(Ordering::SeqCst) < 100)
                && start.elapsed() < Duration::from_secs(20)
            {
                if let Some(old) = value.swap(Owned::new(domain, round).expect("memory")) {
                    old.retire();
                }
                match round % 3 {
                    0 => domain.synchronize(),
                    1 => domain.wait_for_grace_period(domain.grace_period()),
                    _ => domain.callback_barrier(),
                }
                round += 1;
            }
            if let Some(last) = value.take() {
                last.retire();
            }
            domain.synchronize();
        });
        STOP.store(true, Ordering::SeqCst);
    });
    machine.call("flush", move || {
        // SAFETY: no arguments; PASSIVE. Every DPC has run before the domain goes: the second flush
        // waits for the exit DPC a last enter DPC queued during the first.
        unsafe {
            sys::KeFlushQueuedDpcs();
            sys::KeFlushQueuedDpcs();
        }
        if let Some(left) = DPC_TOKEN.lock().unwrap().take() {
            // SAFETY: entered by a DPC on this domain, exited once.
            unsafe { domain.exit_raw(left) };
        }
    });
    assert!(DPC_RUNS.load(Ordering::SeqCst) >= 100, "the DPCs ran");
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
