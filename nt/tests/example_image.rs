//! The example driver's image (`examples/minimal_driver`, built for the kernel target): the PE rules of
//! kepoch.sys's check (`driver/tests/pe_check/rules.rs`: AMD64, NATIVE, entry = DriverEntry, imports
//! only from ntoskrnl.exe/hal.dll and none of the routines resolved at run time, no W+X section, a valid
//! checksum), plus the routines a kepoch domain always needs. Skipped, with a loud `SKIPPED:` line,
//! only when the Rust target is not installed.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

#[path = "../../driver/tests/pe_check/rules.rs"]
#[allow(dead_code)] // The mutation helpers of kepoch.sys's check are not used here.
mod rules;

use std::path::PathBuf;
use std::process::Command;

use rules::*;

/// What every image with a kepoch domain imports: the cycle DPCs' importance and the flush before the
/// domain's memory goes.
const REQUIRED: [&str; 2] = ["KeSetImportanceDpc", "KeFlushQueuedDpcs"];

#[test]
fn the_example_driver_builds_to_a_sys_importing_only_ntoskrnl_and_hal() {
    if !target_installed() {
        eprintln!(
            "SKIPPED: PE check of the example driver: Rust target {TARGET} is not installed \
             (rustup target add {TARGET})"
        );
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-p",
            "kepoch-nt",
            "--example",
            "minimal_driver",
        ])
        .status()
        .expect("run cargo build for the example driver");
    assert!(status.success(), "building minimal_driver.sys failed");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../target"));
    let examples = target_dir.join(TARGET).join("release/examples");
    let image =
        std::fs::read(examples.join("minimal_driver.sys")).expect("read minimal_driver.sys");
    let map =
        std::fs::read_to_string(examples.join("minimal_driver.map")).expect("read the link map");
    let entry = driver_entry_rva(&map).expect("DriverEntry in the link map");
    let mut failed = false;
    for (name, result) in all_checks(&image, entry, &REQUIRED) {
        match result {
            Ok(finding) => println!("example {name:<9} OK   {finding}"),
            Err(reason) => {
                println!("example {name:<9} FAIL {reason}");
                failed = true;
            }
        }
    }
    assert!(!failed, "minimal_driver.sys fails the PE check (see above)");
}
