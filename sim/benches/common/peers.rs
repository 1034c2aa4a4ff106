//! liburcu's read side (`rcu_read_lock`/`rcu_read_unlock`) as a peer: the memb flavour (the default
//! `liburcu`: a thread-local nesting counter, and a compiler barrier where the kernel has
//! `sys_membarrier`) and the QSBR flavour (an empty read side). The loops run in the C shim that
//! `build.rs` compiles with `_LGPL_SOURCE`, i.e. the library's inline fast paths, what a C user gets.
//! Without liburcu's headers the shim is not built and [`available`] says why.

#[cfg(kepoch_urcu)]
use super::CpuInstant;
use super::Workload;
use std::time::Duration;

#[cfg(kepoch_urcu)]
mod ffi {
    extern "C" {
        pub fn kepoch_urcu_memb_register();
        pub fn kepoch_urcu_memb_unregister();
        pub fn kepoch_urcu_memb_uses_membarrier() -> i32;
        pub fn kepoch_urcu_memb_loop(iters: u64);
        pub fn kepoch_urcu_qsbr_register();
        pub fn kepoch_urcu_qsbr_unregister();
        pub fn kepoch_urcu_qsbr_loop(iters: u64);
    }
}

/// Why the liburcu peers cannot run, or `None` when they can.
pub fn available() -> Option<&'static str> {
    if cfg!(kepoch_urcu) {
        None
    } else {
        Some("liburcu headers (liburcu-dev) were not found when the benchmarks were built; test-scripts/setup.sh installs them")
    }
}

/// Whether the memb read side uses a compiler barrier (`sys_membarrier` present) rather than a fence.
pub fn memb_uses_membarrier() -> bool {
    #[cfg(kepoch_urcu)]
    // SAFETY: reads an integer the library set up in its constructor.
    return unsafe { ffi::kepoch_urcu_memb_uses_membarrier() } != 0;
    #[cfg(not(kepoch_urcu))]
    false
}

/// Which liburcu flavour.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `urcu-memb`.
    Memb,
    /// `urcu-qsbr`.
    Qsbr,
}

/// `rcu_read_lock` + `rcu_read_unlock` of one flavour on the calling thread, registered with the
/// library for the duration of each batch.
pub struct UrcuReadSide(pub Flavour);

impl Workload for UrcuReadSide {
    #[cfg(kepoch_urcu)]
    fn run(&mut self, iters: u64) -> Duration {
        type Calls = (
            unsafe extern "C" fn(),
            unsafe extern "C" fn(u64),
            unsafe extern "C" fn(),
        );
        let (register, read_loop, unregister): Calls = match self.0 {
            Flavour::Memb => (
                ffi::kepoch_urcu_memb_register,
                ffi::kepoch_urcu_memb_loop,
                ffi::kepoch_urcu_memb_unregister,
            ),
            Flavour::Qsbr => (
                ffi::kepoch_urcu_qsbr_register,
                ffi::kepoch_urcu_qsbr_loop,
                ffi::kepoch_urcu_qsbr_unregister,
            ),
        };
        // SAFETY: the thread registers before its read-side critical sections and unregisters after
        // them, outside any critical section, as liburcu requires.
        unsafe {
            register();
            let start = CpuInstant::now();
            read_loop(iters);
            let took = start.elapsed();
            unregister();
            took
        }
    }

    #[cfg(not(kepoch_urcu))]
    fn run(&mut self, _iters: u64) -> Duration {
        unreachable!("liburcu peers run only when `available()` is None")
    }
}
