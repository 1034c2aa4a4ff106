//! The signed image: signed as `test-scripts/package.sh` signs it, then checked (every PE check, the
//! signature, `osslsigncode verify`), and damaged after signing to prove the checks catch it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{
    all_checks, built, check_checksum, checksum_offset, driver_entry_rva, pe_checksum,
    section_header_offset, signature,
};

/// The signed copy of the image and the directory holding its certificate (`cert.pem`).
struct Signed {
    image: Vec<u8>,
    dir: PathBuf,
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Writes to the process's stderr directly, so a skip shows in CI logs even when the test passes.
fn loud(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn sign_script(args: &[&Path]) -> std::process::Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Command::new("bash")
        .arg(root.join("test-scripts/sign-pe.sh"))
        .args(args)
        .output()
        .expect("run test-scripts/sign-pe.sh")
}

fn signed() -> Option<&'static Signed> {
    static SIGNED: OnceLock<Option<Signed>> = OnceLock::new();
    SIGNED
        .get_or_init(|| {
            let built = built()?;
            if let Some(missing) = ["openssl", "osslsigncode"]
                .into_iter()
                .find(|t| !on_path(t))
            {
                loud(&format!(
                    "SKIPPED: signed PE check of kepoch.sys: {missing} is not installed \
                     (apt-get install -y openssl osslsigncode)"
                ));
                return None;
            }
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let dir = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"))
                .join("pe-check-signing");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the signing directory");
            let unsigned = dir.join("kepoch.sys");
            let signed = dir.join("kepoch.signed.sys");
            std::fs::write(&unsigned, &built.image).expect("write the unsigned copy");
            for args in [
                vec![Path::new("new-cert"), &dir],
                vec![Path::new("sign"), &dir, &unsigned, &signed],
            ] {
                let out = sign_script(&args);
                assert!(
                    out.status.success(),
                    "sign-pe.sh {args:?} failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // The key is not needed any more: only the certificate stays.
            std::fs::remove_file(dir.join("key.pem")).expect("remove the throw-away key");
            let image = std::fs::read(&signed).expect("read the signed image");
            Some(Signed { image, dir })
        })
        .as_ref()
}

/// `osslsigncode verify` of `image` against the generated certificate.
fn osslsigncode_accepts(signed: &Signed, image: &[u8], name: &str) -> bool {
    let path = signed.dir.join(name);
    std::fs::write(&path, image).expect("write the image to verify");
    sign_script(&[Path::new("verify"), &signed.dir.join("cert.pem"), &path])
        .status
        .success()
}

#[test]
fn signed_kepoch_sys_keeps_a_valid_checksum_and_a_verifiable_signature() {
    let Some(signed) = signed() else { return };
    let entry = driver_entry_rva(&built().unwrap().map).expect("DriverEntry in the link map");
    let mut failed = false;
    let mut checks = all_checks(&signed.image, entry, &super::REQUIRED);
    checks.push(("signature", signature::check_signature(&signed.image)));
    for (name, result) in checks {
        match result {
            Ok(finding) => println!("pe_check signed {name:<9} OK   {finding}"),
            Err(reason) => {
                println!("pe_check signed {name:<9} FAIL {reason}");
                failed = true;
            }
        }
    }
    assert!(
        !failed,
        "the signed kepoch.sys fails the PE check (see above)"
    );
    assert!(
        osslsigncode_accepts(signed, &signed.image, "verify.sys"),
        "osslsigncode verify rejects the signed image"
    );
    // The unsigned build has no signature, and the check says so.
    let error = signature::check_signature(&built().unwrap().image).unwrap_err();
    assert!(error.contains("not signed"), "{error}");
}

#[test]
fn mutation_code_changed_after_signing_is_caught() {
    let Some(signed) = signed() else { return };
    let mut data = signed.image.clone();
    // One byte of .text changes, and the checksum is fixed up so that only the signature is wrong.
    let header = section_header_offset(&data, ".text");
    let raw = u32::from_le_bytes(data[header + 20..header + 24].try_into().unwrap()) as usize;
    data[raw + 16] ^= 0x01;
    let sum = pe_checksum(&data).unwrap();
    let at = checksum_offset(&data).unwrap();
    data[at..at + 4].copy_from_slice(&sum.to_le_bytes());
    assert!(check_checksum(&data).is_ok());
    let error = signature::check_signature(&data).unwrap_err();
    assert!(error.contains("changed after signing"), "{error}");
    assert!(
        !osslsigncode_accepts(signed, &data, "tampered.sys"),
        "osslsigncode verify accepted an image changed after signing"
    );
}

#[test]
fn mutation_checksum_not_updated_by_signing_is_caught() {
    let Some(signed) = signed() else { return };
    let mut data = signed.image.clone();
    // The unsigned image's checksum, as a signer that does not recompute it would leave it.
    let at = checksum_offset(&data).unwrap();
    let unsigned = &built().unwrap().image;
    data[at..at + 4].copy_from_slice(&unsigned[at..at + 4]);
    assert!(check_checksum(&data).unwrap_err().contains("computed"));
    // A certificate table that does not end the file is refused.
    let mut longer = signed.image.clone();
    longer.extend_from_slice(&[0; 8]);
    assert!(signature::check_signature(&longer)
        .unwrap_err()
        .contains("end of the"));
}
