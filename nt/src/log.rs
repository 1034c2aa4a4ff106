//! Logging to the kernel debugger: `DbgPrintEx` lines of at most 512 bytes, formatted without
//! allocation, prefixed `kepoch: `.

use core::fmt;

use kepoch::platform::LogLevel;

use crate::sys;

/// Writes one line to the kernel debugger (`DbgPrintEx`, component IHVDRIVER), prefixed with
/// `kepoch: ` unless it starts with it (the core's lines do). Callable at any IRQL up to DIRQL; longer
/// lines than DbgPrintEx's 512 bytes are truncated. Shown by DebugView with *Capture Kernel*, or in
/// WinDbg after `ed nt!Kd_IHVDRIVER_Mask 0xF`.
pub fn log_line(level: LogLevel, args: fmt::Arguments<'_>) {
    let mut line = LogLine::format(args);
    if !line.text().starts_with(b"kepoch: ") {
        line = LogLine::format(format_args!("kepoch: {args}"));
    }
    let level = match level {
        LogLevel::Error => sys::DPFLTR_ERROR_LEVEL,
        LogLevel::Warning => sys::DPFLTR_WARNING_LEVEL,
        LogLevel::Info => sys::DPFLTR_INFO_LEVEL,
    };
    let text = line.terminated();
    // SAFETY: "%s" consumes exactly one argument, a NUL-terminated byte string that outlives the call.
    unsafe {
        sys::DbgPrintEx(
            sys::DPFLTR_IHVDRIVER_ID,
            level,
            c"%s".as_ptr().cast(),
            text.as_ptr(),
        );
    }
}

/// Capacity of one log line: DbgPrintEx transmits at most 512 bytes per call.
pub const LOG_LINE_CAPACITY: usize = 512;

/// A log line formatted without allocation: truncated at [`LOG_LINE_CAPACITY`] (on a character
/// boundary), always newline- and NUL-terminated, with interior NULs replaced so nothing is cut short.
pub struct LogLine {
    buf: [u8; LOG_LINE_CAPACITY],
    len: usize,
    truncated: bool,
}

impl LogLine {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; LOG_LINE_CAPACITY],
            len: 0,
            truncated: false,
        }
    }

    /// Formats `args` into a new line.
    pub fn format(args: fmt::Arguments<'_>) -> Self {
        let mut line = Self::new();
        // Writing into a LogLine never fails; it truncates instead.
        let _ = fmt::write(&mut line, args);
        line
    }

    /// The text so far (without the terminator).
    pub fn text(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Whether some of the text did not fit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The line ending in `"\n\0"`, ready for a `%s` argument of DbgPrintEx.
    pub fn terminated(&mut self) -> &[u8] {
        self.buf[self.len] = b'\n';
        self.buf[self.len + 1] = 0;
        &self.buf[..self.len + 2]
    }
}

impl Default for LogLine {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for LogLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Two bytes stay free for "\n\0".
        let room = LOG_LINE_CAPACITY - 2 - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        if take < s.len() {
            self.truncated = true;
        }
        for (dst, &src) in self.buf[self.len..self.len + take]
            .iter_mut()
            .zip(s.as_bytes())
        {
            *dst = if src == 0 { b'?' } else { src };
        }
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::fmt::Write;
    use std::vec;

    #[test]
    fn log_line_formats_and_terminates() {
        let mut line = LogLine::format(format_args!("kepoch: max={} active={}", 64, 4));
        assert_eq!(line.text(), b"kepoch: max=64 active=4");
        assert!(!line.truncated());
        assert_eq!(line.terminated(), b"kepoch: max=64 active=4\n\0");
    }

    #[test]
    fn log_line_truncates_on_char_boundary_and_replaces_nul() {
        let mut line = LogLine::new();
        line.write_str("a\0b").unwrap();
        assert_eq!(line.text(), b"a?b");
        let long = vec![b'x'; LOG_LINE_CAPACITY];
        line.write_str(core::str::from_utf8(&long).unwrap())
            .unwrap();
        assert!(line.truncated());
        assert_eq!(line.text().len(), LOG_LINE_CAPACITY - 2);
        let t = line.terminated();
        assert_eq!(t.len(), LOG_LINE_CAPACITY);
        assert_eq!(&t[t.len() - 2..], b"\n\0");

        // A multi-byte character that does not fit entirely is dropped, not split.
        let mut line = LogLine::new();
        let pad = vec![b'y'; LOG_LINE_CAPACITY - 3];
        line.write_str(core::str::from_utf8(&pad).unwrap()).unwrap();
        line.write_str("é").unwrap();
        assert!(line.truncated());
        assert!(core::str::from_utf8(line.text()).is_ok());
        assert_eq!(line.text().len(), LOG_LINE_CAPACITY - 3);
    }
}
