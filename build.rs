//! Build script of the driver package.
//!
//! For the kernel target (`x86_64-pc-windows-msvc`) without the `wdk` feature it adds the link switches
//! that turn the `kepoch` binary into a WDM driver image linked by rust-lld
//! (`driver/README.md`, "Build").
//! With the `wdk` feature the WDK build (`wdk-build`, Windows host only) configures the link instead.
//! Host builds get nothing else: there the package is an ordinary library (plus a placeholder binary).
//! Every build records the host triple for the ABI test (`KEPOCH_HOST_TRIPLE`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let kernel_target = target == "x86_64-pc-windows-msvc";
    let wdk = std::env::var_os("CARGO_FEATURE_WDK").is_some();
    // The ABI test asks `cargo metadata` for this host's dependency graph only.
    println!(
        "cargo:rustc-env=KEPOCH_HOST_TRIPLE={}",
        std::env::var("HOST").unwrap_or_default()
    );

    #[cfg(feature = "wdk")]
    {
        if kernel_target {
            if let Err(error) = wdk_build::configure_wdk_binary_build() {
                panic!("wdk-build failed to configure the WDK build: {error:?}");
            }
        }
    }

    if kernel_target && !wdk {
        for arg in [
            // Kernel-mode driver image, native subsystem, our entry point, no CRT.
            "/DRIVER",
            "/SUBSYSTEM:NATIVE",
            "/ENTRY:DriverEntry",
            "/NODEFAULTLIB",
            // Write the PE checksum (the loader verifies it for drivers).
            "/RELEASE",
            // lld marks every non-DLL image terminal-server aware; a driver is not.
            "/TSAWARE:NO",
            "/OPT:REF,ICF",
            // Symbol map (target/<triple>/<profile>/deps/kepoch.map): the PE check reads DriverEntry's RVA.
            "/MAP",
        ] {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
    }
}
