//! The INF: `inf/kepoch.inx` installs the kernel service (demand start) and writes the default
//! `Parameters` (the same defaults the core uses), and its package copy is UTF-16LE.
//!
//! The test also produces that package copy, `target/kepoch-package/kepoch.inf`: `$ARCH$` stamped to
//! `amd64` (what `stampinf -a amd64` does), CRLF line ends, UTF-16LE with a byte-order mark. On Windows
//! the WDK's stampinf/inf2cat produce the signed package instead (driver/README.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kepoch::config::{Config, MAX_CYCLE_PERIOD_US, MIN_CYCLE_PERIOD_US};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn inx() -> String {
    std::fs::read_to_string(root().join("inf/kepoch.inx")).expect("read inf/kepoch.inx")
}

/// Section name -> its lines, without comments and surrounding blanks.
fn sections(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut current = String::new();
    for raw in text.lines() {
        let mut in_quotes = false;
        let line: String = raw
            .chars()
            .take_while(|&c| {
                if c == '"' {
                    in_quotes = !in_quotes;
                }
                in_quotes || c != ';'
            })
            .collect();
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            out.entry(current.clone()).or_insert_with(Vec::new);
        } else {
            out.entry(current.clone())
                .or_insert_with(Vec::new)
                .push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    out
}

fn entry(sections: &BTreeMap<String, Vec<String>>, section: &str, key: &str) -> String {
    let lines = sections
        .get(section)
        .unwrap_or_else(|| panic!("section [{section}] missing"));
    lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("[{section}] has no {key}"))
}

#[test]
fn inx_installs_a_demand_start_kernel_service_with_default_parameters() {
    let s = sections(&inx());
    assert_eq!(entry(&s, "Version", "Signature"), "\"$WINDOWS NT$\"");
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
    assert_eq!(s["kepoch.CopyFiles"], ["kepoch.sys"]);
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
        s["kepoch.Parameters"],
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
        ]
    );
    // The documented clamp range in the comment matches the core.
    assert!(inx().contains(&format!(
        "clamped to {MIN_CYCLE_PERIOD_US}..={MAX_CYCLE_PERIOD_US}"
    )));
    // Every %string% token used is defined.
    let strings = &s["Strings"];
    for token in [
        "ManufacturerName",
        "DiskName",
        "ServiceName",
        "ServiceDescription",
    ] {
        assert!(
            strings.iter().any(|l| l.starts_with(&format!("{token} ="))),
            "{token} not in [Strings]"
        );
    }
    assert!(
        inx().is_ascii(),
        "keep the .inx ASCII: stampinf and the UTF-16 copy"
    );
}

/// `$ARCH$` -> `amd64`, CRLF, UTF-16LE with BOM.
fn package_inf(inx: &str) -> Vec<u8> {
    let stamped = inx.replace("$ARCH$", "amd64");
    let mut text = String::new();
    for line in stamped.lines() {
        text.push_str(line);
        text.push_str("\r\n");
    }
    let mut bytes = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    bytes
}

#[test]
fn package_copy_is_utf16le_with_bom() {
    let bytes = package_inf(&inx());
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
    assert!(!text.contains("$ARCH$"));
    assert!(text.contains("[DefaultInstall.NTamd64.Services]\r\n"));
    assert!(text.lines().count() > 20);
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "CRLF line ends only"
    );
    let s = sections(&text);
    assert_eq!(
        entry(&s, "DefaultInstall.NTamd64.Services", "AddService"),
        "kepoch,,kepoch.Service"
    );
}
