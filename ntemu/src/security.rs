//! Security descriptors (absolute form), ACLs with access-allowed ACEs, `ObOpenObjectByPointer` and
//! `ZwSetSecurityObject` on device objects: the emulation records the DACL a device ends up with.

use core::ffi::c_void;
use std::format;
use std::string::String;
use std::vec::Vec;

use super::handles::HandleObject;
use super::io::live_device;
use super::kernel::{enter, Rule, STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER};
use crate::nt::{ACL, HANDLE, NTSTATUS, PSECURITY_DESCRIPTOR, PSID, SECURITY_DESCRIPTOR};
use windows_sys::Wdk::Foundation::{ACCESS_STATE, POBJECT_TYPE};

/// `STATUS_UNKNOWN_REVISION`.
const STATUS_UNKNOWN_REVISION: NTSTATUS = 0xC000_0058u32 as i32;
/// `STATUS_ALLOTTED_SPACE_EXCEEDED`.
const STATUS_ALLOTTED_SPACE_EXCEEDED: NTSTATUS = 0xC000_0099u32 as i32;
/// `SE_DACL_PRESENT`.
const SE_DACL_PRESENT: u16 = 0x4;
/// `SE_DACL_DEFAULTED`.
const SE_DACL_DEFAULTED: u16 = 0x8;
/// Offset of `Dacl` in an absolute x64 `SECURITY_DESCRIPTOR`.
const DACL_OFFSET: usize = 32;

/// The DACL applied to a device with `ZwSetSecurityObject`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSecurity {
    /// `PROTECTED_DACL_SECURITY_INFORMATION` was given (no inherited ACEs).
    pub protected: bool,
    /// Access-allowed ACEs: (SID in string form, access mask).
    pub allowed: Vec<(String, u32)>,
}

/// `S-1-<authority>-<sub>...` of the SID at `sid`.
///
/// # Safety
/// `sid` points to a SID whose sub-authority count is right.
unsafe fn sid_text(sid: *const u8) -> String {
    // SAFETY: per the caller: revision, count, 6-byte authority, then `count` u32s.
    unsafe {
        let count = usize::from(*sid.add(1));
        let authority = (2..8).fold(0u64, |a, i| a << 8 | u64::from(*sid.add(i)));
        let mut text = format!("S-{}-{authority}", *sid);
        for i in 0..count {
            text.push_str(&format!(
                "-{}",
                sid.add(8 + 4 * i).cast::<u32>().read_unaligned()
            ));
        }
        text
    }
}

/// `RtlCreateSecurityDescriptor`.
///
/// # Safety
/// `descriptor` is writable.
#[no_mangle]
pub unsafe extern "system" fn RtlCreateSecurityDescriptor(
    descriptor: PSECURITY_DESCRIPTOR,
    revision: u32,
) -> NTSTATUS {
    enter("RtlCreateSecurityDescriptor", Rule::Any);
    if revision != crate::nt::SECURITY_DESCRIPTOR_REVISION {
        return STATUS_UNKNOWN_REVISION;
    }
    // SAFETY: per the caller; revision 1, no control bits, no owner/group/SACL/DACL.
    unsafe {
        descriptor
            .cast::<u8>()
            .write_bytes(0, core::mem::size_of::<SECURITY_DESCRIPTOR>());
        descriptor.cast::<u8>().write(1);
    }
    0
}

/// `RtlCreateAcl`.
///
/// # Safety
/// `acl` has `length` writable bytes.
#[no_mangle]
pub unsafe extern "system" fn RtlCreateAcl(acl: *mut ACL, length: u32, revision: u32) -> NTSTATUS {
    enter("RtlCreateAcl", Rule::Any);
    if revision != crate::nt::ACL_REVISION {
        return STATUS_UNKNOWN_REVISION;
    }
    if !(8..=0xFFFC).contains(&length) {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: per the caller (at least 8 bytes): AclRevision, Sbz1, AclSize, AceCount, Sbz2.
    unsafe {
        let header = acl.cast::<u8>();
        header.write(revision as u8);
        header.add(1).write(0);
        header.add(2).cast::<u16>().write_unaligned(length as u16);
        header.add(4).cast::<u16>().write_unaligned(0);
        header.add(6).cast::<u16>().write_unaligned(0);
    }
    0
}

/// The ACEs of an ACL: (offset, size) of each.
///
/// # Safety
/// `acl` was initialised by `RtlCreateAcl` and holds `AclSize` readable bytes.
unsafe fn aces(acl: *const u8) -> (usize, Vec<(usize, usize)>) {
    // SAFETY: per the caller.
    unsafe {
        let size = usize::from(acl.add(2).cast::<u16>().read_unaligned());
        let count = usize::from(acl.add(4).cast::<u16>().read_unaligned());
        let mut offset = 8;
        let mut list = Vec::new();
        for _ in 0..count {
            let ace_size = usize::from(acl.add(offset + 2).cast::<u16>().read_unaligned());
            list.push((offset, ace_size));
            offset += ace_size;
        }
        (size, list)
    }
}

/// `RtlAddAccessAllowedAce`.
///
/// # Safety
/// `acl` was initialised by `RtlCreateAcl`; `sid` is a valid SID.
#[no_mangle]
pub unsafe extern "system" fn RtlAddAccessAllowedAce(
    acl: *mut ACL,
    revision: u32,
    access: u32,
    sid: PSID,
) -> NTSTATUS {
    enter("RtlAddAccessAllowedAce", Rule::Any);
    if revision != crate::nt::ACL_REVISION {
        return STATUS_UNKNOWN_REVISION;
    }
    let acl = acl.cast::<u8>();
    // SAFETY: per the caller.
    unsafe {
        let (size, list) = aces(acl);
        let used = list.last().map_or(8, |(o, s)| o + s);
        let sid_length = 8 + 4 * usize::from(*sid.cast::<u8>().add(1));
        let ace_size = 8 + sid_length;
        if used + ace_size > size {
            return STATUS_ALLOTTED_SPACE_EXCEEDED;
        }
        let ace = acl.add(used);
        ace.write(0); // ACCESS_ALLOWED_ACE_TYPE
        ace.add(1).write(0);
        ace.add(2).cast::<u16>().write_unaligned(ace_size as u16);
        ace.add(4).cast::<u32>().write_unaligned(access);
        core::ptr::copy_nonoverlapping(sid.cast::<u8>(), ace.add(8), sid_length);
        let count = acl.add(4).cast::<u16>().read_unaligned();
        acl.add(4).cast::<u16>().write_unaligned(count + 1);
    }
    0
}

/// `RtlSetDaclSecurityDescriptor`.
///
/// # Safety
/// `descriptor` was initialised; `dacl` outlives its use through the descriptor.
#[no_mangle]
pub unsafe extern "system" fn RtlSetDaclSecurityDescriptor(
    descriptor: PSECURITY_DESCRIPTOR,
    present: bool,
    dacl: *const ACL,
    defaulted: bool,
) -> NTSTATUS {
    enter("RtlSetDaclSecurityDescriptor", Rule::Any);
    // SAFETY: per the caller: Control at +2, Dacl at +32.
    unsafe {
        let bytes = descriptor.cast::<u8>();
        let mut control =
            bytes.add(2).cast::<u16>().read_unaligned() & !(SE_DACL_PRESENT | SE_DACL_DEFAULTED);
        if present {
            control |= SE_DACL_PRESENT;
        }
        if defaulted {
            control |= SE_DACL_DEFAULTED;
        }
        bytes.add(2).cast::<u16>().write_unaligned(control);
        bytes
            .add(DACL_OFFSET)
            .cast::<*const ACL>()
            .write_unaligned(if present { dacl } else { core::ptr::null() });
    }
    0
}

/// `ObOpenObjectByPointer` for the driver's device objects.
///
/// # Safety
/// `handle` is writable.
#[no_mangle]
pub unsafe extern "system" fn ObOpenObjectByPointer(
    object: *const c_void,
    attributes: u32,
    _access_state: *const ACCESS_STATE,
    _access: u32,
    _object_type: POBJECT_TYPE,
    _mode: i8,
    handle: *mut HANDLE,
) -> NTSTATUS {
    let (kernel, _) = enter("ObOpenObjectByPointer", Rule::Passive);
    if attributes & crate::nt::OBJ_KERNEL_HANDLE == 0 {
        kernel.fail("ObOpenObjectByPointer without OBJ_KERNEL_HANDLE".into());
    }
    if let Err(status) = live_device(&kernel, object as usize) {
        kernel.fail(format!(
            "ObOpenObjectByPointer({object:p}): not a device object of the driver"
        ));
        return status;
    }
    let value = kernel
        .lock()
        .handles
        .open(HandleObject::Device(object as usize));
    // SAFETY: per the caller.
    unsafe { handle.write(value) };
    0
}

/// `ZwSetSecurityObject` on a device handle: records the DACL of the descriptor.
///
/// # Safety
/// `handle` is open; `descriptor` is a valid absolute descriptor.
#[no_mangle]
pub unsafe extern "system" fn ZwSetSecurityObject(
    handle: HANDLE,
    information: u32,
    descriptor: PSECURITY_DESCRIPTOR,
) -> NTSTATUS {
    let (kernel, _) = enter("ZwSetSecurityObject", Rule::Passive);
    let mut state = kernel.lock();
    let Some(HandleObject::Device(device)) = state.handles.get(handle).cloned() else {
        drop(state);
        kernel.fail(format!(
            "ZwSetSecurityObject({handle:p}): not a device handle"
        ));
        return STATUS_INVALID_HANDLE;
    };
    // SAFETY: per the caller: an absolute descriptor whose DACL (if present) was built with RtlCreateAcl
    // and RtlAddAccessAllowedAce.
    let allowed = unsafe {
        let bytes = descriptor.cast::<u8>();
        let control = bytes.add(2).cast::<u16>().read_unaligned();
        let dacl = bytes.add(DACL_OFFSET).cast::<*const u8>().read_unaligned();
        if control & SE_DACL_PRESENT == 0 || dacl.is_null() {
            Vec::new()
        } else {
            let (_, list) = aces(dacl);
            list.into_iter()
                .map(|(offset, _)| {
                    (
                        sid_text(dacl.add(offset + 8)),
                        dacl.add(offset + 4).cast::<u32>().read_unaligned(),
                    )
                })
                .collect()
        }
    };
    if let Some(d) = state.io.devices.iter_mut().find(|d| d.address == device) {
        d.security = Some(DeviceSecurity {
            protected: information & crate::nt::PROTECTED_DACL_SECURITY_INFORMATION != 0,
            allowed,
        });
    }
    0
}
