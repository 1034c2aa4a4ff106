//! The Authenticode signature of a signed image, checked independently of the signing tool: the
//! certificate table (`IMAGE_DIRECTORY_ENTRY_SECURITY`) is the last thing in the file, 8-aligned, one
//! `WIN_CERTIFICATE` of type PKCS#7 signed data, and the signed `SpcIndirectDataContent` carries the
//! SHA-256 Authenticode digest of this very image (so a byte changed after signing is caught).

use sha2::{Digest, Sha256};

/// Index of the certificate table in the data directories.
const IMAGE_DIRECTORY_ENTRY_SECURITY: usize = 4;
/// `WIN_CERT_REVISION_2_0`.
const WIN_CERT_REVISION_2_0: u16 = 0x0200;
/// `WIN_CERT_TYPE_PKCS_SIGNED_DATA`.
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;
/// DER of OID 1.2.840.113549.1.7.2 (PKCS#7 signedData).
const OID_SIGNED_DATA: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02,
];
/// DER of OID 1.3.6.1.4.1.311.2.1.4 (SpcIndirectDataContent, Authenticode).
const OID_SPC_INDIRECT_DATA: &[u8] = &[
    0x06, 0x0A, 0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x04,
];
/// DER of OID 2.16.840.1.101.3.4.2.1 (SHA-256).
const OID_SHA256: &[u8] = &[
    0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
];

fn u16_at(data: &[u8], at: usize) -> Result<u16, String> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("truncated at 0x{at:x}"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated at 0x{at:x}"))
}

/// File offsets of the optional header's CheckSum field and of the certificate-table directory entry.
fn fields(data: &[u8]) -> Result<(usize, usize), String> {
    let e_lfanew = u32_at(data, 0x3c)? as usize;
    let optional = e_lfanew + 4 + 20;
    if u16_at(data, optional)? != 0x20b {
        return Err("not a PE32+ optional header".into());
    }
    // PE32+: CheckSum at +64, data directories at +112, 8 bytes each.
    Ok((
        optional + 64,
        optional + 112 + 8 * IMAGE_DIRECTORY_ENTRY_SECURITY,
    ))
}

/// The certificate table as (file offset, size), or `None` when the directory entry is empty.
pub fn certificate_table(data: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let (_, entry) = fields(data)?;
    let offset = u32_at(data, entry)? as usize;
    let size = u32_at(data, entry + 4)? as usize;
    Ok((offset != 0 && size != 0).then_some((offset, size)))
}

/// The Authenticode SHA-256 digest: the whole file except the CheckSum field, the certificate-table
/// directory entry and the certificate table itself (which must end the file). Equal to the
/// section-by-section definition for images whose sections follow the headers without gaps, as
/// rust-lld lays them out.
pub fn authenticode_sha256(data: &[u8]) -> Result<[u8; 32], String> {
    let (checksum, entry) = fields(data)?;
    let end = match certificate_table(data)? {
        Some((offset, size)) if offset + size == data.len() => offset,
        Some(_) => return Err("the certificate table does not end the file".into()),
        None => data.len(),
    };
    let mut hasher = Sha256::new();
    hasher.update(&data[..checksum]);
    hasher.update(&data[checksum + 4..entry]);
    hasher.update(&data[entry + 8..end]);
    Ok(hasher.finalize().into())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks the image carries an Authenticode SHA-256 signature over its current contents.
pub fn check_signature(data: &[u8]) -> Result<String, String> {
    let (offset, size) = certificate_table(data)?
        .ok_or("not signed: the certificate table (IMAGE_DIRECTORY_ENTRY_SECURITY) is empty")?;
    if offset % 8 != 0 || offset + size != data.len() {
        return Err(format!(
            "certificate table at 0x{offset:x} (+{size}) is not 8-aligned at the end of the {}-byte file",
            data.len()
        ));
    }
    let length = u32_at(data, offset)? as usize;
    let revision = u16_at(data, offset + 4)?;
    let kind = u16_at(data, offset + 6)?;
    if revision != WIN_CERT_REVISION_2_0 || kind != WIN_CERT_TYPE_PKCS_SIGNED_DATA {
        return Err(format!(
            "WIN_CERTIFICATE revision 0x{revision:04x} type 0x{kind:04x}, expected 0x0200 / PKCS_SIGNED_DATA"
        ));
    }
    if length <= 8 || length > size {
        return Err(format!(
            "WIN_CERTIFICATE length {length} outside the {size}-byte table"
        ));
    }
    let pkcs7 = &data[offset + 8..offset + length];
    for (name, oid) in [
        ("PKCS#7 signedData", OID_SIGNED_DATA),
        ("SpcIndirectDataContent", OID_SPC_INDIRECT_DATA),
        ("SHA-256", OID_SHA256),
    ] {
        if !contains(pkcs7, oid) {
            return Err(format!("the signature has no {name} OID"));
        }
    }
    let digest = authenticode_sha256(data)?;
    let mut octet_string = vec![0x04, 0x20];
    octet_string.extend_from_slice(&digest);
    if !contains(pkcs7, &octet_string) {
        return Err(format!(
            "the signed digest is not this image's Authenticode SHA-256 {} (changed after signing?)",
            hex(&digest)
        ));
    }
    Ok(format!(
        "Authenticode SHA-256 signature ({length} bytes) over digest {}",
        hex(&digest)
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
