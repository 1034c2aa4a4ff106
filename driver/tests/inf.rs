//! The INF: `inf/kepoch.inx` installs the kernel service (demand start) and writes the default
//! `Parameters` (the same defaults the core uses); its stamped package copy follows the rules of a
//! primitive-driver INF (`inf/rules.rs`, each rule named in its failure message) and is UTF-16LE.
//!
//! The test also produces that package copy, `target/kepoch-package/kepoch.inf`: `$ARCH$` stamped to
//! `amd64` (what `stampinf -a amd64` does), the crate version in `DriverVer`, CRLF line ends, UTF-16LE
//! with a byte-order mark; `test-scripts/package.sh` puts it in the package.

#[path = "inf/parse.rs"]
mod parse;
#[path = "inf/rules.rs"]
mod rules;

use std::path::PathBuf;

use kepoch::config::{
    Config, MAX_CYCLE_PERIOD_US, MAX_MAX_FREES_PER_VISIT, MIN_CYCLE_PERIOD_US,
    MIN_MAX_FREES_PER_VISIT,
};

use parse::Inf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn inx() -> String {
    std::fs::read_to_string(root().join("inf/kepoch.inx")).expect("read inf/kepoch.inx")
}

fn entry(inf: &Inf, section: &str, key: &str) -> String {
    inf.section(section)
        .unwrap_or_else(|| panic!("section [{section}] missing"));
    inf.value(section, key)
        .unwrap_or_else(|| panic!("[{section}] has no {key}"))
        .to_string()
}

/// The values of a section's lines, in order.
fn lines(inf: &Inf, section: &str) -> Vec<String> {
    inf.section(section)
        .unwrap_or_else(|| panic!("section [{section}] missing"))
        .iter()
        .map(|e| match &e.key {
            Some(k) => format!("{k} = {}", e.value),
            None => e.value.clone(),
        })
        .collect()
}

#[test]
fn inx_installs_a_demand_start_kernel_service_with_default_parameters() {
    let s = Inf::parse(&inx());
    assert_eq!(entry(&s, "Version", "Signature"), "\"$WINDOWS NT$\"");
    assert_eq!(entry(&s, "Version", "Class"), "System");
    assert_eq!(entry(&s, "Version", "ClassGuid"), rules::SYSTEM_CLASS_GUID);
    assert_eq!(entry(&s, "Version", "CatalogFile"), "kepoch.cat");
    assert_eq!(entry(&s, "Version", "PnpLockdown"), "1");
    assert!(entry(&s, "Version", "DriverVer").contains(','));
    assert_eq!(
        entry(&s, "DefaultInstall.NT$ARCH$.Services", "AddService"),
        "kepoch,,kepoch.Service"
    );
    assert_eq!(
        entry(&s, "DefaultInstall.NT$ARCH$", "CopyFiles"),
        "kepoch.CopyFiles"
    );
    assert_eq!(lines(&s, "kepoch.CopyFiles"), ["kepoch.sys"]);
    assert_eq!(entry(&s, "SourceDisksFiles", "kepoch.sys"), "1,,");
    assert_eq!(entry(&s, "kepoch.Service", "ServiceType"), "1");
    assert_eq!(entry(&s, "kepoch.Service", "StartType"), "3");
    assert_eq!(entry(&s, "kepoch.Service", "ErrorControl"), "1");
    assert_eq!(
        entry(&s, "kepoch.Service", "ServiceBinary"),
        "%13%\\kepoch.sys"
    );
    assert_eq!(entry(&s, "kepoch.Service", "AddReg"), "kepoch.Parameters");

    let defaults = Config::default();
    let dword = |value: u32| format!("0x00010001,{value}");
    assert_eq!(
        lines(&s, "kepoch.Parameters"),
        [
            format!(
                "HKR,Parameters,ActivationStrategy,{}",
                dword(defaults.strategy.registry_value())
            ),
            format!(
                "HKR,Parameters,IdleDeactivation,{}",
                dword(u32::from(defaults.idle_deactivation))
            ),
            format!(
                "HKR,Parameters,CyclePeriodMicroseconds,{}",
                dword(defaults.cycle_period_us)
            ),
            format!(
                "HKR,Parameters,MaxFreesPerVisit,{}",
                dword(defaults.max_frees_per_visit)
            ),
        ]
    );
    assert!(inx().contains(&format!(
        "0: no bound; else clamped to {MIN_MAX_FREES_PER_VISIT}..={MAX_MAX_FREES_PER_VISIT}"
    )));
    // The documented clamp range in the comment matches the core.
    assert!(inx().contains(&format!(
        "clamped to {MIN_CYCLE_PERIOD_US}..={MAX_CYCLE_PERIOD_US}"
    )));
    assert!(
        inx().is_ascii(),
        "keep the .inx ASCII: stampinf and the UTF-16 copy"
    );
}

/// What `stampinf -a amd64` does, plus the crate version in DriverVer (w.x.y.z): the stamped text.
fn stamp(inx: &str) -> String {
    let version = format!("{}.0", env!("CARGO_PKG_VERSION"));
    inx.lines()
        .map(|line| {
            let line = line.replace("$ARCH$", "amd64");
            match line.split_once('=') {
                Some((key, value)) if key.trim().eq_ignore_ascii_case("DriverVer") => {
                    let date = value.split(',').next().unwrap_or("").trim();
                    format!("{key}= {date},{version}")
                }
                _ => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// CRLF line ends, UTF-16LE with a byte-order mark.
fn utf16_file(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    for line in text.lines() {
        for unit in line.encode_utf16().chain("\r\n".encode_utf16()) {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
    }
    bytes
}

fn failures(text: &str) -> Vec<String> {
    rules::check(text)
        .into_iter()
        .filter_map(|(_, result)| result.err())
        .collect()
}

/// The package copy: stamped, checked against every rule, then written as
/// `$CARGO_TARGET_DIR/kepoch-package/kepoch.inf` (test-scripts/package.sh copies it into the package).
/// It is written only when every rule passes.
#[test]
fn package_copy_passes_the_primitive_driver_rules_and_is_utf16le() {
    let stamped = stamp(&inx());
    let mut failed = Vec::new();
    for (name, result) in rules::check(&stamped) {
        match result {
            Ok(()) => println!("inf rule {name:<40} OK"),
            Err(reason) => {
                println!("inf rule {name:<40} FAIL {reason}");
                failed.push(reason);
            }
        }
    }
    assert!(failed.is_empty(), "the stamped INF breaks: {failed:#?}");
    assert!(stamped.contains(&format!(",{}.0\n", env!("CARGO_PKG_VERSION"))));

    let bytes = utf16_file(&stamped);
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("kepoch-package");
    std::fs::create_dir_all(&dir).expect("create target/kepoch-package");
    let path = dir.join("kepoch.inf");
    std::fs::write(&path, &bytes).expect("write kepoch.inf");

    let read = std::fs::read(&path).expect("read kepoch.inf back");
    assert_eq!(&read[..2], &[0xFF, 0xFE], "UTF-16LE byte-order mark");
    assert_eq!(read.len() % 2, 0);
    let units: Vec<u16> = read[2..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16(&units).expect("valid UTF-16");
    assert!(text.starts_with(";\r\n; kepoch.inf"));
    assert!(text.contains("[DefaultInstall.NTamd64.Services]\r\n"));
    assert!(text.lines().count() > 20);
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "CRLF line ends only"
    );
    // What was written is what was checked.
    assert!(failures(&text).is_empty(), "{:?}", failures(&text));
}

/// Each rule fails, with its name in the message, on a copy of the stamped INF broken the way it
/// forbids.
#[test]
fn every_rule_catches_its_violation() {
    let good = stamp(&inx());
    let replace = |from: &str, to: &str| {
        assert!(good.contains(from), "{from:?} not in the stamped INF");
        good.replacen(from, to, 1)
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "version-signature",
            replace("\"$WINDOWS NT$\"", "\"$CHICAGO$\""),
        ),
        (
            "version-provider",
            replace("Provider    = %ManufacturerName%", ""),
        ),
        ("version-class", replace("Class       = System\n", "")),
        (
            "version-class",
            replace("ClassGuid   = {4d36e97d", "ClassGuid   = {4d36e97e"),
        ),
        (
            "version-catalogfile",
            replace("CatalogFile = kepoch.cat", ""),
        ),
        ("version-driverver", replace("01/01/2026", "13/01/2026")),
        ("version-driverver", replace(",0.1.0.0", ",0.1.0")),
        ("version-pnplockdown", replace("PnpLockdown = 1", "")),
        (
            "primitive-no-manufacturer",
            replace(
                "[DestinationDirs]",
                "[Manufacturer]\n%ManufacturerName% = Models,NTamd64\n[DestinationDirs]",
            ),
        ),
        (
            "primitive-defaultinstall-decorated",
            replace("[DefaultInstall.NTamd64]", "[DefaultInstall]"),
        ),
        (
            "primitive-defaultuninstall-legacy-only",
            replace("LegacyUninstall = 1", "DelFiles = kepoch.CopyFiles"),
        ),
        (
            "declarative-dirid-13",
            replace("DefaultDestDir = 13", "DefaultDestDir = 12"),
        ),
        (
            "declarative-dirid-13",
            replace("%13%\\kepoch.sys", "%12%\\kepoch.sys"),
        ),
        (
            "declarative-addreg-hkr-only",
            replace(
                "HKR,Parameters,IdleDeactivation",
                "HKLM,System\\CurrentControlSet\\Services\\kepoch\\Parameters,IdleDeactivation",
            ),
        ),
        (
            "service-install",
            replace("StartType      = 3", "StartType      = 0"),
        ),
        (
            "service-install",
            replace("ServiceType    = 1", "ServiceType    = 2"),
        ),
        (
            "files-listed",
            replace("kepoch.sys = 1,,", "kepoch.sys = 2,,"),
        ),
        (
            "strings-defined",
            replace("DiskName           = ", "Disk               = "),
        ),
        (
            "sections-exist",
            replace(
                "AddReg         = kepoch.Parameters",
                "AddReg         = kepoch.Params",
            ),
        ),
        ("stamped", good.replacen("NTamd64", "NT$ARCH$", 1)),
    ];
    for (rule, broken) in cases {
        let failed = failures(&broken);
        assert!(
            failed.iter().any(|f| f.starts_with(&format!("{rule}: "))),
            "rule {rule} did not catch its violation; failures: {failed:?}"
        );
    }
}
