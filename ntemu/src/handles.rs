//! The kernel handle table (registry keys, system threads, device objects) and `ZwClose`.

use std::collections::HashMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use super::kernel::{enter, Rule, STATUS_INVALID_HANDLE};
use crate::nt::{HANDLE, NTSTATUS};

/// A kernel handle's object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HandleObject {
    /// An open registry key (its full path, lower case).
    Key(String),
    /// A system thread (its id).
    Thread(u64),
    /// A device object (its address).
    Device(usize),
}

/// The kernel handle table.
#[derive(Default)]
pub(super) struct Handles {
    table: HashMap<usize, HandleObject>,
    next: usize,
}

impl Handles {
    /// Opens a handle to `object`.
    pub(super) fn open(&mut self, object: HandleObject) -> HANDLE {
        self.next += 1;
        let value = 0x8000_0000 + 4 * self.next;
        self.table.insert(value, object);
        value as HANDLE
    }

    /// The object behind `handle`.
    pub(super) fn get(&self, handle: HANDLE) -> Option<&HandleObject> {
        self.table.get(&(handle as usize))
    }

    /// Closes `handle`; the object it referred to, if it was open.
    fn close(&mut self, handle: HANDLE) -> Option<HandleObject> {
        self.table.remove(&(handle as usize))
    }

    /// Handles still open, for the leak report.
    pub(super) fn open_handles(&self) -> Vec<HandleObject> {
        self.table.values().cloned().collect()
    }
}

/// `ZwClose`.
///
/// # Safety
/// Same contract as the kernel routine: `handle` is a kernel handle the caller owns.
#[no_mangle]
pub unsafe extern "system" fn ZwClose(handle: HANDLE) -> NTSTATUS {
    let (kernel, _) = enter("ZwClose", Rule::Passive);
    let mut state = kernel.lock();
    if state.handles.close(handle).is_none() {
        drop(state);
        kernel.fail(format!("ZwClose({handle:p}): not an open kernel handle"));
        return STATUS_INVALID_HANDLE;
    }
    0
}
