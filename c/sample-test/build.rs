//! Compiles the C sample driver and the usage files of both headers for the host (C11, `-Wall -Wextra
//! -Werror`, `KEPOCH_SAMPLE_EMULATED`) into a static library the tests link with kepoch-c and the
//! emulated kernel. Only on 64-bit hosts other than Windows (where the emulated kernel exists).

fn main() {
    let c = std::path::Path::new("..");
    for file in [
        "sample/kepoch_c_sample.c",
        "sample/sample_nt.h",
        "tests/ebpf_usage.c",
        "tests/kepoch_usage.c",
        "include/kepoch.h",
        "include/kepoch_sal.h",
        "include/ebpf_epoch.h",
    ] {
        println!("cargo:rerun-if-changed=../{file}");
    }
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let width = std::env::var("CARGO_CFG_TARGET_POINTER_WIDTH").unwrap_or_default();
    if target_os == "windows" || width != "64" {
        return;
    }
    cc::Build::new()
        .file(c.join("sample/kepoch_c_sample.c"))
        .file(c.join("tests/ebpf_usage.c"))
        .file(c.join("tests/kepoch_usage.c"))
        .include(c.join("include"))
        .include(c.join("sample"))
        .define("KEPOCH_SAMPLE_EMULATED", None)
        .std("c11")
        .flag("-Wall")
        .flag("-Wextra")
        .flag("-Werror")
        .compile("kepoch_c_sample");
}
