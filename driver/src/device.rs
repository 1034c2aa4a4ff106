//! The control device `\\.\kepoch`: its security descriptor (SYSTEM and Administrators only) and its
//! IRPs (create, close, the IOCTLs of `ioctl.rs`).

use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};

use kepoch::platform::LogLevel;
use kepoch::Stats;
use kepoch_nt::log_line;
use kepoch_nt::sys as nt;

use crate::driver::DeviceState;
use crate::ioctl::{self, Request};
use crate::support::{dacl_size, WellKnownSid};

/// Restricts `\Device\kepoch` to SYSTEM and Administrators, the equivalent of the SDDL
/// `D:P(A;;GA;;;SY)(A;;GA;;;BA)` (`SDDL_DEVOBJ_SYS_ALL_ADM_ALL`).
///
/// `IoCreateDeviceSecure` would do this in one call, but it is not a kernel export: it is
/// `WdmlibIoCreateDeviceSecure` in the static library `wdmsec.lib`, which the Linux (raw-dylib) build
/// cannot link. So the driver builds the descriptor in code with documented routines, on both build
/// paths: an absolute security descriptor (`RtlCreateSecurityDescriptor`) whose DACL
/// (`RtlCreateAcl`, `RtlAddAccessAllowedAce`) grants `FILE_ALL_ACCESS` (what `GA` maps to for device
/// objects) to S-1-5-18 and S-1-5-32-544 and nothing to anyone else, applied with `ZwSetSecurityObject`
/// (DACL + PROTECTED_DACL, the `P`) on a kernel handle from `ObOpenObjectByPointer`
/// (`ObSetSecurityObjectByPointer`, which wdmsec uses, is only a stub in Wine 8). The device is still
/// `DO_DEVICE_INITIALIZING` and has no symbolic link while this runs, so nobody can open it before the
/// descriptor is in place. With the `wdk` feature, `IoCreateDeviceSecure` (linking `wdmsec.lib`)
/// could replace this function and the `IoCreateDevice` call.
pub(crate) fn restrict_to_system_and_admins(device: NonNull<nt::DEVICE_OBJECT>) -> Result<(), i32> {
    const SIDS: [WellKnownSid; 2] = [
        WellKnownSid::LOCAL_SYSTEM,
        WellKnownSid::BUILTIN_ADMINISTRATORS,
    ];
    const DACL_SIZE: usize = dacl_size(&SIDS);
    let mut sids = SIDS;
    let mut dacl = [0u32; DACL_SIZE.div_ceil(4)];
    let mut descriptor = MaybeUninit::<nt::SECURITY_DESCRIPTOR>::zeroed();
    let check = |status: i32| if status < 0 { Err(status) } else { Ok(()) };
    // SAFETY: every buffer is local, 4-aligned and as large as the length passed; the Rtl routines only
    // write inside them; the descriptor points at `dacl`, which outlives the ZwSetSecurityObject call
    // that copies it. PASSIVE_LEVEL (DriverEntry).
    unsafe {
        let descriptor: nt::PSECURITY_DESCRIPTOR = descriptor.as_mut_ptr().cast();
        check(nt::RtlCreateSecurityDescriptor(
            descriptor,
            nt::SECURITY_DESCRIPTOR_REVISION,
        ))?;
        check(nt::RtlCreateAcl(
            dacl.as_mut_ptr().cast(),
            DACL_SIZE as u32,
            nt::ACL_REVISION,
        ))?;
        for sid in &mut sids {
            check(nt::RtlAddAccessAllowedAce(
                dacl.as_mut_ptr().cast(),
                nt::ACL_REVISION,
                nt::FILE_ALL_ACCESS,
                ptr::from_mut(sid).cast(),
            ))?;
        }
        check(nt::RtlSetDaclSecurityDescriptor(
            descriptor,
            true,
            dacl.as_ptr().cast(),
            false,
        ))?;
        let mut handle: nt::HANDLE = ptr::null_mut();
        check(nt::ObOpenObjectByPointer(
            device.as_ptr().cast(),
            nt::OBJ_KERNEL_HANDLE,
            ptr::null_mut(),
            nt::WRITE_DAC,
            0,
            nt::KERNEL_MODE,
            &mut handle,
        ))?;
        let status = nt::ZwSetSecurityObject(
            handle,
            nt::DACL_SECURITY_INFORMATION | nt::PROTECTED_DACL_SECURITY_INFORMATION,
            descriptor,
        );
        nt::ZwClose(handle);
        check(status)
    }
}

/// IRP_MJ_CREATE / IRP_MJ_CLOSE: opening and closing the control device always succeeds (access is
/// decided by the device's security descriptor before the IRP reaches us).
pub(crate) unsafe extern "system" fn create_close(
    _device: *const nt::DEVICE_OBJECT,
    irp: *mut nt::IRP,
) -> nt::NTSTATUS {
    // SAFETY: the I/O manager dispatched this IRP to us; we complete it exactly once.
    unsafe { nt::complete_irp(irp, nt::STATUS_SUCCESS, 0) };
    nt::STATUS_SUCCESS
}

/// IRP_MJ_DEVICE_CONTROL (PASSIVE_LEVEL, caller's thread): validated by [`ioctl::decode`], then run.
pub(crate) unsafe extern "system" fn device_control(
    device: *const nt::DEVICE_OBJECT,
    irp: *mut nt::IRP,
) -> nt::NTSTATUS {
    // SAFETY: the I/O manager dispatched an IRP_MJ_DEVICE_CONTROL IRP for our device, whose extension
    // holds the DeviceState initialised in DriverEntry (the link that makes it reachable is created
    // after that).
    let (params, state) = unsafe {
        (
            nt::device_io_control(irp),
            &*(*device).DeviceExtension.cast::<DeviceState>(),
        )
    };
    let (status, information) = if !ioctl::ALL_CODES.contains(&params.code) {
        // Before looking at buffers: codes of other transfer methods carry no SystemBuffer.
        (ioctl::status::INVALID_DEVICE_REQUEST, 0)
    } else if params.buffer.is_null() && (params.input_length != 0 || params.output_length != 0) {
        (ioctl::status::INVALID_PARAMETER, 0)
    } else {
        let input: &[u8] = if params.input_length == 0 {
            &[]
        } else {
            // SAFETY: METHOD_BUFFERED: SystemBuffer holds max(input, output) bytes, the input first.
            unsafe { core::slice::from_raw_parts(params.buffer, params.input_length as usize) }
        };
        match ioctl::decode(params.code, input, params.output_length as usize) {
            Err(status) => (status, 0),
            Ok(Request::GetStats) => {
                // SAFETY: as above; the input slice is no longer used (GET_STATS has no input).
                let output = unsafe {
                    core::slice::from_raw_parts_mut(params.buffer, params.output_length as usize)
                };
                let (status, written) = state.encode_stats_since_reset(output);
                (status, written as u64)
            }
            Ok(Request::ResetStats) => {
                state.reset_stats();
                (nt::STATUS_SUCCESS, 0)
            }
            Ok(Request::LoadStart(request)) => (state.start_load(request), 0),
            Ok(Request::LoadStop) => {
                state.stop_load();
                (nt::STATUS_SUCCESS, 0)
            }
            Ok(Request::Sync) => {
                state.domain.synchronize();
                (nt::STATUS_SUCCESS, 0)
            }
        }
    };
    // SAFETY: our IRP, completed exactly once.
    unsafe { nt::complete_irp(irp, status, information) };
    status
}

impl DeviceState {
    /// Writes the current counters into `out` in place.
    fn snapshot_into(&self, out: &mut Stats) {
        self.domain.stats_into(out);
        out.config_warnings = self.config_warnings;
        self.first_enter.snapshot_into(&mut out.first_enter_ns);
        self.enter_exit.snapshot_into(&mut out.enter_exit_ns);
    }

    /// GET_STATS: the counters since the last reset, encoded into `output`.
    fn encode_stats_since_reset(&self, output: &mut [u8]) -> (i32, usize) {
        self.control.with(|| {
            // SAFETY: `scratch` and `baseline` are only accessed under `control`.
            let (scratch, baseline) = unsafe { (&mut *self.scratch.get(), &*self.baseline.get()) };
            self.snapshot_into(scratch);
            ioctl::subtract_baseline(scratch, baseline);
            ioctl::encode_stats(scratch, output)
        })
    }

    fn reset_stats(&self) {
        // SAFETY: `baseline` is only accessed under `control`.
        self.control
            .with(|| self.snapshot_into(unsafe { &mut *self.baseline.get() }));
        log_line(LogLevel::Info, format_args!("statistics reset"));
    }
}
