//! `kepochctl`: the user-mode control tool of kepoch.sys (Windows). See `kepochctl help`.
//!
//! Argument parsing ([`cli`]), the JSON report ([`report`]) and the garbage self-test cases
//! ([`garbage`]) are plain Rust, unit-tested on any host; only [`win`] talks to Windows.

mod cli;
// Used by the Windows build and the host tests.
#[cfg_attr(not(windows), allow(dead_code))]
mod garbage;
#[cfg_attr(not(windows), allow(dead_code))]
mod report;
#[cfg(windows)]
mod win;

use std::process::ExitCode;

use cli::Command;

/// CPUID leaf 0x40000000 vendor signature when CPUID.1:ECX bit 31 says a hypervisor is present.
#[cfg(target_arch = "x86_64")]
#[cfg_attr(not(windows), allow(dead_code))]
// `__cpuid` became a safe function after the workspace's minimum Rust version.
#[allow(unused_unsafe)]
pub fn hypervisor_vendor() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86_64 processor and has no side effects.
    let leaf1 = unsafe { __cpuid(1) };
    if leaf1.ecx & (1 << 31) == 0 {
        return None;
    }
    // SAFETY: as above; leaf 0x40000000 is reserved for hypervisors when the bit above is set.
    let leaf = unsafe { __cpuid(0x4000_0000) };
    let bytes: Vec<u8> = [leaf.ebx, leaf.ecx, leaf.edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// No CPUID on this architecture.
#[cfg(not(target_arch = "x86_64"))]
#[cfg_attr(not(windows), allow(dead_code))]
pub fn hypervisor_vendor() -> Option<String> {
    None
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("kepochctl: {message}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    if command == Command::Help {
        println!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kepochctl: {message}");
            ExitCode::from(1)
        }
    }
}

#[cfg(not(windows))]
fn run(_command: Command) -> Result<(), String> {
    Err("kepochctl talks to kepoch.sys and runs on Windows only".into())
}

#[cfg(windows)]
fn run(command: Command) -> Result<(), String> {
    use kepoch_driver::ioctl;

    let device = win::Device::open()?;
    let simple = |code: u32, input: &[u8], what: &str| {
        device
            .ioctl(code, input, &mut [])
            .map(|_| ())
            .map_err(|(error, _)| format!("{what} failed: Win32 error {error}"))
    };
    match command {
        Command::Stats { json } => {
            let stats = read_stats(&device)?;
            if json {
                print!("{}", report::stats_json(&stats, &win::guest_info()));
            } else {
                print!("{}", report::stats_table(&stats));
            }
            Ok(())
        }
        Command::Reset => simple(ioctl::IOCTL_RESET_STATS, &[], "reset"),
        Command::LoadStart(request) => {
            simple(ioctl::IOCTL_LOAD_START, &request.encode(), "load start").map_err(|e| {
                if e.ends_with(" 170") {
                    format!("{e} (the load generator is already running: `kepochctl load stop`)")
                } else {
                    e
                }
            })
        }
        Command::LoadStop => simple(ioctl::IOCTL_LOAD_STOP, &[], "load stop"),
        Command::Sync => simple(ioctl::IOCTL_SYNC, &[], "sync"),
        Command::SelftestGarbage => selftest_garbage(&device),
        Command::Help => Ok(()),
    }
}

#[cfg(windows)]
fn read_stats(device: &win::Device) -> Result<kepoch::Stats, String> {
    use kepoch_driver::ioctl::{self, StatsDecodeError};

    let mut buffer = vec![0u8; ioctl::STATS_SIZE];
    let written = match device.ioctl(ioctl::IOCTL_GET_STATS, &[], &mut buffer) {
        Ok(written) => written,
        // ERROR_MORE_DATA: a newer driver with a larger struct; the header tells.
        Err((234, written)) => written,
        Err((error, _)) => return Err(format!("reading statistics failed: Win32 error {error}")),
    };
    ioctl::decode_stats(&buffer[..written.min(buffer.len())]).map_err(|e| match e {
        StatsDecodeError::Truncated => "the driver returned a truncated statistics block".into(),
        StatsDecodeError::Version { version, size } => format!(
            "statistics version mismatch: driver has version {version} ({size} bytes), kepochctl expects {} ({} bytes); use the kepochctl built with this driver",
            kepoch::STATS_VERSION,
            ioctl::STATS_SIZE
        ),
    })
}

#[cfg(windows)]
fn selftest_garbage(device: &win::Device) -> Result<(), String> {
    let cases = garbage::cases(0x6b65_706f_6368, 300);
    let mut failures = 0;
    for case in &cases {
        let expected = garbage::expected_error(case);
        let mut output = vec![0u8; case.output_len];
        let got = device
            .ioctl(case.code, &case.input, &mut output)
            .err()
            .map(|(e, _)| e);
        if got != expected {
            failures += 1;
            eprintln!(
                "garbage: code 0x{:08X} input {} output {}: expected {:?}, got {:?}",
                case.code,
                case.input.len(),
                case.output_len,
                expected,
                got
            );
        }
    }
    let stats = read_stats(device)?;
    println!(
        "selftest-garbage: {} malformed requests, {} unexpected answers; driver still answers (stats version {})",
        cases.len(),
        failures,
        stats.version
    );
    if failures == 0 {
        Ok(())
    } else {
        Err(format!(
            "{failures} malformed request(s) got an unexpected answer"
        ))
    }
}
