//! `kepochctl`: the user-mode control tool of kepoch.sys (Windows). See `kepochctl --help`.
//!
//! The command line ([`cli`], clap), the JSON report ([`report`], the `kepoch-report` schema), the wait
//! condition of `load start --wait` ([`wait`]), the garbage self-test cases ([`garbage`]) and the guest
//! A/B ([`ab`], against a fake Windows in its tests) are unit-tested on any host; only `win` talks to
//! Windows (through `windows-sys`).
//!
//! Runs on Windows 10 / Windows Server 2016 or later (x64): Rust's standard library imports
//! `ProcessPrng` from `bcryptprimitives.dll`, which older Windows lacks.

#[cfg_attr(not(windows), allow(dead_code))]
mod ab;
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
        Err(ab::AbError { exit, message }) => {
            eprintln!("kepochctl: {message}");
            ExitCode::from(exit)
        }
    }
}

/// An environment failure (exit code 1).
#[cfg_attr(not(windows), allow(dead_code))]
fn failed(message: String) -> ab::AbError {
    ab::AbError { exit: 1, message }
}

#[cfg(not(windows))]
fn run(_command: Command) -> Result<(), ab::AbError> {
    Err(failed(
        "kepochctl talks to kepoch.sys and runs on Windows only".into(),
    ))
}

#[cfg(windows)]
fn run(command: Command) -> Result<(), ab::AbError> {
    let mut sys = win::system::WinSystem::new();
    match command {
        Command::Ab(args) => {
            let mut out = std::io::stdout();
            let summary = ab::run(&mut sys, &args, &mut out)?;
            println!(
                "ab: {} file(s) in {} ({} round(s) in which the driver did not load); compare with: kepoch-sim report {}",
                summary.files.len(),
                args.out.display(),
                summary.refused,
                args.out.join("*.json").display()
            );
            Ok(())
        }
        Command::Strategy(command) => strategy(&mut sys, command),
        Command::Service(command) => service(&mut sys, command),
        other => device_command(other).map_err(failed),
    }
}

/// `strategy get|set`.
#[cfg(windows)]
fn strategy(
    sys: &mut win::system::WinSystem,
    command: cli::StrategyCommand,
) -> Result<(), ab::AbError> {
    use ab::args::ACTIVATION_STRATEGY;
    use ab::system::{GuestSystem, RegValue};
    let key = |e: ab::system::SysError| failed(format!("{e} ({})", ab::PARAMETERS_KEY));
    match command {
        cli::StrategyCommand::Set { strategy } => {
            sys.open_parameters().map_err(key)?;
            sys.write_value(
                ACTIVATION_STRATEGY,
                &RegValue::dword(strategy.registry_value()),
            )
            .map_err(key)?;
            println!(
                "ActivationStrategy = {} ({}); the driver reads it at its next load: kepochctl service restart",
                strategy.registry_value(),
                strategy.name()
            );
        }
        cli::StrategyCommand::Get => {
            let found = match win::registry::ParamsKey::open_read().map_err(key)? {
                Some(params) => params.read(ACTIVATION_STRATEGY).map_err(key)?,
                None => None,
            };
            let registry = match found {
                None => "absent (the default: callback)".to_string(),
                Some(v) => match v.as_dword() {
                    Some(n) => format!("{n} ({})", kepoch_report::strategy_name(n)),
                    None => format!(
                        "type {} instead of REG_DWORD (the driver uses the default)",
                        v.kind
                    ),
                },
            };
            println!("registry ActivationStrategy: {registry}");
            match sys.read_stats() {
                Ok(stats) => println!(
                    "running driver: {}",
                    kepoch_report::strategy_name(stats.strategy)
                ),
                Err(e) => println!("running driver: none ({e})"),
            }
        }
    }
    Ok(())
}

/// `service status|restart`.
#[cfg(windows)]
fn service(
    sys: &mut win::system::WinSystem,
    command: cli::ServiceCommand,
) -> Result<(), ab::AbError> {
    use ab::service::{restart, start_hint, ServiceWait};
    use ab::system::GuestSystem;
    let status = sys
        .service_status()
        .map_err(|e| failed(format!("{e}: {}", start_hint(e.code))))?;
    match command {
        cli::ServiceCommand::Status => {
            println!(
                "kepoch service: {} (exit code {}, service-specific exit code {})",
                status.state_name(),
                status.win32_exit_code,
                status.service_specific_exit_code
            );
            Ok(())
        }
        cli::ServiceCommand::Restart { timeout } => {
            let wait = ServiceWait {
                timeout: std::time::Duration::from_secs(timeout.into()),
                poll: std::time::Duration::from_millis(250),
            };
            let outcome = restart(sys, wait).map_err(failed)?;
            println!("kepoch service: {}", outcome.describe());
            outcome
                .loaded_or(|why| failed(format!("the driver does not run: {why}")).message)
                .map_err(failed)
        }
    }
}

/// The commands that talk to the control device.
#[cfg(windows)]
fn device_command(command: Command) -> Result<(), String> {
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
        Command::Ab(_) | Command::Strategy(_) | Command::Service(_) => {
            Err("not a device command".into())
        }
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
    device.stats()
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
