//! The `kepoch_*` exports of `c/include/kepoch.h`: domains with a configuration, and every operation
//! on an explicit domain handle. Functions with an `NTSTATUS` return refuse bad arguments with
//! `STATUS_INVALID_PARAMETER`; the others fail fast (module [`crate::fail`]).

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr::{self, NonNull};

use kepoch::config::{
    visit_budget_for, MAX_CYCLE_PERIOD_US, MAX_MAX_FREES_PER_VISIT, MIN_CYCLE_PERIOD_US,
    MIN_MAX_FREES_PER_VISIT,
};
use kepoch::platform::{LogLevel, PoolTag as CoreTag, Status};
use kepoch::{Config, Stats, Strategy};
use kepoch_nt::sys::{self, irql};
use kepoch_nt::{log_line, PoolTag};

use crate::blocks::{self, Kind};
use crate::domain::{CDomain, Creation};
use crate::fail::{fail_fast, require_at_most_dispatch, require_passive, Function, Misuse};
use crate::state::{self, EpochState};
use crate::work::{self, CWorkItem, Callback};

/// `kepoch_config_t`: a domain's configuration (`kepoch_config_init` fills in the defaults).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CConfig {
    /// `sizeof(kepoch_config_t)`: the layout version.
    pub size: u32,
    /// 0 lazy, 1 callback, 2 eager (the registry's `ActivationStrategy` values).
    pub strategy: u32,
    /// 0 or 1: idle processors leave the cycle.
    pub idle_deactivation: u32,
    /// The reclamation timer's period.
    pub cycle_period_us: u32,
    /// Frees per DPC visit (a visit also stops after 50 µs of work); 0: no bound of either kind.
    pub max_frees_per_visit: u32,
    /// The domain's pool tag (four printable characters, first in the low byte).
    pub pool_tag: u32,
    /// 0: trust that DPCs run; otherwise probe them for up to this many milliseconds at creation.
    pub dpc_probe_ms: u32,
    /// Zero.
    pub reserved: u32,
}

/// The default pool tag of a C domain: `KepC`.
pub const DEFAULT_POOL_TAG: [u8; 4] = *b"KepC";

/// The DPC probe of C domains by default: long enough for Wine, instant on NT.
pub const DEFAULT_DPC_PROBE_MS: u32 = 500;

impl Default for CConfig {
    fn default() -> Self {
        let config = Config::default();
        CConfig {
            size: core::mem::size_of::<CConfig>() as u32,
            strategy: config.strategy.registry_value(),
            idle_deactivation: u32::from(config.idle_deactivation),
            cycle_period_us: config.cycle_period_us,
            max_frees_per_visit: config.max_frees_per_visit,
            pool_tag: u32::from_le_bytes(DEFAULT_POOL_TAG),
            dpc_probe_ms: DEFAULT_DPC_PROBE_MS,
            reserved: 0,
        }
    }
}

impl CConfig {
    /// The core configuration and pool tag, or the name of the first field out of range.
    pub fn validate(&self) -> Result<(Config, PoolTag), &'static str> {
        if self.size as usize != core::mem::size_of::<CConfig>() {
            return Err("size");
        }
        let strategy = Strategy::from_registry_value(self.strategy).ok_or("strategy")?;
        let idle_deactivation = match self.idle_deactivation {
            0 => false,
            1 => true,
            _ => return Err("idle_deactivation"),
        };
        if !(MIN_CYCLE_PERIOD_US..=MAX_CYCLE_PERIOD_US).contains(&self.cycle_period_us) {
            return Err("cycle_period_us");
        }
        let frees = self.max_frees_per_visit;
        if frees != 0 && !(MIN_MAX_FREES_PER_VISIT..=MAX_MAX_FREES_PER_VISIT).contains(&frees) {
            return Err("max_frees_per_visit");
        }
        let tag = PoolTag::new(self.pool_tag.to_le_bytes()).map_err(|_| "pool_tag")?;
        if self.pool_tag == 0 || self.dpc_probe_ms > 60_000 {
            return Err(if self.pool_tag == 0 {
                "pool_tag"
            } else {
                "dpc_probe_ms"
            });
        }
        if self.reserved != 0 {
            return Err("reserved");
        }
        let config = Config {
            strategy,
            idle_deactivation,
            cycle_period_us: self.cycle_period_us,
            max_frees_per_visit: frees,
            visit_budget_us: visit_budget_for(frees),
            ..Config::default()
        };
        Ok((config, tag))
    }
}

/// `kepoch_stats_t`: the counters a C driver reads (a subset of kepoch's `Stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CStats {
    /// `sizeof(kepoch_stats_t)`.
    pub size: u32,
    /// The strategy (0 lazy, 1 callback, 2 eager).
    pub strategy: u32,
    /// Processors the kernel reported as the maximum.
    pub max_processors: u32,
    /// Processors active now.
    pub active_processors: u32,
    /// Processors with per-CPU state.
    pub cpus_prepared: u64,
    /// Epoch enters.
    pub enters: u64,
    /// Epoch exits.
    pub exits: u64,
    /// Blocks and work items retired.
    pub retired: u64,
    /// Retired items disposed of.
    pub freed: u64,
    /// Retired items not disposed of yet.
    pub pending: u64,
    /// Second retirements refused.
    pub double_retires: u64,
    /// Reclamation cycles completed.
    pub cycles: u64,
    /// Cycle DPCs sent.
    pub messages: u64,
    /// Work items run.
    pub work_items_run: u64,
    /// Hot-added processors whose add completed.
    pub hot_add_complete: u64,
    /// Visits that stopped at `max_frees_per_visit` or at the 50 µs budget.
    pub visits_cut_short: u64,
}

// The layouts `c/include/kepoch.h` asserts too (sizes and the offset of each block of fields).
const _: () = {
    assert!(core::mem::size_of::<CConfig>() == 32);
    assert!(core::mem::offset_of!(CConfig, pool_tag) == 20);
    assert!(core::mem::size_of::<CStats>() == 112);
    assert!(core::mem::offset_of!(CStats, cpus_prepared) == 16);
    assert!(core::mem::offset_of!(CStats, pending) == 56);
    assert!(core::mem::offset_of!(CStats, work_items_run) == 88);
    assert!(core::mem::offset_of!(CStats, visits_cut_short) == 104);
};

/// Fills `config` with the defaults: callback strategy, idle deactivation, 1000 µs cycles, 256 frees
/// per visit, tag `KepC`, a 500 ms DPC probe. Any IRQL.
///
/// # Safety
/// `config` is NULL (ignored) or points to a writable `kepoch_config_t`.
#[no_mangle]
pub unsafe extern "C" fn kepoch_config_init(config: *mut CConfig) {
    if !config.is_null() {
        // SAFETY: writable per the caller.
        unsafe { config.write(CConfig::default()) };
    }
}

/// Creates a domain whose work items belong to `driver_object`. PASSIVE_LEVEL. Returns
/// STATUS_INVALID_PARAMETER for a NULL pointer, a bad configuration (logged with the field) or a call
/// above PASSIVE_LEVEL, and the load's status when the domain cannot be created.
///
/// # Safety
/// `config` is NULL (defaults) or a readable `kepoch_config_t`; `driver_object` is the driver's
/// object, valid until the domain is destroyed; `domain` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kepoch_domain_create(
    config: *const CConfig,
    driver_object: *mut sys::DRIVER_OBJECT,
    domain: *mut *mut CDomain,
) -> i32 {
    let refuse = |what: core::fmt::Arguments<'_>| {
        log_line(
            LogLevel::Warning,
            format_args!("kepoch_domain_create: {what}"),
        );
        Status::INVALID_PARAMETER.0
    };
    if domain.is_null() {
        return refuse(format_args!("domain (the result pointer) is NULL"));
    }
    // SAFETY: writable per the caller; NULL until a domain exists.
    unsafe { domain.write(ptr::null_mut()) };
    let Some(driver) = NonNull::new(driver_object) else {
        return refuse(format_args!("driver_object is NULL"));
    };
    if irql::current() != irql::PASSIVE_LEVEL {
        return refuse(format_args!("called above PASSIVE_LEVEL"));
    }
    let config = if config.is_null() {
        CConfig::default()
    } else {
        // SAFETY: readable per the caller: its first field says how large it is, checked before
        // the rest is read (a caller built against another layout may have passed less).
        let size = unsafe { ptr::addr_of!((*config).size).read() };
        if size as usize != core::mem::size_of::<CConfig>() {
            return refuse(format_args!(
                "kepoch_config_t.size is out of range ({size}; this library's kepoch_config_t has {})",
                core::mem::size_of::<CConfig>()
            ));
        }
        // SAFETY: as above, now known to be a whole kepoch_config_t.
        unsafe { config.read() }
    };
    let (core_config, pool_tag) = match config.validate() {
        Ok(valid) => valid,
        Err(field) => {
            return refuse(format_args!(
                "kepoch_config_t.{field} is out of range ({config:?})"
            ))
        }
    };
    let creation = Creation {
        config: core_config,
        pool_tag,
        driver,
        dpc_probe_ms: config.dpc_probe_ms,
    };
    // SAFETY: PASSIVE_LEVEL (checked); the driver object outlives the domain (the caller).
    match unsafe { CDomain::create(creation) } {
        Ok(handle) => {
            // SAFETY: writable per the caller.
            unsafe { domain.write(handle.as_ptr()) };
            Status::SUCCESS.0
        }
        Err(status) => status.0,
    }
}

/// Destroys a domain: stops its cycles, runs its scheduled work items, frees everything retired.
/// PASSIVE_LEVEL; fails fast on a bad handle or work items neither scheduled nor cancelled.
///
/// # Safety
/// `domain` came from `kepoch_domain_create` and nothing uses it during or after the call.
#[no_mangle]
pub unsafe extern "C" fn kepoch_domain_destroy(domain: *mut CDomain) {
    const NAME: &str = "kepoch_domain_destroy";
    require_passive(NAME, Function::Terminate);
    // SAFETY: a handle per the caller.
    let handle = unsafe { CDomain::from_handle(domain, NAME, Function::Terminate) };
    // SAFETY: live (checked); unused from now on (the caller).
    unsafe { CDomain::destroy(NonNull::from(handle), NAME) };
}

/// Enters an epoch; `state` is the caller's, one per nesting level. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `domain` is a live handle; `state` points to 32 writable bytes that stay until the exit.
#[no_mangle]
pub unsafe extern "C" fn kepoch_enter(domain: *mut CDomain, state: *mut EpochState) {
    const NAME: &str = "kepoch_enter";
    // SAFETY: per the caller.
    unsafe {
        state::enter(
            CDomain::from_handle(domain, NAME, Function::Enter).domain(),
            state,
            NAME,
        )
    }
}

/// Exits the epoch `state` holds, at the IRQL of its enter.
///
/// # Safety
/// As for [`kepoch_enter`].
#[no_mangle]
pub unsafe extern "C" fn kepoch_exit(domain: *mut CDomain, state: *mut EpochState) {
    const NAME: &str = "kepoch_exit";
    // SAFETY: per the caller.
    unsafe {
        state::exit(
            CDomain::from_handle(domain, NAME, Function::Exit).domain(),
            state,
            NAME,
        )
    }
}

/// The core tag for a C tag (0: the domain's).
pub(crate) fn tag_of(tag: u32) -> Option<CoreTag> {
    (tag != 0).then_some(CoreTag(tag))
}

/// A zeroed, 16-byte aligned block of `size` bytes tagged `tag` (0: the domain's), or NULL.
/// IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `domain` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn kepoch_allocate(
    domain: *mut CDomain,
    size: usize,
    tag: u32,
) -> *mut c_void {
    // SAFETY: per the caller.
    let domain = unsafe { CDomain::from_handle(domain, "kepoch_allocate", Function::Allocate) };
    blocks::allocate(
        domain.domain(),
        size,
        tag_of(tag),
        Kind::Plain,
        "kepoch_allocate",
    )
}

/// A zeroed block starting on a cache line (64 bytes), or NULL. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `domain` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn kepoch_allocate_cache_aligned(
    domain: *mut CDomain,
    size: usize,
    tag: u32,
) -> *mut c_void {
    // SAFETY: per the caller.
    let domain = unsafe {
        CDomain::from_handle(domain, "kepoch_allocate_cache_aligned", Function::Allocate)
    };
    blocks::allocate(
        domain.domain(),
        size,
        tag_of(tag),
        Kind::CacheAligned,
        "kepoch_allocate_cache_aligned",
    )
}

/// Frees a block of `kepoch_allocate` once the readers that may see it have exited; NULL is
/// ignored. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `domain` is a live handle; `memory` is NULL or a block of it that no new reader can reach.
#[no_mangle]
pub unsafe extern "C" fn kepoch_free(domain: *mut CDomain, memory: *mut c_void) {
    const NAME: &str = "kepoch_free";
    // SAFETY: per the caller.
    unsafe {
        blocks::free(
            CDomain::from_handle(domain, NAME, Function::Free).domain(),
            memory,
            Kind::Plain,
            NAME,
        )
    }
}

/// [`kepoch_free`] for blocks of `kepoch_allocate_cache_aligned`.
///
/// # Safety
/// As for [`kepoch_free`].
#[no_mangle]
pub unsafe extern "C" fn kepoch_free_cache_aligned(domain: *mut CDomain, memory: *mut c_void) {
    const NAME: &str = "kepoch_free_cache_aligned";
    // SAFETY: per the caller.
    unsafe {
        let domain = CDomain::from_handle(domain, NAME, Function::FreeCacheAligned);
        blocks::free(domain.domain(), memory, Kind::CacheAligned, NAME)
    }
}

/// Allocates a one-shot work item running `callback(context)`, or NULL. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `domain` is a live handle; `callback` may be called with `context` at PASSIVE_LEVEL.
#[no_mangle]
pub unsafe extern "C" fn kepoch_work_item_allocate(
    domain: *mut CDomain,
    callback: Option<Callback>,
    context: *mut c_void,
) -> *mut CWorkItem {
    const NAME: &str = "kepoch_work_item_allocate";
    // SAFETY: per the caller.
    let domain = unsafe { CDomain::from_handle(domain, NAME, Function::AllocateWorkItem) };
    let Some(callback) = callback else {
        fail_fast(
            NAME,
            Function::AllocateWorkItem,
            Misuse::Null,
            0,
            format_args!("(callback) "),
        );
    };
    work::allocate(domain, callback, context, NAME)
}

/// Schedules a work item: it runs once, after a grace period, then is freed. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `item` is NULL or points to readable memory of a work item's size.
#[no_mangle]
pub unsafe extern "C" fn kepoch_work_item_schedule(item: *mut CWorkItem) {
    // SAFETY: per the caller.
    unsafe { work::schedule(item, "kepoch_work_item_schedule") }
}

/// Cancels and frees an unscheduled work item; NULL is ignored. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// As for [`kepoch_work_item_schedule`].
#[no_mangle]
pub unsafe extern "C" fn kepoch_work_item_cancel(item: *mut CWorkItem) {
    // SAFETY: per the caller.
    unsafe { work::cancel(item, "kepoch_work_item_cancel") }
}

/// Waits until everything retired before the call has been disposed of. PASSIVE_LEVEL, outside
/// any epoch of the domain.
///
/// # Safety
/// `domain` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn kepoch_synchronize(domain: *mut CDomain) {
    const NAME: &str = "kepoch_synchronize";
    require_passive(NAME, Function::Synchronize);
    // SAFETY: per the caller.
    unsafe { CDomain::from_handle(domain, NAME, Function::Synchronize) }
        .domain()
        .synchronize();
}

/// Starts a reclamation cycle now instead of at the next timer tick. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `domain` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn kepoch_flush(domain: *mut CDomain) {
    require_at_most_dispatch("kepoch_flush", Function::Other);
    // SAFETY: per the caller.
    unsafe { CDomain::from_handle(domain, "kepoch_flush", Function::Other) }
        .domain()
        .flush();
}

/// Writes the domain's counters into `stats` (`size` bytes). STATUS_INVALID_PARAMETER for a NULL
/// pointer or `size` below `sizeof(kepoch_stats_t)`; STATUS_INSUFFICIENT_RESOURCES when the snapshot
/// buffer (40 KB of pool, never the stack) cannot be allocated. IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `domain` is a live handle; `stats` is NULL or has `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn kepoch_stats(
    domain: *mut CDomain,
    stats: *mut CStats,
    size: usize,
) -> i32 {
    require_at_most_dispatch("kepoch_stats", Function::Other);
    // SAFETY: per the caller.
    let domain = unsafe { CDomain::from_handle(domain, "kepoch_stats", Function::Other) };
    if stats.is_null() || size < core::mem::size_of::<CStats>() {
        return Status::INVALID_PARAMETER.0;
    }
    let pool = domain.domain().platform().pool();
    let Some(block) = pool.allocate(Layout::new::<Stats>()) else {
        return Status::INSUFFICIENT_RESOURCES.0;
    };
    let snapshot = block.cast::<Stats>();
    // SAFETY: a fresh block of Stats' layout; zero bytes are a valid Stats (integers only, see
    // `Stats::clear`), and it is freed once below with the same layout.
    unsafe {
        snapshot.as_ptr().write_bytes(0, 1);
        let full = &mut *snapshot.as_ptr();
        domain.domain().stats_into(full);
        stats.write(CStats {
            size: core::mem::size_of::<CStats>() as u32,
            strategy: full.strategy,
            max_processors: full.max_reported,
            active_processors: full.active,
            cpus_prepared: full.cpus_prepared,
            enters: full.enters,
            exits: full.exits,
            retired: full.retired,
            freed: full.freed,
            pending: full.pending,
            double_retires: full.double_retires,
            cycles: full.cycles,
            messages: full.messages,
            work_items_run: full.work_items_run,
            hot_add_complete: full.hot_add_complete,
            visits_cut_short: full.visits_cut_short,
        });
        pool.free(block, Layout::new::<Stats>());
    }
    Status::SUCCESS.0
}
