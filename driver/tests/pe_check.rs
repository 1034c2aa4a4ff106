//! PE check of `kepoch.sys` (the rules are `pe_check/rules.rs`): machine AMD64, subsystem NATIVE, entry
//! point = `DriverEntry`, imports only from ntoskrnl.exe / hal.dll, none of the routines resolved at
//! run time and every routine of `REQUIRED`, no section both writable and executable, a valid PE
//! checksum.
//!
//! The test builds the image (`cargo build --release --target x86_64-pc-windows-msvc -p kepoch-driver`).
//! It is skipped, with a loud `SKIPPED:` line, only when that Rust target is not installed.
//! The `mutation_*` tests prove each check fails on a damaged copy of the image.
//!
//! The signed tests sign the image as `test-scripts/package.sh` does (`test-scripts/sign-pe.sh`: a
//! throw-away certificate, osslsigncode) and check the signed copy: every check above still passes (the
//! checksum was recomputed after signing), the Authenticode signature covers this image (`signature`),
//! and `osslsigncode verify` accepts it against the generated certificate. They print `SKIPPED:` when
//! openssl or osslsigncode is not installed.

#[path = "pe_check/rules.rs"]
mod rules;
#[path = "pe_check/signature.rs"]
mod signature;
#[path = "pe_check/signed.rs"]
mod signed;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use object::pe;
use object::LittleEndian as LE;

use rules::*;
/// Routines the image must import: the critical region around the passive lock, the cycle DPCs'
/// importance, and the flush that failure paths and unload do before the image can go.
const REQUIRED: [&str; 4] = [
    "KeEnterCriticalRegion",
    "KeLeaveCriticalRegion",
    "KeSetImportanceDpc",
    "KeFlushQueuedDpcs",
];

/// The built image and its link map, or `None` when the target is not installed.
struct Built {
    image: Vec<u8>,
    map: String,
}

fn built() -> Option<&'static Built> {
    static BUILT: OnceLock<Option<Built>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if !target_installed() {
                eprintln!(
                    "SKIPPED: PE check of kepoch.sys: Rust target {TARGET} is not installed \
                     (rustup target add {TARGET})"
                );
                return None;
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
                    "kepoch-driver",
                ])
                .status()
                .expect("run cargo build for the driver");
            assert!(status.success(), "building kepoch.sys failed");
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            let release = target_dir.join(TARGET).join("release");
            let image = std::fs::read(release.join("kepoch.sys")).expect("read kepoch.sys");
            let map = std::fs::read_to_string(release.join("deps/kepoch.map"))
                .expect("read the link map");
            Some(Built { image, map })
        })
        .as_ref()
}

// ---- the check of the real image ----

#[test]
fn kepoch_sys_passes_the_pe_check() {
    let Some(built) = built() else { return };
    let entry = driver_entry_rva(&built.map).expect("DriverEntry in the link map");
    let mut failed = false;
    for (name, result) in all_checks(&built.image, entry, &REQUIRED) {
        match result {
            Ok(finding) => println!("pe_check {name:<9} OK   {finding}"),
            Err(reason) => {
                println!("pe_check {name:<9} FAIL {reason}");
                failed = true;
            }
        }
    }
    assert!(!failed, "kepoch.sys fails the PE check (see above)");
}

// ---- each check fails on a damaged image ----

fn image() -> Option<(Vec<u8>, u32)> {
    let built = built()?;
    Some((
        built.image.clone(),
        driver_entry_rva(&built.map).expect("DriverEntry in the link map"),
    ))
}

fn optional_header_offset(data: &[u8]) -> usize {
    checksum_offset(data).unwrap() - 64
}

fn section_header_offset(data: &[u8], name: &str) -> usize {
    let pe = parse(data).unwrap();
    let index = pe
        .section_table()
        .iter()
        .position(|s| s.raw_name().starts_with(name.as_bytes()))
        .unwrap_or_else(|| panic!("no section {name}"));
    let size_of_optional = pe.nt_headers().file_header.size_of_optional_header.get(LE) as usize;
    optional_header_offset(data) + size_of_optional + index * 40
}

fn replace_once(data: &mut [u8], from: &[u8], to: &[u8]) {
    assert!(to.len() <= from.len());
    let at = data
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{} not in the image", String::from_utf8_lossy(from)));
    data[at..at + from.len()].fill(0);
    data[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn mutation_machine_is_caught() {
    let Some((mut data, _)) = image() else { return };
    let at = checksum_offset(&data).unwrap() - 64 - 20; // IMAGE_FILE_HEADER.Machine
    data[at..at + 2].copy_from_slice(&0x014cu16.to_le_bytes()); // i386
    assert!(check_machine(&data).is_err());
}

#[test]
fn mutation_subsystem_is_caught() {
    let Some((mut data, _)) = image() else { return };
    let at = optional_header_offset(&data) + 68; // IMAGE_OPTIONAL_HEADER64.Subsystem
    data[at..at + 2].copy_from_slice(&pe::IMAGE_SUBSYSTEM_WINDOWS_CUI.to_le_bytes());
    assert!(check_subsystem(&data).unwrap_err().contains("subsystem 3"));
}

#[test]
fn mutation_entry_point_is_caught() {
    let Some((mut data, entry)) = image() else {
        return;
    };
    let at = optional_header_offset(&data) + 16; // AddressOfEntryPoint
    data[at..at + 4].copy_from_slice(&(entry + 0x10).to_le_bytes());
    assert!(check_entry(&data, entry).is_err());
}

#[test]
fn mutation_foreign_dll_is_caught() {
    let Some((mut data, _)) = image() else { return };
    replace_once(&mut data, b"ntoskrnl.exe\0", b"kernel32.dll\0");
    let error = check_imports(&data, &REQUIRED).unwrap_err();
    assert!(error.contains("kernel32.dll"), "{error}");
}

/// windows-sys links some kernel routines (ZwClose, the Rtl security routines, DbgPrintEx...) to
/// ntdll.dll: an image that picked up one of those declarations must fail the check, naming both.
#[test]
fn an_ntdll_import_is_caught() {
    let Some((mut data, _)) = image() else { return };
    // The real image passes and imports ZwClose from ntoskrnl.exe.
    let real = imports(&data).expect("the import table");
    check_import_list(&real, &REQUIRED).expect("kepoch.sys passes the import rules");
    assert!(
        real.contains(&("ntoskrnl.exe".into(), "ZwClose".into())),
        "{real:?}"
    );
    // The same list with ZwClose taken from ntdll.dll, as windows-sys declares it.
    let synthetic: Vec<(String, String)> = real
        .iter()
        .map(|(dll, name)| match name.as_str() {
            "ZwClose" => ("ntdll.dll".to_string(), name.clone()),
            _ => (dll.clone(), name.clone()),
        })
        .collect();
    let error = check_import_list(&synthetic, &REQUIRED).unwrap_err();
    assert_eq!(
        error, "ZwClose from ntdll.dll (only ntoskrnl.exe/hal.dll allowed)",
        "exactly the ntdll import is reported"
    );
    // And in a PE image: the ntoskrnl.exe descriptor renamed to ntdll.dll (same length with padding).
    replace_once(&mut data, b"ntoskrnl.exe\0", b"ntdll.dll\0\0\0\0");
    let error = check_imports(&data, &REQUIRED).unwrap_err();
    assert!(
        error.contains("ZwClose from ntdll.dll") && error.contains("RtlCreateAcl from ntdll.dll"),
        "{error}"
    );
}

#[test]
fn mutation_runtime_resolved_import_is_caught() {
    let Some((mut data, _)) = image() else { return };
    // Turn the MmGetSystemRoutineAddress import into ExAllocatePool2 (the name fits in place).
    replace_once(
        &mut data,
        b"MmGetSystemRoutineAddress\0",
        b"ExAllocatePool2\0",
    );
    let error = check_imports(&data, &REQUIRED).unwrap_err();
    assert!(error.contains("ExAllocatePool2"), "{error}");
}

#[test]
fn mutation_missing_required_import_is_caught() {
    let Some((mut data, _)) = image() else { return };
    // Rename the KeEnterCriticalRegion import (same length, so the table stays intact).
    replace_once(
        &mut data,
        b"KeEnterCriticalRegion\0",
        b"KeEnterCriticalRegioX\0",
    );
    let error = check_imports(&data, &REQUIRED).unwrap_err();
    assert!(
        error.contains("KeEnterCriticalRegion is not imported"),
        "{error}"
    );
}

#[test]
fn mutation_writable_text_is_caught() {
    let Some((mut data, _)) = image() else { return };
    let at = section_header_offset(&data, ".text") + 36; // Characteristics
    let flags = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) | pe::IMAGE_SCN_MEM_WRITE;
    data[at..at + 4].copy_from_slice(&flags.to_le_bytes());
    assert!(check_sections(&data).unwrap_err().contains(".text"));
}

#[test]
fn mutation_checksum_is_caught_and_recomputation_matches() {
    let Some((mut data, _)) = image() else { return };
    assert!(check_checksum(&data).is_ok(), "{:?}", check_checksum(&data));
    // Change one byte of padding at the end of the file: the stored checksum no longer matches.
    let last = data.len() - 1;
    data[last] ^= 0x5a;
    assert!(check_checksum(&data).unwrap_err().contains("computed"));
    // Store our recomputed value: the checker accepts it (so the algorithm is the linker's).
    let sum = pe_checksum(&data).unwrap();
    let at = checksum_offset(&data).unwrap();
    data[at..at + 4].copy_from_slice(&sum.to_le_bytes());
    assert!(check_checksum(&data).is_ok());
    // A zero checksum (linked without /RELEASE) is refused.
    data[at..at + 4].fill(0);
    assert!(check_checksum(&data).unwrap_err().contains("/RELEASE"));
}

#[test]
fn map_parser_finds_driver_entry() {
    let map = " kepoch\n\n Preferred load address is 0000000140000000\n\n  Address  Publics by Value  Rva+Base  Lib:Object\n\n 0001:00000000       DriverEntry                0000000140001000     kepoch.o\n";
    assert_eq!(driver_entry_rva(map), Ok(0x1000));
    assert!(driver_entry_rva("no symbols").is_err());
}
