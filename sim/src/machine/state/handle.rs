//! The handle every part of the machine passes around: the platform value the core is generic over.
//! Its `kepoch::platform::Platform` implementation is in `platform.rs`; what lives here touches only the
//! machine's state, so the scheduler can use it without depending on the platform module.

use std::fmt;
use std::sync::Arc;

use kepoch::platform::{Irql, ProcessorChange, ProcessorChangeFn, Status};

use super::{ContextKind, Shared};

/// The simulated host. Cheap to clone; every clone talks to the same machine.
#[derive(Clone)]
pub struct SimPlatform {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimPlatform(machine {})", self.shared.id)
    }
}

/// STATUS_UNSUCCESSFUL, the status of a simulated failed hot-add.
pub const STATUS_UNSUCCESSFUL: Status = Status(0xC000_0001u32 as i32);

impl SimPlatform {
    /// Wakes parallel-mode waiters after a state change they may wait for.
    pub(crate) fn wake_waiters(&self) {
        if self.shared.is_parallel() {
            let _g = self.shared.ev_lock.lock();
            self.shared.ev_cv.notify_all();
        }
    }

    /// Delivers one processor-change notification from the caller's context; returns its status.
    pub(crate) fn deliver(
        &self,
        reg: (ProcessorChangeFn, *const ()),
        change: ProcessorChange,
        slot: usize,
    ) -> Status {
        let sh = &*self.shared;
        let c = sh.ctx();
        let irql = c.irql.min(Irql::APC);
        let processor = sh.current(slot);
        let (status, end) = sh.in_ctx(c.cpu, irql, ContextKind::ProcessorChange, || {
            // SAFETY: the registrant promised `context` stays valid until deregistration, and we only call
            // registered callbacks while holding the callback lock that deregistration also takes.
            unsafe { (reg.0)(reg.1, change, processor) }
        });
        if end >= Irql::DISPATCH {
            sh.unlock_cpu(c.cpu);
        }
        sh.check_irql("processor-change callback", irql, end, c.cpu);
        status
    }
}
