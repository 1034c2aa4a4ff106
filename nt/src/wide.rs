//! UTF-16 string literals for `UNICODE_STRING`s ([`wide!`](macro@crate::wide)).

use crate::sys;

/// Converts an ASCII string to UTF-16 at compile time (used by [`wide!`](macro@crate::wide)).
///
/// Panics (at compile time when used in a const) on non-ASCII input or a length mismatch.
pub const fn ascii_to_utf16<const N: usize>(s: &str) -> [u16; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() == N, "length mismatch");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(bytes[i] < 0x80, "ASCII only");
        out[i] = bytes[i] as u16;
        i += 1;
    }
    out
}

/// A `&'static [u16]` UTF-16 copy of an ASCII string literal, without terminator (for `UNICODE_STRING`).
#[macro_export]
macro_rules! wide {
    ($s:expr) => {{
        const WIDE: [u16; $s.len()] = $crate::wide::ascii_to_utf16::<{ $s.len() }>($s);
        &WIDE as &'static [u16]
    }};
}

/// A `UNICODE_STRING` over a static UTF-16 name (from [`wide!`](macro@crate::wide)). The kernel
/// routines it is passed to only read it.
pub fn unicode_string(name: &'static [u16]) -> sys::UNICODE_STRING {
    let bytes = (name.len() * 2) as u16;
    sys::UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: name.as_ptr().cast_mut(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wide_literal_is_utf16() {
        let w: &[u16] = crate::wide!("\\Device\\kepoch");
        assert_eq!(w.len(), 14);
        assert_eq!(w[0], u16::from(b'\\'));
        assert_eq!(w[13], u16::from(b'h'));
        let string = super::unicode_string(w);
        assert_eq!(string.Length, 28);
        assert_eq!(string.MaximumLength, 28);
    }
}
