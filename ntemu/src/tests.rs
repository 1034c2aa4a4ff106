//! The emulation's own checks: each one fires on the bug it is meant to find.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering};
use std::boxed::Box;
use std::string::String;
use std::sync::Mutex;
use std::time::Duration;
use std::vec::Vec;
use std::{format, vec};

use super::{GroupConfig, Machine, MachineConfig};
use crate::nt::{self, DISPATCH_LEVEL, KDPC, KEVENT, PROCESSOR_NUMBER};

fn contains(failures: &[String], text: &str) -> bool {
    failures.iter().any(|f| f.contains(text))
}

/// A heap KDPC handed to the emulated kernel (never freed while it may be queued: leaked on purpose).
fn dpc() -> *mut KDPC {
    // SAFETY: a KDPC is plain bytes until KeInitializeDpc.
    Box::into_raw(Box::new(unsafe { core::mem::zeroed::<KDPC>() }))
}

static RUNS: AtomicU32 = AtomicU32::new(0);

unsafe extern "system" fn count(_: *mut KDPC, _: *mut c_void, _: *mut c_void, _: *mut c_void) {
    RUNS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn routines_called_above_their_irql_fail_with_the_routine_and_the_irql() {
    let machine = Machine::start(MachineConfig::default());
    let failures = machine
        .try_call("flush at DISPATCH", || {
            // SAFETY: paired raise and lower on this thread; the flush has no arguments.
            unsafe {
                let previous = nt::KfRaiseIrql(DISPATCH_LEVEL);
                nt::KeFlushQueuedDpcs();
                nt::KeLowerIrql(previous);
            }
        })
        .expect_err("a flush at DISPATCH must fail");
    assert!(
        contains(&failures, "KeFlushQueuedDpcs called at IRQL 2"),
        "{failures:?}"
    );
    let failures = machine
        .try_call("pool at DISPATCH then registry", || {
            // SAFETY: as above; a null name and handle are only looked at after the IRQL check.
            unsafe {
                let previous = nt::KfRaiseIrql(DISPATCH_LEVEL);
                let block = nt::ExAllocatePoolWithTag(1, 64, 0x7473_6554); // PagedPool
                nt::ExFreePoolWithTag(block, 0x7473_6554);
                let mut handle = core::ptr::null_mut();
                let mut attributes: nt::OBJECT_ATTRIBUTES = core::mem::zeroed();
                attributes.Attributes = nt::OBJ_KERNEL_HANDLE;
                nt::ZwOpenKey(&mut handle, nt::KEY_READ, &attributes);
                nt::KeLowerIrql(previous);
            }
        })
        .expect_err("paged pool and ZwOpenKey at DISPATCH must fail");
    assert!(
        contains(&failures, "paged pool requested at DISPATCH_LEVEL"),
        "{failures:?}"
    );
    assert!(
        contains(&failures, "ZwOpenKey called at IRQL 2"),
        "{failures:?}"
    );
    machine.finish();
}

#[test]
fn a_dpc_waits_while_a_thread_holds_its_processor_at_dispatch() {
    let machine = Machine::start(MachineConfig {
        dpc_latency: Duration::ZERO,
        ..MachineConfig::default()
    });
    let (before, held, after) = machine.call("hold the processor", || {
        let dpc = dpc();
        // SAFETY: the KDPC is leaked, so it stays valid; paired raise and lower.
        unsafe {
            nt::KeInitializeDpc(dpc, nt::deferred_routine(count), core::ptr::null());
            let previous = nt::KfRaiseIrql(DISPATCH_LEVEL);
            let mut here = PROCESSOR_NUMBER::default();
            nt::KeGetCurrentProcessorNumberEx(&mut here);
            nt::KeSetTargetProcessorDpcEx(dpc, &here);
            let before = RUNS.load(Ordering::SeqCst);
            nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
            std::thread::sleep(Duration::from_millis(50));
            let held = RUNS.load(Ordering::SeqCst);
            nt::KeLowerIrql(previous);
            nt::KeFlushQueuedDpcs();
            (before, held, RUNS.load(Ordering::SeqCst))
        }
    });
    assert_eq!(held, before, "the DPC ran on a processor held at DISPATCH");
    assert_eq!(
        after,
        before + 1,
        "the DPC ran once after the processor was released"
    );
    machine.finish();
}

/// A processor-change callback that, at AddStart, targets a fresh DPC at the processor being added and
/// queues it (what a driver that messages a processor before its AddComplete does).
unsafe extern "system" fn queue_at_add_start(
    _context: *mut c_void,
    change: *mut nt::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    _status: *mut nt::NTSTATUS,
) {
    // SAFETY: the kernel passes a valid context for the call; the KDPC is leaked, so it stays valid
    // while queued.
    unsafe {
        let change = *change;
        if change.State != 0 {
            return;
        }
        let dpc = dpc();
        nt::KeInitializeDpc(dpc, nt::deferred_routine(count), core::ptr::null());
        assert_eq!(nt::KeSetTargetProcessorDpcEx(dpc, &change.ProcNumber), 0);
        nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
    }
}

#[test]
fn a_dpc_queued_to_a_processor_before_add_complete_fails() {
    let machine = Machine::start(MachineConfig::default());
    let handle = machine.call("register", || {
        // SAFETY: no context; deregistered below.
        unsafe {
            super::callbacks::KeRegisterProcessorChangeCallback(
                queue_at_add_start,
                core::ptr::null_mut(),
                0,
            ) as usize
        }
    });
    let failures = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| machine.hot_add(0, 1)))
        .map(|_| Vec::new())
        .unwrap_or_else(|payload| vec![super::kernel::panic_text(&payload)]);
    assert!(
        contains(
            &failures,
            "before its AddComplete was delivered (phase Starting)"
        ),
        "{failures:?}"
    );
    // SAFETY: the handle from the registration above, deregistered once.
    machine.call("deregister", move || unsafe {
        super::callbacks::KeDeregisterProcessorChangeCallback(handle as *mut c_void)
    });
}

#[test]
fn freeing_pool_that_holds_a_queued_dpc_fails() {
    let machine = Machine::start(MachineConfig {
        dpc_stall: Duration::from_secs(30),
        ..MachineConfig::default()
    });
    let failures = machine
        .try_call("free a queued DPC", || {
            // SAFETY: a pool block large enough for a KDPC; freed while it is queued on purpose.
            unsafe {
                let block = nt::ExAllocatePoolWithTag(nt::NON_PAGED_POOL_NX, 64, 0x7473_6554);
                nt::KeInitializeDpc(block.cast(), nt::deferred_routine(count), core::ptr::null());
                nt::KeInsertQueueDpc(block.cast(), core::ptr::null_mut(), core::ptr::null_mut());
                nt::ExFreePoolWithTag(block, 0x7473_6554);
            }
        })
        .expect_err("freeing a queued DPC must fail");
    assert!(
        contains(&failures, "KDPC at +0x0 is queued"),
        "{failures:?}"
    );
}

#[test]
fn leaks_double_frees_wrong_tags_and_writes_after_free_are_found() {
    let machine = Machine::start(MachineConfig::default());
    let failures = machine
        .try_call("bad frees", || {
            // SAFETY: deliberate misuse of blocks this test owns; nothing else touches them.
            unsafe {
                let tag = 0x7473_6554;
                let block = nt::ExAllocatePoolWithTag(nt::NON_PAGED_POOL_NX, 32, tag);
                nt::ExFreePoolWithTag(block, tag);
                nt::ExFreePoolWithTag(block, tag);
                let other = nt::ExAllocatePoolWithTag(nt::NON_PAGED_POOL_NX, 32, tag);
                nt::ExFreePoolWithTag(other, tag + 1);
            }
        })
        .expect_err("a double free and a wrong tag must fail");
    assert!(contains(&failures, "double free"), "{failures:?}");
    assert!(contains(&failures, "bug check 0xC2"), "{failures:?}");
    machine.call("write after free", || {
        // SAFETY: deliberately writes into a freed (quarantined, still mapped) block.
        unsafe {
            let block = nt::ExAllocatePoolWithTag(nt::NON_PAGED_POOL_NX, 32, 0x7473_6554);
            nt::ExFreePoolWithTag(block, 0x7473_6554);
            block.cast::<u8>().add(5).write_volatile(1);
        }
    });
    let finish = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| machine.finish()));
    let message = super::kernel::panic_text(&finish.expect_err("finish must report"));
    assert!(message.contains("written at +0x5 after free"), "{message}");
    assert!(message.contains("leak: pool block"), "{message}");
}

#[test]
fn a_wait_past_the_deadline_fails_with_what_it_waited_for() {
    let machine = Machine::start(MachineConfig {
        wait_deadline: Duration::from_millis(200),
        ..MachineConfig::default()
    });
    let failures = machine
        .try_call("wait forever", || {
            // SAFETY: the KEVENT is leaked, so it stays valid for the stuck waiter.
            unsafe {
                let event = Box::into_raw(Box::new(core::mem::zeroed::<KEVENT>()));
                nt::KeInitializeEvent(event, nt::NOTIFICATION_EVENT, false);
                nt::KeWaitForSingleObject(event.cast(), 0, 0, false, core::ptr::null());
            }
        })
        .expect_err("an endless wait must fail");
    assert!(
        contains(
            &failures,
            "waited more than 200ms for KeWaitForSingleObject"
        ),
        "{failures:?}"
    );
}

static NOTIFICATIONS: Mutex<Vec<(u32, u32)>> = Mutex::new(Vec::new());

unsafe extern "system" fn record(
    veto_index: *mut c_void,
    change: *mut nt::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    status: *mut nt::NTSTATUS,
) {
    // SAFETY: the kernel passes a valid context and status for the call.
    let change = unsafe { *change };
    NOTIFICATIONS
        .lock()
        .unwrap()
        .push((change.State, change.NtNumber));
    if change.State == 0 && change.NtNumber == veto_index as u32 {
        // SAFETY: as above.
        unsafe { *status = 0xC000_009Au32 as i32 };
    }
}

#[test]
fn add_existing_replays_starts_then_completes_and_a_veto_sends_failures() {
    let config = MachineConfig {
        groups: vec![GroupConfig {
            max: 4,
            active: vec![0, 1, 2],
        }],
        ..MachineConfig::default()
    };
    let machine = Machine::start(config);
    let register = |veto: u32| {
        NOTIFICATIONS.lock().unwrap().clear();
        machine.call("register", move || {
            // SAFETY: the callback needs no context beyond the veto index; deregistered below.
            unsafe {
                let handle = super::callbacks::KeRegisterProcessorChangeCallback(
                    record,
                    veto as usize as *mut c_void,
                    nt::KE_PROCESSOR_CHANGE_ADD_EXISTING,
                );
                assert!(!handle.is_null());
                handle as usize
            }
        })
    };
    let handle = register(u32::MAX);
    assert_eq!(
        *NOTIFICATIONS.lock().unwrap(),
        vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    );
    NOTIFICATIONS.lock().unwrap().clear();
    assert_eq!(machine.hot_add(0, 3), Ok(3));
    assert_eq!(*NOTIFICATIONS.lock().unwrap(), vec![(0, 3), (1, 3)]);
    let deregister = |handle: usize| {
        // SAFETY: a handle from the registration above, deregistered once.
        machine.call("deregister", move || unsafe {
            super::callbacks::KeDeregisterProcessorChangeCallback(handle as *mut c_void)
        })
    };
    deregister(handle);
    let vetoed = register(1);
    assert_eq!(
        *NOTIFICATIONS.lock().unwrap(),
        vec![(0, 0), (0, 1), (2, 0)],
        "no Start after the veto, Failure for 0"
    );
    deregister(vetoed);
    let log = format!("{:?}", machine.processors());
    assert!(log.contains("index: Some(3)"), "{log}");
    machine.finish();
}

#[test]
fn critical_regions_must_be_left_on_the_thread_that_entered_them() {
    let machine = Machine::start(MachineConfig::default());
    let failures = machine
        .try_call("leave without enter", || {
            // SAFETY: an unmatched leave on purpose; the emulation records it.
            unsafe { nt::KeLeaveCriticalRegion() }
        })
        .expect_err("an unmatched leave must fail");
    assert!(
        contains(&failures, "KeLeaveCriticalRegion without a matching"),
        "{failures:?}"
    );
    let failures = machine
        .try_call("return inside a region", || {
            // SAFETY: left unmatched on purpose; the emulation checks it when the thread ends.
            unsafe { nt::KeEnterCriticalRegion() }
        })
        .expect_err("a thread ending inside a critical region must fail");
    assert!(
        contains(&failures, "ended inside 1 critical region"),
        "{failures:?}"
    );
    machine.call("balanced", || {
        // SAFETY: paired on this thread.
        unsafe {
            nt::KeEnterCriticalRegion();
            nt::KeLeaveCriticalRegion();
        }
    });
}

#[test]
fn dpc_importance_is_checked_and_counted_for_targeted_dpcs() {
    let machine = Machine::start(MachineConfig {
        dpc_latency: Duration::ZERO,
        ..MachineConfig::default()
    });
    let failures = machine
        .try_call("importance out of range", || {
            let dpc = dpc();
            // SAFETY: the KDPC is leaked, so it stays valid.
            unsafe {
                nt::KeInitializeDpc(dpc, nt::deferred_routine(count), core::ptr::null());
                nt::KeSetImportanceDpc(dpc, 7);
            }
        })
        .expect_err("an importance outside KDPC_IMPORTANCE must fail");
    assert!(
        contains(&failures, "not a KDPC_IMPORTANCE value"),
        "{failures:?}"
    );
    machine.call("one slow and one fast message", || {
        for importance in [1, 3] {
            let dpc = dpc();
            // SAFETY: the KDPC is leaked, so it stays valid while queued; the flush waits for it.
            unsafe {
                nt::KeInitializeDpc(dpc, nt::deferred_routine(count), core::ptr::null());
                nt::KeSetImportanceDpc(dpc, importance);
                let boot = PROCESSOR_NUMBER::default();
                assert_eq!(nt::KeSetTargetProcessorDpcEx(dpc, &boot), 0);
                nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
                nt::KeFlushQueuedDpcs();
            }
        }
    });
    let boot = &machine.processors()[0];
    assert_eq!((boot.messages, boot.slow_messages), (2, 1), "{boot:?}");
}
