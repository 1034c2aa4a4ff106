//! The registry: keys and values from the test's table, `ZwOpenKey` and `ZwQueryValueKey`
//! (`KeyValuePartialInformation`).

use core::ffi::c_void;
use std::collections::HashMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use super::config::RegistryData;
use super::handles::HandleObject;
use super::kernel::{enter, read_unicode, Rule, STATUS_INVALID_HANDLE};
use crate::nt::{
    HANDLE, KEY_VALUE_INFORMATION_CLASS, NTSTATUS, OBJECT_ATTRIBUTES, STATUS_BUFFER_OVERFLOW,
    STATUS_OBJECT_NAME_NOT_FOUND, UNICODE_STRING,
};

/// `STATUS_BUFFER_TOO_SMALL`.
const STATUS_BUFFER_TOO_SMALL: NTSTATUS = 0xC000_0023u32 as i32;
/// `STATUS_INVALID_INFO_CLASS`.
const STATUS_INVALID_INFO_CLASS: NTSTATUS = 0xC000_0003u32 as i32;
/// Bytes of `KEY_VALUE_PARTIAL_INFORMATION` before `Data`.
const PARTIAL_HEADER: usize = 12;

/// One key: its values, or the status opening it fails with.
#[derive(Default)]
struct Key {
    values: HashMap<String, RegistryData>,
    open_fails: Option<NTSTATUS>,
}

/// Keys by lower-case full path.
#[derive(Default)]
pub(super) struct RegistryState {
    keys: HashMap<String, Key>,
}

impl RegistryState {
    /// Adds a key (its parents need not exist).
    pub(super) fn add_key(&mut self, path: &str) {
        self.keys.entry(path.to_lowercase()).or_default();
    }

    /// Makes opening `path` fail with `status`.
    pub(super) fn fail_open(&mut self, path: &str, status: NTSTATUS) {
        self.keys.entry(path.to_lowercase()).or_default().open_fails = Some(status);
    }

    /// Sets a value of an existing or new key.
    pub(super) fn set(&mut self, path: &str, name: &str, data: RegistryData) {
        self.keys
            .entry(path.to_lowercase())
            .or_default()
            .values
            .insert(name.to_lowercase(), data);
    }
}

/// `ZwOpenKey`: absolute names, or names relative to `RootDirectory`.
///
/// # Safety
/// `key` is writable; `attributes` and its name are valid.
#[no_mangle]
pub unsafe extern "system" fn ZwOpenKey(
    key: *mut HANDLE,
    _access: u32,
    attributes: *const OBJECT_ATTRIBUTES,
) -> NTSTATUS {
    let (kernel, _) = enter("ZwOpenKey", Rule::Passive);
    // SAFETY: per the caller.
    let (name, root, flags) = unsafe {
        let a = &*attributes;
        (read_unicode(a.ObjectName), a.RootDirectory, a.Attributes)
    };
    if flags & crate::nt::OBJ_KERNEL_HANDLE == 0 {
        kernel.fail(format!("ZwOpenKey({name}) without OBJ_KERNEL_HANDLE"));
    }
    let mut state = kernel.lock();
    let path = if root.is_null() {
        name.to_lowercase()
    } else {
        match state.handles.get(root) {
            Some(HandleObject::Key(parent)) => format!("{parent}\\{}", name.to_lowercase()),
            _ => {
                drop(state);
                kernel.fail(format!(
                    "ZwOpenKey({name}): RootDirectory {root:p} is not a key handle"
                ));
                return STATUS_INVALID_HANDLE;
            }
        }
    };
    match state.registry.keys.get(&path) {
        None => STATUS_OBJECT_NAME_NOT_FOUND,
        Some(Key {
            open_fails: Some(status),
            ..
        }) => *status,
        Some(_) => {
            let handle = state.handles.open(HandleObject::Key(path));
            // SAFETY: per the caller.
            unsafe { key.write(handle) };
            0
        }
    }
}

/// `ZwQueryValueKey` with `KeyValuePartialInformation`.
///
/// # Safety
/// `key` is an open key handle; `name` is valid; `information` has `length` writable bytes;
/// `result_length` is writable.
#[no_mangle]
pub unsafe extern "system" fn ZwQueryValueKey(
    key: HANDLE,
    name: *const UNICODE_STRING,
    class: KEY_VALUE_INFORMATION_CLASS,
    information: *mut c_void,
    length: u32,
    result_length: *mut u32,
) -> NTSTATUS {
    let (kernel, _) = enter("ZwQueryValueKey", Rule::Passive);
    // SAFETY: per the caller.
    let name = unsafe { read_unicode(name) };
    if class != crate::nt::KEY_VALUE_PARTIAL_INFORMATION_CLASS {
        kernel.fail(format!(
            "ZwQueryValueKey({name}): information class {class} (unsupported)"
        ));
        return STATUS_INVALID_INFO_CLASS;
    }
    let state = kernel.lock();
    let Some(HandleObject::Key(path)) = state.handles.get(key) else {
        drop(state);
        kernel.fail(format!(
            "ZwQueryValueKey({name}): {key:p} is not a key handle"
        ));
        return STATUS_INVALID_HANDLE;
    };
    let Some(value) = state
        .registry
        .keys
        .get(path)
        .and_then(|k| k.values.get(&name.to_lowercase()))
    else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    let (reg_type, data): (u32, Vec<u8>) = match value {
        RegistryData::Dword(v) => (crate::nt::REG_DWORD, v.to_le_bytes().to_vec()),
        RegistryData::Raw { reg_type, data } => (*reg_type, data.clone()),
        RegistryData::QueryFails(status) => return *status,
    };
    let needed = PARTIAL_HEADER + data.len();
    // SAFETY: per the caller.
    unsafe { result_length.write(needed as u32) };
    let length = length as usize;
    if length < PARTIAL_HEADER {
        return STATUS_BUFFER_TOO_SMALL;
    }
    let mut out = Vec::with_capacity(needed);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&reg_type.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    // Like NT, a buffer too small for the data receives the fixed part only.
    let written = if needed <= length {
        needed
    } else {
        PARTIAL_HEADER
    };
    // SAFETY: `information` has `length` writable bytes (caller) and we write at most that.
    unsafe { core::ptr::copy_nonoverlapping(out.as_ptr(), information.cast::<u8>(), written) };
    if written < needed {
        STATUS_BUFFER_OVERFLOW
    } else {
        0
    }
}
