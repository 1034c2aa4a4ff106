//! The minimal driver itself: only `kepoch-nt`'s public API (and the core's).

use core::cell::UnsafeCell;
use core::ptr::NonNull;

use kepoch::platform::LogLevel;
use kepoch::{Atomic, Domain, DomainBox, Owned};
use kepoch_nt::sys;
use kepoch_nt::{
    log_line, read_config, wide, DpcDelivery, NtPlatform, PoolTag, Settings, WorkItemOwner,
};

/// The driver's own pool tag: every block of its domain shows as `MinD` in `!poolused`.
pub const POOL_TAG: PoolTag = match PoolTag::new(*b"MinD") {
    Ok(tag) => tag,
    Err(_) => panic!("MinD is a valid pool tag"),
};

/// What readers look up and the writer replaces.
pub struct Route {
    /// The next hop.
    pub gateway: u64,
}

/// The driver's state from DriverEntry to unload.
struct State {
    /// Declared first: it drops before the domain whose blocks it holds.
    route: Atomic<'static, Route, NtPlatform>,
    domain: DomainBox<NtPlatform>,
}

/// Where the state lives: written by DriverEntry before anything can read it, taken by unload after
/// everything that reads it has stopped.
struct StateCell(UnsafeCell<Option<State>>);

// SAFETY: written only by DriverEntry and DriverUnload, which the I/O manager never runs concurrently
// with each other or with the driver's other code; in between it is only read.
unsafe impl Sync for StateCell {}

static STATE: StateCell = StateCell(UnsafeCell::new(None));

fn state() -> &'static State {
    // SAFETY: read between DriverEntry's write and unload's take (StateCell's contract).
    unsafe { (*STATE.0.get()).as_ref() }.expect("the driver is loaded")
}

/// The body of `DriverEntry`: creates the domain (configuration from `Parameters`), publishes the
/// first route, then runs the reader and the writer once.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL with its driver object and service key path.
pub unsafe fn driver_entry(
    driver: *mut sys::DRIVER_OBJECT,
    registry_path: *mut sys::UNICODE_STRING,
) -> sys::NTSTATUS {
    let Some(driver) = NonNull::new(driver) else {
        return kepoch::platform::Status::INVALID_PARAMETER.0;
    };
    // SAFETY: the service key path from the I/O manager (this function's contract).
    let registry = unsafe { read_config(registry_path, wide!("Parameters")) };
    let settings = Settings {
        pool_tag: POOL_TAG,
        work_items: WorkItemOwner::Driver(driver),
        dpc_delivery: DpcDelivery::Assume,
    };
    // SAFETY: PASSIVE_LEVEL; the driver object outlives the domain (unload drops it first).
    let platform = match unsafe { NtPlatform::new(settings) } {
        Ok(platform) => platform,
        Err(status) => return status.0,
    };
    let domain = match Domain::create(platform, registry.config) {
        Ok(domain) => domain,
        Err(error) => return error.status.0,
    };
    // SAFETY: `route` is dropped before `domain` (State's field order; unload takes them together).
    let route = unsafe { Atomic::null_detached(&domain) };
    match Owned::new(&domain, Route { gateway: 1 }) {
        Ok(first) => route.store(first),
        Err(_) => return kepoch::platform::Status::INSUFFICIENT_RESOURCES.0,
    }
    // SAFETY: the I/O manager's driver object, ours to fill in during DriverEntry; nothing reads
    // STATE yet.
    unsafe {
        (*driver.as_ptr()).DriverUnload = Some(driver_unload);
        *STATE.0.get() = Some(State { route, domain });
    }
    let seen = reader();
    writer(2);
    log_line(
        LogLevel::Info,
        format_args!(
            "minimal driver loaded: the reader saw gateway {seen:?}, the writer published 2"
        ),
    );
    0
}

/// The reader: looks the route up at DISPATCH_LEVEL (as a DPC or a spin-lock holder would).
pub fn reader() -> Option<u64> {
    let state = state();
    // SAFETY: lowered again below on this processor, before returning.
    let previous = unsafe { sys::irql::raise_to_dispatch() };
    let guard = state.domain.enter();
    let gateway = state.route.load(&guard).map(|route| route.get().gateway);
    drop(guard);
    // SAFETY: `previous` came from the raise above.
    unsafe { sys::irql::lower(previous) };
    gateway
}

/// The writer: publishes a new route, retires the old one, and waits until it is freed. PASSIVE_LEVEL.
pub fn writer(gateway: u64) {
    let state = state();
    let Ok(new) = Owned::new(&state.domain, Route { gateway }) else {
        log_line(LogLevel::Warning, format_args!("no memory for a route"));
        return;
    };
    if let Some(old) = state.route.swap(new) {
        old.retire();
    }
    state.domain.synchronize();
}

/// `DriverUnload`: retires the last route and drops the domain (which stops its cycles, waits for
/// its DPCs and work items, and frees everything retired).
unsafe extern "system" fn driver_unload(_driver: *const sys::DRIVER_OBJECT) {
    // SAFETY: the I/O manager calls unload once, at PASSIVE, when no other code of the driver runs.
    let state = unsafe { (*STATE.0.get()).take() };
    if let Some(State { route, domain }) = state {
        if let Some(last) = route.take() {
            last.retire();
        }
        drop(route);
        drop(domain);
    }
    log_line(LogLevel::Info, format_args!("minimal driver unloaded"));
}
