//! Syntax and hygiene checks for everything under `test-scripts/`.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use kepoch_script_check::{
    fixtures_dir, functions_without_help, on_path, powershell_problems, powershell_scripts,
    read_script, scripts_root, shell_scripts,
};

fn rel(path: &Path) -> String {
    path.strip_prefix(scripts_root().parent().unwrap_or(&scripts_root()))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Writes straight to the process's stderr, bypassing the test harness's output capture, so that a
/// skipped check is visible in CI logs even when the test passes.
fn loud(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Scripts that the README names; they must exist (a rename must update the README and this list).
const EXPECTED: &[&str] = &[
    "guest/KepochGuest.psm1",
    "guest/Invoke-KepochAB.ps1",
    "host/hyperv/Invoke-KepochHyperV.ps1",
    "host/qemu/kepoch-qemu-hotadd.sh",
    "host/vmware/Invoke-KepochVMware.ps1",
    "package.sh",
    "sign-pe.sh",
    "qemu-hotadd-check.sh",
    "guest-ab-wine.sh",
];

#[test]
fn expected_scripts_exist() {
    for name in EXPECTED {
        let path = scripts_root().join(name);
        assert!(
            path.is_file(),
            "missing script named by the README: {}",
            path.display()
        );
    }
}

#[test]
fn every_powershell_script_parses() {
    let scripts = powershell_scripts();
    assert!(
        scripts.len() >= 4,
        "expected the guest and host PowerShell scripts under {}, found {scripts:?}",
        scripts_root().display()
    );
    let mut failures = Vec::new();
    for path in &scripts {
        let problems = powershell_problems(&read_script(path));
        for p in problems {
            failures.push(format!("{}:{}", rel(path), p));
        }
    }
    assert!(
        failures.is_empty(),
        "tree-sitter-powershell found syntax errors in {} file(s):\n{}",
        scripts.len(),
        failures.join("\n")
    );
    println!("parsed {} PowerShell file(s) cleanly", scripts.len());
}

#[test]
fn walk_excludes_fixtures() {
    let fixtures = fixtures_dir();
    assert!(
        fixtures.join("broken.ps1").is_file(),
        "the broken fixture must exist"
    );
    for path in powershell_scripts().iter().chain(shell_scripts().iter()) {
        assert!(
            !path.starts_with(&fixtures),
            "fixture leaked into the walk: {}",
            path.display()
        );
    }
}

#[test]
fn broken_fixture_is_detected() {
    let path = fixtures_dir().join("broken.ps1");
    let problems = powershell_problems(&read_script(&path));
    assert!(
        !problems.is_empty(),
        "{} must produce ERROR/MISSING nodes",
        path.display()
    );
    // The errors are located in the broken function (lines 7..=11), not at the (valid) header.
    assert!(
        problems.iter().all(|p| p.line >= 7),
        "problems reported outside the broken region: {problems:?}"
    );
    for p in &problems {
        println!("{}:{}", rel(&path), p);
    }

    let path = fixtures_dir().join("stray-token.ps1");
    let problems = powershell_problems(&read_script(&path));
    assert!(
        !problems.is_empty(),
        "{} must produce ERROR/MISSING nodes",
        path.display()
    );
}

#[test]
fn good_fixture_has_no_false_positive() {
    let path = fixtures_dir().join("good.ps1");
    let problems = powershell_problems(&read_script(&path));
    assert!(problems.is_empty(), "{}: {problems:?}", path.display());
}

#[test]
fn introducing_a_syntax_error_into_any_script_is_detected() {
    // Mutation check: appending an unterminated block to each real script must be caught.
    for path in powershell_scripts() {
        let mutated = format!(
            "{}\nfunction Broken-Tail {{\n    if ($true) {{\n",
            read_script(&path)
        );
        assert!(
            !powershell_problems(&mutated).is_empty(),
            "a syntax error appended to {} went unnoticed",
            rel(&path)
        );
    }
}

#[test]
fn every_powershell_file_has_help_and_strict_mode() {
    let mut failures = Vec::new();
    for path in powershell_scripts() {
        let text = read_script(&path);
        let is_data = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("psd1"));
        if is_data {
            continue;
        }
        if !text.contains(".SYNOPSIS") {
            failures.push(format!("{}: no comment-based help (.SYNOPSIS)", rel(&path)));
        }
        if !text.contains("Set-StrictMode -Version Latest") {
            failures.push(format!(
                "{}: no `Set-StrictMode -Version Latest`",
                rel(&path)
            ));
        }
        for name in functions_without_help(&text) {
            failures.push(format!(
                "{}: function {name} has no comment-based help",
                rel(&path)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn help_check_finds_undocumented_function() {
    let text = read_script(&fixtures_dir().join("undocumented.ps1"));
    assert_eq!(
        functions_without_help(&text),
        vec!["Get-Undocumented".to_string()]
    );
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let scripts = shell_scripts();
    assert!(
        !scripts.is_empty(),
        "expected the QEMU host script under test-scripts/host/qemu/"
    );
    if !on_path("shellcheck") {
        loud(&format!(
            "SKIPPED: shellcheck is not on PATH, so {} shell script(s) under test-scripts/ were NOT \
             linted (install it: apt-get install -y shellcheck)",
            scripts.len()
        ));
        return;
    }
    let out = Command::new("shellcheck")
        .arg("--shell=bash")
        .arg("--external-sources")
        .args(&scripts)
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // And prove shellcheck really runs: the dirty fixture must be flagged.
    let dirty = fixtures_dir().join("dirty.sh");
    let out = Command::new("shellcheck")
        .arg(&dirty)
        .output()
        .expect("run shellcheck");
    assert!(
        !out.status.success(),
        "shellcheck did not flag {}",
        dirty.display()
    );
}

#[test]
fn shell_scripts_are_strict() {
    for path in shell_scripts() {
        let text = read_script(&path);
        assert!(
            text.starts_with("#!/usr/bin/env bash"),
            "{}: needs a bash shebang",
            rel(&path)
        );
        assert!(
            text.contains("set -euo pipefail"),
            "{}: needs `set -euo pipefail`",
            rel(&path)
        );
    }
}

#[test]
fn host_shell_scripts_answer_help() {
    // Only the host scripts: other .sh files (e.g. test-all.sh) run the suite and take no --help.
    let host = scripts_root().join("host");
    let scripts: Vec<_> = shell_scripts()
        .into_iter()
        .filter(|p| p.starts_with(&host))
        .collect();
    assert!(
        !scripts.is_empty(),
        "expected the QEMU host script under test-scripts/host/qemu/"
    );
    for path in scripts {
        if !on_path("bash") {
            loud(&format!(
                "SKIPPED: bash not on PATH; `{} --help` not run",
                rel(&path)
            ));
            continue;
        }
        let out = Command::new("bash")
            .arg(&path)
            .arg("--help")
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Usage:"),
            "{} --help failed (status {:?}):\n{stdout}{}",
            rel(&path),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The guest PowerShell installs and hands the A/B to `kepochctl ab`: no loop, registry writes or load
/// control of its own, and under 400 lines (issue 27).
#[test]
fn guest_powershell_has_no_ab_logic_of_its_own() {
    let guest = scripts_root().join("guest");
    let scripts: Vec<_> = powershell_scripts()
        .into_iter()
        .filter(|p| p.starts_with(&guest))
        .collect();
    assert_eq!(scripts.len(), 2, "{scripts:?}");
    let texts: Vec<String> = scripts.iter().map(|p| read_script(p)).collect();
    let lines: usize = texts.iter().map(|t| t.lines().count()).sum();
    assert!(lines < 400, "{lines} lines of guest PowerShell");
    let all = texts.join("\n");
    for logic in [
        "ActivationStrategy",
        "'load', 'start'",
        "'reset'",
        "'stats'",
        "Start-KepochRound",
        "ConvertTo-Json",
    ] {
        assert!(
            !all.contains(logic),
            "the guest PowerShell still does A/B work: {logic}"
        );
    }
    assert!(
        all.contains("@('ab', '--rounds'"),
        "Invoke-KepochAB must call kepochctl ab"
    );
}

/// `guest-ab-wine.sh --check` (the check the Wine run applies to its files) passes the files of a real
/// run under Wine (`fixtures/ab-wine`, copied from `target/wine-guest-ab/out`) and fails when a round's
/// driver ran another strategy than the one asked for.
#[test]
fn the_guest_ab_check_fails_a_round_that_ran_another_strategy() {
    if !on_path("jq") || !on_path("bash") {
        loud("SKIPPED: jq or bash is not on PATH: the guest A/B file check was NOT tested (apt-get install -y jq)");
        return;
    }
    let script = scripts_root().join("guest-ab-wine.sh");
    let check = |dir: &Path| {
        Command::new("bash")
            .arg(&script)
            .arg("--check")
            .arg(dir)
            .output()
            .expect("run bash")
    };
    let good = fixtures_dir().join("ab-wine");
    let out = check(&good);
    assert!(
        out.status.success(),
        "the real run's files must pass:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doctored = std::env::temp_dir().join(format!("kepoch-ab-doctored-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&doctored);
    std::fs::create_dir_all(&doctored).expect("temp dir");
    for entry in std::fs::read_dir(&good).expect("fixtures") {
        let path = entry.expect("entry").path();
        let mut text = read_script(&path);
        if path.file_name().is_some_and(|n| n == "round-01-lazy.json") {
            // As kepochctl writes a round whose driver reported callback after lazy was written.
            assert!(
                text.contains("\"strategy\": \"lazy\""),
                "{}",
                path.display()
            );
            text = text
                .replace("\"strategy\": \"lazy\"", "\"strategy\": \"callback\"")
                .replace(
                    "\"strategy_reported\": \"lazy\"",
                    "\"strategy_reported\": \"callback\"",
                )
                .replace("\"strategy_matches\": true", "\"strategy_matches\": false");
        }
        std::fs::write(doctored.join(path.file_name().expect("name")), text).expect("write");
    }
    let out = check(&doctored);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&doctored);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("round-01-lazy.json: the driver ran callback, the registry asked for lazy"),
        "{stdout}"
    );
}
