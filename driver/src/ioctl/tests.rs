//! The decoder, the stats encoding and the baseline, checked by example and fuzzed with proptest.

extern crate std;

use super::*;
use proptest::prelude::*;
use std::vec;

#[test]
fn codes_match_ctl_code() {
    // CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS) = 0x00226000.
    assert_eq!(IOCTL_GET_STATS, 0x0022_6000);
    assert_eq!(IOCTL_RESET_STATS, 0x0022_A004);
    assert_eq!(IOCTL_SYNC, 0x0022_A010);
    for code in ALL_CODES {
        assert_eq!(code & 3, METHOD_BUFFERED);
        assert_eq!(code >> 16, FILE_DEVICE_UNKNOWN);
    }
}

#[test]
fn stats_have_the_version_5_size_and_round_trip() {
    assert_eq!(STATS_SIZE, 40072);
    let mut stats = Stats {
        version: STATS_VERSION,
        size: STATS_SIZE as u32,
        enters: 7,
        config_warnings: 2,
        ..Stats::default()
    };
    stats.enter_exit_ns.record(300);
    let mut buffer = vec![0u8; STATS_SIZE + 100];
    assert_eq!(
        encode_stats(&stats, &mut buffer),
        (status::SUCCESS, STATS_SIZE)
    );
    assert_eq!(decode_stats(&buffer[..STATS_SIZE]), Ok(stats));
}

#[test]
fn small_buffers_get_the_header_only() {
    let stats = Stats {
        version: STATS_VERSION,
        size: STATS_SIZE as u32,
        ..Stats::default()
    };
    let mut buffer = [0xAAu8; 100];
    assert_eq!(
        encode_stats(&stats, &mut buffer),
        (status::BUFFER_OVERFLOW, 8)
    );
    assert_eq!(
        decode_stats(&buffer[..8]),
        Err(StatsDecodeError::Version {
            version: STATS_VERSION,
            size: STATS_SIZE as u32
        })
    );
    assert_eq!(
        encode_stats(&stats, &mut buffer[..7]),
        (status::BUFFER_TOO_SMALL, 0)
    );
    assert_eq!(decode_stats(&buffer[..3]), Err(StatsDecodeError::Truncated));
    // An old or new driver: version mismatch is reported, not misread.
    let mut other = [0u8; 2048];
    other[0] = 1;
    other[4..8].copy_from_slice(&600u32.to_le_bytes());
    assert_eq!(
        decode_stats(&other),
        Err(StatsDecodeError::Version {
            version: 1,
            size: 600
        })
    );
}

#[test]
fn decoder_accepts_valid_requests() {
    assert_eq!(
        decode(IOCTL_GET_STATS, &[], STATS_SIZE),
        Ok(Request::GetStats)
    );
    assert_eq!(decode(IOCTL_GET_STATS, &[], 8), Ok(Request::GetStats));
    assert_eq!(decode(IOCTL_RESET_STATS, &[], 0), Ok(Request::ResetStats));
    assert_eq!(decode(IOCTL_LOAD_STOP, &[], 0), Ok(Request::LoadStop));
    assert_eq!(decode(IOCTL_SYNC, &[], 0), Ok(Request::Sync));
    let load = LoadRequest {
        rate: 1000,
        seconds: 5,
        threads: 0,
    };
    assert_eq!(
        decode(IOCTL_LOAD_START, &load.encode(), 0),
        Ok(Request::LoadStart(load))
    );
}

/// Every code with its well-formed input and an output length it accepts.
fn well_formed_requests() -> [(u32, std::vec::Vec<u8>, usize); 5] {
    let load = LoadRequest {
        rate: 1000,
        seconds: 5,
        threads: 1,
    };
    [
        (IOCTL_GET_STATS, vec![], STATS_SIZE),
        (IOCTL_RESET_STATS, vec![], 0),
        (IOCTL_LOAD_START, load.encode().to_vec(), 0),
        (IOCTL_LOAD_STOP, vec![], 0),
        (IOCTL_SYNC, vec![], 0),
    ]
}

#[test]
fn every_code_refuses_input_longer_or_shorter_than_its_structure() {
    for (code, input, output_len) in well_formed_requests() {
        assert!(decode(code, &input, output_len).is_ok(), "{code:#x}");
        for extra in [1usize, 3, 16, 4096] {
            let mut longer = input.clone();
            longer.resize(input.len() + extra, 0);
            assert_eq!(
                decode(code, &longer, output_len),
                Err(status::INFO_LENGTH_MISMATCH),
                "code {code:#x} with {extra} byte(s) beyond its {}-byte input",
                input.len()
            );
        }
        if let Some(shorter) = input.len().checked_sub(1) {
            assert_eq!(
                decode(code, &input[..shorter], output_len),
                Err(status::INFO_LENGTH_MISMATCH),
                "code {code:#x} with {shorter} of its {} input bytes",
                input.len()
            );
        }
    }
}

#[test]
fn decoder_rejects_bad_lengths_fields_and_codes() {
    use status::*;
    assert_eq!(decode(0, &[], 0), Err(INVALID_DEVICE_REQUEST));
    assert_eq!(
        decode(IOCTL_GET_STATS | 3, &[], 1024),
        Err(INVALID_DEVICE_REQUEST)
    );
    assert_eq!(decode(IOCTL_GET_STATS, &[], 7), Err(BUFFER_TOO_SMALL));
    assert_eq!(
        decode(IOCTL_GET_STATS, &[1], 1024),
        Err(INFO_LENGTH_MISMATCH)
    );
    assert_eq!(decode(IOCTL_SYNC, &[0; 4], 0), Err(INFO_LENGTH_MISMATCH));
    assert_eq!(decode(IOCTL_SYNC, &[], 4), Err(INVALID_PARAMETER));
    let ok = LoadRequest {
        rate: 1,
        seconds: 1,
        threads: 64,
    };
    assert!(decode(IOCTL_LOAD_START, &ok.encode(), 0).is_ok());
    assert_eq!(
        decode(IOCTL_LOAD_START, &ok.encode()[..15], 0),
        Err(INFO_LENGTH_MISMATCH)
    );
    assert_eq!(
        decode(IOCTL_LOAD_START, &ok.encode(), 16),
        Err(INVALID_PARAMETER)
    );
    for bad in [
        LoadRequest { rate: 0, ..ok },
        LoadRequest {
            rate: limits::MAX_RATE + 1,
            ..ok
        },
        LoadRequest { seconds: 0, ..ok },
        LoadRequest {
            seconds: 3601,
            ..ok
        },
        LoadRequest { threads: 65, ..ok },
    ] {
        assert_eq!(
            decode(IOCTL_LOAD_START, &bad.encode(), 0),
            Err(INVALID_PARAMETER),
            "{bad:?}"
        );
    }
    let mut reserved = ok.encode();
    reserved[15] = 1;
    assert_eq!(
        decode(IOCTL_LOAD_START, &reserved, 0),
        Err(INVALID_PARAMETER)
    );
}

#[test]
fn reset_subtracts_counters_and_keeps_gauges() {
    let mut baseline = Stats {
        enters: 10,
        cycles: 3,
        cpus_prepared: 2,
        global_epoch: 9,
        ..Stats::default()
    };
    baseline.enter_exit_ns.record(100);
    let mut now = Stats {
        enters: 15,
        cycles: 3,
        cpus_prepared: 4,
        global_epoch: 12,
        config_warnings: 1,
        ..Stats::default()
    };
    now.enter_exit_ns = baseline.enter_exit_ns;
    now.enter_exit_ns.record(5000);
    let mut d = now;
    subtract_baseline(&mut d, &baseline);
    assert_eq!(d.enters, 5);
    assert_eq!(d.cycles, 0);
    assert_eq!(d.cpus_prepared, 4);
    assert_eq!(d.global_epoch, 12);
    assert_eq!(d.config_warnings, 1);
    assert_eq!(d.enter_exit_ns.count(), 1);
    assert_eq!(d.enter_exit_ns.max_ns, 5000);
}

/// The status a request must get, computed independently of `decode`.
fn expected(code: u32, input: &[u8], output_len: usize) -> Result<(), i32> {
    if !ALL_CODES.contains(&code) {
        return Err(status::INVALID_DEVICE_REQUEST);
    }
    if code == IOCTL_LOAD_START {
        if output_len != 0 {
            return Err(status::INVALID_PARAMETER);
        }
        if input.len() != 16 {
            return Err(status::INFO_LENGTH_MISMATCH);
        }
        let w = |i: usize| u32::from_le_bytes(input[i..i + 4].try_into().unwrap());
        let valid = (1..=limits::MAX_RATE).contains(&w(0))
            && (1..=3600).contains(&w(4))
            && w(8) <= 64
            && w(12) == 0;
        return if valid {
            Ok(())
        } else {
            Err(status::INVALID_PARAMETER)
        };
    }
    if code == IOCTL_GET_STATS {
        if !input.is_empty() {
            return Err(status::INFO_LENGTH_MISMATCH);
        }
        return if output_len < 8 {
            Err(status::BUFFER_TOO_SMALL)
        } else {
            Ok(())
        };
    }
    if output_len != 0 {
        return Err(status::INVALID_PARAMETER);
    }
    if !input.is_empty() {
        return Err(status::INFO_LENGTH_MISMATCH);
    }
    Ok(())
}

fn any_code() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        proptest::sample::select(ALL_CODES.to_vec()),
        // Near misses: right function, wrong method/access/device bits.
        (proptest::sample::select(ALL_CODES.to_vec()), 0u32..32)
            .prop_map(|(c, bit)| c ^ (1 << bit)),
    ]
}

fn any_input() -> impl Strategy<Value = std::vec::Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        // Plausible load requests, in and out of range.
        (
            0u32..20_000_000,
            0u32..5000,
            0u32..100,
            prop_oneof![Just(0u32), any::<u32>()]
        )
            .prop_map(|(r, s, t, x)| {
                let mut v = LoadRequest {
                    rate: r,
                    seconds: s,
                    threads: t,
                }
                .encode()
                .to_vec();
                v[12..16].copy_from_slice(&x.to_le_bytes());
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn decode_never_panics_and_answers_right(
        code in any_code(),
        input in any_input(),
        output_len in prop_oneof![0usize..2048, any::<usize>()],
    ) {
        let got = decode(code, &input, output_len).map(|_| ());
        prop_assert_eq!(got, expected(code, &input, output_len));
        if let Ok(Request::LoadStart(request)) = decode(code, &input, output_len) {
            prop_assert!(request.validate().is_ok());
            let encoded = request.encode();
            prop_assert_eq!(encoded.as_slice(), input.as_slice());
        }
    }

    #[test]
    fn stats_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let _ = decode_stats(&bytes);
    }

    #[test]
    fn stats_encoding_fits_any_buffer(len in prop_oneof![0usize..64, STATS_SIZE - 64..STATS_SIZE + 64]) {
        let stats = Stats { version: STATS_VERSION, size: STATS_SIZE as u32, ..Stats::default() };
        let mut buffer = vec![0u8; len];
        let (st, written) = encode_stats(&stats, &mut buffer);
        prop_assert!(written <= len);
        prop_assert_eq!(st == status::SUCCESS, len >= STATS_SIZE);
    }
}
