//! Preemption below DISPATCH_LEVEL, each shown with a deliberately broken routine that only the
//! stricter emulation catches, next to the correct routine that passes: a DPC that preempts the
//! PASSIVE code on its processor, a thread that moves between two kernel calls, and a signaller
//! preempted by the thread it woke; and the current thread of a DPC (the one it interrupted).

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, Ordering};
use std::string::String;
use std::time::Duration;

use super::blind_spot_tests::{leaked_dpc, record_processor, RAN_ON};
use super::{Machine, MachineConfig};
use crate::nt::{self, DISPATCH_LEVEL, KDPC, PROCESSOR_NUMBER};

/// Pool tag of the blocks these tests allocate.
const TAG: u32 = u32::from_le_bytes(*b"Test");

/// The test's spin lock: held while true.
static HELD: AtomicBool = AtomicBool::new(false);

/// A DPC routine that takes the test's spin lock (spins until it is free).
unsafe extern "system" fn spin_until_free(
    _: *mut KDPC,
    _: *mut c_void,
    _: *mut c_void,
    _: *mut c_void,
) {
    while HELD.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
}

/// On processor (0, 0): takes the test's spin lock (after raising to DISPATCH when `raise`, at
/// PASSIVE otherwise: the bug), queues a DPC that wants the same lock to this processor, makes a
/// kernel call while holding it, then releases it and waits for the DPC.
fn hold_the_lock_a_dpc_here_wants(raise: bool) {
    let processor = PROCESSOR_NUMBER::default();
    let dpc = leaked_dpc();
    // SAFETY: the KDPC is leaked, so it stays valid while queued; raise and lower are paired on this
    // thread; the affinity is restored.
    unsafe {
        let affinity = nt::KeSetSystemAffinityThreadEx(1);
        let previous = raise.then(|| nt::KfRaiseIrql(DISPATCH_LEVEL));
        HELD.store(true, Ordering::Release);
        nt::KeInitializeDpc(
            dpc,
            nt::deferred_routine(spin_until_free),
            core::ptr::null(),
        );
        nt::KeSetTargetProcessorDpcEx(dpc, &processor);
        nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
        nt::KeQueryPerformanceCounter(core::ptr::null_mut());
        HELD.store(false, Ordering::Release);
        if let Some(previous) = previous {
            nt::KeLowerIrql(previous);
        }
        nt::KeFlushQueuedDpcs();
        nt::KeRevertToUserAffinityThreadEx(affinity);
    }
}

#[test]
fn a_dpc_spinning_on_a_lock_held_below_dispatch_on_its_processor_is_reported_not_hung() {
    let machine = Machine::start(MachineConfig {
        dpc_latency: Duration::ZERO,
        dpc_watchdog: Duration::from_secs(1),
        ..MachineConfig::default()
    });
    machine
        .try_call("lock taken at DISPATCH", || {
            hold_the_lock_a_dpc_here_wants(true)
        })
        .expect("raised first, the DPC waits until the lock is free");
    // At PASSIVE the DPC preempts the holder at its next kernel call and spins on its lock: the
    // processor is deadlocked, as on NT. The watchdog reports it and lets the holder go.
    let failures = machine
        .try_call("lock taken at PASSIVE", || {
            hold_the_lock_a_dpc_here_wants(false)
        })
        .expect_err("the same-processor deadlock must be reported");
    assert!(
        failures.iter().any(|f| f.contains("DPC_WATCHDOG_VIOLATION")
            && f.contains("1 thread(s) it preempted there")),
        "{failures:?}"
    );
    machine.finish();
}

/// Set while the test's PASSIVE thread runs driver code without calling the kernel.
static INSIDE: AtomicBool = AtomicBool::new(false);
/// A DPC found [`INSIDE`] set: it ran while PASSIVE code ran on its processor.
static SAW_INSIDE: AtomicBool = AtomicBool::new(false);
/// The helper thread queued its DPC.
static QUEUED: AtomicBool = AtomicBool::new(false);

/// A DPC routine that records whether the test's PASSIVE thread was inside its section.
unsafe extern "system" fn look_inside(
    _: *mut KDPC,
    _: *mut c_void,
    _: *mut c_void,
    _: *mut c_void,
) {
    if INSIDE.load(Ordering::Acquire) {
        SAW_INSIDE.store(true, Ordering::Release);
    }
}

/// A system thread on processor (0, 2): queues [`look_inside`] to processor (0, 0) once the test's
/// thread is inside its section.
unsafe extern "system" fn queue_to_the_first_processor(_: *mut c_void) {
    let processor = PROCESSOR_NUMBER::default();
    let dpc = leaked_dpc();
    // SAFETY: the KDPC is leaked, so it stays valid while queued; the affinity is restored.
    unsafe {
        let affinity = nt::KeSetSystemAffinityThreadEx(1 << 2);
        while !INSIDE.load(Ordering::Acquire) {
            let interval: i64 = -10_000;
            nt::KeDelayExecutionThread(nt::KERNEL_MODE, false, &interval);
        }
        nt::KeInitializeDpc(dpc, nt::deferred_routine(look_inside), core::ptr::null());
        nt::KeSetTargetProcessorDpcEx(dpc, &processor);
        nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
        QUEUED.store(true, Ordering::Release);
        nt::KeRevertToUserAffinityThreadEx(affinity);
    }
}

#[test]
fn a_dpc_does_not_start_while_passive_code_runs_on_its_processor() {
    let machine = Machine::start(MachineConfig {
        dpc_latency: Duration::ZERO,
        ..MachineConfig::default()
    });
    let saw_inside = machine.call("a section without kernel calls", || {
        // SAFETY: a kernel handle, waited on and closed once; the affinity is restored.
        unsafe {
            let affinity = nt::KeSetSystemAffinityThreadEx(1);
            let mut attributes: nt::OBJECT_ATTRIBUTES = core::mem::zeroed();
            attributes.Length = core::mem::size_of::<nt::OBJECT_ATTRIBUTES>() as u32;
            attributes.Attributes = nt::OBJ_KERNEL_HANDLE;
            let mut handle: nt::HANDLE = core::ptr::null_mut();
            let status = nt::PsCreateSystemThread(
                &mut handle,
                nt::THREAD_ALL_ACCESS,
                &attributes,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                nt::start_routine(queue_to_the_first_processor),
                core::ptr::null(),
            );
            assert_eq!(status, 0);
            // Driver code on processor (0, 0) that calls nothing: the DPC queued here meanwhile
            // must wait for the next kernel call (on NT it would interrupt; either way the two
            // never run at once). Bounded: the helper queues within the machine's deadlines.
            INSIDE.store(true, Ordering::Release);
            let started = std::time::Instant::now();
            while !QUEUED.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(20) {
                core::hint::spin_loop();
            }
            let queued_at = std::time::Instant::now();
            while queued_at.elapsed() < Duration::from_millis(20) {
                core::hint::spin_loop();
            }
            INSIDE.store(false, Ordering::Release);
            nt::KeFlushQueuedDpcs();
            nt::ZwWaitForSingleObject(handle, false, core::ptr::null());
            nt::ZwClose(handle);
            nt::KeRevertToUserAffinityThreadEx(affinity);
            assert!(
                QUEUED.load(Ordering::Acquire),
                "the helper never queued its DPC"
            );
        }
        SAW_INSIDE.load(Ordering::Acquire)
    });
    assert!(
        !saw_inside,
        "a DPC ran while PASSIVE code ran on its processor"
    );
    machine.finish();
}

/// Reads its processor, makes an unrelated kernel call (an allocation), and queues a DPC without a
/// target, which runs on the processor the call is made on, believing that is the one it read. At
/// PASSIVE (the bug) the thread may have moved in between; raised to DISPATCH first it cannot.
/// Returns in how many of `rounds` the DPC ran on another processor.
fn queue_to_the_processor_read_before(raise: bool, rounds: u32) -> u32 {
    let dpc = leaked_dpc();
    let mut elsewhere = 0;
    for _ in 0..rounds {
        let mut here = PROCESSOR_NUMBER::default();
        // SAFETY: raise and lower are paired on this thread; the KDPC is leaked and not queued when
        // initialised again (the flush waited for it); the block is freed once with its tag.
        unsafe {
            let previous = raise.then(|| nt::KfRaiseIrql(DISPATCH_LEVEL));
            nt::KeGetCurrentProcessorNumberEx(&mut here);
            let block = nt::ExAllocatePoolWithTag(nt::NON_PAGED_POOL_NX, 64, TAG);
            nt::KeInitializeDpc(
                dpc,
                nt::deferred_routine(record_processor),
                core::ptr::null(),
            );
            nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
            if let Some(previous) = previous {
                nt::KeLowerIrql(previous);
            }
            nt::KeFlushQueuedDpcs();
            nt::ExFreePoolWithTag(block, TAG);
        }
        let ran_on = *RAN_ON.lock().unwrap_or_else(|p| p.into_inner());
        elsewhere += u32::from(ran_on != Some((here.Group, here.Number)));
    }
    elsewhere
}

#[test]
fn a_passive_thread_may_move_between_two_kernel_calls_under_the_seed() {
    for seed in [1, 2, 3] {
        let machine = Machine::start(MachineConfig {
            seed,
            ..MachineConfig::default()
        });
        let correct = machine.call("raised", || queue_to_the_processor_read_before(true, 100));
        assert_eq!(
            correct, 0,
            "seed {seed}: at DISPATCH the thread cannot move"
        );
        let broken = machine.call("passive", || queue_to_the_processor_read_before(false, 100));
        assert!(
            broken > 0,
            "seed {seed}: the thread never moved between reading its processor and queueing"
        );
        machine.finish();
    }
}

/// A pool block with an event the waiter frees the block after.
const EVENT: usize = 0;
/// Where the signaller writes after signalling (behind the KEVENT).
const AFTER_SIGNAL: usize = 0x18;

/// A system thread: waits for the event in the block `context`, then frees the block.
unsafe extern "system" fn free_when_signalled(context: *mut c_void) {
    // SAFETY: `context` is the block with an initialised event at EVENT; the test frees it only here.
    unsafe {
        nt::KeWaitForSingleObject(
            context.cast::<u8>().add(EVENT).cast(),
            nt::EXECUTIVE,
            nt::KERNEL_MODE,
            false,
            core::ptr::null(),
        );
        nt::ExFreePoolWithTag(context, TAG);
    }
}

/// Starts a thread that frees a block once an event in it is signalled, waits until that thread
/// waits, signals, and (the bug, when `touch_after`) writes into the block after signalling.
fn signal_a_waiter_that_frees(machine: &Machine, touch_after: bool) {
    let kernel = machine.kernel.clone();
    machine.call("signal", move || {
        // SAFETY: a fresh block large enough for the KEVENT and the word after it; the handle is a
        // kernel handle, waited on and closed once; the write after the signal is the bug under test
        // (into a freed, quarantined block).
        unsafe {
            let block = nt::ExAllocatePoolWithTag(nt::NON_PAGED_POOL_NX, 64, TAG);
            let event = block.cast::<u8>().add(EVENT).cast::<nt::KEVENT>();
            nt::KeInitializeEvent(event, nt::NOTIFICATION_EVENT, false);
            let mut attributes: nt::OBJECT_ATTRIBUTES = core::mem::zeroed();
            attributes.Length = core::mem::size_of::<nt::OBJECT_ATTRIBUTES>() as u32;
            attributes.Attributes = nt::OBJ_KERNEL_HANDLE;
            let mut handle: nt::HANDLE = core::ptr::null_mut();
            let status = nt::PsCreateSystemThread(
                &mut handle,
                nt::THREAD_ALL_ACCESS,
                &attributes,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                nt::start_routine(free_when_signalled),
                block,
            );
            assert_eq!(status, 0);
            let mut polls = 0;
            while kernel.lock().sync.waiting_on(event as usize) == 0 {
                polls += 1;
                assert!(polls < 10_000, "the waiter never waited");
                let interval: i64 = -10_000;
                nt::KeDelayExecutionThread(nt::KERNEL_MODE, false, &interval);
            }
            nt::KeSetEvent(event, 0, false);
            if touch_after {
                block.cast::<u8>().add(AFTER_SIGNAL).write_volatile(1);
            }
            nt::ZwWaitForSingleObject(handle, false, core::ptr::null());
            nt::ZwClose(handle);
        }
    });
}

#[test]
fn a_passive_signaller_touching_what_the_woken_thread_frees_is_caught() {
    // Every wake preempts the signaller until the woken thread blocks again or ends (bounded).
    let config = MachineConfig {
        migrate_one_in: 1,
        signal_delay: Duration::from_secs(10),
        ..MachineConfig::default()
    };
    let machine = Machine::start(config.clone());
    signal_a_waiter_that_frees(&machine, false);
    machine.finish();

    let machine = Machine::start(config);
    signal_a_waiter_that_frees(&machine, true);
    let finish = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| machine.finish()));
    let message: String = super::kernel::panic_text(&finish.expect_err("finish must report"));
    assert!(
        message.contains(&std::format!("written at +{AFTER_SIGNAL:#x} after free")),
        "{message}"
    );
}

/// `PsGetCurrentThreadId` as [`record_thread`] last saw it in a DPC (`u64::MAX`: not run yet).
static DPC_THREAD: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);

/// A DPC routine that records its current thread's id.
unsafe extern "system" fn record_thread(
    _: *mut KDPC,
    _: *mut c_void,
    _: *mut c_void,
    _: *mut c_void,
) {
    // SAFETY: no arguments; any IRQL.
    let thread = unsafe { nt::PsGetCurrentThreadId() } as u64;
    DPC_THREAD.store(thread, Ordering::SeqCst);
}

#[test]
fn a_dpc_runs_as_the_thread_it_interrupted_and_threads_have_distinct_ids() {
    let machine = Machine::start(MachineConfig {
        dpc_latency: Duration::ZERO,
        ..MachineConfig::default()
    });
    let (me, again, interrupted, idle) = machine.call("DPCs on two processors", || {
        let dpc = leaked_dpc();
        // SAFETY: the KDPC is leaked, so it stays valid while queued, and is not queued when
        // initialised again (the flush waited for it); the affinity is restored.
        unsafe {
            let me = nt::PsGetCurrentThreadId() as u64;
            let affinity = nt::KeSetSystemAffinityThreadEx(1);
            // To this thread's processor: it starts when the thread steps aside at a kernel call.
            DPC_THREAD.store(u64::MAX, Ordering::SeqCst);
            nt::KeInitializeDpc(dpc, nt::deferred_routine(record_thread), core::ptr::null());
            nt::KeSetTargetProcessorDpcEx(dpc, &PROCESSOR_NUMBER::default());
            nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
            while DPC_THREAD.load(Ordering::SeqCst) == u64::MAX {
                nt::KeQueryPerformanceCounter(core::ptr::null_mut());
            }
            let interrupted = DPC_THREAD.load(Ordering::SeqCst);
            // To processor (0, 2), where no thread runs: the idle thread's id, 0.
            DPC_THREAD.store(u64::MAX, Ordering::SeqCst);
            nt::KeInitializeDpc(dpc, nt::deferred_routine(record_thread), core::ptr::null());
            let idle_processor = PROCESSOR_NUMBER {
                Group: 0,
                Number: 2,
                Reserved: 0,
            };
            nt::KeSetTargetProcessorDpcEx(dpc, &idle_processor);
            nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
            nt::KeFlushQueuedDpcs();
            let idle = DPC_THREAD.load(Ordering::SeqCst);
            nt::KeRevertToUserAffinityThreadEx(affinity);
            (me, nt::PsGetCurrentThreadId() as u64, interrupted, idle)
        }
    });
    // SAFETY: no arguments.
    let other = machine.call("another thread", || unsafe { nt::PsGetCurrentThreadId() }
        as u64);
    assert_ne!(me, 0);
    assert_eq!(again, me, "stable for the thread's life");
    assert_ne!(other, me, "distinct per thread");
    assert_eq!(interrupted, me, "a DPC runs as the thread it interrupted");
    assert_eq!(
        idle, 0,
        "a DPC on a processor without a thread runs as the idle thread"
    );
    machine.finish();
}
