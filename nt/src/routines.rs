//! The kernel routines kepoch uses when they exist but never imports (an unresolved import fails the
//! load on kernels that lack it): resolved with `MmGetSystemRoutineAddress`.
//!
//! | routine | from | without it |
//! |---|---|---|
//! | `KeRegisterProcessorChangeCallback`, `KeDeregisterProcessorChangeCallback` | Windows 7 (both needed) | no processor-change notifications: `callback` works as `lazy` |
//! | `ExAllocatePool2` | Windows 10 2004 | `ExAllocatePoolWithTag(NonPagedPoolNx)` |
//! | `KeGetProcessorNumberFromIndex` | Windows 7 | `eager` refuses to load (`STATUS_NOT_SUPPORTED`) |

use core::ffi::c_void;
use core::ptr::NonNull;

use crate::sys;
use crate::wide;

/// The optional kernel routines, resolved once with `MmGetSystemRoutineAddress`.
#[derive(Clone, Copy, Default)]
pub struct OptionalRoutines {
    register_processor_change: Option<sys::KeRegisterProcessorChangeCallbackFn>,
    deregister_processor_change: Option<sys::KeDeregisterProcessorChangeCallbackFn>,
    allocate_pool2: Option<sys::ExAllocatePool2Fn>,
    processor_number_from_index: Option<sys::KeGetProcessorNumberFromIndexFn>,
}

impl OptionalRoutines {
    /// Resolves every optional routine. PASSIVE_LEVEL only.
    pub fn resolve() -> Self {
        let register = resolve(wide!("KeRegisterProcessorChangeCallback"));
        let deregister = resolve(wide!("KeDeregisterProcessorChangeCallback"));
        let pool2 = resolve(wide!("ExAllocatePool2"));
        let from_index = resolve(wide!("KeGetProcessorNumberFromIndex"));
        // SAFETY: (all four transmutes) a non-null address returned by MmGetSystemRoutineAddress for
        // these names is the kernel export of that name, whose signature is the declared fn type
        // (wdm.h).
        unsafe {
            let (register, deregister) = match (register, deregister) {
                // Registering without a way to deregister before unload would be a use-after-unload.
                (Some(r), Some(d)) => (
                    Some(core::mem::transmute::<
                        NonNull<c_void>,
                        sys::KeRegisterProcessorChangeCallbackFn,
                    >(r)),
                    Some(core::mem::transmute::<
                        NonNull<c_void>,
                        sys::KeDeregisterProcessorChangeCallbackFn,
                    >(d)),
                ),
                _ => (None, None),
            };
            Self {
                register_processor_change: register,
                deregister_processor_change: deregister,
                allocate_pool2: pool2
                    .map(|p| core::mem::transmute::<NonNull<c_void>, sys::ExAllocatePool2Fn>(p)),
                processor_number_from_index: from_index.map(|p| {
                    core::mem::transmute::<NonNull<c_void>, sys::KeGetProcessorNumberFromIndexFn>(p)
                }),
            }
        }
    }

    /// Whether `KeRegisterProcessorChangeCallback` (and its deregistration) resolved.
    pub fn has_processor_change_callback(&self) -> bool {
        self.register_processor_change.is_some()
    }

    /// Whether `ExAllocatePool2` resolved (otherwise pool comes from `ExAllocatePoolWithTag`).
    pub fn has_allocate_pool2(&self) -> bool {
        self.allocate_pool2.is_some()
    }

    /// Whether `KeGetProcessorNumberFromIndex` resolved.
    pub fn has_processor_number_from_index(&self) -> bool {
        self.processor_number_from_index.is_some()
    }

    /// `KeRegisterProcessorChangeCallback` and its deregistration, if both resolved.
    pub(crate) fn processor_change(
        &self,
    ) -> Option<(
        sys::KeRegisterProcessorChangeCallbackFn,
        sys::KeDeregisterProcessorChangeCallbackFn,
    )> {
        self.register_processor_change
            .zip(self.deregister_processor_change)
    }

    /// `ExAllocatePool2`, if resolved.
    pub(crate) fn allocate_pool2(&self) -> Option<sys::ExAllocatePool2Fn> {
        self.allocate_pool2
    }

    /// `KeGetProcessorNumberFromIndex`, if resolved.
    pub(crate) fn processor_number_from_index(
        &self,
    ) -> Option<sys::KeGetProcessorNumberFromIndexFn> {
        self.processor_number_from_index
    }
}

/// `MmGetSystemRoutineAddress(name)`.
fn resolve(name: &'static [u16]) -> Option<NonNull<c_void>> {
    let string = crate::wide::unicode_string(name);
    // SAFETY: `string` describes a valid UTF-16 buffer that the routine only reads; called at PASSIVE
    // (OptionalRoutines::resolve's contract).
    NonNull::new(unsafe { sys::MmGetSystemRoutineAddress(&string) })
}
