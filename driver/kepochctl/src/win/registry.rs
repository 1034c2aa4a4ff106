//! The service's `Parameters` key through the registry API (RegOpenKeyExW, RegCreateKeyExW,
//! RegQueryValueExW, RegSetValueExW, RegDeleteValueW, RegDeleteKeyW).

use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_MORE_DATA, ERROR_SUCCESS};
use windows_sys::Win32::System::Registry::{
    RegCloseKey, RegCreateKeyExW, RegDeleteKeyW, RegDeleteValueW, RegOpenKeyExW, RegQueryValueExW,
    RegSetValueExW, HKEY, HKEY_LOCAL_MACHINE, KEY_QUERY_VALUE, KEY_SET_VALUE, REG_CREATED_NEW_KEY,
    REG_OPTION_NON_VOLATILE,
};

use crate::ab::system::{RegValue, SysError};

/// The key below HKLM.
const PATH: &str = r"SYSTEM\CurrentControlSet\Services\kepoch\Parameters";

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain([0]).collect()
}

/// An open `Parameters` key.
pub struct ParamsKey {
    key: HKEY,
}

impl ParamsKey {
    /// Opens the key for reading and writing; creates it when missing (`true`: created).
    pub fn open_or_create() -> Result<(ParamsKey, bool), SysError> {
        if let Some(key) = Self::open(KEY_QUERY_VALUE | KEY_SET_VALUE)? {
            return Ok((key, false));
        }
        let path = wide(PATH);
        let mut key: HKEY = std::ptr::null_mut();
        let mut disposition = 0u32;
        // SAFETY: NUL-terminated path, no class or security attributes; out pointers are valid.
        let error = unsafe {
            RegCreateKeyExW(
                HKEY_LOCAL_MACHINE,
                path.as_ptr(),
                0,
                std::ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_QUERY_VALUE | KEY_SET_VALUE,
                std::ptr::null(),
                &mut key,
                &mut disposition,
            )
        };
        if error != ERROR_SUCCESS {
            return Err(SysError::new(
                format!(r"RegCreateKeyExW(HKLM\{PATH})"),
                error,
            ));
        }
        Ok((ParamsKey { key }, disposition == REG_CREATED_NEW_KEY))
    }

    /// Opens the key for reading only; `None` when it does not exist (nothing is created).
    pub fn open_read() -> Result<Option<ParamsKey>, SysError> {
        Self::open(KEY_QUERY_VALUE)
    }

    /// Opens the existing key with `access`; `None` when it does not exist.
    fn open(access: u32) -> Result<Option<ParamsKey>, SysError> {
        let path = wide(PATH);
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: NUL-terminated path; `key` receives the handle.
        let error =
            unsafe { RegOpenKeyExW(HKEY_LOCAL_MACHINE, path.as_ptr(), 0, access, &mut key) };
        match error {
            ERROR_SUCCESS => Ok(Some(ParamsKey { key })),
            ERROR_FILE_NOT_FOUND => Ok(None),
            error => Err(SysError::new(format!(r"RegOpenKeyExW(HKLM\{PATH})"), error)),
        }
    }

    /// A value with its type (`None`: absent).
    pub fn read(&self, name: &str) -> Result<Option<RegValue>, SysError> {
        let what = || format!("RegQueryValueExW({name})");
        let wname = wide(name);
        let mut data = vec![0u8; 64];
        loop {
            let mut kind = 0u32;
            let mut len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            // SAFETY: NUL-terminated name; `data` is valid for `len` bytes; out pointers are valid.
            let error = unsafe {
                RegQueryValueExW(
                    self.key,
                    wname.as_ptr(),
                    std::ptr::null(),
                    &mut kind,
                    data.as_mut_ptr(),
                    &mut len,
                )
            };
            match error {
                ERROR_SUCCESS => {
                    data.truncate(len as usize);
                    return Ok(Some(RegValue { kind, data }));
                }
                ERROR_FILE_NOT_FOUND => return Ok(None),
                ERROR_MORE_DATA if (len as usize) > data.len() && len <= 1 << 20 => {
                    data.resize(len as usize, 0);
                }
                error => return Err(SysError::new(what(), error)),
            }
        }
    }

    /// Writes a value (type and bytes as given).
    pub fn write(&self, name: &str, value: &RegValue) -> Result<(), SysError> {
        let wname = wide(name);
        let len = u32::try_from(value.data.len())
            .map_err(|_| SysError::new(format!("RegSetValueExW({name})"), 87))?;
        // SAFETY: NUL-terminated name; the data is valid for `len` bytes.
        let error = unsafe {
            RegSetValueExW(
                self.key,
                wname.as_ptr(),
                0,
                value.kind,
                value.data.as_ptr(),
                len,
            )
        };
        match error {
            ERROR_SUCCESS => Ok(()),
            error => Err(SysError::new(format!("RegSetValueExW({name})"), error)),
        }
    }

    /// Deletes a value; absent already is success.
    pub fn delete(&self, name: &str) -> Result<(), SysError> {
        let wname = wide(name);
        // SAFETY: NUL-terminated name on our open key.
        let error = unsafe { RegDeleteValueW(self.key, wname.as_ptr()) };
        match error {
            ERROR_SUCCESS | ERROR_FILE_NOT_FOUND => Ok(()),
            error => Err(SysError::new(format!("RegDeleteValueW({name})"), error)),
        }
    }
}

impl Drop for ParamsKey {
    fn drop(&mut self) {
        // SAFETY: our key, closed once.
        unsafe { RegCloseKey(self.key) };
    }
}

/// Deletes the (empty) `Parameters` key; absent already is success.
pub fn delete_key() -> Result<(), SysError> {
    let path = wide(PATH);
    // SAFETY: NUL-terminated path below HKLM.
    let error = unsafe { RegDeleteKeyW(HKEY_LOCAL_MACHINE, path.as_ptr()) };
    match error {
        ERROR_SUCCESS | ERROR_FILE_NOT_FOUND => Ok(()),
        error => Err(SysError::new(format!(r"RegDeleteKeyW(HKLM\{PATH})"), error)),
    }
}
