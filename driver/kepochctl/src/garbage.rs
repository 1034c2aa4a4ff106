//! `kepochctl selftest-garbage`: malformed IOCTLs whose expected answers come from the driver's own
//! decoder (host-testable part).

use kepoch_driver::ioctl::{self, status, LoadRequest, IOCTL_GET_STATS, IOCTL_LOAD_START};

/// One malformed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// IOCTL code.
    pub code: u32,
    /// Input bytes.
    pub input: Vec<u8>,
    /// Output buffer length.
    pub output_len: usize,
}

/// Win32 error `DeviceIoControl` reports for the NTSTATUS the driver completes with (the
/// `RtlNtStatusToDosError` mapping); `None` for success.
pub fn win32_error(nt_status: i32) -> Option<u32> {
    match nt_status {
        status::SUCCESS => None,
        status::INVALID_DEVICE_REQUEST => Some(1), // ERROR_INVALID_FUNCTION
        status::INFO_LENGTH_MISMATCH => Some(24),  // ERROR_BAD_LENGTH
        status::INVALID_PARAMETER => Some(87),     // ERROR_INVALID_PARAMETER
        status::BUFFER_TOO_SMALL => Some(122),     // ERROR_INSUFFICIENT_BUFFER
        status::BUFFER_OVERFLOW => Some(234),      // ERROR_MORE_DATA
        status::DEVICE_BUSY => Some(170),          // ERROR_BUSY
        _ => Some(u32::MAX),
    }
}

/// The expected Win32 error of a case, or `None` when the decoder would accept it (such cases are never
/// sent: they would act).
pub fn expected_error(case: &Case) -> Option<u32> {
    match ioctl::decode(case.code, &case.input, case.output_len) {
        Ok(ioctl::Request::GetStats) if case.output_len < ioctl::STATS_SIZE => {
            win32_error(status::BUFFER_OVERFLOW)
        }
        Ok(_) => None,
        Err(nt_status) => win32_error(nt_status),
    }
}

/// The cases: unknown codes, wrong lengths for every code, out-of-range load requests, and
/// pseudo-random codes and bytes from `seed`. Only cases the decoder refuses (or a short GET_STATS).
pub fn cases(seed: u64, random: usize) -> Vec<Case> {
    let case = |code: u32, input: &[u8], output_len: usize| Case {
        code,
        input: input.to_vec(),
        output_len,
    };
    let valid_load = LoadRequest {
        rate: 100,
        seconds: 1,
        threads: 1,
    };
    let load = |request: LoadRequest| request.encode().to_vec();
    let mut reserved = valid_load.encode();
    reserved[12] = 0xFF;
    let mut out = vec![
        case(0, &[], 0),
        case(!3, &[1, 2, 3], 16),
        case(IOCTL_GET_STATS + 0x40, &[], 1024), // function 0x810: unknown
        case(ioctl::ctl_code(0x12, 0x800, 0, 1), &[], 1024), // right function, other device type
        case(IOCTL_GET_STATS, &[0], 1024),
        case(IOCTL_GET_STATS, &[], 0),
        case(IOCTL_GET_STATS, &[], 7),
        case(IOCTL_GET_STATS, &[], 8),
        case(IOCTL_GET_STATS, &[], ioctl::STATS_SIZE - 1),
        case(IOCTL_LOAD_START, &[], 0),
        case(IOCTL_LOAD_START, &load(valid_load)[..15], 0),
        case(IOCTL_LOAD_START, &[0; 17], 0),
        case(IOCTL_LOAD_START, &load(valid_load), 4),
        case(
            IOCTL_LOAD_START,
            &load(LoadRequest {
                rate: 0,
                ..valid_load
            }),
            0,
        ),
        case(
            IOCTL_LOAD_START,
            &load(LoadRequest {
                seconds: 0,
                ..valid_load
            }),
            0,
        ),
        case(
            IOCTL_LOAD_START,
            &load(LoadRequest {
                seconds: 100_000,
                ..valid_load
            }),
            0,
        ),
        case(
            IOCTL_LOAD_START,
            &load(LoadRequest {
                threads: 1000,
                ..valid_load
            }),
            0,
        ),
        case(
            IOCTL_LOAD_START,
            &load(LoadRequest {
                rate: u32::MAX,
                ..valid_load
            }),
            0,
        ),
        case(IOCTL_LOAD_START, &reserved, 0),
    ];
    for code in [
        ioctl::IOCTL_RESET_STATS,
        ioctl::IOCTL_LOAD_STOP,
        ioctl::IOCTL_SYNC,
    ] {
        out.push(case(code, &[0; 4], 0));
        out.push(case(code, &[], 4));
        out.push(case(code, &[0; 64], 64));
    }
    // xorshift64*: deterministic, no dependency.
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    while out.len() < 31 + random {
        let r = next();
        let code = if r % 3 == 0 {
            ioctl::ALL_CODES[(r >> 8) as usize % ioctl::ALL_CODES.len()]
        } else {
            // METHOD_BUFFERED only: other methods make the I/O manager probe user pointers instead.
            (r >> 32) as u32 & !3
        };
        let input_len = (next() % 40) as usize;
        let input: Vec<u8> = (0..input_len).map(|_| next() as u8).collect();
        let output_len = (next() % 2048) as usize;
        let c = Case {
            code,
            input,
            output_len,
        };
        if expected_error(&c).is_some() {
            out.push(c);
        }
    }
    out.retain(|c| expected_error(c).is_some());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_is_refused_and_deterministic() {
        let a = cases(7, 200);
        assert!(a.len() >= 200);
        assert_eq!(a, cases(7, 200));
        for c in &a {
            assert!(expected_error(c).is_some(), "{c:?}");
        }
        // The fixed part covers unknown codes, length mismatches, ranges and the short stats buffer.
        let errors: Vec<u32> = a.iter().filter_map(expected_error).collect();
        for wanted in [1, 24, 87, 122, 234] {
            assert!(errors.contains(&wanted), "no case answered with {wanted}");
        }
    }
}
