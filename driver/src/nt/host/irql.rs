//! IRQL on the host backend (this file is `nt::irql` there): the calling emulated thread's IRQL, with
//! the same interface as the CR8 version. Raising to DISPATCH takes the thread's processor, so DPCs
//! and other DISPATCH code on that processor wait until it lowers again, as on NT; both are scheduling
//! points (`preempt`): a DPC due on the processor runs before the raise and as soon as the IRQL drops.

/// `PASSIVE_LEVEL`.
pub const PASSIVE_LEVEL: u8 = 0;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u8 = 2;

/// `KeGetCurrentIrql`.
#[inline]
pub fn current() -> u8 {
    super::host::processor::current_irql()
}

/// `KfRaiseIrql(DISPATCH_LEVEL)`: raises to DISPATCH if below it and returns the previous IRQL.
///
/// # Safety
/// The caller lowers back with [`lower`] and the returned value, on this thread.
#[inline]
pub unsafe fn raise_to_dispatch() -> u8 {
    super::host::preempt::before_raise();
    let previous = super::host::processor::raise_to_dispatch();
    super::host::preempt::raised();
    previous
}

/// `KeLowerIrql(previous)`.
///
/// # Safety
/// `previous` was returned by the matching [`raise_to_dispatch`] on this thread.
#[inline]
pub unsafe fn lower(previous: u8) {
    super::host::processor::lower(previous);
    super::host::preempt::lowered();
}
