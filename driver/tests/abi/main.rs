//! The driver's ABI against an independent source: mingw-w64's DDK headers (`ddk/wdm.h`, `ntddk.h`,
//! `ntifs.h`) and import libraries (`libntoskrnl.a`, `libhal.a`).
//!
//! - layouts, constants and IOCTL codes: C `_Static_assert`s generated from the Rust values, compiled
//!   with `x86_64-w64-mingw32-gcc -fsyntax-only`;
//! - every imported routine, every run-time-resolved routine type and every callback type, read from
//!   the driver's sources and, for what `nt/src/sys/raw.rs` re-exports from windows-sys, from windows-sys's own
//!   `windows_link::link!` invocations and type aliases (located with `cargo metadata`): C++
//!   `static_assert`s on the header prototypes (`x86_64-w64-mingw32-g++`);
//! - the routines the driver declares itself (windows-sys links them to ntdll.dll) have windows-sys's
//!   signatures, and windows-sys still links them to ntdll;
//! - every imported name exists in the import library of its DLL (read with the `object` crate).
//!
//! What mingw-w64 lacks is pinned in one allow-list (`layouts::PINNED`, `ExAllocatePool2Fn`). Without
//! the tools the tests print `SKIPPED:`; with `KEPOCH_REQUIRE_ABI_TOOLS` set (the test suite sets it)
//! they fail instead.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

mod declarations;
mod layouts;
mod signatures;
mod sources;

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use layouts::Check;
use sources::sources;

/// The mingw-w64 pieces the checks need.
struct Toolchain {
    gcc: PathBuf,
    gxx: PathBuf,
    ddk: PathBuf,
    lib: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The toolchain, or `None` after printing why the check is skipped (a failure when required).
fn toolchain() -> Option<Toolchain> {
    let ddk = [
        "/usr/share/mingw-w64/include/ddk",
        "/usr/x86_64-w64-mingw32/include/ddk",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.join("wdm.h").is_file());
    let lib = PathBuf::from("/usr/x86_64-w64-mingw32/lib");
    let found = (
        on_path("x86_64-w64-mingw32-gcc"),
        on_path("x86_64-w64-mingw32-g++"),
        ddk,
        lib.join("libntoskrnl.a").is_file().then_some(lib),
    );
    match found {
        (Some(gcc), Some(gxx), Some(ddk), Some(lib)) => Some(Toolchain { gcc, gxx, ddk, lib }),
        missing => {
            let why = format!(
                "mingw-w64 gcc/g++, DDK headers or import libraries missing (gcc {:?}, g++ {:?}, ddk {:?}, lib {:?}); \
                 test-scripts/setup.sh installs gcc-mingw-w64-x86-64, g++-mingw-w64-x86-64, mingw-w64-x86-64-dev",
                missing.0, missing.1, missing.2, missing.3
            );
            assert!(
                std::env::var_os("KEPOCH_REQUIRE_ABI_TOOLS").is_none(),
                "{why}"
            );
            println!("SKIPPED: driver ABI against mingw-w64: {why}");
            None
        }
    }
}

fn source(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Headers for both compilers: Windows 10 declarations of the kernel-mode headers.
const DEFINES: &[&str] = &["-D_WIN32_WINNT=0x0A00", "-DNTDDI_VERSION=0x0A000000"];

/// Compiles `text` (`-fsyntax-only`); returns the compiler's messages on failure.
fn compile(tools: &Toolchain, cxx: bool, name: &str, text: &str) -> Result<(), String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abi");
    std::fs::create_dir_all(&dir).expect("target tmp dir");
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write the generated source");
    let mut command = Command::new(if cxx { &tools.gxx } else { &tools.gcc });
    command
        .arg("-fsyntax-only")
        .arg("-I")
        .arg(&tools.ddk)
        .args(DEFINES);
    if cxx {
        command.arg("-std=c++17");
    }
    let output = command
        .arg(&file)
        .output()
        .expect("running the mingw-w64 compiler");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The C file of layout and constant assertions.
fn c_file(checks: &[Check]) -> String {
    let mut out = String::from("#include <ntifs.h>\n#include <stddef.h>\n");
    for check in checks {
        writeln!(
            out,
            "_Static_assert((long long)({}) == {}LL, \"{}\");",
            check.c, check.rust, check.what
        )
        .unwrap();
    }
    for check in layouts::windows_sys_differences() {
        writeln!(
            out,
            "_Static_assert((long long)({}) != {}LL, \"{}\");",
            check.c, check.rust, check.what
        )
        .unwrap();
    }
    for (name, _, why) in layouts::PINNED {
        writeln!(out, "#ifdef {name}\n#error \"{name} is defined by mingw-w64 now: move it from PINNED ({why}) to the checked constants\"\n#endif").unwrap();
    }
    out
}

#[test]
fn layouts_constants_and_ioctl_codes_match_the_ddk_headers() {
    layouts::pinned_values_are_documented();
    let Some(tools) = toolchain() else { return };
    let mut checks = layouts::layouts();
    checks.extend(layouts::constants());
    compile(&tools, false, "layouts.c", &c_file(&checks)).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{} layout and constant assertions hold against mingw-w64's DDK headers",
        checks.len()
    );
}

#[test]
fn a_changed_offset_or_ioctl_code_fails_the_check() {
    let Some(tools) = toolchain() else { return };
    for broken in [
        "offset of IRP.Tail.Overlay.CurrentStackLocation",
        "CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800",
    ] {
        let mut checks = layouts::layouts();
        checks.extend(layouts::constants());
        let check = checks
            .iter_mut()
            .find(|c| c.what.starts_with(broken) || c.c.starts_with(broken))
            .expect("the check to break");
        check.rust += 4;
        let what = check.what.clone();
        let error = compile(&tools, false, "broken.c", &c_file(&checks))
            .expect_err("a wrong value must not compile");
        assert!(error.contains(&what), "the failure names {what}: {error}");
    }
}

/// The C++ includes: ntifs.h after intrin.h, with wdm.h's two inline bit-test helpers renamed (they
/// clash with intrin.h's definitions under C++; the driver uses neither).
const CXX_INCLUDES: &str = "#include <intrin.h>\n#define InterlockedBitTestAndSet ddk_InterlockedBitTestAndSet\n\
#define InterlockedBitTestAndReset ddk_InterlockedBitTestAndReset\n#include <ntifs.h>\n#include <string.h>\n";

/// The declarations to check, each with its header function type; the pinned ones listed apart.
fn declared_routines() -> (Vec<(declarations::Routine, String)>, Vec<String>) {
    let sources = sources();
    let mut routines: Vec<_> = sources
        .hand_written
        .into_iter()
        .chain(sources.from_windows_sys)
        .map(|r| {
            let header = format!("decltype({})", r.name);
            (r, header)
        })
        .collect();
    let mut pinned = Vec::new();
    for alias in sources.callbacks {
        match signatures::header_type_of_alias(&alias.name) {
            Ok(header) => routines.push((alias, header.to_string())),
            Err(why) => pinned.push(format!("{}: {why}", alias.name)),
        }
    }
    (routines, pinned)
}

#[test]
fn imported_and_resolved_routines_and_callbacks_match_the_header_prototypes() {
    let Some(tools) = toolchain() else { return };
    let (routines, pinned) = declared_routines();
    assert!(
        routines.len() > 40,
        "only {} declarations found",
        routines.len()
    );
    let text = signatures::file(CXX_INCLUDES, &routines);
    compile(&tools, true, "signatures.cpp", &text).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{} routine and callback signatures match mingw-w64's prototypes; pinned: {pinned:?}",
        routines.len()
    );
}

/// A routine, how to break its Rust declaration, and what the compiler must then report.
type Case = (
    &'static str,
    Box<dyn Fn(&mut declarations::Routine)>,
    &'static str,
);

#[test]
fn a_changed_parameter_fails_the_signature_check() {
    use declarations::Abi;
    let Some(tools) = toolchain() else { return };
    let unsigned = Abi::Integer {
        size: 4,
        signed: false,
    };
    let cases: [Case; 3] = [
        ("KeInitializeDpc", Box::new(|r| drop(r.parameters.pop())), "KeInitializeDpc: 2 parameter(s)"),
        (
            "KeQueryActiveProcessorCountEx",
            Box::new(move |r| r.parameters[0].1 = unsigned.clone()),
            "KeQueryActiveProcessorCountEx: parameter 1 `groupnumber` is a 4-byte unsigned integer",
        ),
        (
            "KeSetEvent",
            Box::new(|r| r.parameters[1].1 = Abi::Integer { size: 4, signed: false }),
            "KeSetEvent: parameter 2 `increment` is a 4-byte unsigned integer on the Rust side (signedness)",
        ),
    ];
    for (name, mutate, expected) in cases {
        let (mut routines, _) = declared_routines();
        let routine = &mut routines
            .iter_mut()
            .find(|(r, _)| r.name == name)
            .expect("declared")
            .0;
        mutate(routine);
        let text = signatures::file(CXX_INCLUDES, &routines);
        let error = compile(&tools, true, "broken.cpp", &text)
            .expect_err("a wrong declaration must not compile");
        assert!(
            error.contains(expected),
            "expected a failure naming `{expected}`: {error}"
        );
    }
}

/// Symbol names in an import library.
fn archive_symbols(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let archive = object::read::archive::ArchiveFile::parse(&*data).expect("an ar archive");
    archive
        .symbols()
        .expect("a symbol table")
        .expect("an archive symbol table")
        .filter_map(Result::ok)
        .map(|s| String::from_utf8_lossy(s.name()).into_owned())
        .collect()
}

/// Names the platform resolves with `MmGetSystemRoutineAddress` (`resolve(wide!("..."))`).
fn resolved_names() -> Vec<String> {
    let text = std::fs::read_to_string(source("nt/src/routines.rs")).expect("routines.rs");
    text.split("resolve(wide!(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().expect("a name").to_string())
        .collect()
}

#[test]
fn every_imported_and_resolved_name_is_exported_by_its_dll() {
    let Some(tools) = toolchain() else { return };
    let ntoskrnl = archive_symbols(&tools.lib.join("libntoskrnl.a"));
    let hal = archive_symbols(&tools.lib.join("libhal.a"));
    let mut missing = Vec::new();
    let sources = sources();
    let imports: Vec<_> = sources
        .hand_written
        .iter()
        .chain(&sources.from_windows_sys)
        .collect();
    assert!(
        sources.from_windows_sys.len() > 30,
        "only {} routines found re-exported from windows-sys",
        sources.from_windows_sys.len()
    );
    for routine in &imports {
        let library = match routine.dll.as_deref() {
            Some("ntoskrnl.exe") => &ntoskrnl,
            Some("hal.dll") => &hal,
            other => panic!(
                "{}: import from {other:?}: only ntoskrnl.exe and hal.dll are allowed",
                routine.name
            ),
        };
        if !library.contains(&routine.name) {
            missing.push(format!("{} (from {:?})", routine.name, routine.dll));
        }
    }
    let resolved = resolved_names();
    assert!(resolved.len() >= 4, "{resolved:?}");
    for name in &resolved {
        let pinned = name == "ExAllocatePool2";
        let exported = ntoskrnl.iter().any(|s| s == name);
        if pinned {
            assert!(
                !exported,
                "libntoskrnl.a exports ExAllocatePool2 now: check its prototype there"
            );
        } else if !exported {
            missing.push(format!("{name} (resolved at run time)"));
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by mingw-w64's import libraries: {missing:?}"
    );
    println!(
        "{} imports and {} resolved names found in libntoskrnl.a/libhal.a",
        imports.len(),
        resolved.len()
    );
}

/// The imports `nt/src/sys/raw.rs` declares itself although windows-sys declares them (with an ntdll.dll link),
/// and the ones windows-sys does not declare at all.
const NOT_IN_WINDOWS_SYS: &[&str] = &["memcpy", "memmove", "memset", "memcmp"];

#[test]
fn hand_written_imports_have_windows_sys_signatures_and_are_ntdll_linked_there() {
    let sources = sources();
    let raw = source("nt/src/sys/raw.rs");
    let mut compared = 0;
    for (name, abi, signature) in declarations::hand_written_signatures(&raw) {
        let declared: Vec<_> = sources
            .linked
            .iter()
            .filter(|l| l.routine.name == name)
            .collect();
        if NOT_IN_WINDOWS_SYS.contains(&name.as_str()) {
            assert!(
                declared.is_empty(),
                "windows-sys declares {name} now: check whether nt/src/sys/raw.rs can re-export it"
            );
            continue;
        }
        let [linked] = declared[..] else {
            panic!(
                "{name}: {} declarations in windows-sys's Wdk modules (expected 1)",
                declared.len()
            );
        };
        assert_eq!(
            linked.routine.dll.as_deref(),
            Some("ntdll.dll"),
            "{name}: windows-sys links it to {:?} now: re-export it from windows-sys instead of \
             declaring it in nt/src/sys/raw.rs",
            linked.routine.dll
        );
        assert_eq!(
            (abi.as_str(), signature.as_str()),
            (linked.abi.as_str(), linked.signature.as_str()),
            "{name}: nt/src/sys/raw.rs' calling convention or signature differs from windows-sys's"
        );
        compared += 1;
    }
    assert!(
        compared >= 10,
        "only {compared} hand-written imports compared"
    );
    println!("{compared} hand-written imports have windows-sys's signatures (ntdll-linked there)");
}

#[test]
fn windows_sys_callbacks_are_still_parameterless() {
    let sources = sources();
    for name in [
        "PKDEFERRED_ROUTINE",
        "PIO_WORKITEM_ROUTINE_EX",
        "PKSTART_ROUTINE",
    ] {
        let alias = sources
            .callbacks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} is re-exported from windows-sys"));
        assert!(
            alias.parameters.is_empty(),
            "windows-sys's {name} has parameters now: check it against the header and drop the \
             *_ROUTINE conversion of nt/src/sys/raw.rs"
        );
    }
}
