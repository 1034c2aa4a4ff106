//! `kepoch.sys`, the WDM driver that runs the kepoch core on the NT kernel, a consumer of the
//! `kepoch-nt` library (the NT platform, bindings, registry configuration, passive lock, logging).
//!
//! Layout:
//! - [`driver`]: `DriverEntry`/`DriverUnload` bodies and the driver's state;
//! - `device`: the control device (its security descriptor and IRPs);
//! - `load`: the load generator;
//! - [`ioctl`]: the control interface (codes, request layouts, the decoder), shared with `kepochctl`;
//! - [`support`]: target-independent helpers, unit-tested on the host;
//! - [`lifecycle`]: the order of `DriverEntry`'s steps and undo, written against a small trait and
//!   tested on the host;
//! - [`slots`]: load-thread slots (the thread's parameters apart from its creator's handle).
//!
//! The image itself is the `kepoch` binary (`driver/src/main.rs`). On 64-bit hosts other than Windows
//! the same driver code is compiled, and its tests link the emulated kernel (crate `kepoch-ntemu`), so
//! `cargo test` runs it; on other Windows targets (`kepochctl`'s) only [`ioctl`], [`support`],
//! [`lifecycle`] and [`slots`] are compiled.
#![no_std]

// The unit tests link the emulated kernel, which resolves the NT routines the driver code declares.
#[cfg(all(test, not(target_os = "windows"), target_pointer_width = "64"))]
use kepoch_ntemu as _;

pub use kepoch;

pub mod ioctl;
pub mod lifecycle;
pub mod slots;
pub mod support;

#[cfg(any(
    all(target_os = "windows", target_env = "msvc", target_arch = "x86_64"),
    all(not(target_os = "windows"), target_pointer_width = "64")
))]
mod device;
#[cfg(any(
    all(target_os = "windows", target_env = "msvc", target_arch = "x86_64"),
    all(not(target_os = "windows"), target_pointer_width = "64")
))]
pub mod driver;
#[cfg(any(
    all(target_os = "windows", target_env = "msvc", target_arch = "x86_64"),
    all(not(target_os = "windows"), target_pointer_width = "64")
))]
mod load;
