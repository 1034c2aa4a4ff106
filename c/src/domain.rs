//! A domain created for C callers: kepoch's [`DomainBox`] on an [`NtPlatform`], plus what the C API
//! tracks around it (the handle's check value and the work items that are neither scheduled nor
//! cancelled). It lives in a block of the domain's own pool; C holds a pointer to it.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use kepoch::platform::{LogLevel, Status};
use kepoch::{Config, Domain, DomainBox};
use kepoch_nt::{log_line, sys, DpcDelivery, NtPlatform, Pool, PoolTag, Settings, WorkItemOwner};

use crate::fail::{fail_fast, Function, Misuse};

/// XORed with a live handle's address in [`CDomain::check`].
const LIVE: usize = 0x6B65_706F_6368_444D;

/// What a C domain handle points to.
pub struct CDomain {
    /// `address ^ LIVE` while the handle is live; 0 once destroyed.
    check: AtomicUsize,
    domain: DomainBox<NtPlatform>,
    /// The pool this block was allocated from (the domain's tag).
    pool: Pool,
    /// Work items allocated and neither scheduled nor cancelled.
    pub(crate) idle_work_items: AtomicUsize,
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
        // SAFETY: a fresh block of CDomain's layout.
        unsafe {
            handle.as_ptr().write(CDomain {
                check: AtomicUsize::new(handle.as_ptr() as usize ^ LIVE),
                domain,
                pool,
                idle_work_items: AtomicUsize::new(0),
            })
        };
        Ok(handle)
    }

    /// The domain.
    pub fn domain(&self) -> &Domain<NtPlatform> {
        &self.domain
    }

    /// The live domain a C handle points to; fails fast (naming `name`) on NULL or a pointer that is
    /// not a live handle.
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
        let check = unsafe { &(*handle).check }.load(Ordering::Acquire);
        if check != handle as usize ^ LIVE {
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

    /// Shuts the domain down (its cycles stop, scheduled work items run, everything retired is freed)
    /// and frees the handle. Fails fast when work items are still allocated and neither scheduled nor
    /// cancelled (their memory would outlive the domain). PASSIVE_LEVEL.
    ///
    /// # Safety
    /// `handle` is live (see [`CDomain::from_handle`]) and nothing uses it during or after the call.
    pub unsafe fn destroy(handle: NonNull<CDomain>, name: &str) {
        // SAFETY: live per the caller.
        let this = unsafe { handle.as_ref() };
        let idle = this.idle_work_items.load(Ordering::Acquire);
        if idle != 0 {
            fail_fast(
                name,
                Function::Terminate,
                Misuse::WorkItemsOutstanding,
                handle.as_ptr() as usize,
                format_args!("({idle} of them) "),
            );
        }
        this.check.store(0, Ordering::Release);
        let pool = this.pool;
        // SAFETY: nobody uses the handle any more (caller); the domain drops here, then the block is
        // freed with the layout and pool it was allocated with.
        unsafe {
            core::ptr::drop_in_place(handle.as_ptr());
            pool.free(handle.cast(), Layout::new::<CDomain>());
        }
    }
}
