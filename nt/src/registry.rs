//! The registry configuration: the values of a key under the driver's service key (usually
//! `Parameters`) → [`Config`], with a warning line and a count for every value that is missing its
//! type, out of range or unreadable (the default is used then; reading never fails).
//!
//! | value | type | default | meaning |
//! |---|---|---|---|
//! | `ActivationStrategy` | REG_DWORD | 1 | 0 `lazy`, 1 `callback`, 2 `eager` |
//! | `IdleDeactivation` | REG_DWORD | 1 | 1: idle processors leave the cycle; 0: every prepared processor stays |
//! | `CyclePeriodMicroseconds` | REG_DWORD | 1000 | reclamation period, clamped to 100..=1000000 |

use core::fmt;
use core::mem;
use core::ptr;

use kepoch::config::{select_config, Config, RegistryInput, RegistryValue, Setting};
use kepoch::platform::LogLevel;

use crate::log::log_line;
use crate::sys;
use crate::wide;
use crate::wide::unicode_string;

const ACTIVATION_STRATEGY: &[u16] = wide!("ActivationStrategy");
const IDLE_DEACTIVATION: &[u16] = wide!("IdleDeactivation");
const CYCLE_PERIOD: &[u16] = wide!("CyclePeriodMicroseconds");
const MAX_FREES_PER_VISIT: &[u16] = wide!("MaxFreesPerVisit");

/// What [`read_config`] found.
#[derive(Clone, Copy, Debug)]
pub struct RegistryConfig {
    /// The configuration (defaults where a value was missing or unusable).
    pub config: Config,
    /// Values ignored or clamped, and reads that failed (each was logged as a warning).
    pub warnings: u64,
}

/// Reads the configuration from the values of `subkey` (e.g. `wide!("Parameters")`) under the
/// service key `registry_path` (DriverEntry's second argument; null: the defaults). Logs a warning
/// line for each value it could not use. PASSIVE_LEVEL only.
///
/// # Safety
/// `registry_path` is null or a valid `UNICODE_STRING` naming a registry key.
pub unsafe fn read_config(
    registry_path: *const sys::UNICODE_STRING,
    subkey: &'static [u16],
) -> RegistryConfig {
    let (input, read_errors) = read_values(registry_path, subkey);
    let (config, warnings) = select_config(&input);
    let mut count = read_errors;
    for warning in warnings.iter().flatten() {
        count += 1;
        log_line(LogLevel::Warning, format_args!("{warning}"));
    }
    RegistryConfig {
        config,
        warnings: count,
    }
}

/// A UTF-16 name for log lines.
struct Utf16(&'static [u16]);

impl fmt::Display for Utf16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in char::decode_utf16(self.0.iter().copied()) {
            fmt::Write::write_char(f, c.unwrap_or(char::REPLACEMENT_CHARACTER))?;
        }
        Ok(())
    }
}

/// `InitializeObjectAttributes(name, attributes, root, NULL)`.
fn object_attributes(
    name: *mut sys::UNICODE_STRING,
    attributes: u32,
    root: sys::HANDLE,
) -> sys::OBJECT_ATTRIBUTES {
    sys::OBJECT_ATTRIBUTES {
        Length: mem::size_of::<sys::OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: root,
        ObjectName: name,
        Attributes: attributes,
        SecurityDescriptor: ptr::null_mut(),
        SecurityQualityOfService: ptr::null_mut(),
    }
}

/// Reads the values under `subkey` of the service key. Returns the input for `select_config` and the
/// number of values that could not be read (logged; they count as warnings and mean the default).
fn read_values(
    registry_path: *const sys::UNICODE_STRING,
    subkey: &'static [u16],
) -> (RegistryInput, u64) {
    let mut input = RegistryInput {
        activation_strategy: RegistryValue::Missing,
        idle_deactivation: RegistryValue::Missing,
        cycle_period_us: RegistryValue::Missing,
        max_frees_per_visit: RegistryValue::Missing,
    };
    if registry_path.is_null() {
        return (input, 0);
    }
    let mut service: sys::HANDLE = ptr::null_mut();
    let attributes = object_attributes(
        registry_path.cast_mut(),
        sys::OBJ_CASE_INSENSITIVE | sys::OBJ_KERNEL_HANDLE,
        ptr::null_mut(),
    );
    // SAFETY: the I/O manager's service key path and valid attributes; PASSIVE_LEVEL (DriverEntry).
    let status = unsafe { sys::ZwOpenKey(&mut service, sys::KEY_READ, &attributes) };
    if status < 0 {
        log_line(
            LogLevel::Warning,
            format_args!(
                "opening the service key failed: 0x{:08X}; using defaults",
                status as u32
            ),
        );
        return (input, 1);
    }
    let mut name = unicode_string(subkey);
    let mut parameters: sys::HANDLE = ptr::null_mut();
    let attributes = object_attributes(
        &mut name,
        sys::OBJ_CASE_INSENSITIVE | sys::OBJ_KERNEL_HANDLE,
        service,
    );
    // SAFETY: as above, relative to the open service key.
    let status = unsafe { sys::ZwOpenKey(&mut parameters, sys::KEY_READ, &attributes) };
    // SAFETY: our handle, closed once.
    unsafe { sys::ZwClose(service) };
    if status == sys::STATUS_OBJECT_NAME_NOT_FOUND {
        return (input, 0);
    }
    if status < 0 {
        log_line(
            LogLevel::Warning,
            format_args!(
                "opening the {} key failed: 0x{:08X}; using defaults",
                Utf16(subkey),
                status as u32
            ),
        );
        return (input, 1);
    }
    let mut errors = 0;
    for (setting, name, slot) in [
        (
            Setting::ActivationStrategy,
            ACTIVATION_STRATEGY,
            &mut input.activation_strategy,
        ),
        (
            Setting::IdleDeactivation,
            IDLE_DEACTIVATION,
            &mut input.idle_deactivation,
        ),
        (
            Setting::CyclePeriodMicroseconds,
            CYCLE_PERIOD,
            &mut input.cycle_period_us,
        ),
        (
            Setting::MaxFreesPerVisit,
            MAX_FREES_PER_VISIT,
            &mut input.max_frees_per_visit,
        ),
    ] {
        match query_value(parameters, name) {
            Ok(value) => *slot = value,
            Err(status) => {
                errors += 1;
                log_line(
                    LogLevel::Warning,
                    format_args!(
                        "reading registry value {} failed: 0x{:08X}; using the default",
                        setting.value_name(),
                        status as u32
                    ),
                );
            }
        }
    }
    // SAFETY: our handle, closed once.
    unsafe { sys::ZwClose(parameters) };
    (input, errors)
}

/// `ZwQueryValueKey(KeyValuePartialInformation)` of one value.
fn query_value(key: sys::HANDLE, name: &'static [u16]) -> Result<RegistryValue, i32> {
    // KEY_VALUE_PARTIAL_INFORMATION: TitleIndex, Type, DataLength (u32 each), then the data.
    let mut buffer = [0u32; 16];
    let mut result_length = 0u32;
    let name = unicode_string(name);
    // SAFETY: valid key handle, name and a 4-aligned buffer of the length we pass; PASSIVE_LEVEL.
    let status = unsafe {
        sys::ZwQueryValueKey(
            key,
            &name,
            sys::KEY_VALUE_PARTIAL_INFORMATION_CLASS,
            buffer.as_mut_ptr().cast(),
            mem::size_of_val(&buffer) as u32,
            &mut result_length,
        )
    };
    let reg_type = buffer[1];
    let data_length = (buffer[2] as usize).min(mem::size_of_val(&buffer) - 12);
    let bytes: [u8; 64] = {
        let mut out = [0u8; 64];
        for (chunk, word) in out.chunks_exact_mut(4).zip(buffer.iter()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    };
    let data = if status == 0 {
        &bytes[12..12 + data_length]
    } else {
        &[][..]
    };
    registry_value_from_query(status, reg_type, data)
}

/// Interprets `ZwQueryValueKey(KeyValuePartialInformation)`: `status` of the call and, when the fixed
/// part was returned (success or `sys::STATUS_BUFFER_OVERFLOW`), the value's type and data. A value that does
/// not exist is `Missing`; anything but a 4-byte REG_DWORD is `WrongType`; any other failure is
/// returned as the error status (the caller logs it and uses the default).
pub fn registry_value_from_query(
    status: i32,
    reg_type: u32,
    data: &[u8],
) -> Result<RegistryValue, i32> {
    if status == sys::STATUS_OBJECT_NAME_NOT_FOUND {
        return Ok(RegistryValue::Missing);
    }
    if status != 0 && status != sys::STATUS_BUFFER_OVERFLOW {
        return Err(status);
    }
    match (status, reg_type, data) {
        (0, sys::REG_DWORD, &[a, b, c, d]) => {
            Ok(RegistryValue::Dword(u32::from_le_bytes([a, b, c, d])))
        }
        _ => Ok(RegistryValue::WrongType(reg_type)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_queries_map_to_registry_values() {
        const REG_SZ: u32 = 1;
        let not_found = 0xC000_0034u32 as i32;
        let overflow = 0x8000_0005u32 as i32;
        let denied = 0xC000_0022u32 as i32;
        assert_eq!(
            registry_value_from_query(not_found, 0, &[]),
            Ok(RegistryValue::Missing)
        );
        assert_eq!(
            registry_value_from_query(0, sys::REG_DWORD, &7u32.to_le_bytes()),
            Ok(RegistryValue::Dword(7))
        );
        assert_eq!(
            registry_value_from_query(0, REG_SZ, &[b'7', 0, 0, 0]),
            Ok(RegistryValue::WrongType(REG_SZ))
        );
        assert_eq!(
            registry_value_from_query(overflow, REG_SZ, &[]),
            Ok(RegistryValue::WrongType(REG_SZ))
        );
        // A sys::REG_DWORD of the wrong length is malformed: not used.
        assert_eq!(
            registry_value_from_query(0, sys::REG_DWORD, &[1, 0]),
            Ok(RegistryValue::WrongType(sys::REG_DWORD))
        );
        assert_eq!(registry_value_from_query(denied, 0, &[]), Err(denied));
    }
}
