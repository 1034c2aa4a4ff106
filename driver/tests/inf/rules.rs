//! The rules a stamped primitive-driver INF must follow, as InfVerif applies them to this kind of INF
//! (a non-PnP kernel service installed by an architecture-decorated `DefaultInstall`, universal and
//! declarative). Sources: Microsoft's "Creating a primitive driver", the INF `[Version]`,
//! `DefaultInstall`, `DestinationDirs`, `AddService` and `DriverVer` reference pages, and the
//! declarative (DCH) INF requirements. Each rule has a name; a failure message starts with it.

use crate::parse::{strip_comment, Inf};

/// `Class = System` and its GUID (devguid.h `GUID_DEVCLASS_SYSTEM`).
pub const SYSTEM_CLASS_GUID: &str = "{4d36e97d-e325-11ce-bfc1-08002be10318}";

/// One rule: its name and the check (Ok, or the reason, without the name).
pub type Rule = (&'static str, fn(&Inf, &str) -> Result<(), String>);

/// Every rule, in the order they are reported.
pub const RULES: &[Rule] = &[
    ("version-signature", version_signature),
    ("version-provider", version_provider),
    ("version-class", version_class),
    ("version-catalogfile", version_catalog_file),
    ("version-driverver", version_driver_ver),
    ("version-pnplockdown", version_pnp_lockdown),
    ("primitive-no-manufacturer", no_manufacturer),
    (
        "primitive-defaultinstall-decorated",
        default_install_decorated,
    ),
    (
        "primitive-defaultuninstall-legacy-only",
        default_uninstall_legacy_only,
    ),
    ("declarative-dirid-13", dirid_13),
    ("declarative-addreg-hkr-only", addreg_hkr_only),
    ("service-install", service_install),
    ("files-listed", files_listed),
    ("strings-defined", strings_defined),
    ("sections-exist", sections_exist),
    ("stamped", stamped),
];

/// Runs every rule on `text`; each result's error message starts with the rule's name.
pub fn check(text: &str) -> Vec<(&'static str, Result<(), String>)> {
    let inf = Inf::parse(text);
    RULES
        .iter()
        .map(|(name, rule)| (*name, rule(&inf, text).map_err(|e| format!("{name}: {e}"))))
        .collect()
}

fn required<'a>(inf: &'a Inf, section: &str, key: &str) -> Result<&'a str, String> {
    inf.value(section, key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("[{section}] has no {key} entry"))
}

fn version_signature(inf: &Inf, _: &str) -> Result<(), String> {
    let signature = required(inf, "Version", "Signature")?;
    if signature.eq_ignore_ascii_case("\"$WINDOWS NT$\"") {
        Ok(())
    } else {
        Err(format!(
            "Signature is {signature}, expected \"$WINDOWS NT$\""
        ))
    }
}

fn version_provider(inf: &Inf, _: &str) -> Result<(), String> {
    let provider = required(inf, "Version", "Provider")?;
    let name = match provider.strip_prefix('%').and_then(|p| p.strip_suffix('%')) {
        Some(token) => inf
            .string(token)
            .ok_or_else(|| format!("Provider token %{token}% is not in [Strings]"))?,
        None => provider.trim_matches('"').to_string(),
    };
    if name.trim().is_empty() || name.len() > 256 {
        return Err(format!("Provider name '{name}' is empty or too long"));
    }
    if name.to_ascii_lowercase().contains("microsoft") {
        return Err("Provider must not claim to be Microsoft".into());
    }
    Ok(())
}

fn version_class(inf: &Inf, _: &str) -> Result<(), String> {
    let class = required(inf, "Version", "Class")?;
    let guid = required(inf, "Version", "ClassGuid")?;
    let well_formed = guid.len() == 38
        && guid.starts_with('{')
        && guid.ends_with('}')
        && guid[1..37].char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if !well_formed {
        return Err(format!("ClassGuid {guid} is not a {{8-4-4-4-12}} GUID"));
    }
    if class.eq_ignore_ascii_case("System") && !guid.eq_ignore_ascii_case(SYSTEM_CLASS_GUID) {
        return Err(format!(
            "Class = System needs ClassGuid = {SYSTEM_CLASS_GUID}, found {guid}"
        ));
    }
    if !class.eq_ignore_ascii_case("System") {
        return Err(format!(
            "Class = {class}: a software-only kernel service uses the System class"
        ));
    }
    Ok(())
}

fn version_catalog_file(inf: &Inf, _: &str) -> Result<(), String> {
    let catalog = required(inf, "Version", "CatalogFile")?;
    if !catalog.to_ascii_lowercase().ends_with(".cat") || catalog.contains(['\\', '/', ':']) {
        return Err(format!(
            "CatalogFile {catalog} must be a bare file name ending in .cat"
        ));
    }
    Ok(())
}

/// `DriverVer = mm/dd/yyyy,w.x.y.z`: a real date, four parts of at most 65535.
fn version_driver_ver(inf: &Inf, _: &str) -> Result<(), String> {
    let value = required(inf, "Version", "DriverVer")?;
    let (date, version) = value
        .split_once(',')
        .ok_or_else(|| format!("DriverVer {value} has no ',version'"))?;
    let parts: Vec<u32> = date
        .trim()
        .split('/')
        .map(|p| p.parse().map_err(|_| format!("DriverVer date {date}")))
        .collect::<Result<_, _>>()?;
    let [month, day, year] = parts[..] else {
        return Err(format!("DriverVer date {date} is not mm/dd/yyyy"));
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || !(1990..=9999).contains(&year) {
        return Err(format!("DriverVer date {date} is not a valid mm/dd/yyyy"));
    }
    let numbers: Vec<&str> = version.trim().split('.').collect();
    if numbers.len() != 4
        || numbers
            .iter()
            .any(|n| n.parse::<u32>().map_or(true, |n| n > 65535))
    {
        return Err(format!(
            "DriverVer version {version} is not w.x.y.z with parts <= 65535"
        ));
    }
    Ok(())
}

fn version_pnp_lockdown(inf: &Inf, _: &str) -> Result<(), String> {
    match inf.value("Version", "PnpLockdown") {
        Some("1") => Ok(()),
        other => Err(format!("PnpLockdown must be 1, found {other:?}")),
    }
}

fn no_manufacturer(inf: &Inf, _: &str) -> Result<(), String> {
    match inf.section("Manufacturer") {
        Some(_) => {
            Err("a primitive driver has DefaultInstall and no [Manufacturer] section".into())
        }
        None => Ok(()),
    }
}

fn is_decorated(name: &str, base: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix(&base.to_ascii_lowercase()) else {
        return false;
    };
    let arch = rest.split('.').nth(1).unwrap_or("");
    ["ntamd64", "ntarm64", "ntx86", "ntarm"].contains(&arch)
}

fn default_install_decorated(inf: &Inf, _: &str) -> Result<(), String> {
    let mut decorated = false;
    for name in inf.section_names() {
        if name.to_ascii_lowercase().starts_with("defaultinstall") {
            if !is_decorated(name, "DefaultInstall") {
                return Err(format!(
                    "[{name}] is not architecture decorated (e.g. [DefaultInstall.NTamd64])"
                ));
            }
            decorated |= name.eq_ignore_ascii_case("DefaultInstall.NTamd64");
        }
    }
    if decorated {
        Ok(())
    } else {
        Err("no [DefaultInstall.NTamd64] section".into())
    }
}

/// [DefaultUninstall] is not allowed for primitive drivers, except the down-level compatibility form:
/// a decorated section holding only `LegacyUninstall = 1` (plus its `.Services`).
fn default_uninstall_legacy_only(inf: &Inf, _: &str) -> Result<(), String> {
    for name in inf.section_names() {
        let lower = name.to_ascii_lowercase();
        if !lower.starts_with("defaultuninstall") {
            continue;
        }
        if !is_decorated(name, "DefaultUninstall") {
            return Err(format!("[{name}] is not architecture decorated"));
        }
        if lower.ends_with(".services") {
            continue;
        }
        let entries = inf.section(name).unwrap_or_default();
        let legacy_only = entries.len() == 1
            && entries[0]
                .key
                .as_deref()
                .is_some_and(|k| k.eq_ignore_ascii_case("LegacyUninstall"))
            && entries[0].value == "1";
        if !legacy_only {
            return Err(format!("[{name}] may only hold LegacyUninstall = 1"));
        }
    }
    Ok(())
}

fn dirid_13(inf: &Inf, _: &str) -> Result<(), String> {
    let dirs = inf
        .section("DestinationDirs")
        .ok_or("no [DestinationDirs] section")?;
    for entry in dirs {
        let dirid = entry.value.split(',').next().unwrap_or("").trim();
        if dirid != "13" {
            return Err(format!(
                "[DestinationDirs] {} = {}: files must stay in the driver store (DIRID 13)",
                entry.key.as_deref().unwrap_or("?"),
                entry.value
            ));
        }
    }
    for section in service_sections(inf)? {
        let binary = required(inf, &section, "ServiceBinary")?;
        if !binary.starts_with("%13%\\") {
            return Err(format!(
                "[{section}] ServiceBinary {binary} is not under %13% (the driver store)"
            ));
        }
    }
    Ok(())
}

/// (section, target) for every target named by `directive` (e.g. `AddReg = a, b`) in any section.
fn directive_targets(inf: &Inf, directive: &str) -> Vec<(String, String)> {
    inf.section_names()
        .flat_map(|section| {
            inf.values(section, directive)
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| (section.to_string(), t.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Sections named by every `AddReg` directive.
fn addreg_sections(inf: &Inf) -> Vec<String> {
    directive_targets(inf, "AddReg")
        .into_iter()
        .map(|(_, target)| target)
        .collect()
}

fn addreg_hkr_only(inf: &Inf, _: &str) -> Result<(), String> {
    for section in addreg_sections(inf) {
        for entry in inf.section(&section).unwrap_or_default() {
            let root = entry.value.split(',').next().unwrap_or("").trim();
            if !root.eq_ignore_ascii_case("HKR") {
                return Err(format!(
                    "[{section}] writes to {root}: a declarative INF writes only below HKR"
                ));
            }
        }
    }
    Ok(())
}

/// Service-install sections of every `AddService` in the DefaultInstall `.Services` sections.
fn service_sections(inf: &Inf) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for name in inf.section_names() {
        let lower = name.to_ascii_lowercase();
        if !(lower.starts_with("defaultinstall") && lower.ends_with(".services")) {
            continue;
        }
        for value in inf.values(name, "AddService") {
            let fields: Vec<&str> = value.split(',').map(str::trim).collect();
            let section = fields
                .get(2)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("AddService = {value} names no service-install section"))?;
            out.push((*section).to_string());
        }
    }
    Ok(out)
}

fn service_install(inf: &Inf, _: &str) -> Result<(), String> {
    let sections = service_sections(inf)?;
    if sections.is_empty() {
        return Err("no AddService in [DefaultInstall.NTamd64.Services]".into());
    }
    for section in &sections {
        inf.section(section)
            .ok_or_else(|| format!("service-install section [{section}] is missing"))?;
        let field = |key: &str| required(inf, section, key);
        if field("ServiceType")? != "1" {
            return Err(format!(
                "[{section}] ServiceType must be 1 (SERVICE_KERNEL_DRIVER)"
            ));
        }
        if field("StartType")? != "3" {
            return Err(format!(
                "[{section}] StartType must be 3 (demand start): boot/system start is for boot drivers"
            ));
        }
        if !["0", "1"].contains(&field("ErrorControl")?) {
            return Err(format!(
                "[{section}] ErrorControl must be 0 or 1 (no reboot into last-known-good)"
            ));
        }
        field("DisplayName")?;
        let binary = field("ServiceBinary")?;
        let file = binary.rsplit('\\').next().unwrap_or(binary);
        if inf.value("SourceDisksFiles", file).is_none() {
            return Err(format!(
                "[{section}] ServiceBinary {file} is not in [SourceDisksFiles]"
            ));
        }
        let copied = copy_files(inf).iter().any(|f| f.eq_ignore_ascii_case(file));
        if !copied {
            return Err(format!(
                "[{section}] ServiceBinary {file} is copied by no CopyFiles section"
            ));
        }
    }
    Ok(())
}

/// Files named by every CopyFiles list section.
fn copy_files(inf: &Inf) -> Vec<String> {
    directive_targets(inf, "CopyFiles")
        .into_iter()
        .flat_map(|(_, list)| {
            inf.section(&list)
                .unwrap_or_default()
                .iter()
                .map(|e| e.value.split(',').next().unwrap_or("").trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn files_listed(inf: &Inf, _: &str) -> Result<(), String> {
    let disks = inf
        .section("SourceDisksNames")
        .ok_or("no [SourceDisksNames] section")?;
    let files = copy_files(inf);
    if files.is_empty() {
        return Err("no file is copied".into());
    }
    for file in files {
        let entry = inf
            .value("SourceDisksFiles", &file)
            .ok_or_else(|| format!("{file} is copied but not in [SourceDisksFiles]"))?;
        let disk = entry.split(',').next().unwrap_or("").trim();
        if !disks.iter().any(|d| d.key.as_deref() == Some(disk)) {
            return Err(format!(
                "{file} is on disk {disk}, which [SourceDisksNames] does not define"
            ));
        }
    }
    Ok(())
}

fn strings_defined(inf: &Inf, text: &str) -> Result<(), String> {
    for line in text.lines().map(strip_comment) {
        let mut rest = line;
        while let Some(start) = rest.find('%') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else { break };
            let token = &after[..end];
            rest = &after[end + 1..];
            if token.is_empty() || token.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            if inf.string(token).is_none() {
                return Err(format!("%{token}% is used but not defined in [Strings]"));
            }
        }
    }
    Ok(())
}

fn sections_exist(inf: &Inf, _: &str) -> Result<(), String> {
    for directive in ["CopyFiles", "AddReg"] {
        for (name, target) in directive_targets(inf, directive) {
            if !target.starts_with('@') && inf.section(&target).is_none() {
                return Err(format!("[{name}] {directive} = {target}: no such section"));
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in inf.section_names() {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!("section [{name}] appears twice"));
        }
    }
    Ok(())
}

fn stamped(_: &Inf, text: &str) -> Result<(), String> {
    if text.contains("$ARCH$") {
        Err("$ARCH$ is still in the INF (not stamped)".into())
    } else {
        Ok(())
    }
}
