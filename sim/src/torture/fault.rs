//! The guard-page fault handler: SIGSEGV/SIGBUS on a freed object's page is reported and ends the
//! process with status 1; any other fault (a stack overflow, a crash) prints the run's context (seed,
//! replay command) and goes on to the previous handler. Everything the handler touches is an atomic, a thread-local atomic with a
//! constant initialiser, or a stack buffer, and it only calls `write` and `_exit`.

use crate::objects::{self, SimDomain};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// Address of the last fault the handler saw (0 = none).
pub static FAULT_ADDR: AtomicUsize = AtomicUsize::new(0);
static DOMAIN: AtomicPtr<SimDomain> = AtomicPtr::new(ptr::null_mut());
static CONTEXT: AtomicPtr<Box<str>> = AtomicPtr::new(ptr::null_mut());
static OLD_SEGV: OnceLock<libc::sigaction> = OnceLock::new();
static OLD_BUS: OnceLock<libc::sigaction> = OnceLock::new();

type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

thread_local! {
    /// Epoch bound of the reader running on this thread (`u64::MAX` = none) and its CPU.
    static READER_EPOCH: AtomicU64 = const { AtomicU64::new(u64::MAX) };
    static READER_CPU: AtomicU64 = const { AtomicU64::new(u64::MAX) };
}

pub(super) fn set_reader(epoch: u64, cpu: u32) {
    READER_EPOCH.with(|e| e.store(epoch, Ordering::Relaxed));
    READER_CPU.with(|c| c.store(u64::from(cpu), Ordering::Relaxed));
}

pub(super) fn clear_reader() {
    READER_EPOCH.with(|e| e.store(u64::MAX, Ordering::Relaxed));
}

pub(super) fn set_domain(domain: &SimDomain) {
    DOMAIN.store(ptr::from_ref(domain).cast_mut(), Ordering::Release);
}

pub(super) fn clear_domain() {
    DOMAIN.store(ptr::null_mut(), Ordering::Release);
}

/// Installs the handlers (once per process) and sets the text printed after a fault.
pub(super) fn install(context: &str) {
    // The previous text (one short line per run) is leaked rather than freed: a handler on another
    // thread might be printing it right now.
    let new = Box::into_raw(Box::new(Box::<str>::from(context)));
    CONTEXT.swap(new, Ordering::AcqRel);
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        for (signal, old) in [(libc::SIGSEGV, &OLD_SEGV), (libc::SIGBUS, &OLD_BUS)] {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler has the
            // SA_SIGINFO signature; `previous` receives the action we replace.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                let handler: Handler = on_fault;
                action.sa_sigaction = handler as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut previous) == 0 {
                    let _ = old.set(previous);
                }
            }
        }
    });
}

/// A fixed buffer for formatting without allocation.
struct Buf {
    bytes: [u8; 1024],
    len: usize,
}

impl std::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer of `rest.len()` bytes; write(2) is async-signal-safe.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    use std::fmt::Write;
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers of SIGSEGV/SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    FAULT_ADDR.store(addr, Ordering::SeqCst);
    let name = if signal == libc::SIGBUS {
        "SIGBUS"
    } else {
        "SIGSEGV"
    };
    let mut out = Buf {
        bytes: [0; 1024],
        len: 0,
    };
    let Some(object) = objects::lookup_fault(addr) else {
        if let Some(size) = crate::machine::freed_block_at(addr) {
            let _ = write!(
                out,
                "kepoch-sim torture: GUARD-PAGE FAULT ({name}): late read at {addr:#x} of a freed block of {size} bytes (not a torture object: a list or map node, a chain link, a work block or a core structure)"
            );
            finish_report(&mut out);
        }
        let _ = writeln!(
            out,
            "kepoch-sim torture: {name} at {addr:#x}, not on a torture object's page (a core structure's guard page, a stack overflow or a crash)"
        );
        write_stderr(&out.bytes[..out.len]);
        let context = CONTEXT.load(Ordering::Acquire);
        if !context.is_null() {
            // SAFETY: contexts are never freed (see `install`).
            write_stderr(unsafe { (*context).as_bytes() });
        }
        // Hand the fault back to the previous handler (Rust's stack-overflow handler or the
        // default action): restore it and return, so the access faults again.
        let old = if signal == libc::SIGBUS {
            &OLD_BUS
        } else {
            &OLD_SEGV
        };
        // SAFETY: restoring an action the kernel gave us (or the default when there was none).
        unsafe {
            match old.get() {
                Some(previous) => {
                    libc::sigaction(signal, previous, ptr::null_mut());
                }
                None => {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
        }
        return;
    };
    let _ = write!(
        out,
        "kepoch-sim torture: GUARD-PAGE FAULT ({name}): late read at {addr:#x} of freed object #{}",
        object.id
    );
    if object.retired_at == objects::NOT_RETIRED {
        let _ = write!(out, " (retirement epoch not recorded yet)");
    } else {
        let _ = write!(out, " retired at epoch {}", object.retired_at);
    }
    finish_report(&mut out);
}

/// Appends the reader and the domain's epochs to a guard-page fault report, prints it with the
/// run's context and ends the process with status 1. Async-signal-safe.
fn finish_report(out: &mut Buf) -> ! {
    use std::fmt::Write;
    let reader = READER_EPOCH.with(|e| e.load(Ordering::Relaxed));
    let cpu = READER_CPU.with(|c| c.load(Ordering::Relaxed));
    if reader != u64::MAX {
        let _ = write!(
            out,
            "; the reader on CPU {cpu} entered at epoch <= {reader}"
        );
    }
    let domain = DOMAIN.load(Ordering::Acquire);
    if !domain.is_null() {
        // SAFETY: set while the domain is loaded and cleared before it is unloaded; the two loads
        // are atomic.
        let (global, released) = unsafe { ((*domain).global_epoch(), (*domain).released_epoch()) };
        let _ = write!(
            out,
            "; domain global epoch {global}, released epoch {released}"
        );
    }
    let _ = writeln!(out);
    write_stderr(&out.bytes[..out.len]);
    let context = CONTEXT.load(Ordering::Acquire);
    if !context.is_null() {
        // SAFETY: contexts are never freed (see `install`).
        write_stderr(unsafe { (*context).as_bytes() });
    }
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(1) };
}
