//! IRQL on hosts other than Windows (this file is `nt::irql` there): the routines of the emulated
//! kernel (crate `kepoch-ntemu`, linked into the tests), with the interface of the CR8 version.

/// `PASSIVE_LEVEL`.
pub const PASSIVE_LEVEL: u8 = 0;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u8 = 2;

// The emulated kernel's exports (on x64 the WDK inlines these on CR8, see `irql.rs`).
extern "system" {
    fn KeGetCurrentIrql() -> u8;
    fn KfRaiseIrql(new_irql: u8) -> u8;
    fn KeLowerIrql(new_irql: u8);
}

/// `KeGetCurrentIrql`.
#[inline]
pub fn current() -> u8 {
    // SAFETY: no arguments; callable at any IRQL.
    unsafe { KeGetCurrentIrql() }
}

/// `KfRaiseIrql(DISPATCH_LEVEL)`: raises to DISPATCH if below it and returns the previous IRQL.
///
/// # Safety
/// The caller lowers back with [`lower`] and the returned value, on this thread.
#[inline]
pub unsafe fn raise_to_dispatch() -> u8 {
    // SAFETY: per the caller, the raise is undone by `lower` on this thread.
    unsafe { KfRaiseIrql(DISPATCH_LEVEL) }
}

/// `KeLowerIrql(previous)`.
///
/// # Safety
/// `previous` was returned by the matching [`raise_to_dispatch`] on this thread.
#[inline]
pub unsafe fn lower(previous: u8) {
    // SAFETY: per the caller.
    unsafe { KeLowerIrql(previous) }
}
