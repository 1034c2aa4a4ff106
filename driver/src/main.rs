//! The `kepoch.sys` image: the `DriverEntry` symbol and the panic handler. Everything else is in the
//! library (`driver/src/lib.rs`).
//!
//! Built for `x86_64-pc-windows-msvc` it is a `no_std`, `no_main` kernel image linked by rust-lld with
//! /SUBSYSTEM:NATIVE /ENTRY:DriverEntry (build.rs). On any other target there is no driver to build, and
//! the binary only says how to build it.
#![cfg_attr(
    all(target_os = "windows", target_env = "msvc", target_arch = "x86_64"),
    no_std,
    no_main
)]

#[cfg(all(target_os = "windows", target_env = "msvc", target_arch = "x86_64"))]
mod image {
    use kepoch_driver::driver;
    use kepoch_nt::sys as nt;

    /// The driver's entry point, called by the I/O manager at PASSIVE_LEVEL.
    ///
    /// # Safety
    /// Called only by the I/O manager, once, with its driver object and the service key path.
    #[no_mangle]
    pub unsafe extern "system" fn DriverEntry(
        driver_object: *mut nt::DRIVER_OBJECT,
        registry_path: *mut nt::UNICODE_STRING,
    ) -> nt::NTSTATUS {
        // SAFETY: forwarded from the I/O manager unchanged (this function's contract).
        unsafe { driver::driver_entry(driver_object, registry_path) }
    }

    /// MSVC-ABI code generation references `_fltused` wherever floating point appears (unoptimised
    /// core and compiler_builtins do); the CRT that normally defines it is not linked into a driver.
    #[no_mangle]
    #[used]
    #[allow(non_upper_case_globals)]
    static _fltused: i32 = 0;

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        kepoch_nt::bug_check_on_panic(info)
    }
}

#[cfg(not(all(target_os = "windows", target_env = "msvc", target_arch = "x86_64")))]
fn main() {
    eprintln!(
        "kepoch.sys is a Windows kernel driver; build it with \
         `cargo build --release --target x86_64-pc-windows-msvc -p kepoch-driver` \
         (output: target/x86_64-pc-windows-msvc/release/kepoch.sys)"
    );
    std::process::exit(2);
}
