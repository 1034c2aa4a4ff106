//! The order of the driver's kernel calls where the order is what makes them correct, written once
//! against small traits so that the NT glue runs it and host tests record it:
//!
//! - [`driver_entry_steps`]: `DriverEntry`'s steps and the undo of each failure path. Once the DPC
//!   delivery probe has been queued, every failure flushes queued DPCs before the device goes and
//!   `DriverEntry` returns: a failed `DriverEntry` is followed by unloading the image, and the probe's
//!   `KDPC` and routine live in that image.
//! - [`with_passive_lock`]: the `PassiveLock` (a synchronization event) is held only inside a critical
//!   region, so normal kernel APCs, among them thread suspension, cannot stop the holder.
//! - [`init_cycle_dpc`]: a cycle DPC gets `MediumHighImportance` before it can be queued, so a DPC sent
//!   to a busy remote processor starts at once instead of waiting for that processor's next clock tick.

/// `MediumHighImportance` (`KDPC_IMPORTANCE`): queued at the tail, the target starts its DPC queue at
/// once even when it is another processor (Medium, the default, does that only for the current one).
pub const MEDIUM_HIGH_IMPORTANCE: i32 = 3;

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
    /// Queues the DPC delivery probe and waits (bounded) for it; returns whether it ran. From here on a
    /// DPC of this image may still be queued.
    fn probe_dpc_delivery(&mut self) -> bool;
    /// `Domain::create` on the NT platform.
    fn create_domain(
        &mut self,
        device: Self::Device,
        dpcs_delivered: bool,
    ) -> Result<Self::Domain, i32>;
    /// Writes the device state (with the domain) into the device extension.
    fn install_state(&mut self, device: Self::Device, domain: Self::Domain);
    /// `IoCreateSymbolicLink`: makes the device reachable.
    fn create_link(&mut self) -> Result<(), i32>;
    /// Drops the device state written by `install_state` (the domain tears itself down).
    fn drop_state(&mut self, device: Self::Device);
    /// `KeFlushQueuedDpcs`.
    fn flush_queued_dpcs(&mut self);
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
    let dpcs_delivered = steps.probe_dpc_delivery();
    let domain = match steps.create_domain(device, dpcs_delivered) {
        Ok(domain) => domain,
        Err(status) => {
            steps.flush_queued_dpcs();
            steps.delete_device(device);
            return status;
        }
    };
    steps.install_state(device, domain);
    if let Err(status) = steps.create_link() {
        steps.drop_state(device);
        steps.flush_queued_dpcs();
        steps.delete_device(device);
        return status;
    }
    0
}

/// The kernel calls behind the `PassiveLock`.
pub trait CriticalRegionLock {
    /// `KeEnterCriticalRegion`: disables normal kernel APCs for the current thread.
    fn enter_critical_region(&self);
    /// `KeLeaveCriticalRegion`.
    fn leave_critical_region(&self);
    /// Waits until the lock is ours (`KeWaitForSingleObject` on the synchronization event).
    fn acquire(&self);
    /// Releases the lock (`KeSetEvent`).
    fn release(&self);
}

/// Runs `f` holding the lock, inside a critical region from before the wait to after the release.
pub fn with_passive_lock<L: CriticalRegionLock, R>(lock: &L, f: impl FnOnce() -> R) -> R {
    lock.enter_critical_region();
    lock.acquire();
    let result = f();
    lock.release();
    lock.leave_critical_region();
    result
}

/// The kernel calls that prepare a cycle DPC.
pub trait DpcSetup {
    /// `KeInitializeDpc`.
    fn initialize(&mut self);
    /// `KeSetImportanceDpc`.
    fn set_importance(&mut self, importance: i32);
    /// `KeSetTargetProcessorDpcEx`; the status.
    fn set_target(&mut self) -> i32;
}

/// Prepares a cycle DPC: initialised, `MediumHighImportance`, bound to its processor. Returns the
/// status of the binding (negative: the DPC must not be used).
pub fn init_cycle_dpc<D: DpcSetup>(dpc: &mut D) -> i32 {
    dpc.initialize();
    dpc.set_importance(MEDIUM_HIGH_IMPORTANCE);
    dpc.set_target()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::cell::RefCell;
    use std::string::{String, ToString};
    use std::vec::Vec;
    use std::{format, vec};

    const FAILED: i32 = 0xC000_0001u32 as i32;

    /// Records DriverEntry's calls, fails the step named `fail_at`, and models the probe DPC: queued by
    /// the probe and never run (as under Wine or on a stalled processor) until a flush.
    #[derive(Default)]
    struct Recorder {
        fail_at: Option<&'static str>,
        calls: Vec<&'static str>,
        probe_queued: bool,
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
        fn probe_dpc_delivery(&mut self) -> bool {
            self.calls.push("probe_dpc_delivery");
            self.probe_queued = true;
            false
        }
        fn create_domain(&mut self, (): (), _: bool) -> Result<(), i32> {
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
        fn flush_queued_dpcs(&mut self) {
            self.calls.push("flush_queued_dpcs");
            self.probe_queued = false;
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
        if recorder.probe_queued {
            return Err(format!(
                "DriverEntry failed at {step} with the probe DPC still queued (calls: {:?})",
                recorder.calls
            ));
        }
        if recorder.device_alive || recorder.state_alive {
            return Err(format!(
                "DriverEntry failed at {step} and left the device or its state behind ({:?})",
                recorder.calls
            ));
        }
        Ok(())
    }

    #[test]
    fn every_failure_of_driver_entry_flushes_the_probe_and_undoes_in_order() {
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
            recorder.calls[recorder.calls.len() - 3..],
            ["drop_state", "flush_queued_dpcs", "delete_device"]
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
                "probe_dpc_delivery",
                "create_domain",
                "install_state",
                "create_link",
            ]
        );
        assert!(recorder.device_alive && recorder.state_alive);
    }

    /// Models the thread holding the lock: a suspend request (a normal kernel APC) is delivered at once
    /// unless the thread is in a critical region; a suspended lock holder keeps the lock forever.
    #[derive(Default)]
    struct LockModel {
        events: RefCell<Vec<String>>,
        critical: RefCell<u32>,
        held: RefCell<bool>,
    }

    impl LockModel {
        /// Another thread suspends the current one (`SuspendThread` → a kernel APC).
        fn suspend_request(&self) {
            let delivered = *self.critical.borrow() == 0;
            let held = *self.held.borrow();
            self.events.borrow_mut().push(if delivered && held {
                "suspended while holding the lock".to_string()
            } else if delivered {
                "suspended".to_string()
            } else {
                "suspend deferred".to_string()
            });
        }
    }

    impl CriticalRegionLock for LockModel {
        fn enter_critical_region(&self) {
            *self.critical.borrow_mut() += 1;
            self.events
                .borrow_mut()
                .push("enter_critical_region".into());
        }
        fn leave_critical_region(&self) {
            *self.critical.borrow_mut() -= 1;
            self.events
                .borrow_mut()
                .push("leave_critical_region".into());
        }
        fn acquire(&self) {
            *self.held.borrow_mut() = true;
            self.events.borrow_mut().push("acquire".into());
        }
        fn release(&self) {
            *self.held.borrow_mut() = false;
            self.events.borrow_mut().push("release".into());
        }
    }

    #[test]
    fn the_passive_lock_is_held_only_inside_a_critical_region() {
        let lock = LockModel::default();
        let value = with_passive_lock(&lock, || {
            lock.suspend_request();
            7
        });
        assert_eq!(value, 7);
        assert_eq!(
            *lock.events.borrow(),
            vec![
                "enter_critical_region",
                "acquire",
                "suspend deferred",
                "release",
                "leave_critical_region",
            ]
        );
        assert_eq!(*lock.critical.borrow(), 0);
        assert!(!*lock.held.borrow());
    }

    #[derive(Default)]
    struct DpcRecorder {
        calls: Vec<String>,
    }

    impl DpcSetup for DpcRecorder {
        fn initialize(&mut self) {
            self.calls.push("initialize".into());
        }
        fn set_importance(&mut self, importance: i32) {
            self.calls.push(format!("set_importance({importance})"));
        }
        fn set_target(&mut self) -> i32 {
            self.calls.push("set_target".into());
            0
        }
    }

    #[test]
    fn cycle_dpcs_get_medium_high_importance_before_use() {
        let mut dpc = DpcRecorder::default();
        assert_eq!(init_cycle_dpc(&mut dpc), 0);
        assert_eq!(dpc.calls, ["initialize", "set_importance(3)", "set_target"]);
    }
}
