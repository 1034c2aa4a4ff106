//! `kepoch-c`: kepoch for drivers written in C. Two C APIs over [`kepoch_nt`], exported with C
//! linkage from a static library (`bash c/build.sh`):
//!
//! | header | what |
//! |---|---|
//! | `c/include/kepoch.h` | kepoch's own API: domains with a configuration, enter/exit with a caller's state, tagged and cache-aligned allocation, free, one-shot work items, synchronize, flush, statistics ([`api`]) |
//! | `c/include/ebpf_epoch.h` | a drop-in for eBPF for Windows' `ebpf_epoch.h`: the same names, types and contract over one driver-wide domain ([`ebpf`]) |
//!
//! Everything C can get wrong and kepoch can see is refused loudly (module [`fail`]): a function
//! that has an error return returns `STATUS_INVALID_PARAMETER`; the others log a line naming the
//! function and the misuse and bug check `MANUALLY_INITIATED_CRASH` (0xE2) with the parameters
//! `c/include/kepoch.h` documents — a state entered twice or exited without an enter, a double free,
//! memory kepoch did not allocate, a work item scheduled twice or cancelled after its schedule.
//! Nothing is silently corrupted.
//!
//! | module | what |
//! |---|---|
//! | [`fail`] | the fail-fast path: log line and bug check, with the function and misuse codes |
//! | [`state`] | the caller-provided epoch state: a 32-byte C structure holding kepoch's token |
//! | [`blocks`] | zeroed C blocks (16-byte or cache-line aligned) with a checked prefix |
//! | [`work`] | one-shot C work items over kepoch's typed work items |
//! | [`domain`] | a domain created for C callers, and its handle |
//! | [`api`] | the `kepoch_*` exports |
//! | [`ebpf`] | the `ebpf_epoch_*` exports |
//!
//! On hosts other than Windows the crate links against `kepoch-ntemu`'s emulated kernel in tests:
//! `c/sample-test` runs the C sample driver there.
#![no_std]

pub mod api;
pub mod blocks;
pub mod domain;
pub mod ebpf;
pub mod fail;
pub mod state;
pub mod work;

/// What the static library adds for a C driver: the panic handler (log, then bug check) and the
/// `_fltused` symbol MSVC-ABI code references (no CRT is linked into a driver).
#[cfg(feature = "staticlib")]
mod image {
    #[no_mangle]
    #[used]
    #[allow(non_upper_case_globals)]
    static _fltused: i32 = 0;

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        kepoch_nt::bug_check_on_panic(info)
    }
}
