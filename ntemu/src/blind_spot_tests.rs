//! The blind spots the emulated kernel used to have, each shown with a deliberately broken routine that
//! only the stricter emulation catches, next to the correct routine that passes.

use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::boxed::Box;
use std::string::String;
use std::sync::Mutex;
use std::vec::Vec;

use super::{Machine, MachineConfig, STACK_LIMIT};
use crate::nt::{self, KDPC, PROCESSOR_NUMBER};

/// `STATUS_INVALID_PARAMETER`.
const INVALID_PARAMETER: i32 = 0xC000_000Du32 as i32;

/// A heap KDPC (leaked on purpose: never freed while it may be queued).
pub(super) fn leaked_dpc() -> *mut KDPC {
    // SAFETY: a KDPC is plain bytes until KeInitializeDpc.
    Box::into_raw(Box::new(unsafe { core::mem::zeroed::<KDPC>() }))
}

/// A DPC routine that does nothing.
unsafe extern "system" fn nothing(_: *mut KDPC, _: *mut c_void, _: *mut c_void, _: *mut c_void) {}

/// The processor [`record_processor`] last ran on: (group, number).
pub(super) static RAN_ON: Mutex<Option<(u16, u8)>> = Mutex::new(None);

/// A DPC routine that records where it runs in [`RAN_ON`].
pub(super) unsafe extern "system" fn record_processor(
    _: *mut KDPC,
    _: *mut c_void,
    _: *mut c_void,
    _: *mut c_void,
) {
    let mut here = PROCESSOR_NUMBER::default();
    // SAFETY: writes the PROCESSOR_NUMBER we pass.
    unsafe { nt::KeGetCurrentProcessorNumberEx(&mut here) };
    *RAN_ON.lock().unwrap_or_else(|p| p.into_inner()) = Some((here.Group, here.Number));
}

/// Binds one targeted DPC to `number`; the status of `KeSetTargetProcessorDpcEx`.
fn bind(number: PROCESSOR_NUMBER) -> i32 {
    let dpc = leaked_dpc();
    // SAFETY: the KDPC is leaked, so it stays valid; it is never queued.
    unsafe {
        nt::KeInitializeDpc(dpc, nt::deferred_routine(nothing), core::ptr::null());
        nt::KeSetTargetProcessorDpcEx(dpc, &number)
    }
}

/// Broken: prepares a per-processor DPC for every number below each group's maximum, as if every such
/// number were a processor (the sparse numbers of the default machine are not). Returns the first
/// failure, as a driver that refuses to load on one would.
fn prepare_every_number_below_the_maximum() -> Result<usize, i32> {
    let mut prepared = 0;
    for group in 0..2u16 {
        // SAFETY: no pointers.
        let max = unsafe { nt::KeQueryMaximumProcessorCountEx(group) };
        for number in 0..max as u8 {
            let status = bind(PROCESSOR_NUMBER {
                Group: group,
                Number: number,
                Reserved: 0,
            });
            if status < 0 {
                return Err(status);
            }
            prepared += 1;
        }
    }
    Ok(prepared)
}

/// Correct: prepares a per-processor DPC for every active processor, enumerated by index.
fn prepare_every_active_processor() -> Result<usize, i32> {
    // SAFETY: no pointers.
    let active = unsafe { nt::KeQueryActiveProcessorCountEx(nt::ALL_PROCESSOR_GROUPS) };
    for index in 0..active {
        let mut number = PROCESSOR_NUMBER::default();
        // SAFETY: writes the PROCESSOR_NUMBER we pass.
        let status = unsafe { super::processor::KeGetProcessorNumberFromIndex(index, &mut number) };
        if status < 0 {
            return Err(status);
        }
        let status = bind(number);
        if status < 0 {
            return Err(status);
        }
    }
    Ok(active as usize)
}

#[test]
fn targeting_a_dpc_at_a_processor_that_is_not_there_is_refused_as_on_nt() {
    let machine = Machine::start(MachineConfig::default());
    // The default machine has 8 numbers below its maxima and 4 processors: the broken routine is
    // refused at the first absent number instead of preparing DPCs for 8 processors.
    assert_eq!(
        machine.call("broken preparation", prepare_every_number_below_the_maximum),
        Err(INVALID_PARAMETER)
    );
    assert_eq!(
        machine.call("correct preparation", prepare_every_active_processor),
        Ok(4)
    );
    // Beyond the maximum too; a refused DPC keeps the target it had.
    let ran_on = machine.call("retarget beyond the maximum", || {
        let dpc = leaked_dpc();
        let boot = PROCESSOR_NUMBER::default();
        let beyond = PROCESSOR_NUMBER {
            Group: 1,
            Number: 200,
            Reserved: 0,
        };
        // SAFETY: the KDPC is leaked, so it stays valid while queued; the flush waits for it.
        unsafe {
            nt::KeInitializeDpc(
                dpc,
                nt::deferred_routine(record_processor),
                core::ptr::null(),
            );
            assert_eq!(nt::KeSetTargetProcessorDpcEx(dpc, &boot), 0);
            assert_eq!(
                nt::KeSetTargetProcessorDpcEx(dpc, &beyond),
                INVALID_PARAMETER
            );
            nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
            nt::KeFlushQueuedDpcs();
        }
        *RAN_ON.lock().unwrap_or_else(|p| p.into_inner())
    });
    assert_eq!(ran_on, Some((0, 0)), "the DPC ran on its earlier target");
    // A hot-added processor is valid from then on.
    let added = PROCESSOR_NUMBER {
        Group: 0,
        Number: 1,
        Reserved: 0,
    };
    assert_eq!(
        machine.call("absent", move || bind(added)),
        INVALID_PARAMETER
    );
    assert_eq!(machine.hot_add(0, 1), Ok(4));
    assert_eq!(machine.call("added", move || bind(added)), 0);
    machine.finish();
}

/// Recurses until its frames reach `bytes` below `start` (an address in the caller's frame), whatever
/// the size of one frame in this build.
#[inline(never)]
fn recurse_to(bytes: usize, start: usize) -> u64 {
    let frame = core::hint::black_box([bytes as u8; 256]);
    if start - (&frame as *const [u8; 256] as usize) >= bytes {
        return u64::from(frame[0]);
    }
    recurse_to(bytes, start).wrapping_add(u64::from(core::hint::black_box(frame[1])))
}

/// How deep (bytes) a routine under test recurses.
static DEPTH: AtomicUsize = AtomicUsize::new(0);

/// Recurses [`DEPTH`] bytes deep from here.
fn recurse_as_deep_as_asked() {
    let start = 0u8;
    let start = core::hint::black_box(&start) as *const u8 as usize;
    core::hint::black_box(recurse_to(DEPTH.load(Ordering::SeqCst), start));
}

unsafe extern "system" fn recursing_dpc(
    _: *mut KDPC,
    _: *mut c_void,
    _: *mut c_void,
    _: *mut c_void,
) {
    recurse_as_deep_as_asked();
}

unsafe extern "system" fn recursing_thread(_: *mut c_void) {
    recurse_as_deep_as_asked();
}

/// Runs [`recursing_dpc`] once on the boot processor; the failures the machine recorded.
fn run_recursing_dpc(machine: &Machine) -> Result<(), Vec<String>> {
    machine.try_call("a recursing DPC", || {
        let dpc = leaked_dpc();
        // SAFETY: the KDPC is leaked, so it stays valid while queued; the flush waits for it.
        unsafe {
            nt::KeInitializeDpc(dpc, nt::deferred_routine(recursing_dpc), core::ptr::null());
            nt::KeSetTargetProcessorDpcEx(dpc, &PROCESSOR_NUMBER::default());
            nt::KeInsertQueueDpc(dpc, core::ptr::null_mut(), core::ptr::null_mut());
            nt::KeFlushQueuedDpcs();
        }
    })
}

/// Runs [`recursing_thread`] as a system thread and waits for it; the failures the machine recorded.
fn run_recursing_thread(machine: &Machine) -> Result<(), Vec<String>> {
    machine.try_call("a recursing system thread", || {
        let mut handle: nt::HANDLE = core::ptr::null_mut();
        // SAFETY: all-zero OBJECT_ATTRIBUTES (integers and null pointers) with a kernel handle; the
        // handle is waited on and closed once.
        unsafe {
            let mut attributes: nt::OBJECT_ATTRIBUTES = core::mem::zeroed();
            attributes.Length = core::mem::size_of::<nt::OBJECT_ATTRIBUTES>() as u32;
            attributes.Attributes = nt::OBJ_KERNEL_HANDLE;
            let status = nt::PsCreateSystemThread(
                &mut handle,
                nt::THREAD_ALL_ACCESS,
                &attributes,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                nt::start_routine(recursing_thread),
                core::ptr::null(),
            );
            assert_eq!(status, 0);
            nt::ZwWaitForSingleObject(handle, false, core::ptr::null());
            nt::ZwClose(handle);
        }
    })
}

#[test]
fn a_dpc_or_system_thread_deeper_than_its_kernel_stack_is_caught() {
    let machine = Machine::start(MachineConfig::default());
    let within = STACK_LIMIT / 2;
    DEPTH.store(within, Ordering::SeqCst);
    run_recursing_dpc(&machine).expect("half the DPC stack is fine");
    run_recursing_thread(&machine).expect("half the kernel stack is fine");
    let used = machine.stacks();
    assert!(
        used.dpc >= within && used.thread >= within,
        "the deepest use is measured: {used:?}"
    );
    DEPTH.store(STACK_LIMIT + 4096, Ordering::SeqCst);
    let failures = run_recursing_dpc(&machine).expect_err("a DPC beyond its stack must fail");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("kernel stack overflow: DPC routine") && f.contains("DPC stack")),
        "{failures:?}"
    );
    let failures =
        run_recursing_thread(&machine).expect_err("a system thread beyond its stack must fail");
    assert!(
        failures
            .iter()
            .any(|f| f.contains("kernel stack overflow: system thread")),
        "{failures:?}"
    );
    assert!(machine.stacks().dpc > STACK_LIMIT);
    machine.finish();
}
