//! The model runtime: the threads, lock, atomics, cell and yield of the model checker the tests are
//! built for — loom's under `--cfg loom`, shuttle's under `--cfg shuttle` — behind one set of names,
//! so that the model machine and the scenarios are written once for both checkers.

#[cfg(loom)]
pub use loom::{
    cell::UnsafeCell,
    sync::{atomic, Mutex},
    thread,
};

#[cfg(loom)]
pub(crate) use loom::thread_local;

#[cfg(all(shuttle, not(loom)))]
pub use shuttle::{
    sync::{atomic, Mutex},
    thread,
};

#[cfg(all(shuttle, not(loom)))]
pub(crate) use shuttle::thread_local;

/// Gives the other model threads a turn (a spinning thread must, or the checker never lets the
/// thread it waits for run).
pub fn yield_now() {
    thread::yield_now();
}

/// shuttle runs every schedule on sequentially consistent memory and has no causality checking of
/// its own, so its cell is a plain `UnsafeCell` with loom's access API; the payload's value (not a
/// causality report) is what catches a use after free there.
#[cfg(all(shuttle, not(loom)))]
pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(all(shuttle, not(loom)))]
impl<T> UnsafeCell<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Reads through a shared pointer to the value.
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Writes through a unique pointer to the value.
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
