//! [`driver_entry_steps`]: `DriverEntry`'s steps and the undo of each failure path, written once
//! against a small trait so that the NT glue runs it and host tests record it. (The DPC-delivery probe
//! happens inside `create_domain`, in kepoch-nt's platform, which flushes its DPC before it frees it
//! whether the domain is created or not.)

/// The steps of `DriverEntry` and their undo, implemented by the NT glue (with its logging).
pub trait EntrySteps {
    /// The created device object.
    type Device: Copy;
    /// The reclamation domain, moved into the device extension.
    type Domain;
    /// `IoCreateDevice`.
    fn create_device(&mut self) -> Result<Self::Device, i32>;
    /// The SYSTEM/Administrators security descriptor.
    fn secure_device(&mut self, device: Self::Device) -> Result<(), i32>;
    /// The NT platform (with its DPC-delivery probe) and `Domain::create` on it.
    fn create_domain(&mut self, device: Self::Device) -> Result<Self::Domain, i32>;
    /// Writes the device state (with the domain) into the device extension.
    fn install_state(&mut self, device: Self::Device, domain: Self::Domain);
    /// `IoCreateSymbolicLink`: makes the device reachable.
    fn create_link(&mut self) -> Result<(), i32>;
    /// Drops the device state written by `install_state` (the domain tears itself down).
    fn drop_state(&mut self, device: Self::Device);
    /// `IoDeleteDevice`.
    fn delete_device(&mut self, device: Self::Device);
}

/// Runs `DriverEntry`'s steps; returns the status `DriverEntry` returns.
pub fn driver_entry_steps<S: EntrySteps>(steps: &mut S) -> i32 {
    let device = match steps.create_device() {
        Ok(device) => device,
        Err(status) => return status,
    };
    if let Err(status) = steps.secure_device(device) {
        steps.delete_device(device);
        return status;
    }
    let domain = match steps.create_domain(device) {
        Ok(domain) => domain,
        Err(status) => {
            steps.delete_device(device);
            return status;
        }
    };
    steps.install_state(device, domain);
    if let Err(status) = steps.create_link() {
        steps.drop_state(device);
        steps.delete_device(device);
        return status;
    }
    0
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    const FAILED: i32 = 0xC000_0001u32 as i32;

    /// Records DriverEntry's calls and fails the step named `fail_at`.
    #[derive(Default)]
    struct Recorder {
        fail_at: Option<&'static str>,
        calls: Vec<&'static str>,
        device_alive: bool,
        state_alive: bool,
    }

    impl Recorder {
        fn step(&mut self, name: &'static str) -> Result<(), i32> {
            self.calls.push(name);
            if self.fail_at == Some(name) {
                Err(FAILED)
            } else {
                Ok(())
            }
        }
    }

    impl EntrySteps for Recorder {
        type Device = ();
        type Domain = ();
        fn create_device(&mut self) -> Result<(), i32> {
            self.step("create_device")?;
            self.device_alive = true;
            Ok(())
        }
        fn secure_device(&mut self, (): ()) -> Result<(), i32> {
            self.step("secure_device")
        }
        fn create_domain(&mut self, (): ()) -> Result<(), i32> {
            self.step("create_domain")
        }
        fn install_state(&mut self, (): (), (): ()) {
            self.calls.push("install_state");
            self.state_alive = true;
        }
        fn create_link(&mut self) -> Result<(), i32> {
            self.step("create_link")
        }
        fn drop_state(&mut self, (): ()) {
            self.calls.push("drop_state");
            assert!(self.device_alive, "state dropped after its device");
            self.state_alive = false;
        }
        fn delete_device(&mut self, (): ()) {
            self.calls.push("delete_device");
            assert!(self.device_alive, "device deleted twice");
            assert!(!self.state_alive, "device deleted under a live state");
            self.device_alive = false;
        }
    }

    /// What must hold when DriverEntry fails (the image is unloaded right after).
    fn check_failure(recorder: &Recorder, step: &str) -> Result<(), String> {
        if recorder.device_alive || recorder.state_alive {
            return Err(format!(
                "DriverEntry failed at {step} and left the device or its state behind ({:?})",
                recorder.calls
            ));
        }
        Ok(())
    }

    #[test]
    fn every_failure_of_driver_entry_undoes_in_order() {
        for step in [
            "create_device",
            "secure_device",
            "create_domain",
            "create_link",
        ] {
            let mut recorder = Recorder {
                fail_at: Some(step),
                ..Recorder::default()
            };
            assert_eq!(driver_entry_steps(&mut recorder), FAILED, "{step}");
            check_failure(&recorder, step).unwrap();
        }
        let mut recorder = Recorder {
            fail_at: Some("create_link"),
            ..Recorder::default()
        };
        driver_entry_steps(&mut recorder);
        assert_eq!(
            recorder.calls[recorder.calls.len() - 2..],
            ["drop_state", "delete_device"]
        );
    }

    #[test]
    fn a_successful_driver_entry_undoes_nothing() {
        let mut recorder = Recorder::default();
        assert_eq!(driver_entry_steps(&mut recorder), 0);
        assert_eq!(
            recorder.calls,
            [
                "create_device",
                "secure_device",
                "create_domain",
                "install_state",
                "create_link",
            ]
        );
        assert!(recorder.device_alive && recorder.state_alive);
    }
}
