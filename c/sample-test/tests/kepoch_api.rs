//! `kepoch.h` on the emulated kernel: `c/tests/kepoch_usage.c` runs the whole API from C (bad
//! configurations refused field by field, nested enters, blocks, work items, statistics, destroy),
//! then each misuse the C layer must catch is committed through the exported functions, as a C
//! driver would call them, and must bug check with the documented codes and a log line naming the
//! function.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use kepoch_c::api::*;
use kepoch_c::domain::CDomain;
use kepoch_c::fail::{Function, Misuse};
use kepoch_c::state::EpochState;
use kepoch_c_sample_test::{
    expect_fail_fast, remembered_driver, remembering_driver_entry, run_kepoch_usage,
};
use kepoch_ntemu::nt::DRIVER_OBJECT;
use kepoch_ntemu::{Machine, MachineConfig};

fn driver() -> *mut DRIVER_OBJECT {
    remembered_driver()
}

#[test]
fn kepoch_h_works_from_c_and_refuses_every_bad_configuration() {
    let machine = Machine::start(MachineConfig::default().service("kepoch_usage"));
    let loaded = machine.load(remembering_driver_entry).expect("DriverEntry");
    let driver = driver() as usize;
    // SAFETY: the loaded driver's object.
    let line = machine.call("kepoch_usage_run", move || unsafe {
        run_kepoch_usage(driver as *mut DRIVER_OBJECT)
    });
    assert_eq!(line, 0, "kepoch_usage.c failed at line {line}");
    let log = machine.log();
    for field in [
        "size",
        "strategy",
        "idle_deactivation",
        "cycle_period_us",
        "max_frees_per_visit",
        "pool_tag",
        "dpc_probe_ms",
        "reserved",
    ] {
        let refused = format!("kepoch_domain_create: kepoch_config_t.{field} is out of range");
        assert!(
            log.iter().any(|(_, text)| text.contains(&refused)),
            "no line '{refused}' in {log:?}"
        );
    }
    // Checked after the unload: a work item released during its own run is freed by the kernel's
    // work routine once the callback returned (NT does not free a running work item), which the
    // unload waits for.
    loaded.unload();
    let tags = machine.pool().live_by_tag;
    assert!(
        tags.iter().all(|(_, blocks)| *blocks == 0),
        "blocks left after destroy: {tags:?}"
    );
    machine.finish();
}

/// A live domain for the misuse test (leaked with the machine, which a failed test keeps).
fn domain(machine: &Machine) -> usize {
    let driver = driver() as usize;
    machine.call("kepoch_domain_create", move || {
        let mut domain: *mut CDomain = ptr::null_mut();
        // SAFETY: NULL config (defaults), the loaded driver's object, a writable result.
        let status = unsafe { kepoch_domain_create(ptr::null(), driver as *mut _, &mut domain) };
        assert_eq!(status, 0);
        domain as usize
    })
}

unsafe extern "C" fn nothing(_context: *mut c_void) {}

/// The block of the double-free case (its address is the bug check's fourth parameter).
static BLOCK: AtomicUsize = AtomicUsize::new(0);

#[test]
fn every_misuse_kepoch_can_see_fails_fast_naming_the_function() {
    let machine = Machine::start(
        MachineConfig::default()
            .service("kepoch_misuse")
            .expect_error("bug check 0xE2 (0x4350454B"),
    );
    let _loaded = machine.load(remembering_driver_entry).expect("DriverEntry");
    // Both domains first: a thread parked by a bug check never reaches another kernel call, so the
    // DPCs of its processor (the creation's DPC probe among them) stop running there.
    let d = domain(&machine);
    let second = domain(&machine);
    let dom = move || d as *mut CDomain;

    expect_fail_fast(
        &machine,
        "a cache-aligned block freed with kepoch_free",
        Function::Free,
        Misuse::WrongFreeFunction,
        "kepoch: kepoch_free: the block was allocated by the other allocation function",
        // SAFETY: a live domain; the block is misused on purpose.
        move || unsafe { kepoch_free(dom(), kepoch_allocate_cache_aligned(dom(), 8, 0)) },
    );
    let failures = expect_fail_fast(
        &machine,
        "a block freed twice",
        Function::FreeCacheAligned,
        Misuse::DoubleFree,
        "kepoch: kepoch_free_cache_aligned: the block was freed already (double free)",
        // SAFETY: as above; inside an epoch, so the block cannot be released between the frees
        // (the thread stays parked in it).
        move || unsafe {
            let mut inside: EpochState = std::mem::zeroed();
            kepoch_enter(dom(), &mut inside);
            let block = kepoch_allocate_cache_aligned(dom(), 8, 0);
            BLOCK.store(block as usize, Ordering::SeqCst);
            kepoch_free_cache_aligned(dom(), block);
            kepoch_free_cache_aligned(dom(), block);
        },
    );
    let address = format!("{:#x})", BLOCK.load(Ordering::SeqCst));
    assert!(
        failures
            .iter()
            .any(|f| f.contains("KeBugCheckEx(0xe2") && f.contains(&address)),
        "the fourth parameter is the block: {address} in {failures:?}"
    );
    expect_fail_fast(
        &machine,
        "memory kepoch did not allocate",
        Function::Free,
        Misuse::NotKepochMemory,
        "kepoch: kepoch_free: the pointer was not allocated by kepoch's C API",
        // SAFETY: as above; 16 readable bytes lie below the pointer.
        move || unsafe {
            let foreign = Box::leak(Box::new([0u64; 8]));
            kepoch_free(dom(), foreign.as_mut_ptr().add(2).cast());
        },
    );
    expect_fail_fast(
        &machine,
        "a work item scheduled twice",
        Function::ScheduleWorkItem,
        Misuse::ScheduledTwice,
        "kepoch: kepoch_work_item_schedule: the work item is scheduled already",
        // SAFETY: as above; inside an epoch, so the item cannot run between the schedules.
        move || unsafe {
            let mut inside: EpochState = std::mem::zeroed();
            kepoch_enter(dom(), &mut inside);
            let item = kepoch_work_item_allocate(dom(), Some(nothing), ptr::null_mut());
            kepoch_work_item_schedule(item);
            kepoch_work_item_schedule(item);
        },
    );
    expect_fail_fast(
        &machine,
        "a scheduled work item cancelled",
        Function::CancelWorkItem,
        Misuse::CancelAfterSchedule,
        "kepoch: kepoch_work_item_cancel: the work item was scheduled",
        // SAFETY: as above; inside an epoch, so the item cannot run before the cancel.
        move || unsafe {
            let mut inside: EpochState = std::mem::zeroed();
            kepoch_enter(dom(), &mut inside);
            let item = kepoch_work_item_allocate(dom(), Some(nothing), ptr::null_mut());
            kepoch_work_item_schedule(item);
            kepoch_work_item_cancel(item);
        },
    );
    expect_fail_fast(
        &machine,
        "a pointer that is not a domain",
        Function::Synchronize,
        Misuse::NotADomain,
        "kepoch: kepoch_synchronize: the pointer is not a live kepoch domain",
        // SAFETY: readable memory of a domain handle's size that is not one.
        move || unsafe { kepoch_synchronize(Box::leak(Box::new([0u64; 64])).as_mut_ptr().cast()) },
    );
    expect_fail_fast(
        &machine,
        "a NULL epoch state",
        Function::Enter,
        Misuse::Null,
        "kepoch: kepoch_enter: a required pointer is NULL",
        // SAFETY: a live domain; the NULL is the misuse.
        move || unsafe { kepoch_enter(dom(), ptr::null_mut()) },
    );
    expect_fail_fast(
        &machine,
        "a pointer that is not a work item",
        Function::ScheduleWorkItem,
        Misuse::NotAWorkItem,
        "kepoch: kepoch_work_item_schedule: the pointer is not a live work item",
        // SAFETY: readable memory of a work item's size that is not one.
        move || unsafe {
            kepoch_work_item_schedule(Box::leak(Box::new([0u64; 16])).as_mut_ptr().cast())
        },
    );
    let other = move || second as *mut CDomain;
    expect_fail_fast(
        &machine,
        "another domain's block",
        Function::Free,
        Misuse::NotKepochMemory,
        "kepoch: kepoch_free: the pointer was not allocated by kepoch's C API in this domain",
        // SAFETY: two live domains; the block of one is freed in the other on purpose.
        move || unsafe { kepoch_free(other(), kepoch_allocate(dom(), 8, 0)) },
    );
    expect_fail_fast(
        &machine,
        "a state exited in another domain",
        Function::Exit,
        Misuse::StateNotEntered,
        "kepoch: kepoch_exit: the epoch state was not entered in this domain",
        // SAFETY: as above; the thread stays parked inside the first domain's epoch.
        move || unsafe {
            let mut state: EpochState = std::mem::zeroed();
            kepoch_enter(dom(), &mut state);
            kepoch_exit(other(), &mut state);
        },
    );
    expect_fail_fast(
        &machine,
        "an exit without an enter",
        Function::Exit,
        Misuse::StateNotEntered,
        "kepoch: kepoch_exit: the epoch state was not entered",
        // SAFETY: as above; a zeroed state was never entered.
        move || unsafe {
            let mut state: EpochState = std::mem::zeroed();
            kepoch_exit(dom(), &mut state);
        },
    );
    // The last ones leave a thread parked inside an epoch or at DISPATCH_LEVEL: nothing after them.
    expect_fail_fast(
        &machine,
        "destroy with a work item neither scheduled nor cancelled",
        Function::Terminate,
        Misuse::WorkItemsOutstanding,
        "kepoch: kepoch_domain_destroy: work items were allocated and neither scheduled nor cancelled",
        // SAFETY: a live domain of its own.
        move || unsafe {
            kepoch_work_item_allocate(second as *mut CDomain, Some(nothing), ptr::null_mut());
            kepoch_domain_destroy(second as *mut CDomain);
        },
    );
    expect_fail_fast(
        &machine,
        "a state entered twice",
        Function::Enter,
        Misuse::StateInUse,
        "kepoch: kepoch_enter: the epoch state is already entered and not exited",
        // SAFETY: as above.
        move || unsafe {
            let mut state: EpochState = std::mem::zeroed();
            kepoch_enter(dom(), &mut state);
            kepoch_enter(dom(), &mut state);
        },
    );
    expect_fail_fast(
        &machine,
        "an exit at another IRQL than its enter",
        Function::Exit,
        Misuse::IrqlChanged,
        "kepoch: kepoch_exit: the exit runs at another IRQL than its enter (entered at IRQL 2, exits at 0)",
        // SAFETY: a live domain; entered at DISPATCH, exited at PASSIVE on purpose (the thread
        // stays parked inside the epoch, at PASSIVE: only one thread may park at DISPATCH).
        move || unsafe {
            let mut state: EpochState = std::mem::zeroed();
            let previous = kepoch_c_sample_test::kepoch_usage_raise();
            kepoch_enter(dom(), &mut state);
            kepoch_c_sample_test::kepoch_usage_lower(previous);
            kepoch_exit(dom(), &mut state);
        },
    );
    // Last: the thread stays parked at DISPATCH_LEVEL, holding its processor.
    expect_fail_fast(
        &machine,
        "synchronize at DISPATCH_LEVEL",
        Function::Synchronize,
        Misuse::IrqlTooHigh,
        "kepoch: kepoch_synchronize: called above the highest IRQL this function allows",
        // SAFETY: as above.
        move || unsafe {
            kepoch_c_sample_test::kepoch_usage_raise();
            kepoch_synchronize(dom());
        },
    );
    // The machine is left as it is: threads are parked inside the domain by design.
}
