//! A minimal WDM driver on `kepoch-nt`'s public API: its own pool tag (`MinD`), a driver-object
//! work-item owner, no control device. DriverEntry creates a domain, a reader looks up the published
//! route at DISPATCH_LEVEL, a writer swaps in a new one and retires the old, and unload drops the
//! domain (`driver.rs`).
//!
//! `cargo build --release -p kepoch-nt --target x86_64-pc-windows-msvc --example minimal_driver`
//! links `target/x86_64-pc-windows-msvc/release/examples/minimal_driver.sys` (imports from
//! ntoskrnl.exe and hal.dll only). On other targets this program only says so; the driver's code runs
//! on the emulated kernel in `nt/tests/example_driver.rs`.
#![cfg_attr(
    all(target_os = "windows", target_env = "msvc", target_arch = "x86_64"),
    no_std,
    no_main
)]

// On other hosts the test compiles and runs it (`nt/tests/example_driver.rs`).
#[cfg(all(target_os = "windows", target_env = "msvc", target_arch = "x86_64"))]
mod driver;

#[cfg(all(target_os = "windows", target_env = "msvc", target_arch = "x86_64"))]
mod image {
    use kepoch_nt::sys;

    /// The driver's entry point, called by the I/O manager at PASSIVE_LEVEL.
    ///
    /// # Safety
    /// Called only by the I/O manager, once, with its driver object and the service key path.
    #[no_mangle]
    pub unsafe extern "system" fn DriverEntry(
        driver_object: *mut sys::DRIVER_OBJECT,
        registry_path: *mut sys::UNICODE_STRING,
    ) -> sys::NTSTATUS {
        // SAFETY: forwarded from the I/O manager unchanged (this function's contract).
        unsafe { super::driver::driver_entry(driver_object, registry_path) }
    }

    /// MSVC-ABI code generation references `_fltused` wherever floating point appears; the CRT that
    /// normally defines it is not linked into a driver.
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
        "minimal_driver is a Windows kernel driver; build it with `cargo build --release -p \
         kepoch-nt --target x86_64-pc-windows-msvc --example minimal_driver` (output: \
         target/x86_64-pc-windows-msvc/release/examples/minimal_driver.sys)"
    );
    std::process::exit(2);
}
