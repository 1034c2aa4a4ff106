//! `KeGetCurrentIrql`, `KfRaiseIrql` and `KeLowerIrql`: the calling emulated thread's IRQL. (On x64
//! the WDK inlines them on CR8; a driver built for the emulation calls these exports instead.)
//! Raising to DISPATCH takes the thread's processor, so DPCs and other DISPATCH code on that
//! processor wait until it lowers again, as on NT; both are scheduling points (`preempt`): a DPC due
//! on the processor runs before the raise and as soon as the IRQL drops.

use std::format;

use super::kernel::{with_context, DISPATCH};

/// `KeGetCurrentIrql`.
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn KeGetCurrentIrql() -> u8 {
    super::processor::current_irql()
}

/// `KfRaiseIrql(DISPATCH_LEVEL)`: raises to DISPATCH if below it and returns the previous IRQL
/// (unchanged when already at DISPATCH). Only DISPATCH_LEVEL is emulated.
///
/// # Safety
/// The caller lowers back with [`KeLowerIrql`] and the returned value, on this thread.
#[no_mangle]
pub unsafe extern "system" fn KfRaiseIrql(new_irql: u8) -> u8 {
    if new_irql != DISPATCH {
        let kernel = with_context(|c| c.kernel.clone());
        kernel.fail(format!(
            "KfRaiseIrql({new_irql}): the emulation raises to DISPATCH_LEVEL only"
        ));
        return super::processor::current_irql();
    }
    super::preempt::before_raise();
    let previous = super::processor::raise_to_dispatch();
    super::preempt::raised();
    previous
}

/// `KeLowerIrql(new_irql)`.
///
/// # Safety
/// `new_irql` was returned by the matching [`KfRaiseIrql`] on this thread.
#[no_mangle]
pub unsafe extern "system" fn KeLowerIrql(new_irql: u8) {
    super::processor::lower(new_irql);
    super::preempt::lowered();
}
