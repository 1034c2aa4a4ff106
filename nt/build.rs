//! Build script of `kepoch-nt`: for the kernel target (`x86_64-pc-windows-msvc`) the example driver
//! (`examples/minimal_driver`) is linked as a WDM driver image by rust-lld, with the same switches as
//! `kepoch.sys` (the top-level `build.rs`); `.cargo/config.toml`'s linker copies it to a `.sys`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("TARGET").unwrap_or_default() == "x86_64-pc-windows-msvc" {
        for arg in [
            // Kernel-mode driver image, native subsystem, its entry point, no CRT.
            "/DRIVER",
            "/SUBSYSTEM:NATIVE",
            "/ENTRY:DriverEntry",
            "/NODEFAULTLIB",
            // Write the PE checksum (the loader verifies it for drivers).
            "/RELEASE",
            // lld marks every non-DLL image terminal-server aware; a driver is not.
            "/TSAWARE:NO",
            "/OPT:REF,ICF",
            // Symbol map (examples/minimal_driver.map): the PE check reads DriverEntry's RVA.
            "/MAP",
        ] {
            println!("cargo:rustc-link-arg-examples={arg}");
        }
    }
}
