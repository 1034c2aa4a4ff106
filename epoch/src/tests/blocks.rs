//! Allocation options: the pool tag reaches the platform, values are built in their block (never on
//! the stack), zeroed first, and such blocks retire and free like any other.

use super::*;
use crate::platform::PoolTag;

const TAG: PoolTag = PoolTag::from_bytes(*b"Rout");

/// The tag of `alloc_tagged` and `alloc_with` reaches `Platform::allocate_tagged`; `alloc` asks for
/// no tag; tagged blocks are freed by retirement like the others.
#[test]
fn a_pool_tag_reaches_the_platform_and_tagged_blocks_retire_normally() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let drops = Arc::new(AtomicUsize::new(0));
    let tracked = domain
        .alloc_tagged(Tracked(Arc::clone(&drops)), TAG)
        .expect("memory");
    let untagged = domain.alloc(1u8).expect("memory");
    let zeroed = domain
        .alloc_with(Some(PoolTag::from_bytes(*b"Zero")), |_: &mut [u64; 4]| {})
        .expect("memory");
    assert_eq!(
        platform.0.lock().unwrap().tags,
        [TAG, PoolTag::from_bytes(*b"Zero")]
    );
    // SAFETY: never published.
    unsafe {
        domain.retire(tracked).expect("retire");
        domain.retire(untagged).expect("retire");
        domain.retire(zeroed).expect("retire");
    }
    domain.synchronize();
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the tagged value was dropped"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

/// `alloc_with` hands `init` the block's own value, zeroed (whatever the memory held before), and
/// the block holds what `init` wrote.
#[test]
fn alloc_with_zeroes_the_block_and_init_writes_into_it() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    // Leave a freed block full of ones where the next one may be placed.
    let dirty = domain.alloc([u64::MAX; 64]).expect("memory");
    // SAFETY: never published.
    unsafe { domain.free_now(dirty) };
    let mut seen_at = core::ptr::null();
    let mut all_zero = false;
    let block = domain
        .alloc_with(None, |table: &mut [u64; 64]| {
            seen_at = table as *const [u64; 64];
            all_zero = table.iter().all(|&word| word == 0);
            table[3] = 42;
        })
        .expect("memory");
    assert!(all_zero, "init saw a block that was not zeroed");
    assert_eq!(seen_at, block.as_ptr().cast_const(), "init ran on a copy");
    // SAFETY: ours alone, initialised.
    assert_eq!(unsafe { block.as_ref() }[3], 42);
    // SAFETY: never published.
    unsafe { domain.free_now(block) };
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}

/// A 1 MiB table is built on a thread whose stack is 256 KiB: the value never passes through the
/// stack (a by-value construction overflows it and aborts the test run).
#[test]
fn a_table_larger_than_the_stack_is_built_in_place() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let domain = Arc::new(domain);
    let builder = Arc::clone(&domain);
    let sum = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let table = builder
                .alloc_with(Some(TAG), |table: &mut [u32; 256 * 1024]| {
                    for (slot, value) in table.iter_mut().enumerate() {
                        *value = slot as u32 % 7;
                    }
                })
                .expect("memory");
            // SAFETY: ours alone, initialised.
            let sum: u64 = unsafe { table.as_ref() }
                .iter()
                .map(|&v| u64::from(v))
                .sum();
            // SAFETY: never published.
            unsafe { builder.free_now(table) };
            sum
        })
        .expect("thread")
        .join()
        .expect("built without overflowing the stack");
    let expected: u64 = (0..256 * 1024u64).map(|slot| slot % 7).sum();
    assert_eq!(sum, expected);
    drop(Arc::into_inner(domain).expect("last reference"));
    assert_eq!(platform.live_allocations(), 0);
}

/// A variable-size block has the length asked for, zeroed, filled in place, carries its tag, is
/// freed by retirement (once) with the layout it was allocated with; an overflowing length fails
/// cleanly.
#[test]
fn a_variable_size_block_is_zeroed_filled_in_place_and_freed_by_retirement() {
    let (platform, domain) = domain(1, Strategy::Lazy);
    let mut seen_at = core::ptr::null();
    let bytes = domain
        .alloc_slice_with(13, Some(TAG), |bytes: &mut [u8]| {
            seen_at = bytes.as_ptr();
            assert!(bytes.iter().all(|&b| b == 0), "not zeroed");
            bytes[12] = 0xAB;
        })
        .expect("memory");
    // SAFETY: ours alone, initialised.
    let view = unsafe { bytes.as_ref() };
    assert_eq!((view.len(), view[0], view[12]), (13, 0, 0xAB));
    assert_eq!(seen_at, view.as_ptr(), "init ran on a copy");
    let wide = domain
        .alloc_slice_with(3, None, |_: &mut [u128]| {})
        .expect("memory");
    assert_eq!(
        wide.as_ptr().cast::<u8>() as usize % 16,
        0,
        "aligned for u128"
    );
    assert!(
        domain
            .alloc_slice_with(usize::MAX / 2, None, |_: &mut [u64]| {})
            .is_none(),
        "an overflowing size is refused"
    );
    assert_eq!(platform.0.lock().unwrap().tags, [TAG]);
    // SAFETY: never published.
    unsafe {
        domain.retire_slice(bytes).expect("retire");
        assert_eq!(domain.retire_slice(bytes), Err(RetireError::AlreadyRetired));
        domain.retire_slice(wide).expect("retire");
    }
    domain.synchronize();
    assert_eq!(domain.stats().pending, 0);
    drop(domain);
    // The test platform checks every free against the layout it allocated.
    assert_eq!(platform.live_allocations(), 0);
}
