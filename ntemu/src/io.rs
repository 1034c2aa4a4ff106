//! The I/O manager: device objects, symbolic links, IRP dispatch and completion.

use std::collections::HashMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use super::kernel::{
    enter, read_unicode, with_context, Kernel, Rule, PASSIVE, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_PARAMETER,
};
use super::pool::free_checked;
use super::security::DeviceSecurity;
use super::stack::{on_kernel_stack, StackKind};
use super::system_buffer::SystemBuffer;
use crate::nt::{
    DEVICE_OBJECT, DRIVER_OBJECT, IO_STACK_LOCATION, IRP, NTSTATUS, STATUS_OBJECT_NAME_NOT_FOUND,
    UNICODE_STRING,
};

/// `STATUS_OBJECT_NAME_COLLISION`.
const STATUS_OBJECT_NAME_COLLISION: NTSTATUS = 0xC000_0035u32 as i32;
/// `DO_DEVICE_INITIALIZING`.
const DO_DEVICE_INITIALIZING: u32 = 0x80;
/// Offset of `DEVICE_OBJECT.NextDevice`.
const NEXT_DEVICE: usize = 0x10;
/// Pool tag of the emulation's own device objects.
pub(super) const DEVICE_TAG: u32 = u32::from_le_bytes(*b"Devi");

/// A device object created by the driver.
pub(super) struct Device {
    pub(super) address: usize,
    pub(super) name: String,
    driver: usize,
    /// IoDeleteDevice was called; the memory goes once no work item references it.
    pub(super) deleted: bool,
    /// Work items queued or running for it.
    pub(super) references: u32,
    pub(super) security: Option<DeviceSecurity>,
}

/// The result of an IOCTL sent through the driver's dispatch routine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoctlResult {
    /// What the dispatch routine returned (and completed the IRP with).
    pub status: NTSTATUS,
    /// `IoStatus.Information`.
    pub information: u64,
    /// What the I/O manager copies back to the caller (nothing for an error status).
    pub output: Vec<u8>,
}

/// I/O manager state.
#[derive(Default)]
pub(super) struct IoState {
    pub(super) devices: Vec<Device>,
    pub(super) links: HashMap<String, String>,
    /// Dispatched IRPs: (times completed, status, information).
    irps: HashMap<usize, (u32, NTSTATUS, u64)>,
    /// Every DbgPrintEx line: (level, text).
    pub(super) log: Vec<(u32, String)>,
    /// IRPs dispatched so far (each system buffer gets its own poison pattern).
    dispatched: u64,
}

/// `IoCreateDevice`: the device object and its zeroed extension in one pool block.
///
/// # Safety
/// `driver` (the driver object the I/O manager passed to DriverEntry, writable although windows-sys
/// types it `*const`), `name` and `device` are valid.
#[no_mangle]
pub unsafe extern "system" fn IoCreateDevice(
    driver: *const DRIVER_OBJECT,
    extension_size: u32,
    name: *const UNICODE_STRING,
    _device_type: u32,
    characteristics: u32,
    _exclusive: bool,
    device: *mut *mut DEVICE_OBJECT,
) -> NTSTATUS {
    let driver = driver.cast_mut();
    let (kernel, _) = enter("IoCreateDevice", Rule::Passive);
    // SAFETY: per the caller.
    let name = unsafe { read_unicode(name) };
    if kernel
        .lock()
        .io
        .devices
        .iter()
        .any(|d| d.name.eq_ignore_ascii_case(&name))
    {
        return STATUS_OBJECT_NAME_COLLISION;
    }
    let object_size = core::mem::size_of::<DEVICE_OBJECT>();
    let block = kernel
        .pool
        .allocate(object_size + extension_size as usize, DEVICE_TAG, true);
    if block.is_null() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let object = block.cast::<DEVICE_OBJECT>();
    // SAFETY: a fresh, zeroed, 16-aligned block large enough for the object and its extension;
    // `driver` and `device` are valid (caller).
    unsafe {
        (*object).Flags = DO_DEVICE_INITIALIZING;
        (*object).Characteristics = characteristics;
        (*object).DeviceExtension = block.cast::<u8>().add(object_size).cast();
        block
            .cast::<u8>()
            .add(NEXT_DEVICE)
            .cast::<*mut DEVICE_OBJECT>()
            .write((*driver).DeviceObject);
        (*driver).DeviceObject = object;
        device.write(object);
    }
    kernel.lock().io.devices.push(Device {
        address: object as usize,
        name,
        driver: driver as usize,
        deleted: false,
        references: 0,
        security: None,
    });
    0
}

/// Unlinks and frees a deleted device nobody references any more.
pub(super) fn release_device(kernel: &Kernel, address: usize) {
    let driver = {
        let mut state = kernel.lock();
        let Some(position) = state.io.devices.iter().position(|d| d.address == address) else {
            return;
        };
        if !state.io.devices[position].deleted || state.io.devices[position].references > 0 {
            return;
        }
        state.io.devices.remove(position).driver
    };
    let object = address as *mut DEVICE_OBJECT;
    // SAFETY: the driver object outlives its devices (the test's I/O manager owns it); the device
    // block is still allocated until free_block below.
    unsafe {
        let next = object
            .cast::<u8>()
            .add(NEXT_DEVICE)
            .cast::<*mut DEVICE_OBJECT>()
            .read();
        let driver = driver as *mut DRIVER_OBJECT;
        if (*driver).DeviceObject == object {
            (*driver).DeviceObject = next;
        }
    }
    free_checked(kernel, address, DEVICE_TAG, "IoDeleteDevice");
}

/// `IoDeleteDevice`: the memory is released once no queued or running work item references it.
///
/// # Safety
/// `device` was created by `IoCreateDevice` and is deleted once.
#[no_mangle]
pub unsafe extern "system" fn IoDeleteDevice(device: *const DEVICE_OBJECT) {
    let (kernel, _) = enter("IoDeleteDevice", Rule::Passive);
    let known = {
        let mut state = kernel.lock();
        match state
            .io
            .devices
            .iter_mut()
            .find(|d| d.address == device as usize && !d.deleted)
        {
            Some(d) => {
                d.deleted = true;
                true
            }
            None => false,
        }
    };
    if !known {
        kernel.fail(format!(
            "IoDeleteDevice({device:p}): not a live device object"
        ));
        return;
    }
    release_device(&kernel, device as usize);
}

/// `IoCreateSymbolicLink`.
///
/// # Safety
/// Both strings are valid.
#[no_mangle]
pub unsafe extern "system" fn IoCreateSymbolicLink(
    link: *const UNICODE_STRING,
    target: *const UNICODE_STRING,
) -> NTSTATUS {
    let (kernel, _) = enter("IoCreateSymbolicLink", Rule::Passive);
    // SAFETY: per the caller.
    let (link, target) = unsafe { (read_unicode(link), read_unicode(target)) };
    let mut state = kernel.lock();
    if state.io.links.contains_key(&link.to_lowercase()) {
        return STATUS_OBJECT_NAME_COLLISION;
    }
    state.io.links.insert(link.to_lowercase(), target);
    0
}

/// `IoDeleteSymbolicLink`.
///
/// # Safety
/// `link` is valid.
#[no_mangle]
pub unsafe extern "system" fn IoDeleteSymbolicLink(link: *const UNICODE_STRING) -> NTSTATUS {
    let (kernel, _) = enter("IoDeleteSymbolicLink", Rule::Passive);
    // SAFETY: per the caller.
    let link = unsafe { read_unicode(link) };
    let removed = kernel.lock().io.links.remove(&link.to_lowercase());
    match removed {
        Some(_) => 0,
        None => STATUS_OBJECT_NAME_NOT_FOUND,
    }
}

/// `IofCompleteRequest`: each dispatched IRP is completed exactly once.
///
/// # Safety
/// `irp` was dispatched to the driver.
#[no_mangle]
pub unsafe extern "system" fn IofCompleteRequest(irp: *const IRP, _boost: i8) {
    let (kernel, _) = enter("IofCompleteRequest", Rule::AtMostDispatch);
    // SAFETY: per the caller; plain field reads (the driver wrote the Status member of the union).
    let (status, information) = unsafe {
        (
            (*irp).IoStatus.Anonymous.Status,
            (*irp).IoStatus.Information as u64,
        )
    };
    let mut state = kernel.lock();
    match state.io.irps.get_mut(&(irp as usize)) {
        Some(entry) => {
            entry.0 += 1;
            entry.1 = status;
            entry.2 = information;
            if entry.0 > 1 {
                drop(state);
                kernel.fail(format!("IofCompleteRequest({irp:p}): IRP completed twice"));
            }
        }
        None => {
            drop(state);
            kernel.fail(format!(
                "IofCompleteRequest({irp:p}): not an IRP dispatched to the driver"
            ));
        }
    }
}

/// One IRP the test sends.
pub(super) struct Request {
    /// `IRP_MJ_*`.
    pub(super) major: usize,
    /// IOCTL code (device control only).
    pub(super) code: u32,
    /// Input bytes.
    pub(super) input: Vec<u8>,
    /// `OutputBufferLength`.
    pub(super) output_length: u32,
    /// Whether the IRP gets a `SystemBuffer` (a forged request has lengths without one).
    pub(super) buffer: bool,
}

/// Sends one IRP to the driver's dispatch routine on the calling (caller) thread, as the I/O manager
/// does for `DeviceIoControl` with METHOD_BUFFERED: `SystemBuffer` holds `max(input, output)` bytes of
/// uninitialised pool (poison), the input first. After completion, output bytes the driver reported
/// in `Information` but never wrote fail the machine.
pub(super) fn dispatch(
    kernel: &Kernel,
    driver: *mut DRIVER_OBJECT,
    request: &Request,
) -> IoctlResult {
    let Request {
        major,
        code,
        ref input,
        output_length,
        buffer,
    } = *request;
    let length = input.len().max(output_length as usize);
    let key = {
        let mut state = kernel.lock();
        state.io.dispatched += 1;
        kernel.config.seed ^ state.io.dispatched.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    };
    let mut system_buffer = SystemBuffer::new(input, output_length as usize, key);
    let bytes = system_buffer.as_mut_ptr();
    // SAFETY: IO_STACK_LOCATION and IRP are plain integers and pointers, valid when zeroed.
    let mut stack: IO_STACK_LOCATION = unsafe { core::mem::zeroed() };
    stack.MajorFunction = major as u8;
    stack.IoControlCode = code;
    stack.InputBufferLength = input.len() as u32;
    stack.OutputBufferLength = output_length;
    // SAFETY: as above.
    let mut irp: IRP = unsafe { core::mem::zeroed() };
    irp.AssociatedIrp.SystemBuffer = if buffer && length > 0 {
        bytes.cast()
    } else {
        core::ptr::null_mut()
    };
    irp.Tail.Overlay.Anonymous2.Anonymous.CurrentStackLocation =
        core::ptr::addr_of_mut!(stack).cast();
    let irp_address = &mut irp as *mut IRP as usize;
    kernel.lock().io.irps.insert(irp_address, (0, 0, 0));
    // SAFETY: the driver object is the one DriverEntry filled in; its dispatch routine gets a valid
    // IRP for its device at PASSIVE, on the caller's thread.
    let returned = unsafe {
        let device = (*driver).DeviceObject;
        match (*driver).MajorFunction[major] {
            Some(routine) => on_kernel_stack(
                kernel,
                StackKind::Thread,
                || format!("the dispatch routine for major function {major} (code {code:#x})"),
                || routine(device, &mut irp),
            ),
            None => {
                kernel.lock().io.irps.remove(&irp_address);
                return IoctlResult {
                    status: crate::nt::STATUS_INVALID_DEVICE_REQUEST,
                    information: 0,
                    output: Vec::new(),
                };
            }
        }
    };
    let irql = with_context(|c| c.irql);
    if irql != PASSIVE {
        kernel.fail(format!(
            "dispatch routine for major function {major} returned at IRQL {irql}"
        ));
    }
    let (completions, status, information) = kernel
        .lock()
        .io
        .irps
        .remove(&irp_address)
        .unwrap_or_default();
    if completions != 1 {
        kernel.fail(format!(
            "IRP (major {major}, code {code:#x}) completed {completions} times"
        ));
    }
    if status != returned {
        kernel.fail(format!(
            "dispatch returned {returned:#x} but completed the IRP with {status:#x}"
        ));
    }
    if information > u64::from(output_length) {
        kernel.fail(format!(
            "IRP (code {code:#x}) completed with Information {information} > OutputBufferLength {output_length}: \
             the I/O manager would copy kernel memory beyond the buffer"
        ));
    }
    let copied = if status < 0 && (status as u32) >> 30 == 3 {
        0
    } else {
        (information as usize).min(output_length as usize)
    };
    let unwritten = system_buffer.unwritten(copied);
    if !unwritten.is_empty() {
        kernel.fail(format!(
            "IRP (code {code:#x}) completed with Information {information}, but bytes {unwritten:?} of \
             the system buffer were never written by the driver: the I/O manager copies them to the \
             caller, uninitialised pool (the emulation's poison pattern here)"
        ));
    }
    let output = system_buffer.bytes()[..copied].to_vec();
    IoctlResult {
        status,
        information,
        output,
    }
}

/// The parameter check shared by routines that take a device handle's object.
pub(super) fn live_device(kernel: &Kernel, address: usize) -> Result<(), NTSTATUS> {
    if kernel
        .lock()
        .io
        .devices
        .iter()
        .any(|d| d.address == address && !d.deleted)
    {
        Ok(())
    } else {
        Err(STATUS_INVALID_PARAMETER)
    }
}
