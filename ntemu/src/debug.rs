//! `DbgPrintEx` (lines recorded for the test; an error-level line the test does not expect fails it), `KeBugCheckEx`, and `MmGetSystemRoutineAddress` over
//! the routines the driver resolves at run time (any of them can be made missing).

use core::ffi::{c_void, CStr};
use std::format;
use std::string::{String, ToString};

use super::kernel::{enter, park_forever, read_unicode, Rule};
use crate::nt::UNICODE_STRING;

/// `DbgPrintEx` with the one format the driver uses, `"%s"` (a C variadic function cannot be defined
/// on stable Rust, so the host version takes that one argument, as a Rust function: the only routine
/// whose type differs from windows-sys's).
///
/// # Safety
/// `format` and `text` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn DbgPrintEx(
    _component: u32,
    level: u32,
    format: *const u8,
    text: *const u8,
) -> u32 {
    let (kernel, _) = enter("DbgPrintEx", Rule::Any);
    // SAFETY: per the caller.
    let format_string = unsafe { CStr::from_ptr(format.cast()) };
    if format_string.to_bytes() != b"%s" {
        kernel.fail(format!(
            "DbgPrintEx with format {format_string:?} (the emulation supports \"%s\")"
        ));
        return 0;
    }
    // SAFETY: per the caller.
    let line = unsafe { CStr::from_ptr(text.cast()) };
    let line = String::from_utf8_lossy(line.to_bytes())
        .trim_end()
        .to_string();
    if line.len() > 511 {
        kernel.fail(format!(
            "DbgPrintEx line of {} bytes (DbgPrintEx transmits at most 512)",
            line.len()
        ));
    }
    if std::env::var_os("NTEMU_LOG").is_some() {
        std::eprintln!("ntemu: DbgPrintEx[{level}] {line}");
    }
    let expected = kernel
        .config
        .expected_errors
        .iter()
        .any(|p| line.contains(p.as_str()));
    if level == crate::nt::DPFLTR_ERROR_LEVEL && !expected {
        kernel.fail(format!("error in the debugger log: {line}"));
    }
    kernel.lock().io.log.push((level, line));
    0
}

/// `KeBugCheckEx`: the machine fails and the calling thread stops.
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) {
    let (kernel, _) = enter("KeBugCheckEx", Rule::Any);
    kernel.fail(format!(
        "KeBugCheckEx({code:#x}, {p1:#x}, {p2:#x}, {p3:#x}, {p4:#x})"
    ));
    park_forever()
}

/// The routines `MmGetSystemRoutineAddress` knows.
fn routine(name: &str) -> *mut c_void {
    match name {
        "KeRegisterProcessorChangeCallback" => {
            super::callbacks::KeRegisterProcessorChangeCallback as *mut c_void
        }
        "KeDeregisterProcessorChangeCallback" => {
            super::callbacks::KeDeregisterProcessorChangeCallback as *mut c_void
        }
        "ExAllocatePool2" => super::pool::ExAllocatePool2 as *mut c_void,
        "KeGetProcessorNumberFromIndex" => {
            super::processor::KeGetProcessorNumberFromIndex as *mut c_void
        }
        _ => core::ptr::null_mut(),
    }
}

/// `MmGetSystemRoutineAddress`: null for unknown names and for names the machine makes missing.
///
/// # Safety
/// `name` is a valid `UNICODE_STRING`.
#[no_mangle]
pub unsafe extern "system" fn MmGetSystemRoutineAddress(
    name: *const UNICODE_STRING,
) -> *mut c_void {
    let (kernel, _) = enter("MmGetSystemRoutineAddress", Rule::Passive);
    // SAFETY: per the caller.
    let name = unsafe { read_unicode(name) };
    if kernel.config.missing_routines.contains(&name) {
        return core::ptr::null_mut();
    }
    routine(&name)
}
