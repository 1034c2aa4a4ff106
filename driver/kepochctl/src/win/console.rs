//! Ctrl-C and Ctrl-Break: noted (SetConsoleCtrlHandler) so that `ab` stops between two steps and
//! restores what it changed instead of dying half-way.

use std::sync::atomic::{AtomicBool, Ordering};

use windows_sys::core::BOOL;
use windows_sys::Win32::System::Console::{SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_C_EVENT};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

unsafe extern "system" fn handler(event: u32) -> BOOL {
    match event {
        CTRL_C_EVENT | CTRL_BREAK_EVENT => {
            INTERRUPTED.store(true, Ordering::SeqCst);
            1
        }
        // Close, logoff, shutdown: the default handling (the process ends).
        _ => 0,
    }
}

/// Installs the handler; `false` when Windows refused (then Ctrl-C ends the process as usual).
pub fn install() -> bool {
    // SAFETY: `handler` is a valid routine for the life of the process.
    unsafe { SetConsoleCtrlHandler(Some(handler), 1) != 0 }
}

/// Whether Ctrl-C or Ctrl-Break was pressed since [`install`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
