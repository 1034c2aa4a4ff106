//! IRQL on x64 is the CR8 register (task priority). The WDK headers implement `KeGetCurrentIrql`,
//! `KfRaiseIrql` and `KeLowerIrql` inline on CR8 for AMD64 (`wdm.h`), so both
//! backends use these instead of imports. (Wine emulates `mov cr8`: reads give 0, writes are ignored.)

/// `PASSIVE_LEVEL`.
pub const PASSIVE_LEVEL: u8 = 0;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u8 = 2;

/// `KeGetCurrentIrql`.
#[inline]
pub fn current() -> u8 {
    let value: u64;
    // SAFETY: reading CR8 is allowed at CPL 0 (where a driver runs) and has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr8", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value as u8
}

/// `KfRaiseIrql(DISPATCH_LEVEL)` without the bug check: raises to DISPATCH if below it and returns the
/// previous IRQL (unchanged if already at or above DISPATCH).
///
/// # Safety
/// The caller lowers back with [`lower`] and the returned value, on this processor, before it would
/// block or return to code that expects the old IRQL.
#[inline]
pub unsafe fn raise_to_dispatch() -> u8 {
    let previous = current();
    if previous < DISPATCH_LEVEL {
        // SAFETY: raising CR8 only masks interrupts/DPCs on this processor; the caller restores it. The
        // compiler must not move memory accesses across it (no `nomem`): they belong to the new level.
        unsafe {
            core::arch::asm!("mov cr8, {}", in(reg) u64::from(DISPATCH_LEVEL), options(nostack, preserves_flags));
        }
    }
    previous
}

/// `KeLowerIrql(previous)`.
///
/// # Safety
/// `previous` was returned by the matching [`raise_to_dispatch`] on this processor.
#[inline]
pub unsafe fn lower(previous: u8) {
    if current() > previous {
        // SAFETY: per the contract we return to the level this code ran at before its raise (this is
        // exactly the WDK's inline x64 KeLowerIrql).
        unsafe {
            core::arch::asm!("mov cr8, {}", in(reg) u64::from(previous), options(nostack, preserves_flags));
        }
    }
}
