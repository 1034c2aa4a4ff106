//! The IOCTLs through the driver's real dispatch routine: well-formed, malformed and random requests.

use kepoch_driver::ioctl::{self, status, LoadRequest, STATS_SIZE};
use kepoch_ntemu::{Machine, MachineConfig};

use crate::common::*;

#[test]
fn control_device_is_for_system_and_administrators_and_has_its_link() {
    let machine = Machine::start(MachineConfig::default());
    let driver = load(&machine);
    let security = machine
        .device_security("\\Device\\kepoch")
        .expect("a DACL was applied");
    assert!(security.protected, "D:P — no inherited ACEs");
    let all = 0x001F_01FF; // FILE_ALL_ACCESS
    assert_eq!(
        security.allowed,
        vec![
            ("S-1-5-18".to_string(), all),
            ("S-1-5-32-544".to_string(), all)
        ]
    );
    assert_eq!(
        machine.symbolic_link("\\DosDevices\\kepoch").as_deref(),
        Some("\\Device\\kepoch")
    );
    quiesce_and_unload(driver);
    assert_eq!(machine.symbolic_link("\\DosDevices\\kepoch"), None);
    machine.finish();
}

#[test]
fn get_stats_fits_any_output_buffer_and_reset_starts_from_zero() {
    let machine = Machine::start(MachineConfig::default());
    let driver = load(&machine);
    let full = driver.ioctl(ioctl::IOCTL_GET_STATS, &[], STATS_SIZE as u32 + 100);
    assert_eq!((full.status, full.information), (0, STATS_SIZE as u64));
    assert!(ioctl::decode_stats(&full.output).is_ok());
    let header = driver.ioctl(ioctl::IOCTL_GET_STATS, &[], 100);
    assert_eq!(
        (header.status, header.output.len()),
        (status::BUFFER_OVERFLOW, 8)
    );
    assert_eq!(&header.output[..], &full.output[..8]);
    let tiny = driver.ioctl(ioctl::IOCTL_GET_STATS, &[], 7);
    assert_eq!(
        (tiny.status, tiny.information),
        (status::BUFFER_TOO_SMALL, 0)
    );
    assert!(tiny.output.is_empty());

    start_load(&driver, 10_000, 30, 0);
    wait_for(&driver, "enters", |s| s.enters > 100);
    stop_load(&driver);
    sync(&driver);
    assert_consistent(&driver.stats());
    assert_eq!(driver.ioctl(ioctl::IOCTL_RESET_STATS, &[], 0).status, 0);
    let reset = driver.stats();
    assert_eq!(
        (reset.enters, reset.exits, reset.retired),
        (0, 0, 0),
        "{reset:#?}"
    );
    assert_eq!(reset.cpus_prepared, 4, "gauges survive a reset");
    // Counters since the reset are deltas (an item retired before it may be freed after it), so the
    // balance is checked before the reset only.
    assert_eq!(driver.close(), 0);
    driver.unload();
    machine.finish();
}

#[test]
fn malformed_requests_are_refused_without_side_effects() {
    let machine = Machine::start(MachineConfig::default());
    let driver = load(&machine);
    let ok = LoadRequest {
        rate: 1000,
        seconds: 5,
        threads: 2,
    }
    .encode();
    let mut reserved = ok;
    reserved[12] = 1;
    let zero_rate = LoadRequest {
        rate: 0,
        seconds: 5,
        threads: 2,
    }
    .encode();
    let cases: Vec<(u32, Vec<u8>, u32, i32)> = vec![
        (0, vec![], 0, status::INVALID_DEVICE_REQUEST),
        (
            ioctl::IOCTL_GET_STATS | 3,
            vec![],
            4096,
            status::INVALID_DEVICE_REQUEST,
        ),
        (
            ioctl::IOCTL_GET_STATS,
            vec![1],
            4096,
            status::INFO_LENGTH_MISMATCH,
        ),
        (
            ioctl::IOCTL_RESET_STATS,
            vec![],
            4,
            status::INVALID_PARAMETER,
        ),
        (
            ioctl::IOCTL_SYNC,
            vec![0; 8],
            0,
            status::INFO_LENGTH_MISMATCH,
        ),
        (
            ioctl::IOCTL_LOAD_START,
            ok[..15].to_vec(),
            0,
            status::INFO_LENGTH_MISMATCH,
        ),
        (
            ioctl::IOCTL_LOAD_START,
            reserved.to_vec(),
            0,
            status::INVALID_PARAMETER,
        ),
        (
            ioctl::IOCTL_LOAD_START,
            zero_rate.to_vec(),
            0,
            status::INVALID_PARAMETER,
        ),
        (
            ioctl::IOCTL_LOAD_START,
            ok.to_vec(),
            16,
            status::INVALID_PARAMETER,
        ),
    ];
    for (code, input, output, expected) in cases {
        let result = driver.ioctl(code, &input, output);
        assert_eq!(
            result.status,
            expected,
            "code {code:#x}, {} input bytes, {output} output",
            input.len()
        );
        assert!(result.output.is_empty());
    }
    // Lengths without a SystemBuffer.
    let result = driver.ioctl_without_buffer(ioctl::IOCTL_GET_STATS, 0, 4096);
    assert_eq!(result.status, status::INVALID_PARAMETER);
    let result = driver.ioctl_without_buffer(ioctl::IOCTL_LOAD_START, 16, 0);
    assert_eq!(result.status, status::INVALID_PARAMETER);
    // A second LOAD_START while one runs.
    start_load(&driver, 1000, 30, 1);
    assert_eq!(
        driver.ioctl(ioctl::IOCTL_LOAD_START, &ok, 0).status,
        status::DEVICE_BUSY
    );
    let stats = quiesce_and_unload(driver);
    assert_eq!(stats.double_retires, 0);
    machine.finish();
}

/// `bytes` with one more (zero) byte: input longer than the request's structure.
fn one_byte_longer(bytes: &[u8]) -> Vec<u8> {
    let mut longer = bytes.to_vec();
    longer.push(0);
    longer
}

#[test]
fn every_ioctl_refuses_input_longer_than_its_structure_without_side_effects() {
    let machine = Machine::start(MachineConfig::default());
    let driver = load(&machine);
    let request = LoadRequest {
        rate: 5_000,
        seconds: 30,
        threads: 1,
    }
    .encode();
    let refused = |code: u32, input: &[u8], output: u32| {
        let result = driver.ioctl(code, input, output);
        assert_eq!(
            (result.status, result.information),
            (status::INFO_LENGTH_MISMATCH, 0),
            "code {code:#x} with {} input bytes",
            input.len()
        );
        assert!(result.output.is_empty());
    };
    // LOAD_START with 17 bytes does not start the generator: a well-formed start is not busy.
    refused(ioctl::IOCTL_LOAD_START, &one_byte_longer(&request), 0);
    start_load(&driver, 5_000, 30, 1);
    wait_for(&driver, "enters", |s| s.enters > 10);
    // LOAD_STOP with a byte does not stop it: another start is still busy.
    refused(ioctl::IOCTL_LOAD_STOP, &[0], 0);
    assert_eq!(
        driver.ioctl(ioctl::IOCTL_LOAD_START, &request, 0).status,
        status::DEVICE_BUSY
    );
    // RESET_STATS with a byte keeps the counters.
    refused(ioctl::IOCTL_RESET_STATS, &[0], 0);
    assert!(driver.stats().enters > 10, "the counters were not reset");
    refused(ioctl::IOCTL_GET_STATS, &[0], STATS_SIZE as u32);
    refused(ioctl::IOCTL_SYNC, &[0], 0);
    quiesce_and_unload(driver);
    machine.finish();
}

#[test]
fn random_requests_get_the_decoder_s_answer_and_never_disclose_memory() {
    let machine = Machine::start(MachineConfig::default());
    let driver = load(&machine);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..400 {
        let base = ioctl::ALL_CODES[(next() % 5) as usize];
        let code = match next() % 4 {
            0 => next() as u32,
            1 => base ^ (1 << (next() % 32)),
            _ => base,
        };
        let input: Vec<u8> = match next() % 3 {
            0 => (0..next() % 40).map(|_| next() as u8).collect(),
            1 => LoadRequest {
                rate: (next() % 20_000) as u32,
                seconds: (next() % 5) as u32,
                threads: (next() % 70) as u32,
            }
            .encode()
            .to_vec(),
            _ => Vec::new(),
        };
        let output = match next() % 3 {
            0 => (next() % 2048) as u32,
            1 => STATS_SIZE as u32,
            _ => 0,
        };
        let expected = if ioctl::ALL_CODES.contains(&code) {
            ioctl::decode(code, &input, output as usize)
                .err()
                .unwrap_or(0)
        } else {
            status::INVALID_DEVICE_REQUEST
        };
        let result = driver.ioctl(code, &input, output);
        if code == ioctl::IOCTL_GET_STATS && expected == 0 {
            assert!(result.status == 0 || result.status == status::BUFFER_OVERFLOW);
        } else if code == ioctl::IOCTL_LOAD_START && expected == 0 {
            assert!(result.status == 0 || result.status == status::DEVICE_BUSY);
        } else {
            assert_eq!(
                result.status, expected,
                "code {code:#x}, input {input:?}, output {output}"
            );
        }
        assert!(result.output.len() <= output as usize);
    }
    // RESET_STATS may have come last: counters are then deltas, so only the machine's checks apply.
    stop_load(&driver);
    sync(&driver);
    assert_eq!(driver.close(), 0);
    driver.unload();
    machine.finish();
}

#[test]
fn a_failed_load_thread_creation_is_reported_and_the_started_threads_are_reaped() {
    let config = MachineConfig {
        fail_thread_creation: Some(2),
        ..MachineConfig::default()
    }
    .expect_error("PsCreateSystemThread failed");
    let machine = Machine::start(config);
    let driver = load(&machine);
    let request = LoadRequest {
        rate: 1000,
        seconds: 5,
        threads: 2,
    }
    .encode();
    let result = driver.ioctl(ioctl::IOCTL_LOAD_START, &request, 0);
    assert_eq!(result.status, 0xC000_009Au32 as i32);
    start_load(&driver, 1000, 5, 2);
    quiesce_and_unload(driver);
    machine.finish();
}
