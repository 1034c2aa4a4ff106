//! The blind spots the emulated kernel used to have, each shown with a deliberately broken routine that
//! only the stricter emulation catches, next to the correct routine that passes.

use core::ffi::c_void;
use std::boxed::Box;
use std::sync::Mutex;

use super::{Machine, MachineConfig};
use crate::nt::{self, KDPC, PROCESSOR_NUMBER};

/// `STATUS_INVALID_PARAMETER`.
const INVALID_PARAMETER: i32 = 0xC000_000Du32 as i32;

/// A heap KDPC (leaked on purpose: never freed while it may be queued).
fn leaked_dpc() -> *mut KDPC {
    // SAFETY: a KDPC is plain bytes until KeInitializeDpc.
    Box::into_raw(Box::new(unsafe { core::mem::zeroed::<KDPC>() }))
}

unsafe extern "system" fn nothing(_: *mut KDPC, _: *mut c_void, _: *mut c_void, _: *mut c_void) {}

/// The processor `record_processor` last ran on: (group, number).
static RAN_ON: Mutex<Option<(u16, u8)>> = Mutex::new(None);

unsafe extern "system" fn record_processor(
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
