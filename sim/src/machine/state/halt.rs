//! A machine that halts: a bugcheck records itself and stops everything; the waits and spins of a
//! halted machine unwind their threads instead of waiting for what will never happen.

use std::sync::atomic::Ordering;

use super::super::report::{Bugcheck, ViolationKind};
use super::{ctx_get, Shared};

/// Unwinding payload of machine threads that stop because another one bugchecked.
pub(crate) struct MachineHalted;

/// A halted machine that keeps being asked to wait (or to spin) while its caller unwinds aborts the
/// process after this many such calls instead of letting the caller loop for ever.
pub const HALTED_WAIT_LIMIT: u64 = 100_000;

impl Shared {
    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// Parallel mode: a machine thread that finds the machine halted unwinds (its guards release
    /// what it holds) instead of waiting for something that will never happen.
    pub fn unwind_if_halted(&self) {
        if self.is_halted() && !std::thread::panicking() {
            std::panic::resume_unwind(Box::new(MachineHalted));
        }
    }

    /// Records `kind` with `message`, halts the machine and unwinds the calling thread with a
    /// [`Bugcheck`] payload (the first bugcheck is the one kept).
    pub fn bugcheck(&self, kind: ViolationKind, code: (u32, &'static str), message: String) -> ! {
        self.violation(kind, message.clone());
        let cpu = match ctx_get() {
            Some(c) if c.machine == self.id => Some(self.slots[c.cpu].index),
            _ => None,
        };
        let bugcheck = Bugcheck {
            code: code.0,
            name: code.1,
            kind,
            message,
            time_us: self.now(),
            cpu,
        };
        // The default panic hook cannot show a non-string payload: say what happened first.
        eprintln!("kepoch-sim: {bugcheck}");
        self.bugcheck.lock().get_or_insert_with(|| bugcheck.clone());
        self.halt();
        std::panic::panic_any(bugcheck)
    }

    /// Nothing runs on the machine any more; parallel threads that wait are woken to notice.
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Release);
        self.work_cv.notify_all();
        let _g = self.ev_lock.lock();
        self.ev_cv.notify_all();
    }

    /// A wait, or a spin, asked of the halted machine. Outside unwinding the machine stays down: a
    /// parallel-mode machine thread unwinds quietly, any other caller gets the bugcheck again (also
    /// quietly: the panic hook reported it once), or a `String` if a thread panic halted it. While the caller unwinds (a domain dropped by the
    /// unwinding) it returns at once — nothing will ever satisfy it — and past [`HALTED_WAIT_LIMIT`]
    /// such calls it aborts the process rather than let a caller loop for ever.
    pub fn halted_wait(&self, what: &str) {
        let bugcheck = self.bugcheck.lock().clone();
        if !std::thread::panicking() {
            if self.is_parallel() {
                std::panic::resume_unwind(Box::new(MachineHalted));
            }
            match bugcheck {
                Some(bugcheck) => std::panic::resume_unwind(Box::new(bugcheck)),
                None => std::panic::resume_unwind(Box::new(String::from(
                    "the machine halted: a machine thread panicked",
                ))),
            }
        }
        let reason = bugcheck.map_or_else(
            || "a machine thread panicked".to_string(),
            |b| b.to_string(),
        );
        if self.halted_waits.fetch_add(1, Ordering::Relaxed) + 1 >= HALTED_WAIT_LIMIT {
            eprintln!(
                "kepoch-sim: {what} asked of a halted machine {HALTED_WAIT_LIMIT} times while unwinding \
                 (a domain unloaded after the bugcheck waits for handlers that will never run); aborting. \
                 {reason}"
            );
            std::process::abort();
        }
    }
}
