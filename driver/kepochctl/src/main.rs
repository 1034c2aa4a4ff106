//! `kepochctl`: the user-mode control tool of kepoch.sys (Windows). See `kepochctl --help`.
//!
//! The command line ([`cli`], clap), the JSON report ([`report`], the `kepoch-report` schema), the wait
//! condition of `load start --wait` ([`wait`]) and the garbage self-test cases ([`garbage`]) are
//! unit-tested on any host; only `win` talks to Windows (through `windows-sys`).

mod cli;
// Used by the Windows build and the host tests.
#[cfg_attr(not(windows), allow(dead_code))]
mod garbage;
#[cfg_attr(not(windows), allow(dead_code))]
mod report;
#[cfg_attr(not(windows), allow(dead_code))]
mod wait;
#[cfg(windows)]
mod win;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

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
    // Bad arguments exit with 2 and clap's message and usage; --help and --version with 0.
    let cli = Cli::parse();
    match run(cli.command) {
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
    use cli::LoadCommand;
    use kepoch_driver::ioctl;
    use windows_sys::Win32::Foundation::ERROR_BUSY;

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
                let text = report::stats_json(&stats, win::guest_info())
                    .map_err(|e| format!("writing the JSON failed: {e}"))?;
                print!("{text}");
            } else {
                print!("{}", report::stats_table(&stats));
            }
            Ok(())
        }
        Command::Reset => simple(ioctl::IOCTL_RESET_STATS, &[], "reset"),
        Command::Load(LoadCommand::Start(start)) => {
            let before = if start.wait {
                Some(read_stats(&device)?)
            } else {
                None
            };
            let request = start.request();
            device
                .ioctl(ioctl::IOCTL_LOAD_START, &request.encode(), &mut [])
                .map_err(|(error, _)| {
                    let hint = if error == ERROR_BUSY {
                        " (the load generator is already running: `kepochctl load stop`)"
                    } else {
                        ""
                    };
                    format!("load start failed: Win32 error {error}{hint}")
                })?;
            match before {
                Some(before) => wait_for_load(&device, &before, &start),
                None => Ok(()),
            }
        }
        Command::Load(LoadCommand::Stop) => simple(ioctl::IOCTL_LOAD_STOP, &[], "load stop"),
        Command::Sync => simple(ioctl::IOCTL_SYNC, &[], "sync"),
        Command::SelftestGarbage => selftest_garbage(&device),
    }
}

/// `load start --wait`: polls the statistics every 20 ms until every load thread has made two
/// operations ([`wait::Progress::done`]); fails after 60 s saying how far the load got.
#[cfg(windows)]
fn wait_for_load(
    device: &win::Device,
    before: &kepoch::Stats,
    start: &cli::LoadStart,
) -> Result<(), String> {
    use std::time::{Duration, Instant};

    const POLL: Duration = Duration::from_millis(20);
    const DEADLINE: Duration = Duration::from_secs(60);
    let threads = wait::expected_threads(start.threads, start.rate, before.active);
    let began = Instant::now();
    loop {
        let now = read_stats(device)?;
        let progress = wait::Progress::between(before, &now);
        if progress.done(threads) {
            return Ok(());
        }
        if began.elapsed() >= DEADLINE {
            return Err(format!(
                "load start --wait: after {} s only {} of {threads} load thread(s) made a first operation and {} further operation(s) were made (wanted {threads}); the threads did not start or the load ended first (--rate and --seconds must give every thread two operations)",
                DEADLINE.as_secs(),
                progress.first,
                progress.later
            ));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(windows)]
fn read_stats(device: &win::Device) -> Result<kepoch::Stats, String> {
    use kepoch_driver::ioctl::{self, StatsDecodeError};

    let mut buffer = vec![0u8; ioctl::STATS_SIZE];
    let written = match device.ioctl(ioctl::IOCTL_GET_STATS, &[], &mut buffer) {
        Ok(written) => written,
        // ERROR_MORE_DATA: a newer driver with a larger struct; the header tells.
        Err((windows_sys::Win32::Foundation::ERROR_MORE_DATA, written)) => written,
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
