//! What a driver's `#[panic_handler]` calls.

use kepoch::platform::LogLevel;

use crate::log::log_line;
use crate::sys;

/// Logs the panic and stops the machine with bug check [`sys::BUGCHECK_RUST_PANIC`] (parameters: the
/// file name's address and length, line, column): continuing after a broken invariant in kernel
/// memory reclamation would risk silent corruption.
pub fn bug_check_on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line, column) = info
        .location()
        .map_or(("?", 0, 0), |l| (l.file(), l.line(), l.column()));
    log_line(
        LogLevel::Error,
        format_args!("panic at {file}:{line}:{column}: {}", info.message()),
    );
    // SAFETY: KeBugCheckEx never returns; the parameters are plain values shown in the crash dump.
    unsafe {
        sys::bug_check(
            sys::BUGCHECK_RUST_PANIC,
            [
                file.as_ptr() as usize,
                file.len(),
                line as usize,
                column as usize,
            ],
        )
    }
}
