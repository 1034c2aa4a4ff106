//! Messages: a KDPC bound to one processor per participant, `MediumHighImportance`, running the
//! core's handler.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr;

use kepoch::platform::{Handler, ProcessorNumber, Status};

use crate::sys;

/// `MediumHighImportance` (`KDPC_IMPORTANCE`): queued at the tail, the target starts its DPC queue at
/// once even when it is another processor (Medium, the default, does that only for the current one).
pub const MEDIUM_HIGH_IMPORTANCE: i32 = 3;

/// A per-CPU message: a KDPC bound to one processor, with the core's handler.
pub struct NtMessage {
    dpc: UnsafeCell<MaybeUninit<sys::KDPC>>,
    handler: UnsafeCell<MaybeUninit<Handler>>,
}

// SAFETY: the KDPC is only manipulated through Ke* routines, which synchronise internally; the handler is
// written once in `init` before the DPC can be queued and only read afterwards.
unsafe impl Send for NtMessage {}
// SAFETY: see the Send impl.
unsafe impl Sync for NtMessage {}

impl NtMessage {
    /// The KDPC.
    pub(super) fn dpc(&self) -> *mut sys::KDPC {
        self.dpc.get().cast()
    }

    /// `message_init`: the handler, then the KDPC prepared by [`init_cycle_dpc`].
    ///
    /// # Safety
    /// `message` is writable storage that stays in place until the message is released, not queued.
    pub(super) unsafe fn init(
        message: *mut NtMessage,
        target: ProcessorNumber,
        handler: Handler,
    ) -> Result<(), Status> {
        // SAFETY: per the caller; the handler is written before the DPC can be queued.
        let dpc = unsafe {
            UnsafeCell::raw_get(ptr::addr_of!((*message).handler)).write(MaybeUninit::new(handler));
            UnsafeCell::raw_get(ptr::addr_of!((*message).dpc)).cast::<sys::KDPC>()
        };
        let mut setup = CycleDpc {
            dpc,
            context: message.cast(),
            number: sys::PROCESSOR_NUMBER {
                Group: target.group,
                Number: target.number,
                Reserved: 0,
            },
        };
        let status = init_cycle_dpc(&mut setup);
        if status < 0 {
            return Err(Status(status));
        }
        Ok(())
    }
}

unsafe extern "system" fn message_dpc(
    _dpc: *mut sys::KDPC,
    context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    // SAFETY: `context` is the NtMessage this DPC is embedded in (set by `init`); it stays in place and
    // initialised until message_release, which the core calls only when the DPC is neither queued nor
    // running.
    unsafe {
        let message = &*context.cast::<NtMessage>();
        (*message.handler.get()).assume_init_ref().invoke();
    }
}

/// A message's KDPC being prepared by [`init_cycle_dpc`].
struct CycleDpc {
    dpc: *mut sys::KDPC,
    context: *mut c_void,
    number: sys::PROCESSOR_NUMBER,
}

impl DpcSetup for CycleDpc {
    fn initialize(&mut self) {
        // SAFETY: `dpc` is the message's KDPC storage, in place until message_release and not queued
        // (message_init runs before the message can be sent); the context is that message.
        unsafe { sys::KeInitializeDpc(self.dpc, sys::deferred_routine(message_dpc), self.context) }
    }

    fn set_importance(&mut self, importance: i32) {
        // SAFETY: an initialised KDPC that is not queued; callable at any IRQL.
        unsafe { sys::KeSetImportanceDpc(self.dpc, importance) }
    }

    fn set_target(&mut self) -> i32 {
        // SAFETY: as above; writes nothing but the KDPC.
        unsafe { sys::KeSetTargetProcessorDpcEx(self.dpc, &self.number) }
    }
}

/// The kernel calls that prepare a cycle DPC.
pub(crate) trait DpcSetup {
    /// `KeInitializeDpc`.
    fn initialize(&mut self);
    /// `KeSetImportanceDpc`.
    fn set_importance(&mut self, importance: i32);
    /// `KeSetTargetProcessorDpcEx`; the status.
    fn set_target(&mut self) -> i32;
}

/// Prepares a cycle DPC: initialised, `MediumHighImportance` (a DPC sent to a busy remote processor
/// starts at once instead of waiting for that processor's next clock tick), bound to its processor.
/// Returns the status of the binding (negative: the DPC must not be used).
pub(crate) fn init_cycle_dpc<D: DpcSetup>(dpc: &mut D) -> i32 {
    dpc.initialize();
    dpc.set_importance(MEDIUM_HIGH_IMPORTANCE);
    dpc.set_target()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    #[derive(Default)]
    struct DpcRecorder {
        calls: Vec<String>,
    }

    impl DpcSetup for DpcRecorder {
        fn initialize(&mut self) {
            self.calls.push("initialize".into());
        }
        fn set_importance(&mut self, importance: i32) {
            self.calls.push(format!("set_importance({importance})"));
        }
        fn set_target(&mut self) -> i32 {
            self.calls.push("set_target".into());
            0
        }
    }

    #[test]
    fn cycle_dpcs_get_medium_high_importance_before_use() {
        let mut dpc = DpcRecorder::default();
        assert_eq!(init_cycle_dpc(&mut dpc), 0);
        assert_eq!(dpc.calls, ["initialize", "set_importance(3)", "set_target"]);
    }
}
