//! The test-facing side of the emulation: the machine's configuration, starting it, loading the driver
//! (`DriverEntry`), sending it IRPs, hot-adding processors, unloading, and the final checks.

use std::boxed::Box;
use std::format;
use std::string::String;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::callbacks::AddOutcome;
use super::config::MachineConfig;
use super::kernel::{Kernel, Role, PASSIVE};
use super::loaded::Driver;
use super::pool::PoolReport;
use super::processor::{start_processor, Cpu, Phase};
use super::security::DeviceSecurity;
use super::stack::{on_kernel_stack, StackKind, StackReport};
use crate::nt::{DRIVER_OBJECT, NTSTATUS, UNICODE_STRING};

/// One processor slot, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessorReport {
    /// Group.
    pub group: u16,
    /// Group-relative number.
    pub number: u8,
    /// NT index, if started.
    pub index: Option<u32>,
    /// Started and AddComplete delivered (or present at boot).
    pub complete: bool,
    /// DPCs that ran on it.
    pub dpcs: u64,
    /// DPCs queued to it with a target processor (the driver's per-CPU messages).
    pub messages: u64,
    /// Of those, messages whose KDPC had an importance below `MediumHighImportance` (see
    /// `KeSetImportanceDpc`).
    pub slow_messages: u64,
    /// Times a thread below DISPATCH that made a kernel call here let a DPC run first (it was
    /// preempted).
    pub preemptions: u64,
}

/// What the I/O manager hands to DriverEntry: the driver object, the service key path and its
/// `UNICODE_STRING`.
type DriverStorage = (DRIVER_OBJECT, Vec<u16>, UNICODE_STRING);

/// Only one machine per process: the driver has statics, as a kernel image does.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// A running emulated machine.
pub struct Machine {
    pub(super) kernel: Arc<Kernel>,
    _exclusive: MutexGuard<'static, ()>,
    /// DRIVER_OBJECTs and registry paths handed to DriverEntry (the I/O manager owns them).
    /// Boxed: the driver keeps pointers into them, so they must not move when the list grows. Only
    /// the emulated driver code touches them (through those pointers), so tests may call into the
    /// machine from several threads.
    objects: Mutex<Vec<Shared<Box<DriverStorage>>>>,
    /// Something failed (even if the failures were taken since): driver threads may be stuck.
    tainted: AtomicBool,
}

/// The panic message of a failed machine.
fn failure_report(after: &str, failures: &[String]) -> String {
    let mut text = format!("the emulated kernel recorded failures (checked after {after}):");
    for failure in failures {
        text.push_str("\n  - ");
        text.push_str(failure);
    }
    text
}

/// A raw pointer moved to an emulated thread.
#[derive(Clone, Copy)]
pub(super) struct Shared<T>(pub(super) T);
// SAFETY: used only for pointers to objects the machine keeps alive while the driver call runs.
unsafe impl<T> Send for Shared<T> {}

/// `DriverEntry`'s signature.
pub type DriverEntry = unsafe fn(*mut DRIVER_OBJECT, *mut UNICODE_STRING) -> NTSTATUS;

impl Machine {
    /// Boots a machine: processor threads, the clock, two system worker threads.
    pub fn start(config: MachineConfig) -> Machine {
        let exclusive = EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner());
        let mut cpus = Vec::new();
        let mut index = 0;
        for (group, g) in config.groups.iter().enumerate() {
            for number in 0..g.max {
                let active = g.active.contains(&number);
                cpus.push(Cpu::new(group as u16, number, active.then_some(index)));
                index += u32::from(active);
            }
        }
        assert!(index > 0, "a machine needs an active processor");
        let kernel = Kernel::new(config.clone(), cpus);
        {
            let mut state = kernel.lock();
            let service_key = config.service_key();
            state.registry.add_key(&service_key);
            if let Some(status) = config.service_key_fails {
                state.registry.fail_open(&service_key, status);
            }
            let parameters = format!("{service_key}\\Parameters");
            if config.parameters_key {
                state.registry.add_key(&parameters);
            }
            for (name, data) in &config.parameters {
                state.registry.set(&parameters, name, data.clone());
            }
        }
        let slots: Vec<usize> = {
            let state = kernel.lock();
            (0..state.cpus.len())
                .filter(|&s| state.cpus[s].phase == Phase::Complete)
                .collect()
        };
        for slot in slots {
            kernel.keep_service_thread(start_processor(&kernel, slot));
        }
        let service = |role: Role, body: fn(Arc<Kernel>)| {
            let id = kernel.new_thread_id();
            let k = kernel.clone();
            kernel.keep_service_thread(kernel.spawn(id, role, 0, PASSIVE, move || body(k)));
        };
        service(Role::Clock, super::timer::clock_loop);
        service(Role::Worker, super::work::worker_loop);
        service(Role::Worker, super::work::worker_loop);
        Machine {
            kernel,
            _exclusive: exclusive,
            objects: Mutex::new(Vec::new()),
            tainted: AtomicBool::new(false),
        }
    }

    /// Panics with every failure recorded so far.
    pub(super) fn check(&self, after: &str) {
        if self.kernel.failed() {
            panic!("{}", failure_report(after, &self.kernel.failures()));
        }
    }

    /// Runs `f` on a new emulated thread at PASSIVE (the I/O manager's or a caller's) and returns its
    /// result; fails the test on a recorded failure or when it does not return within the deadline.
    pub fn call<R: Send + 'static>(&self, what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
        match self.try_call(what, f) {
            Ok(result) => result,
            Err(failures) => panic!("{}", failure_report(what, &failures)),
        }
    }

    /// Like [`Machine::call`], but returns the recorded failures instead of panicking (and clears
    /// them): `Err` when anything failed, `Ok` with the result otherwise.
    pub fn try_call<R: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Vec<String>> {
        let (sender, receiver) = mpsc::channel();
        let id = self.kernel.new_thread_id();
        let handle = self.kernel.spawn(id, Role::Caller, 0, PASSIVE, move || {
            let _ = sender.send(f());
        });
        let started = Instant::now();
        let mut failed_at = None;
        loop {
            match receiver.recv_timeout(Duration::from_millis(20)) {
                Ok(result) => {
                    let _ = handle.join();
                    return if self.kernel.failed() {
                        self.tainted.store(true, Ordering::Relaxed);
                        Err(self.kernel.take_failures())
                    } else {
                        Ok(result)
                    };
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = handle.join();
                    self.tainted.store(true, Ordering::Relaxed);
                    let mut failures = self.kernel.take_failures();
                    failures.push(format!("{what}: the call ended without a result"));
                    return Err(failures);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.kernel.failed() {
                        // A failed call may be parked for good: give it a moment, then report.
                        let at = *failed_at.get_or_insert_with(Instant::now);
                        if at.elapsed() > Duration::from_secs(2) {
                            self.tainted.store(true, Ordering::Relaxed);
                            let mut failures = self.kernel.take_failures();
                            failures.push(format!("{what} is stuck"));
                            return Err(failures);
                        }
                    }
                    if started.elapsed() > self.kernel.config.call_deadline {
                        self.tainted.store(true, Ordering::Relaxed);
                        let mut failures = self.kernel.take_failures();
                        failures.push(format!(
                            "{what} did not return within {:?}",
                            self.kernel.config.call_deadline
                        ));
                        return Err(failures);
                    }
                }
            }
        }
    }

    /// [`Machine::call`] for driver code: `what` runs as on a thread's kernel stack (measured).
    pub(super) fn call_driver<R: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let kernel = self.kernel.clone();
        self.call(what, move || {
            on_kernel_stack(&kernel, StackKind::Thread, || what.into(), f)
        })
    }

    /// Runs `DriverEntry` with a fresh driver object and the service key path. On failure the image
    /// is unloaded (and checked) at once.
    pub fn load(&self, entry: DriverEntry) -> Result<Driver<'_>, NTSTATUS> {
        let path: Vec<u16> = self.kernel.config.service_key().encode_utf16().collect();
        // SAFETY: a DRIVER_OBJECT is integers, pointers and optional function pointers: zero is valid.
        let object: DRIVER_OBJECT = unsafe { core::mem::zeroed() };
        let mut storage = Box::new((
            object,
            path,
            UNICODE_STRING {
                Length: 0,
                MaximumLength: 0,
                Buffer: core::ptr::null_mut(),
            },
        ));
        let bytes = (storage.1.len() * 2) as u16;
        storage.2 = UNICODE_STRING {
            Length: bytes,
            MaximumLength: bytes,
            Buffer: storage.1.as_mut_ptr(),
        };
        let driver = Shared(&mut storage.0 as *mut DRIVER_OBJECT);
        let registry_path = Shared(&mut storage.2 as *mut UNICODE_STRING);
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Shared(storage));
        {
            let mut state = self.kernel.lock();
            state.image.loaded = true;
            state.image.driver_objects.push(driver.0 as usize);
        }
        let status = self.call_driver("DriverEntry", move || {
            let (driver, registry_path) = (driver, registry_path);
            // SAFETY: a valid driver object and service key path, at PASSIVE, once: DriverEntry's
            // contract.
            unsafe { entry(driver.0, registry_path.0) }
        });
        if status < 0 {
            self.image_unloaded("DriverEntry failed");
            return Err(status);
        }
        Ok(Driver::new(self, driver.0))
    }

    /// The image is gone once no work item holds a device reference: from then on no driver code may
    /// run, and nothing of the driver may still be queued, armed, registered or running.
    pub(super) fn image_unloaded(&self, when: &str) {
        let kernel = &self.kernel;
        let state = kernel.lock();
        let mut state = kernel.wait_until(
            state,
            &kernel.changed,
            |s| format!("{} work item(s) to finish ({when})", s.work.in_progress),
            |s| s.work.in_progress == 0,
        );
        state.image.unloaded = true;
        let mut problems = Vec::new();
        for cpu in state.cpus.iter_mut() {
            let name = cpu.name();
            for queued in cpu.queue.drain(..) {
                problems.push(format!(
                    "DPC {:#x} (routine {:p}) still queued on {name}",
                    queued.dpc, queued.routine as *const ()
                ));
                cpu.completed_total += 1;
            }
            if let Some(dpc) = cpu.running {
                problems.push(format!("DPC {dpc:#x} still running on {}", cpu.name()));
            }
        }
        let armed = state.dpc.armed_timers();
        if armed > 0 {
            problems.push(format!("{armed} timer(s) still armed"));
        }
        problems.extend(
            state
                .threads
                .running()
                .into_iter()
                .map(|t| format!("{t} still running")),
        );
        if state.callbacks.registered() > 0 {
            problems.push("a processor-change callback is still registered".into());
        }
        problems.extend(
            state
                .io
                .devices
                .iter()
                .map(|d| format!("device {} not deleted", d.name)),
        );
        problems.extend(
            state
                .io
                .links
                .keys()
                .map(|l| format!("symbolic link {l} not deleted")),
        );
        drop(state);
        for problem in problems {
            kernel.fail(format!("{when}: {problem}"));
        }
        kernel.changed.notify_all();
    }

    /// Hot-adds the absent processor `(group, number)`: AddStart, start, AddComplete. Returns its index
    /// or the status a callback vetoed it with.
    pub fn hot_add(&self, group: u16, number: u8) -> Result<u32, NTSTATUS> {
        let kernel = self.kernel.clone();
        self.call_driver("the processor-change callbacks of a hot-add", move || {
            super::callbacks::hot_add(&kernel, group, number, AddOutcome::Complete)
        })
    }

    /// A hot-add that fails after AddStart: AddFailure with `status`; the processor stays absent.
    pub fn hot_add_failing(
        &self,
        group: u16,
        number: u8,
        status: NTSTATUS,
    ) -> Result<u32, NTSTATUS> {
        let kernel = self.kernel.clone();
        self.call_driver(
            "the processor-change callbacks of a failed hot-add",
            move || {
                super::callbacks::hot_add(
                    &kernel,
                    group,
                    number,
                    AddOutcome::FailBeforeStart(status),
                )
            },
        )
    }

    /// A hot-add whose processor starts and runs for the window (the driver's threads may run epoch
    /// code on it) before AddFailure with `status`; then it stops and is absent again.
    pub fn hot_add_failing_after_start(
        &self,
        group: u16,
        number: u8,
        status: NTSTATUS,
    ) -> Result<u32, NTSTATUS> {
        let kernel = self.kernel.clone();
        self.call_driver(
            "the processor-change callbacks of a hot-add failing after start",
            move || {
                super::callbacks::hot_add(
                    &kernel,
                    group,
                    number,
                    AddOutcome::FailAfterStart(status),
                )
            },
        )
    }

    /// Every processor slot.
    pub fn processors(&self) -> Vec<ProcessorReport> {
        let state = self.kernel.lock();
        state
            .cpus
            .iter()
            .enumerate()
            .map(|(slot, c)| ProcessorReport {
                group: c.group,
                number: c.number,
                index: c.index,
                complete: c.phase == Phase::Complete,
                dpcs: c.completed_total,
                messages: c.targeted_total,
                slow_messages: c.targeted_slow_total,
                preemptions: state.scheduler.preemptions(slot),
            })
            .collect()
    }

    /// Every DbgPrintEx line so far: (level, text).
    pub fn log(&self) -> Vec<(u32, String)> {
        self.kernel.lock().io.log.clone()
    }

    /// The DACL applied to the device named `name`.
    pub fn device_security(&self, name: &str) -> Option<DeviceSecurity> {
        self.kernel
            .lock()
            .io
            .devices
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.security.clone())
    }

    /// The target of a symbolic link, if it exists.
    pub fn symbolic_link(&self, link: &str) -> Option<String> {
        self.kernel
            .lock()
            .io
            .links
            .get(&link.to_lowercase())
            .cloned()
    }

    /// The deepest kernel-stack and DPC-stack use of driver calls so far.
    pub fn stacks(&self) -> StackReport {
        self.kernel.stacks.report()
    }

    /// Pool counters.
    pub fn pool(&self) -> PoolReport {
        self.kernel.pool.report()
    }

    /// Removes and returns the failures recorded so far (tests of the checks themselves).
    pub fn take_failures(&self) -> Vec<String> {
        self.kernel.take_failures()
    }

    /// Final checks after the image was unloaded: no pool leak, no write to freed pool, no handle
    /// left open, no failure at all. Stops the machine.
    pub fn finish(self) -> PoolReport {
        let kernel = &self.kernel;
        let (loaded, unloaded) = {
            let state = kernel.lock();
            (state.image.loaded, state.image.unloaded)
        };
        assert!(
            !loaded || unloaded,
            "finish() before the driver was unloaded"
        );
        for leak in kernel.pool.leaks() {
            kernel.fail(format!("leak: {leak}"));
        }
        for corruption in kernel.pool.corruption() {
            kernel.fail(format!("use after free: {corruption}"));
        }
        let (handles, work_items) = {
            let state = kernel.lock();
            (state.handles.open_handles(), state.work.allocated())
        };
        for handle in handles {
            kernel.fail(format!("leak: handle to {handle:?} never closed"));
        }
        if work_items > 0 {
            kernel.fail(format!("leak: {work_items} work item(s) never freed"));
        }
        self.check("finish");
        let report = kernel.pool.report();
        self.stop();
        kernel.pool.release_quarantine();
        report
    }

    /// Ends the service threads (processors, clock, workers).
    fn stop(&self) {
        self.kernel.lock().shutdown = true;
        self.kernel.changed.notify_all();
        for condvar in &self.kernel.cpu_changed {
            condvar.notify_all();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for thread in self.kernel.take_service_threads() {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.kernel.lock().shutdown {
            self.stop();
        }
        if self.kernel.failed() || self.tainted.load(Ordering::Relaxed) {
            // Stuck driver threads may still use these objects: keep them.
            core::mem::forget(core::mem::take(
                &mut *self.objects.lock().unwrap_or_else(|p| p.into_inner()),
            ));
        }
    }
}
