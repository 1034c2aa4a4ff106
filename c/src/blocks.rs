//! Zeroed blocks for C callers, retired with a free: kepoch's variable-size blocks of 16-byte or
//! 64-byte chunks, whose first chunk ends in a 16-byte prefix just below the caller's pointer. The
//! prefix's check word tells a live block from a freed one and from memory kepoch did not allocate,
//! and says which free function the block needs.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use kepoch::domain::Zeroable;
use kepoch::platform::PoolTag;
use kepoch::Domain;
use kepoch_nt::NtPlatform;

use crate::fail::{fail_fast, require_at_most_dispatch, Function, Misuse};

/// A 16-byte chunk: blocks from `allocate` are aligned like pool blocks (`MEMORY_ALLOCATION_ALIGNMENT`).
#[repr(C, align(16))]
pub struct Chunk([u8; 16]);

/// A cache line: blocks from `allocate_cache_aligned` start on one.
#[repr(C, align(64))]
pub struct CacheLine([u8; 64]);

// SAFETY: byte arrays: all-zero is a valid value.
unsafe impl Zeroable for Chunk {}
// SAFETY: as above.
unsafe impl Zeroable for CacheLine {}

/// The 16 bytes below a C block's pointer.
#[repr(C)]
struct Prefix {
    /// `pointer ^ domain ^ kind` while live, `pointer ^ domain ^ FREED` once freed: a block of
    /// another domain does not pass.
    check: usize,
    /// Reserved (zero).
    reserved: usize,
}

/// Check value (XORed with the pointer) of a live block from `allocate`.
const PLAIN: usize = 0x6B65_706F_6368_424B;
/// Check value of a live block from `allocate_cache_aligned`.
const ALIGNED: usize = 0x6B65_706F_6368_4341;
/// Check value of a freed block (until its memory is reused).
const FREED: usize = 0x6B65_706F_6368_4652;

/// Which allocation a block came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 16-byte aligned.
    Plain,
    /// Cache-line aligned.
    CacheAligned,
}

impl Kind {
    fn check(self) -> usize {
        match self {
            Kind::Plain => PLAIN,
            Kind::CacheAligned => ALIGNED,
        }
    }

    fn function(self) -> Function {
        match self {
            Kind::Plain => Function::Free,
            Kind::CacheAligned => Function::FreeCacheAligned,
        }
    }
}

/// A zeroed block of at least `size` bytes (with `tag`, or the domain's), or NULL when the pool has
/// no memory or the size overflows. Any IRQL up to DISPATCH_LEVEL (above it fails fast, naming
/// `name`).
pub fn allocate(
    domain: &Domain<NtPlatform>,
    size: usize,
    tag: Option<PoolTag>,
    kind: Kind,
    name: &str,
) -> *mut c_void {
    require_at_most_dispatch(name, Function::Allocate);
    match kind {
        Kind::Plain => allocate_chunks::<Chunk>(domain, size, tag, kind),
        Kind::CacheAligned => allocate_chunks::<CacheLine>(domain, size, tag, kind),
    }
}

/// What a block's check word is XORed with: its pointer and its domain's address.
fn salt(pointer: *const c_void, domain: &Domain<NtPlatform>) -> usize {
    pointer as usize ^ (domain as *const Domain<NtPlatform> as usize)
}

fn allocate_chunks<C: Zeroable + Send>(
    domain: &Domain<NtPlatform>,
    size: usize,
    tag: Option<PoolTag>,
    kind: Kind,
) -> *mut c_void {
    // One chunk for the prefix, then the caller's bytes (at least one chunk).
    let Some(chunks) = size.max(1).div_ceil(size_of::<C>()).checked_add(1) else {
        return ptr::null_mut();
    };
    let Some(values) = domain.alloc_slice_with::<C>(chunks, tag, |_| {}) else {
        return ptr::null_mut();
    };
    // SAFETY: the block holds `chunks` >= 2 chunks: the pointer after the first is in bounds, and
    // the prefix is the first chunk's last 16 bytes (chunks are at least 16 bytes).
    unsafe {
        let pointer = values.as_ptr().cast::<C>().add(1).cast::<u8>();
        pointer.cast::<Prefix>().sub(1).write(Prefix {
            check: salt(pointer.cast(), domain) ^ kind.check(),
            reserved: 0,
        });
        pointer.cast()
    }
}

/// Retires a block from [`allocate`] of `kind`: freed once every reader that entered before has
/// exited. NULL is ignored. Fails fast on a double free, a pointer this domain did not allocate
/// (another domain's block included), or a block of the other kind. Any IRQL up to DISPATCH_LEVEL.
///
/// # Safety
/// `pointer` is NULL or has 16 readable and writable bytes below it (a block from [`allocate`] of
/// this domain, live or freed recently, is what the checks expect), and no reader that enters from
/// now on can reach it.
pub unsafe fn free(domain: &Domain<NtPlatform>, pointer: *mut c_void, kind: Kind, name: &str) {
    let function = kind.function();
    require_at_most_dispatch(name, function);
    if pointer.is_null() {
        return;
    }
    let address = pointer as usize;
    // SAFETY: 16 bytes below the pointer are readable and writable (the caller).
    let prefix = unsafe { pointer.cast::<Prefix>().sub(1) };
    // SAFETY: as above.
    let check =
        unsafe { ptr::read_volatile(ptr::addr_of!((*prefix).check)) } ^ salt(pointer, domain);
    let misuse = match check {
        c if c == kind.check() => None,
        FREED => Some(Misuse::DoubleFree),
        PLAIN | ALIGNED => Some(Misuse::WrongFreeFunction),
        _ => Some(Misuse::NotKepochMemory),
    };
    if let Some(misuse) = misuse {
        fail_fast(name, function, misuse, address, format_args!(""));
    }
    // SAFETY: a live block of this kind (its check word): writable, retired once below.
    unsafe {
        ptr::write_volatile(
            ptr::addr_of_mut!((*prefix).check),
            salt(pointer, domain) ^ FREED,
        )
    };
    let retired = match kind {
        // SAFETY: the block's first chunk precedes the pointer; unreachable per the caller.
        Kind::Plain => unsafe { retire_chunks::<Chunk>(domain, pointer) },
        // SAFETY: as above.
        Kind::CacheAligned => unsafe { retire_chunks::<CacheLine>(domain, pointer) },
    };
    if retired.is_err() {
        // Two frees raced past the check word: the core refused the second retirement.
        fail_fast(
            name,
            function,
            Misuse::DoubleFree,
            address,
            format_args!(""),
        );
    }
}

/// Retires the chunk block whose caller pointer is `pointer`.
///
/// # Safety
/// `pointer` came from [`allocate_chunks`] with `C` of this domain.
unsafe fn retire_chunks<C>(
    domain: &Domain<NtPlatform>,
    pointer: *mut c_void,
) -> Result<u64, kepoch::RetireError> {
    // SAFETY: per the caller, the block's values start one chunk below the pointer; only the start
    // matters to `retire_slice`.
    unsafe {
        let first = NonNull::new_unchecked(pointer.cast::<C>().sub(1));
        domain.retire_slice(NonNull::slice_from_raw_parts(first, 0))
    }
}
