//! The PE rules of a Windows driver image (`kepoch.sys`, and kepoch-nt's example driver, whose test
//! includes this file): machine AMD64, subsystem NATIVE, entry point = `DriverEntry`, imports only from
//! ntoskrnl.exe / hal.dll, none of the routines resolved at run time and every required routine, no
//! section both writable and executable, a valid PE checksum. Each check returns a one-line finding,
//! or the reason it failed.

use std::path::Path;
use std::process::Command;

use object::pe;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};
use object::LittleEndian as LE;

/// The Rust target of the images.
pub const TARGET: &str = "x86_64-pc-windows-msvc";
/// Routines kepoch resolves with MmGetSystemRoutineAddress: importing one would fail the load on kernels
/// (and Wine) that lack it.
pub const RUNTIME_RESOLVED: [&str; 4] = [
    "KeRegisterProcessorChangeCallback",
    "KeDeregisterProcessorChangeCallback",
    "ExAllocatePool2",
    "KeGetProcessorNumberFromIndex",
];
pub const ALLOWED_DLLS: [&str; 2] = ["ntoskrnl.exe", "hal.dll"];
/// Whether the Rust target the images are built for is installed.
pub fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("run rustc --print sysroot");
    let sysroot = String::from_utf8(output.stdout).expect("utf-8 sysroot");
    Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}

pub type Check = Result<String, String>;

pub fn parse(data: &[u8]) -> Result<PeFile64<'_>, String> {
    PeFile64::parse(data).map_err(|e| format!("not a PE32+ image: {e}"))
}

pub fn check_machine(data: &[u8]) -> Check {
    let pe = parse(data)?;
    let machine = pe.nt_headers().file_header.machine.get(LE);
    if machine == pe::IMAGE_FILE_MACHINE_AMD64 {
        Ok(format!("machine 0x{machine:04x} (AMD64)"))
    } else {
        Err(format!("machine 0x{machine:04x}, expected AMD64 (0x8664)"))
    }
}

pub fn check_subsystem(data: &[u8]) -> Check {
    let pe = parse(data)?;
    let subsystem = pe.nt_headers().optional_header().subsystem();
    if subsystem == pe::IMAGE_SUBSYSTEM_NATIVE {
        Ok(format!("subsystem {subsystem} (NATIVE)"))
    } else {
        Err(format!("subsystem {subsystem}, expected NATIVE (1)"))
    }
}

/// `DriverEntry`'s RVA from the lld-link map (`/MAP`): its "Rva+Base" column minus the preferred base.
pub fn driver_entry_rva(map: &str) -> Result<u32, String> {
    let base = map
        .lines()
        .find_map(|l| l.trim().strip_prefix("Preferred load address is "))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or("map: no preferred load address")?;
    let address = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|t| t.len() >= 3 && t[1] == "DriverEntry")
        .and_then(|t| u64::from_str_radix(t[2], 16).ok())
        .ok_or("map: no DriverEntry symbol")?;
    u32::try_from(address - base).map_err(|_| "map: DriverEntry out of range".to_string())
}

pub fn check_entry(data: &[u8], driver_entry_rva: u32) -> Check {
    let pe = parse(data)?;
    let entry = pe.nt_headers().optional_header().address_of_entry_point();
    let section = pe
        .section_table()
        .iter()
        .find(|s| {
            let start = s.virtual_address.get(LE);
            entry >= start && entry < start + s.virtual_size.get(LE)
        })
        .ok_or(format!("entry point 0x{entry:x} is in no section"))?;
    if section.characteristics.get(LE) & pe::IMAGE_SCN_MEM_EXECUTE == 0 {
        return Err(format!(
            "entry point 0x{entry:x} is in a non-executable section"
        ));
    }
    if entry == driver_entry_rva {
        Ok(format!("entry point RVA 0x{entry:x} = DriverEntry"))
    } else {
        Err(format!(
            "entry point RVA 0x{entry:x}, but DriverEntry is at 0x{driver_entry_rva:x}"
        ))
    }
}

/// Every (dll, routine) the image imports.
pub fn imports(data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let pe = parse(data)?;
    let table = pe
        .import_table()
        .map_err(|e| format!("import table: {e}"))?
        .ok_or("no import table")?;
    let mut result = Vec::new();
    let mut descriptors = table.descriptors().map_err(|e| e.to_string())?;
    while let Some(descriptor) = descriptors.next().map_err(|e| e.to_string())? {
        let dll = table
            .name(descriptor.name.get(LE))
            .map_err(|e| e.to_string())?;
        let dll = String::from_utf8_lossy(dll).into_owned();
        let mut first = descriptor.original_first_thunk.get(LE);
        if first == 0 {
            first = descriptor.first_thunk.get(LE);
        }
        let mut thunks = table.thunks(first).map_err(|e| e.to_string())?;
        while let Some(thunk) = thunks
            .next::<pe::ImageNtHeaders64>()
            .map_err(|e| e.to_string())?
        {
            let name = match table
                .import::<pe::ImageNtHeaders64>(thunk)
                .map_err(|e| e.to_string())?
            {
                object::read::pe::Import::Name(_, name) => {
                    String::from_utf8_lossy(name).into_owned()
                }
                object::read::pe::Import::Ordinal(ordinal) => format!("#{ordinal}"),
            };
            result.push((dll.clone(), name));
        }
    }
    Ok(result)
}

pub fn check_imports(data: &[u8], required: &[&str]) -> Check {
    check_import_list(&imports(data)?, required)
}

/// The import rules on a list of (dll, routine): only ntoskrnl.exe/hal.dll (a driver importing from a
/// user-mode DLL such as ntdll.dll fails to load), nothing resolved at run time, every routine of
/// `required`.
pub fn check_import_list(imports: &[(String, String)], required: &[&str]) -> Check {
    if imports.is_empty() {
        return Err("imports nothing (expected ntoskrnl.exe routines)".into());
    }
    let mut problems = Vec::new();
    for (dll, name) in imports {
        if !ALLOWED_DLLS.iter().any(|d| d.eq_ignore_ascii_case(dll)) {
            problems.push(format!(
                "{name} from {dll} (only ntoskrnl.exe/hal.dll allowed)"
            ));
        }
        if RUNTIME_RESOLVED.contains(&name.as_str()) {
            problems.push(format!(
                "{name} is imported but must be resolved at run time"
            ));
        }
    }
    for required in required {
        if !imports.iter().any(|(_, name)| name == required) {
            problems.push(format!("{required} is not imported"));
        }
    }
    if problems.is_empty() {
        let names: Vec<_> = imports.iter().map(|(d, n)| format!("{d}!{n}")).collect();
        Ok(format!("{} imports: {}", imports.len(), names.join(", ")))
    } else {
        Err(problems.join("; "))
    }
}

pub fn check_sections(data: &[u8]) -> Check {
    let pe = parse(data)?;
    let mut names = Vec::new();
    for section in pe.section_table().iter() {
        let name = String::from_utf8_lossy(section.raw_name())
            .trim_end_matches('\0')
            .to_string();
        let flags = section.characteristics.get(LE);
        let w = flags & pe::IMAGE_SCN_MEM_WRITE != 0;
        let x = flags & pe::IMAGE_SCN_MEM_EXECUTE != 0;
        if w && x {
            return Err(format!(
                "section {name} is writable and executable (0x{flags:08x})"
            ));
        }
        names.push(format!(
            "{name} {}{}{}",
            if flags & pe::IMAGE_SCN_MEM_READ != 0 {
                'R'
            } else {
                '-'
            },
            if w { 'W' } else { '-' },
            if x { 'X' } else { '-' }
        ));
    }
    Ok(format!("no W+X section: {}", names.join(", ")))
}

/// File offset of `IMAGE_OPTIONAL_HEADER64.CheckSum`.
pub fn checksum_offset(data: &[u8]) -> Result<usize, String> {
    let e_lfanew = u32::from_le_bytes(
        data.get(0x3c..0x40)
            .ok_or("truncated DOS header")?
            .try_into()
            .unwrap(),
    ) as usize;
    // "PE\0\0" (4) + IMAGE_FILE_HEADER (20) + CheckSum's offset in the optional header (64).
    Ok(e_lfanew + 4 + 20 + 64)
}

/// The PE checksum (the algorithm of imagehlp's CheckSumMappedFile): the file as little-endian 16-bit
/// words with the CheckSum field counted as zero, summed with end-around carry, plus the file length.
pub fn pe_checksum(data: &[u8]) -> Result<u32, String> {
    let field = checksum_offset(data)?;
    let mut sum: u64 = 0;
    for (i, chunk) in data.chunks(2).enumerate() {
        let offset = i * 2;
        if offset >= field && offset < field + 4 {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    Ok(sum as u32 + data.len() as u32)
}

pub fn check_checksum(data: &[u8]) -> Check {
    let pe = parse(data)?;
    let stored = pe.nt_headers().optional_header().check_sum();
    let computed = pe_checksum(data)?;
    if stored == 0 {
        Err("checksum is 0 (link with /RELEASE)".into())
    } else if stored != computed {
        Err(format!(
            "checksum stored 0x{stored:08x}, computed 0x{computed:08x}"
        ))
    } else {
        Ok(format!("checksum 0x{stored:08x} valid"))
    }
}

pub fn all_checks(
    data: &[u8],
    driver_entry_rva: u32,
    required: &[&str],
) -> Vec<(&'static str, Check)> {
    vec![
        ("machine", check_machine(data)),
        ("subsystem", check_subsystem(data)),
        ("entry", check_entry(data, driver_entry_rva)),
        ("imports", check_imports(data, required)),
        ("sections", check_sections(data)),
        ("checksum", check_checksum(data)),
    ]
}
