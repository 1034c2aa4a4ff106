//! A domain created for C callers: kepoch's [`DomainBox`] on an [`NtPlatform`], plus what the C API
//! tracks around it (the handle's check value and the work items that are neither scheduled nor
//! cancelled). It lives in a block of the domain's own pool; C holds a pointer to it.

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use kepoch::platform::{LogLevel, Status};
use kepoch::{Config, Domain, DomainBox};
use kepoch_nt::{log_line, sys, DpcDelivery, NtPlatform, Pool, PoolTag, Settings, WorkItemOwner};

use crate::fail::{fail_fast, Function, Misuse};

/// XORed with a live handle's address in [`CDomain::check`].
const LIVE: usize = 0x6B65_706F_6368_444D;
/// XORed with the address of a handle being destroyed: its scheduled work items still run, and
/// their callbacks may still use the domain.
const DESTROYING: usize = 0x6B65_706F_6368_4444;

/// What a C domain handle points to.
pub struct CDomain {
    /// `address ^ LIVE` while the handle is live, `address ^ DESTROYING` while its domain shuts
    /// down; 0 once destroyed.
    check: AtomicUsize,
    /// The domain, through which every call reaches it (never through `owner`, which only
    /// `destroy` touches, so that its drop does not alias the references callbacks hold).
    domain: NonNull<Domain<NtPlatform>>,
    /// The owning box, dropped by `destroy`.
    owner: UnsafeCell<ManuallyDrop<DomainBox<NtPlatform>>>,
    /// The pool this block was allocated from (the domain's tag).
    pool: Pool,
    /// Work items allocated and neither scheduled nor cancelled.
    pub(crate) idle_work_items: AtomicUsize,
    /// Schedule calls not returned yet: one may still free its item (and so use the domain) after
    /// the item ran, so a destroy waits for them before the domain goes.
    pub(crate) schedules_in_flight: AtomicUsize,
}

/// How to create a C domain.
pub struct Creation {
    /// The domain's configuration.
    pub config: Config,
    /// The tag of the domain's own blocks and of allocations without a tag.
    pub pool_tag: PoolTag,
    /// The driver object the domain's passive work items belong to.
    pub driver: NonNull<sys::DRIVER_OBJECT>,
    /// How long to wait for a probe DPC before binding per-CPU slots (0: trust that DPCs run).
    pub dpc_probe_ms: u32,
}

impl CDomain {
    /// Creates the platform, the domain and its handle block. PASSIVE_LEVEL.
    ///
    /// # Safety
    /// The driver object stays valid until the handle is destroyed (the driver destroys its domains
    /// before it unloads).
    pub unsafe fn create(creation: Creation) -> Result<NonNull<CDomain>, Status> {
        let settings = Settings {
            pool_tag: creation.pool_tag,
            work_items: WorkItemOwner::Driver(creation.driver),
            dpc_delivery: match creation.dpc_probe_ms {
                0 => DpcDelivery::Assume,
                milliseconds => DpcDelivery::Probe { milliseconds },
            },
        };
        // SAFETY: PASSIVE_LEVEL and the owner's lifetime are this function's contract.
        let platform = unsafe { NtPlatform::new(settings) }?;
        let pool = *platform.pool();
        let domain = Domain::create(platform, creation.config).map_err(|error| error.status)?;
        let Some(block) = pool.allocate(Layout::new::<CDomain>()) else {
            log_line(
                LogLevel::Warning,
                format_args!("no memory for a C domain handle"),
            );
            return Err(Status::INSUFFICIENT_RESOURCES);
        };
        let handle = block.cast::<CDomain>();
        let inner = NonNull::from(&*domain);
        // SAFETY: a fresh block of CDomain's layout.
        unsafe {
            handle.as_ptr().write(CDomain {
                check: AtomicUsize::new(handle.as_ptr() as usize ^ LIVE),
                domain: inner,
                owner: UnsafeCell::new(ManuallyDrop::new(domain)),
                pool,
                idle_work_items: AtomicUsize::new(0),
                schedules_in_flight: AtomicUsize::new(0),
            })
        };
        Ok(handle)
    }

    /// The domain.
    pub fn domain(&self) -> &Domain<NtPlatform> {
        // SAFETY: the box in `owner` keeps the domain alive until `destroy` drops it; the drop waits
        // for the callbacks that still use it (their runs end before it returns), and after it no
        // caller may use the handle (its contract).
        unsafe { self.domain.as_ref() }
    }

    /// The live domain a C handle points to (or one being destroyed, for the callbacks of its last
    /// work items); fails fast (naming `name`) on NULL or a pointer that is not a live handle.
    ///
    /// # Safety
    /// `handle` is NULL or points to readable memory of a `CDomain`'s size (a handle, live or
    /// destroyed while its block still exists, or any other object).
    pub unsafe fn from_handle<'a>(
        handle: *const CDomain,
        name: &str,
        function: Function,
    ) -> &'a CDomain {
        if handle.is_null() {
            fail_fast(name, function, Misuse::Null, 0, format_args!(""));
        }
        // SAFETY: readable per the caller; the check word is read atomically.
        let check = unsafe { &(*handle).check }.load(Ordering::Acquire) ^ handle as usize;
        if check != LIVE && check != DESTROYING {
            fail_fast(
                name,
                function,
                Misuse::NotADomain,
                handle as usize,
                format_args!(""),
            );
        }
        // SAFETY: a live handle (its check value), valid until destroyed.
        unsafe { &*handle }
    }

    /// Shuts the domain down (its cycles stop, scheduled work items run — their callbacks may still
    /// use the handle — everything retired is freed) and frees the handle. Fails fast on a handle
    /// that is not live (destroyed twice) and when work items are still allocated and neither
    /// scheduled nor cancelled (before the shutdown, and again after it for items the last
    /// callbacks allocated). PASSIVE_LEVEL.
    ///
    /// # Safety
    /// `handle` points to readable memory of a `CDomain`'s size, and nothing but the callbacks of
    /// its work items uses it during the call, nothing at all after it.
    pub unsafe fn destroy(handle: NonNull<CDomain>, name: &str) {
        let address = handle.as_ptr() as usize;
        // SAFETY: readable per the caller; the check word is atomic.
        let check = unsafe { &(*handle.as_ptr()).check };
        if check
            .compare_exchange(
                address ^ LIVE,
                address ^ DESTROYING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            fail_fast(
                name,
                Function::Terminate,
                Misuse::NotADomain,
                address,
                format_args!(""),
            );
        }
        // SAFETY: live until freed below.
        let this = unsafe { handle.as_ref() };
        this.check_no_idle_work_items(name, address);
        // A driver that waited for its last callback may destroy while the schedule call that
        // queued it has not returned yet (it frees the item when the run ended first): short, at
        // most the end of `schedule_work`. Schedules from callbacks during the drop below are
        // waited for by the drop itself (their runs finish before it returns). The wait gives the
        // processor away: the caller may be a lower-priority thread on this one (destroy is at
        // PASSIVE).
        while this.schedules_in_flight.load(Ordering::Acquire) != 0 {
            kepoch_nt::delay_passive(1);
        }
        // SAFETY: the owner cell is touched by nobody else (callbacks reach the domain through
        // `domain`); dropped once: the domain shuts down, running the last work items.
        unsafe { ManuallyDrop::drop(&mut *this.owner.get()) };
        this.check_no_idle_work_items(name, address);
        check.store(0, Ordering::Release);
        let pool = this.pool;
        // SAFETY: nothing uses the handle any more (caller); freed with the layout and pool it was
        // allocated with (its remaining fields need no drop).
        unsafe { pool.free(handle.cast(), Layout::new::<CDomain>()) };
    }

    /// Fails fast while work items are allocated and neither scheduled nor cancelled.
    fn check_no_idle_work_items(&self, name: &str, address: usize) {
        let idle = self.idle_work_items.load(Ordering::Acquire);
        if idle != 0 {
            fail_fast(
                name,
                Function::Terminate,
                Misuse::WorkItemsOutstanding,
                address,
                format_args!("({idle} of them) "),
            );
        }
    }
}
