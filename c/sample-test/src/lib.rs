//! The C sample driver (`c/sample/kepoch_c_sample.c`) and the usage files of both headers
//! (`c/tests/ebpf_usage.c`, `c/tests/kepoch_usage.c`), compiled for the host by `build.rs`: their C entry points, declared for
//! the tests that run them on kepoch's emulated kernel (`tests/`).
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

use std::sync::atomic::{AtomicUsize, Ordering};

use kepoch_c::fail::{Function, Misuse, BUGCHECK_MARKER};
use kepoch_ntemu::nt::{DRIVER_OBJECT, NTSTATUS, UNICODE_STRING};
use kepoch_ntemu::Machine;

// The C code calls kepoch-c's exports and the emulated kernel's routines: both are linked.
use kepoch_c as _;
use kepoch_ntemu as _;

extern "C" {
    /// The sample's `DriverEntry`.
    #[link_name = "DriverEntry"]
    fn sample_driver_entry(
        driver: *mut DRIVER_OBJECT,
        registry_path: *mut UNICODE_STRING,
    ) -> NTSTATUS;
    /// Reads, writes, bad reads, work items run, cache-aligned blocks.
    fn kepoch_sample_counters(counters: *mut u64);
    /// 1: frees a block twice; 2: exits an epoch it did not enter.
    fn kepoch_sample_misuse(which: i32);
    /// Runs every `ebpf_epoch.h` function the way eBPF for Windows does; 0 when all went as expected.
    fn ebpf_usage_run(driver: *mut DRIVER_OBJECT) -> i32;
    /// Runs every `kepoch.h` function; 0 when all went as expected.
    fn kepoch_usage_run(driver: *mut DRIVER_OBJECT) -> i32;
}

extern "system" {
    /// The emulated kernel's `KfRaiseIrql` (a WDK build inlines it on CR8).
    fn KfRaiseIrql(irql: u8) -> u8;
    /// The emulated kernel's `KeLowerIrql`.
    fn KeLowerIrql(irql: u8);
}

/// `kepoch_usage.c`'s raise to DISPATCH_LEVEL, on the emulated kernel.
#[no_mangle]
pub extern "C" fn kepoch_usage_raise() -> u8 {
    // SAFETY: the C caller lowers again with the returned level, on this thread.
    unsafe { KfRaiseIrql(2) }
}

/// `kepoch_usage.c`'s lower, on the emulated kernel.
///
/// # Safety
/// `previous` came from [`kepoch_usage_raise`] on this thread.
#[no_mangle]
pub unsafe extern "C" fn kepoch_usage_lower(previous: u8) {
    // SAFETY: per the caller.
    unsafe { KeLowerIrql(previous) }
}

/// The sample's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Route reads (at PASSIVE and, nested, at DISPATCH).
    pub reads: u64,
    /// Routes published (and the previous one freed).
    pub writes: u64,
    /// Reads that saw a route whose check word was wrong (freed memory).
    pub bad_reads: u64,
    /// Runs of the scheduled work item's callback.
    pub work_items_run: u64,
    /// Cache-aligned blocks that were aligned and zeroed.
    pub cache_aligned: u64,
}

/// The sample's `DriverEntry`, for `Machine::load`.
///
/// # Safety
/// As `DriverEntry`: called once per load by the (emulated) I/O manager.
pub unsafe fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    registry_path: *mut UNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: forwarded unchanged (this function's contract).
    unsafe { sample_driver_entry(driver, registry_path) }
}

/// The sample's counters now.
pub fn counters() -> Counters {
    let mut raw = [0u64; 5];
    // SAFETY: the C function writes five counters.
    unsafe { kepoch_sample_counters(raw.as_mut_ptr()) };
    Counters {
        reads: raw[0],
        writes: raw[1],
        bad_reads: raw[2],
        work_items_run: raw[3],
        cache_aligned: raw[4],
    }
}

/// The sample's misuse number `which` (1 double free, 2 exit without enter), run on a machine thread.
pub fn misuse(which: i32) {
    // SAFETY: a C function without preconditions beyond an initiated epoch module.
    unsafe { kepoch_sample_misuse(which) }
}

/// `kepoch_usage.c`'s run; 0 when every check in it held, else the line of the first miss.
///
/// # Safety
/// `driver` is the loaded driver's object (for the work items), valid during the call.
pub unsafe fn run_kepoch_usage(driver: *mut DRIVER_OBJECT) -> i32 {
    // SAFETY: per the caller.
    unsafe { kepoch_usage_run(driver) }
}

/// The usage file's run; 0 when every check in it held.
///
/// # Safety
/// `driver` is the loaded driver's object (for the work items), valid during the call; the epoch
/// module is not initiated.
pub unsafe fn run_ebpf_usage(driver: *mut DRIVER_OBJECT) -> i32 {
    // SAFETY: per the caller.
    unsafe { ebpf_usage_run(driver) }
}

/// The driver object of the last load of [`remembering_driver_entry`].
static DRIVER: AtomicUsize = AtomicUsize::new(0);

/// A `DriverEntry` that only remembers its object (tests then drive the C API themselves) and sets
/// an unload routine with nothing to undo.
///
/// # Safety
/// As `DriverEntry`: called by the (emulated) I/O manager with its driver object.
pub unsafe fn remembering_driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *mut UNICODE_STRING,
) -> NTSTATUS {
    DRIVER.store(driver as usize, Ordering::SeqCst);
    // SAFETY: the I/O manager's driver object, ours to fill in during DriverEntry.
    unsafe { (*driver).DriverUnload = Some(unload_nothing) };
    0
}

/// Nothing to undo: the tests clean up what they create.
unsafe extern "system" fn unload_nothing(_driver: *const DRIVER_OBJECT) {}

/// The driver object [`remembering_driver_entry`] got.
pub fn remembered_driver() -> *mut DRIVER_OBJECT {
    DRIVER.load(Ordering::SeqCst) as *mut DRIVER_OBJECT
}

/// Runs `call` on a machine thread and checks that it bug checked with the C API's codes for
/// `function` and `misuse`, and that an error line starting with `line_start` was logged; returns
/// the machine's failures (the bug check with its address among them).
pub fn expect_fail_fast(
    machine: &Machine,
    what: &'static str,
    function: Function,
    misuse: Misuse,
    line_start: &str,
    call: impl FnOnce() + Send + 'static,
) -> Vec<String> {
    let failures = machine
        .try_call(what, call)
        .expect_err("the misuse must bug check");
    let bug_check = format!(
        "KeBugCheckEx(0xe2, {BUGCHECK_MARKER:#x}, {:#x}, {:#x},",
        function as usize, misuse as usize
    );
    assert!(
        failures.iter().any(|f| f.contains(&bug_check)),
        "{what}: {bug_check} in {failures:?}"
    );
    assert!(
        machine
            .log()
            .iter()
            .any(|(level, text)| *level == 0 && text.starts_with(line_start)),
        "{what}: no error line starting '{line_start}' in {:?}",
        machine.log()
    );
    failures
}
