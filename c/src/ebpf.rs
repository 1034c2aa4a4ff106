//! The `ebpf_epoch_*` exports of `c/include/ebpf_epoch.h`: eBPF for Windows' epoch API with its
//! names, types and contract, over one driver-wide kepoch domain (`ebpf_epoch_initiate` creates it,
//! `ebpf_epoch_terminate` destroys it). The one addition: the domain's work items need the driver
//! object, given with `kepoch_ebpf_epoch_set_driver_object` before `ebpf_epoch_initiate`.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use kepoch::platform::{LogLevel, Platform};
use kepoch_nt::{log_line, sys};

use crate::api::{tag_of, CConfig};
use crate::blocks::{self, Kind};
use crate::domain::{CDomain, Creation};
use crate::fail::{fail_fast, require_at_most_dispatch, require_passive, Function, Misuse};
use crate::state::{self, EpochState};
use crate::work::{self, CWorkItem, Callback};

/// `ebpf_result_t`'s values used here (eBPF for Windows' `ebpf_result.h` numbering).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EbpfResult {
    /// `EBPF_SUCCESS`.
    Success = 0,
    /// `EBPF_INVALID_OBJECT`.
    InvalidObject = 5,
    /// `EBPF_INVALID_ARGUMENT`.
    InvalidArgument = 6,
    /// `EBPF_NO_MEMORY`.
    NoMemory = 12,
    /// `EBPF_ALREADY_INITIALIZED`.
    AlreadyInitialized = 15,
}

/// The pool tag of the eBPF-compatible domain and of its untagged blocks: `KepE`.
pub const EBPF_POOL_TAG: [u8; 4] = *b"KepE";

/// The driver-wide domain between `ebpf_epoch_initiate` and `ebpf_epoch_terminate`.
static DOMAIN: AtomicPtr<CDomain> = AtomicPtr::new(ptr::null_mut());
/// The driver object work items belong to.
static DRIVER: AtomicPtr<sys::DRIVER_OBJECT> = AtomicPtr::new(ptr::null_mut());

/// The driver-wide domain; fails fast (naming `name`) before initiate or after terminate.
fn domain(name: &str, function: Function) -> &'static CDomain {
    let handle = DOMAIN.load(Ordering::Acquire);
    if handle.is_null() {
        fail_fast(name, function, Misuse::NotInitiated, 0, format_args!(""));
    }
    // SAFETY: set by initiate to a live handle, cleared by terminate before it is destroyed; the
    // contract (as eBPF's) is that nothing runs concurrently with terminate.
    unsafe { CDomain::from_handle(handle, name, function) }
}

/// Sets the driver object the domain's work items belong to (`DriverEntry`'s). Call it before
/// `ebpf_epoch_initiate`; the object must stay valid until `ebpf_epoch_terminate`.
///
/// # Safety
/// `driver_object` is the driver's object (or NULL to clear).
#[no_mangle]
pub unsafe extern "C" fn kepoch_ebpf_epoch_set_driver_object(
    driver_object: *mut sys::DRIVER_OBJECT,
) {
    DRIVER.store(driver_object, Ordering::Release);
}

/// Creates the driver-wide domain (defaults of `kepoch_config_init` with tag `KepE`). PASSIVE_LEVEL.
/// `EBPF_INVALID_OBJECT` without a driver object, `EBPF_ALREADY_INITIALIZED` when initiated,
/// `EBPF_NO_MEMORY` when the domain cannot be created (logged).
#[no_mangle]
pub extern "C" fn ebpf_epoch_initiate() -> EbpfResult {
    let Some(driver) = ptr::NonNull::new(DRIVER.load(Ordering::Acquire)) else {
        log_line(
            LogLevel::Warning,
            format_args!(
                "ebpf_epoch_initiate: no driver object: call kepoch_ebpf_epoch_set_driver_object(DriverObject) first (work items need it)"
            ),
        );
        return EbpfResult::InvalidObject;
    };
    if !DOMAIN.load(Ordering::Acquire).is_null() {
        return EbpfResult::AlreadyInitialized;
    }
    require_passive("ebpf_epoch_initiate", Function::Other);
    let defaults = CConfig {
        pool_tag: u32::from_le_bytes(EBPF_POOL_TAG),
        ..CConfig::default()
    };
    let Ok((config, pool_tag)) = defaults.validate() else {
        return EbpfResult::InvalidArgument;
    };
    let creation = Creation {
        config,
        pool_tag,
        driver,
        dpc_probe_ms: defaults.dpc_probe_ms,
    };
    // SAFETY: PASSIVE_LEVEL (checked); the driver object is valid until terminate (the contract of
    // kepoch_ebpf_epoch_set_driver_object).
    match unsafe { CDomain::create(creation) } {
        Ok(handle) => match DOMAIN.compare_exchange(
            ptr::null_mut(),
            handle.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => EbpfResult::Success,
            Err(_) => {
                // SAFETY: ours alone: never published.
                unsafe { CDomain::destroy(handle, "ebpf_epoch_initiate") };
                EbpfResult::AlreadyInitialized
            }
        },
        Err(status) => {
            log_line(
                LogLevel::Warning,
                format_args!("ebpf_epoch_initiate: the domain could not be created: {status}"),
            );
            EbpfResult::NoMemory
        }
    }
}

/// Destroys the driver-wide domain: scheduled work items run, everything freed is released.
/// PASSIVE_LEVEL; nothing else may run concurrently. Without a domain it does nothing. Fails fast
/// when work items are neither scheduled nor cancelled.
#[no_mangle]
pub extern "C" fn ebpf_epoch_terminate() {
    const NAME: &str = "ebpf_epoch_terminate";
    require_passive(NAME, Function::Terminate);
    // Unpublished only after the destroy: the callbacks of the last work items, which run during
    // it, may still call the API (eBPF's own callbacks free memory and schedule work items there).
    let handle = DOMAIN.load(Ordering::Acquire);
    if let Some(handle) = ptr::NonNull::new(handle) {
        // SAFETY: the handle initiate published; nothing but those callbacks runs concurrently
        // (the contract).
        unsafe { CDomain::destroy(handle, NAME) };
        DOMAIN.store(ptr::null_mut(), Ordering::Release);
    }
}

/// eBPF's hot-add hook: kepoch prepares hot-added processors itself, so this only checks `cpu_id`
/// (`EBPF_INVALID_ARGUMENT` at or above the maximum processor count, `EBPF_INVALID_OBJECT` before
/// initiate).
#[no_mangle]
pub extern "C" fn ebpf_epoch_create_cpu_work_queue(cpu_id: u32) -> EbpfResult {
    require_at_most_dispatch("ebpf_epoch_create_cpu_work_queue", Function::Other);
    let handle = DOMAIN.load(Ordering::Acquire);
    if handle.is_null() {
        return EbpfResult::InvalidObject;
    }
    let domain = domain("ebpf_epoch_create_cpu_work_queue", Function::Other);
    if cpu_id >= domain.domain().platform().max_processor_count() {
        return EbpfResult::InvalidArgument;
    }
    EbpfResult::Success
}

/// Enters an epoch; `epoch_state` is the caller's, one per nesting level. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `epoch_state` points to a writable `ebpf_epoch_state_t` that stays until the exit.
#[no_mangle]
pub unsafe extern "C" fn ebpf_epoch_enter(epoch_state: *mut EpochState) {
    const NAME: &str = "ebpf_epoch_enter";
    // SAFETY: per the caller.
    unsafe { state::enter(domain(NAME, Function::Enter).domain(), epoch_state, NAME) }
}

/// Exits the epoch `epoch_state` holds, at the IRQL of its enter (on another processor only when
/// the enter was below DISPATCH_LEVEL).
///
/// # Safety
/// `epoch_state` points to a readable and writable `ebpf_epoch_state_t`.
#[no_mangle]
pub unsafe extern "C" fn ebpf_epoch_exit(epoch_state: *mut EpochState) {
    const NAME: &str = "ebpf_epoch_exit";
    // SAFETY: per the caller.
    unsafe { state::exit(domain(NAME, Function::Exit).domain(), epoch_state, NAME) }
}

/// A zeroed block of `size` bytes with the domain's tag, or NULL. IRQL <= DISPATCH_LEVEL.
#[no_mangle]
pub extern "C" fn ebpf_epoch_allocate(size: usize) -> *mut c_void {
    const NAME: &str = "ebpf_epoch_allocate";
    blocks::allocate(
        domain(NAME, Function::Allocate).domain(),
        size,
        None,
        Kind::Plain,
        NAME,
    )
}

/// A zeroed block of `size` bytes tagged `tag` (0: the domain's), or NULL. IRQL <= DISPATCH_LEVEL.
#[no_mangle]
pub extern "C" fn ebpf_epoch_allocate_with_tag(size: usize, tag: u32) -> *mut c_void {
    const NAME: &str = "ebpf_epoch_allocate_with_tag";
    let domain = domain(NAME, Function::Allocate).domain();
    blocks::allocate(domain, size, tag_of(tag), Kind::Plain, NAME)
}

/// A zeroed block starting on a cache line, tagged `tag` (0: the domain's), or NULL.
/// IRQL <= DISPATCH_LEVEL.
#[no_mangle]
pub extern "C" fn ebpf_epoch_allocate_cache_aligned_with_tag(size: usize, tag: u32) -> *mut c_void {
    const NAME: &str = "ebpf_epoch_allocate_cache_aligned_with_tag";
    let domain = domain(NAME, Function::Allocate).domain();
    blocks::allocate(domain, size, tag_of(tag), Kind::CacheAligned, NAME)
}

/// Frees a block once every reader that entered before has exited; NULL is ignored. Fails fast on
/// a double free or memory kepoch did not allocate. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `memory` is NULL or a block of `ebpf_epoch_allocate*` that no new reader can reach.
#[no_mangle]
pub unsafe extern "C" fn ebpf_epoch_free(memory: *mut c_void) {
    const NAME: &str = "ebpf_epoch_free";
    if memory.is_null() {
        return;
    }
    // SAFETY: per the caller.
    unsafe {
        blocks::free(
            domain(NAME, Function::Free).domain(),
            memory,
            Kind::Plain,
            NAME,
        )
    }
}

/// [`ebpf_epoch_free`] for blocks of `ebpf_epoch_allocate_cache_aligned_with_tag`.
///
/// # Safety
/// As for [`ebpf_epoch_free`].
#[no_mangle]
pub unsafe extern "C" fn ebpf_epoch_free_cache_aligned(memory: *mut c_void) {
    const NAME: &str = "ebpf_epoch_free_cache_aligned";
    if memory.is_null() {
        return;
    }
    // SAFETY: per the caller.
    unsafe {
        let domain = domain(NAME, Function::FreeCacheAligned);
        blocks::free(domain.domain(), memory, Kind::CacheAligned, NAME)
    }
}

/// Waits until everything freed before the call has been released and the work items scheduled
/// before it have run. PASSIVE_LEVEL, outside any epoch. Without a domain it returns at once.
#[no_mangle]
pub extern "C" fn ebpf_epoch_synchronize() {
    const NAME: &str = "ebpf_epoch_synchronize";
    require_passive(NAME, Function::Synchronize);
    if DOMAIN.load(Ordering::Acquire).is_null() {
        return;
    }
    let domain = domain(NAME, Function::Synchronize).domain();
    domain.synchronize();
    domain.callback_barrier();
}

/// Allocates a work item that runs `callback(callback_context)` once after it is scheduled and a
/// grace period passed, at PASSIVE_LEVEL outside any epoch; NULL when the pool has no memory.
///
/// # Safety
/// `callback` may be called with `callback_context` at PASSIVE_LEVEL.
#[no_mangle]
pub unsafe extern "C" fn ebpf_epoch_allocate_work_item(
    callback_context: *const c_void,
    callback: Option<Callback>,
) -> *mut CWorkItem {
    const NAME: &str = "ebpf_epoch_allocate_work_item";
    let domain = domain(NAME, Function::AllocateWorkItem);
    let Some(callback) = callback else {
        fail_fast(
            NAME,
            Function::AllocateWorkItem,
            Misuse::Null,
            0,
            format_args!("(callback) "),
        );
    };
    work::allocate(domain, callback, callback_context.cast_mut(), NAME)
}

/// Schedules a work item allocated by `ebpf_epoch_allocate_work_item`: it runs once and is then
/// freed. Fails fast when it is scheduled already. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `work_item` is NULL or points to readable memory of a work item's size.
#[no_mangle]
pub unsafe extern "C" fn ebpf_epoch_schedule_work_item(work_item: *mut CWorkItem) {
    // SAFETY: per the caller.
    unsafe { work::schedule(work_item, "ebpf_epoch_schedule_work_item") }
}

/// Cancels and frees an unscheduled work item; NULL is ignored. Fails fast on a scheduled item.
/// IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// As for [`ebpf_epoch_schedule_work_item`].
#[no_mangle]
pub unsafe extern "C" fn ebpf_epoch_cancel_work_item(work_item: *mut CWorkItem) {
    // SAFETY: per the caller.
    unsafe { work::cancel(work_item, "ebpf_epoch_cancel_work_item") }
}

/// Whether nothing freed on processor `cpu_id` is waiting to be released (a racy snapshot). Fails
/// fast for an index at or above the maximum processor count. IRQL <= DISPATCH_LEVEL.
#[no_mangle]
pub extern "C" fn ebpf_epoch_is_free_list_empty(cpu_id: u32) -> bool {
    const NAME: &str = "ebpf_epoch_is_free_list_empty";
    require_at_most_dispatch(NAME, Function::IsFreeListEmpty);
    let domain = domain(NAME, Function::IsFreeListEmpty).domain();
    let platform = domain.platform();
    if cpu_id >= platform.max_processor_count() {
        fail_fast(
            NAME,
            Function::IsFreeListEmpty,
            Misuse::BadProcessor,
            cpu_id as usize,
            format_args!("(cpu_id {cpu_id}) "),
        );
    }
    match platform.processor_number_from_index(cpu_id) {
        Ok(processor) => domain.pending_on(processor) == 0,
        // Without the index's number (an index never active, or no KeGetProcessorNumberFromIndex):
        // empty only when nothing is pending anywhere.
        Err(_) => domain.holdback().pending == 0,
    }
}
