//! The PE check of kepoch.sys (`driver/tests/pe_check/rules.rs`) applied to the C sample driver that
//! `bash c/build.sh` links on Linux: machine AMD64, subsystem NATIVE, entry point `DriverEntry`,
//! imports only from ntoskrnl.exe / hal.dll and none of the routines kepoch resolves at run time,
//! the routines the sample and the C API need, no writable and executable section, a valid PE
//! checksum. Skipped with a loud `SKIPPED:` line only when the Windows target or mingw-w64 is
//! missing.

#[path = "../../../driver/tests/pe_check/rules.rs"]
#[allow(dead_code)]
mod rules;

use std::path::PathBuf;
use std::process::Command;

use rules::{all_checks, driver_entry_rva, target_installed, TARGET};

/// Routines the image must import: the sample's threads and kepoch's cycle DPCs and work items.
const REQUIRED: [&str; 5] = [
    "PsCreateSystemThread",
    "ZwWaitForSingleObject",
    "KeInsertQueueDpc",
    "KeFlushQueuedDpcs",
    "IoQueueWorkItemEx",
];

#[test]
fn the_c_sample_driver_passes_kepoch_sys_pe_check() {
    let mingw = Command::new("x86_64-w64-mingw32-gcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !target_installed() || !mingw {
        eprintln!(
            "SKIPPED: PE check of kepoch_c_sample.sys: needs the Rust target {TARGET} and \
             x86_64-w64-mingw32-gcc (bash test-scripts/setup.sh installs both)"
        );
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg(root.join("c/build.sh"))
        .output()
        .expect("run c/build.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "c/build.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let image_path = PathBuf::from(stdout.lines().last().expect("the image path").trim());
    assert!(
        image_path.ends_with("kepoch_c_sample.sys"),
        "{image_path:?}"
    );
    let image = std::fs::read(&image_path).expect("read kepoch_c_sample.sys");
    let map = std::fs::read_to_string(image_path.with_extension("map")).expect("read the map");
    let entry = driver_entry_rva(&map).expect("DriverEntry in the link map");
    let mut failed = Vec::new();
    for (name, result) in all_checks(&image, entry, &REQUIRED) {
        match result {
            Ok(finding) => println!("pe_check {name:<9} OK   {finding}"),
            Err(reason) => failed.push(format!("{name}: {reason}")),
        }
    }
    assert!(failed.is_empty(), "kepoch_c_sample.sys: {failed:?}");
}
