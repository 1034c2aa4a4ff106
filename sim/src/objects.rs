//! Objects that readers read and writers retire, shared by the torture and the A/B lab workloads.
//!
//! An object carries a magic word: the destructor overwrites it and the simulated allocator then
//! poisons the freed block, so a reader that reaches a freed object reads something other than
//! [`LIVE`] — a use-after-free is caught, never silently passed.

use crate::machine::SimPlatform;
use kepoch::Domain;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Magic of a live object.
pub const LIVE: u64 = 0x4C49_5645_4F42_4A31;
/// Written by the object's destructor, before the allocator poisons the block.
pub const DEAD: u64 = 0x4445_4144_4F42_4A31;
/// `retired_at` of an object that is still linked.
pub const NOT_RETIRED: u64 = u64::MAX;

/// A domain on the simulated machine.
pub type SimDomain = Domain<SimPlatform>;

/// The object readers read through shared cells.
pub struct Object {
    magic: AtomicU64,
    /// Serial number, for messages.
    pub id: u64,
    retired_at: AtomicU64,
}

impl Drop for Object {
    fn drop(&mut self) {
        self.magic.store(DEAD, Ordering::Release);
    }
}

/// What a reader found when it checked an object it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Live, and not released under the reader.
    Ok,
    /// The magic is gone: the object was freed (the value read is given).
    UseAfterFree(u64),
    /// The object's retirement epoch was already released while the reader still holds it.
    ReleasedWhileHeld {
        /// Epoch the object was retired at.
        retired_at: u64,
        /// The domain's released epoch.
        released: u64,
    },
}

impl Check {
    /// A one-line description of a failed check.
    pub fn describe(self, id: u64, cpu: u32) -> Option<String> {
        match self {
            Check::Ok => None,
            Check::UseAfterFree(magic) => Some(format!(
                "use-after-free: a reader on CPU {cpu} read object #{id} after it was freed (magic {magic:#018x})"
            )),
            Check::ReleasedWhileHeld { retired_at, released } => Some(format!(
                "object #{id} retired at epoch {retired_at} is still held by a reader on CPU {cpu}, but epoch {released} was released"
            )),
        }
    }
}

/// Allocates a live object with serial `id` from the domain; `None` if the allocation failed.
pub fn new_object(domain: &SimDomain, id: u64) -> Option<NonNull<Object>> {
    let object = Object {
        magic: AtomicU64::new(LIVE),
        id,
        retired_at: AtomicU64::new(NOT_RETIRED),
    };
    domain.alloc(object).ok()
}

/// Checks an object a reader holds inside an epoch.
///
/// # Safety
/// `object` came from [`new_object`] and was loaded from a cell inside an epoch that is still open.
/// If the protocol is broken the object may be freed: the simulator's quarantine keeps the memory
/// mapped and poisoned, and every access here is atomic, so reading it is still sound.
pub unsafe fn check(domain: &SimDomain, object: NonNull<Object>) -> Check {
    // SAFETY: per the caller (see above).
    let (magic, retired_at) = unsafe {
        let object = object.as_ref();
        (
            object.magic.load(Ordering::Acquire),
            object.retired_at.load(Ordering::Acquire),
        )
    };
    if magic != LIVE {
        return Check::UseAfterFree(magic);
    }
    let released = domain.released_epoch();
    if retired_at != NOT_RETIRED && retired_at <= released {
        return Check::ReleasedWhileHeld {
            retired_at,
            released,
        };
    }
    Check::Ok
}

/// Publishes `object` in `cell` and retires the object it replaced, recording its retirement epoch.
/// Returns `Ok(true)` if an object was retired. Call inside an epoch (which keeps the old object alive
/// while its epoch is recorded).
///
/// # Safety
/// `object` came from [`new_object`] of `domain`; every object in `cell` did too.
pub unsafe fn replace(
    domain: &SimDomain,
    cell: &AtomicPtr<Object>,
    object: NonNull<Object>,
) -> Result<bool, kepoch::RetireError> {
    let old = cell.swap(object.as_ptr(), Ordering::AcqRel);
    let Some(old) = NonNull::new(old) else {
        return Ok(false);
    };
    // SAFETY: `old` came from `alloc` and was just unlinked by the swap.
    let stamp = unsafe { domain.retire(old) }?;
    // SAFETY: the caller's epoch keeps `old` alive until it exits.
    unsafe { old.as_ref() }
        .retired_at
        .store(stamp, Ordering::Release);
    Ok(true)
}

/// Unlinks and retires every object still published in `cells` (teardown). Returns how many
/// retirements were refused (always 0 unless the core is broken).
pub fn retire_cells(domain: &SimDomain, cells: &[AtomicPtr<Object>]) -> usize {
    let mut refused = 0;
    for cell in cells {
        let object = cell.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if let Some(object) = NonNull::new(object) {
            // SAFETY: unlinked just now; allocated by this domain.
            if unsafe { domain.retire(object) }.is_err() {
                refused += 1;
            }
        }
    }
    refused
}
