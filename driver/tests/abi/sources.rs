//! Where the checks read the bindings from: the facade's sources (`nt/src/sys/`), and windows-sys's
//! own sources (located with `cargo metadata`) for what the facade re-exports from it.

use std::path::PathBuf;
use std::process::Command;

use crate::declarations;
use crate::source;

/// The `src` directory of the windows-sys package kepoch-nt (the driver's bindings) depends on
/// (`cargo metadata`).
fn windows_sys_src() -> PathBuf {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            // Only this host's dependency graph: without the filter cargo wants every platform's
            // packages of the lock file (windows_i686_gnu, …), which a build for Linux and the
            // Windows target never downloaded, and `--offline` then fails on a fresh machine.
            "--filter-platform",
            env!("KEPOCH_HOST_TRIPLE"),
            "--manifest-path",
        ])
        .arg(source("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let bindings = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "kepoch-nt")
        .expect("the kepoch-nt package");
    let node = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .find(|n| n["id"] == bindings["id"])
        .expect("kepoch-nt's resolve node");
    let id = node["deps"]
        .as_array()
        .expect("deps")
        .iter()
        .find(|d| d["name"] == "windows_sys")
        .map(|d| d["pkg"].clone())
        .expect("kepoch-nt depends on windows-sys");
    let package = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["id"] == id)
        .expect("the windows-sys package");
    let manifest = PathBuf::from(package["manifest_path"].as_str().expect("manifest_path"));
    manifest.parent().expect("a package directory").join("src")
}

/// The windows-sys modules of the driver's `Wdk_*` features (`["Wdk", "System", "Threading"]`).
fn wdk_modules() -> Vec<Vec<String>> {
    let manifest = std::fs::read_to_string(source("nt/Cargo.toml")).expect("nt/Cargo.toml");
    let dependency = manifest
        .split("\nwindows-sys = ")
        .nth(1)
        .expect("the windows-sys dependency in nt/Cargo.toml");
    let features = &dependency[..dependency.find("] }").expect("its feature list")];
    features
        .split('"')
        .filter(|f| f.starts_with("Wdk_"))
        .map(|f| f.split('_').map(str::to_string).collect())
        .collect()
}

/// What the driver imports and the callback types it implements, read once from the sources.
pub struct Sources {
    /// Hand-written imports of `nt/src/sys/raw.rs`.
    pub hand_written: Vec<declarations::Routine>,
    /// The routines `nt/src/sys/raw.rs` re-exports from windows-sys, as windows-sys declares them.
    pub from_windows_sys: Vec<declarations::Routine>,
    /// Function-pointer types: the facade's own and those it re-exports from windows-sys.
    pub callbacks: Vec<declarations::Routine>,
    /// Every `link!` of the driver's windows-sys `Wdk_*` modules.
    pub linked: Vec<declarations::Linked>,
}

pub fn sources() -> Sources {
    let raw = source("nt/src/sys/raw.rs");
    let src = windows_sys_src();
    let reexports = declarations::windows_sys_reexports(&raw);
    let mut modules: Vec<Vec<String>> = reexports.iter().map(|(_, m)| m.clone()).collect();
    modules.extend(wdk_modules());
    modules.sort();
    modules.dedup();
    let mut linked = Vec::new();
    let mut aliases = Vec::new();
    for module in &modules {
        let file = declarations::module_file(&src, module);
        linked.extend(declarations::linked(&file));
        aliases.extend(declarations::function_types(&[&file]));
    }
    let mut from_windows_sys = Vec::new();
    let mut callbacks = declarations::function_types(&[&raw, &source("nt/src/sys/mod.rs")]);
    for (name, module) in &reexports {
        if let Some(l) = linked.iter().find(|l| &l.routine.name == name) {
            assert!(
                modules.contains(module),
                "{name}: re-exported from an unread module"
            );
            from_windows_sys.push(l.routine.clone());
        } else if let Some(alias) = aliases.iter().find(|a| &a.name == name) {
            callbacks.push(alias.clone());
        }
    }
    Sources {
        hand_written: declarations::hand_written_imports(&raw),
        from_windows_sys,
        callbacks,
        linked,
    }
}
