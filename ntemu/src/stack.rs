//! Kernel-sized stacks for driver code. On x64 a thread's kernel stack is 24 KiB (`KERNEL_STACK_SIZE`)
//! and DPCs run on their processor's DPC stack of the same size; running past the end hits a guard
//! page and bug checks (0x7F, double fault). Emulated threads are host threads whose stacks also hold
//! the emulation's own frames, so the driver's share is measured: before the emulation calls driver
//! code (a dispatch routine, `DriverEntry`/`DriverUnload`, a system thread, a work item, a DPC, the
//! processor-change callbacks of a hot-add) it paints the stack below with a canary, and afterwards
//! the lowest word no longer holding it is how deep that call went, its kernel routines included.
//! Deeper than the kernel stack ([`STACK_LIMIT`]) fails the machine; the deepest use of each kind is
//! reported ([`StackReport`]). A runaway recursion that passes even the measured region reaches the
//! host stack's own guard page and ends the test process with "has overflowed its stack".

use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::format;
use std::string::String;

use super::kernel::Kernel;

/// `KERNEL_STACK_SIZE` on x64: a thread's kernel stack, and each processor's DPC stack.
pub const KERNEL_STACK_SIZE: usize = 24 * 1024;

/// The stack a driver call is held to. Optimised builds (how the driver ships, and how the test suite
/// runs) get [`KERNEL_STACK_SIZE`]; unoptimised builds keep every temporary in its own stack slot
/// (DriverEntry alone takes 45 KiB there), so they get four times as much and catch only depth that
/// grows without bound.
pub const STACK_LIMIT: usize = if cfg!(debug_assertions) {
    4 * KERNEL_STACK_SIZE
} else {
    KERNEL_STACK_SIZE
};

/// How much is painted below a driver call: the limit and as much again, so an overflow is measured,
/// not only noticed.
const PAINTED: usize = 2 * STACK_LIMIT;

/// The host stack of every emulated thread: the emulation's frames, the painted region, and a margin
/// above the guard page.
pub(super) const HOST_STACK_SIZE: usize = PAINTED + 512 * 1024;

/// Left unpainted right below the painting function's own frame (and the red zone the ABI allows
/// below it), so painting never writes over a live frame.
const GAP: usize = 512;

/// What the painted words hold until driver code writes over them.
const CANARY: usize = 0x5A17_C0DE_6B65_726Eu64 as usize;

/// Which kernel stack a driver call runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StackKind {
    /// A thread's kernel stack: system threads, work items, dispatch routines, DriverEntry/Unload.
    Thread,
    /// A processor's DPC stack.
    Dpc,
}

/// The deepest use of the kernel stacks by driver calls so far, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackReport {
    /// Deepest use of a thread's kernel stack.
    pub thread: usize,
    /// Deepest use of a DPC stack.
    pub dpc: usize,
    /// The limit either is held to ([`STACK_LIMIT`]).
    pub limit: usize,
}

/// The deepest use per kind, kept by the kernel.
#[derive(Default)]
pub(super) struct StackUsage {
    thread: AtomicUsize,
    dpc: AtomicUsize,
}

impl StackUsage {
    /// The report.
    pub(super) fn report(&self) -> StackReport {
        StackReport {
            thread: self.thread.load(Ordering::Relaxed),
            dpc: self.dpc.load(Ordering::Relaxed),
            limit: STACK_LIMIT,
        }
    }

    fn record(&self, kind: StackKind, depth: usize) {
        let deepest = match kind {
            StackKind::Thread => &self.thread,
            StackKind::Dpc => &self.dpc,
        };
        deepest.fetch_max(depth, Ordering::Relaxed);
    }
}

std::thread_local! {
    /// The highest address of this emulated thread's host stack (near its first frame); 0 on threads
    /// the machine did not create.
    static STACK_TOP: Cell<usize> = const { Cell::new(0) };
    /// A driver call is being measured on this thread (nested calls are part of it).
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside a measured driver call until dropped (also when the call unwinds).
struct Measuring;

impl Measuring {
    fn start() -> Measuring {
        MEASURING.set(true);
        Measuring
    }
}

impl Drop for Measuring {
    fn drop(&mut self) {
        MEASURING.set(false);
    }
}

/// Records the top of the calling thread's host stack (its first frame); called once per emulated
/// thread, before anything else runs on it.
#[inline(never)]
pub(super) fn mark_stack_top() {
    let marker = 0u8;
    STACK_TOP.set(core::hint::black_box(&marker) as *const u8 as usize);
}

/// Paints `PAINTED` bytes with the canary, ending `GAP` bytes below this function's frame. Returns the
/// painted range's top (exclusive), or `None` when the host stack has no room for it.
#[inline(never)]
fn paint() -> Option<usize> {
    let marker = 0u8;
    let here = core::hint::black_box(&marker) as *const u8 as usize;
    let top = (here - GAP) & !(core::mem::size_of::<usize>() - 1);
    // Stay 64 KiB clear of the host stack's end (and its guard page).
    let lowest_allowed = STACK_TOP.get().checked_sub(HOST_STACK_SIZE - 64 * 1024)?;
    if top.checked_sub(PAINTED)? < lowest_allowed {
        return None;
    }
    let mut word = (top - PAINTED) as *mut usize;
    while (word as usize) < top {
        // SAFETY: the word lies in this thread's own host stack (between `lowest_allowed`, inside the
        // HOST_STACK_SIZE mapping, and GAP bytes below the live frame of this function), below every
        // live frame: no object lives there, and this loop calls nothing that could put a frame there.
        unsafe {
            word.write_volatile(CANARY);
            word = word.add(1);
        }
    }
    Some(top)
}

/// The lowest address in `[top - PAINTED, top)` whose word no longer holds the canary.
#[inline(never)]
fn lowest_written(top: usize) -> Option<usize> {
    let mut word = (top - PAINTED) as *const usize;
    while (word as usize) < top {
        // SAFETY: painted by `paint` in this thread's host stack, below the live frames of the caller
        // (which is back from the driver call); reading it has no effect.
        if unsafe { word.read_volatile() } != CANARY {
            return Some(word as usize);
        }
        // SAFETY: stays inside the painted range (checked by the loop condition).
        word = unsafe { word.add(1) };
    }
    None
}

/// Runs driver code `f` on the calling emulated thread's stack as on a kernel stack of `kind`:
/// measures how deep it went, records the deepest use, and fails the machine when it went deeper
/// than [`STACK_LIMIT`] (`what` names the call in the failure).
#[inline(never)]
pub(super) fn on_kernel_stack<R>(
    kernel: &Kernel,
    kind: StackKind,
    what: impl FnOnce() -> String,
    f: impl FnOnce() -> R,
) -> R {
    if MEASURING.get() {
        return f();
    }
    let Some(top) = paint() else {
        return f();
    };
    let result = {
        let _measuring = Measuring::start();
        f()
    };
    let depth = lowest_written(top).map_or(GAP, |lowest| top + GAP - lowest);
    kernel.stacks.record(kind, depth);
    if depth > STACK_LIMIT {
        let stack = match kind {
            StackKind::Thread => "kernel stack",
            StackKind::Dpc => "DPC stack",
        };
        kernel.fail(format!(
            "kernel stack overflow: {} used at least {depth} bytes of its {STACK_LIMIT}-byte \
             {stack} (on NT: the guard page, bug check 0x7F, double fault)",
            what()
        ));
    }
    result
}
