//! Builds the liburcu shim of the benchmark report (`benches/urcu/shim.c`) when liburcu's headers
//! are installed (`liburcu-dev`; `test-scripts/setup.sh` installs it) and sets `cfg(kepoch_urcu)`.
//! Without them nothing is built and the report prints a SKIPPED row for the liburcu peers. The shim
//! and the libraries are linked into the benchmarks only, never into the library or the binary.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kepoch_urcu)");
    println!("cargo::rerun-if-changed=benches/urcu/shim.c");
    println!("cargo::rerun-if-changed=build.rs");
    let header = "urcu/urcu-memb.h";
    let dirs = [
        "/usr/include",
        "/usr/include/x86_64-linux-gnu",
        "/usr/local/include",
    ];
    // Only paths that exist: cargo treats a missing `rerun-if-changed` path as changed on every build,
    // which would rebuild this crate (and every test binary above it) each time. Installing liburcu
    // creates `/usr/include/urcu`, which changes the watched directory.
    println!("cargo::rerun-if-changed=/usr/include");
    let found = dirs
        .iter()
        .map(|d| Path::new(d).join(header))
        .find(|p| p.exists());
    if let Some(path) = &found {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    if found.is_none() {
        println!("cargo::warning=liburcu headers not found ({header}): the benchmark report skips the liburcu peers");
        return;
    }
    let mut build = cc::Build::new();
    build
        .file("benches/urcu/shim.c")
        .opt_level(2)
        .cargo_metadata(false);
    if let Err(error) = build.try_compile("kepoch_urcu_shim") {
        println!("cargo::warning=building the liburcu shim failed ({error}): the benchmark report skips the liburcu peers");
        return;
    }
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo::rustc-link-arg-benches={out}/libkepoch_urcu_shim.a");
    for lib in ["urcu-memb", "urcu-qsbr", "urcu-common"] {
        println!("cargo::rustc-link-arg-benches=-l{lib}");
    }
    println!("cargo::rustc-cfg=kepoch_urcu");
}
