//! The emulated kernel's shared state, the per-thread context (IRQL, processor, affinity), failure
//! recording and deadline-bounded waits.

use std::boxed::Box;
use std::cell::RefCell;
use std::format;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::callbacks::Callbacks;
use super::config::MachineConfig;
use super::dpc::DpcState;
use super::handles::Handles;
use super::io::IoState;
use super::pool::Pool;
use super::preempt::{
    block, scheduling_point, start_driver_code, stop_driver_code, unblock, Scheduler,
};
use super::processor::Cpu;
use super::registry::RegistryState;
use super::stack::{mark_stack_top, StackUsage, HOST_STACK_SIZE};
use super::sync::SyncState;
use super::thread::Threads;
use super::work::WorkState;
use crate::nt::NTSTATUS;

/// `PASSIVE_LEVEL`.
pub(super) const PASSIVE: u8 = 0;
/// `APC_LEVEL`.
pub(super) const APC: u8 = 1;
/// `DISPATCH_LEVEL`.
pub(super) const DISPATCH: u8 = 2;

/// `STATUS_INVALID_HANDLE`.
pub(super) const STATUS_INVALID_HANDLE: NTSTATUS = 0xC000_0008u32 as i32;
/// `STATUS_INVALID_PARAMETER`.
pub(super) const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000Du32 as i32;
/// `STATUS_INSUFFICIENT_RESOURCES`.
pub(super) const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = 0xC000_009Au32 as i32;

/// The IRQL a routine may be called at (its DDI page).
#[derive(Clone, Copy, Debug)]
pub(super) enum Rule {
    /// `PASSIVE_LEVEL` only.
    Passive,
    /// `<= APC_LEVEL`.
    AtMostApc,
    /// `<= DISPATCH_LEVEL`.
    AtMostDispatch,
    /// Any IRQL.
    Any,
}

impl Rule {
    fn allows(self, irql: u8) -> bool {
        match self {
            Rule::Passive => irql == PASSIVE,
            Rule::AtMostApc => irql <= APC,
            Rule::AtMostDispatch => irql <= DISPATCH,
            Rule::Any => true,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Rule::Passive => "PASSIVE_LEVEL only",
            Rule::AtMostApc => "IRQL <= APC_LEVEL",
            Rule::AtMostDispatch => "IRQL <= DISPATCH_LEVEL",
            Rule::Any => "any IRQL",
        }
    }
}

/// What an emulated thread is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// A processor's DPC loop.
    Dpc,
    /// A thread created by `PsCreateSystemThread`.
    System,
    /// The I/O manager or a user-mode caller running driver entry points.
    Caller,
    /// A system worker thread running work items.
    Worker,
    /// The clock (timer expiry).
    Clock,
}

/// The calling thread's view of the machine.
pub(super) struct Context {
    pub(super) kernel: Arc<Kernel>,
    pub(super) thread: u64,
    pub(super) role: Role,
    pub(super) irql: u8,
    /// Index into `State::cpus` of the processor the thread runs on.
    pub(super) cpu: usize,
    /// Group-0 affinity set by `KeSetSystemAffinityThreadEx`.
    pub(super) affinity: Option<u64>,
    pub(super) rng: u64,
    /// `PsTerminateSystemThread` was called.
    pub(super) terminated: bool,
    /// `KeEnterCriticalRegion` calls not yet matched by `KeLeaveCriticalRegion`.
    pub(super) critical_regions: u32,
    /// Counted as running driver code below DISPATCH on `cpu` (no DPC starts there meanwhile).
    pub(super) counted: bool,
}

impl Context {
    /// The next pseudo-random number of this thread (xorshift64*, seeded from the machine's seed).
    pub(super) fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

std::thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Runs `f` with the calling thread's context. Aborts the test (a harness bug) on a thread the
/// machine did not create.
pub(super) fn with_context<R>(f: impl FnOnce(&mut Context) -> R) -> R {
    CONTEXT.with(|cell| {
        let mut context = cell.borrow_mut();
        let context = context
            .as_mut()
            .expect("an emulated kernel routine was called on a thread the machine did not create");
        f(context)
    })
}

/// Runs `f` with the calling thread's context, if the machine created the thread (`None` on the
/// test's own threads).
pub(super) fn try_with_context<R>(f: impl FnOnce(&mut Context) -> R) -> Option<R> {
    CONTEXT.with(|cell| cell.borrow_mut().as_mut().map(f))
}

/// Describes the calling thread for failure messages (works while the context is borrowed).
fn describe_current() -> String {
    CONTEXT.with(|cell| match cell.try_borrow() {
        Ok(context) => match context.as_ref() {
            Some(c) => format!(
                "thread {} ({:?}) on processor slot {} at IRQL {}",
                c.thread, c.role, c.cpu, c.irql
            ),
            None => "the I/O manager (test thread)".to_string(),
        },
        Err(_) => "the current thread".to_string(),
    })
}

/// Checks the caller of `routine` against `rule` and the image state; returns the kernel and IRQL.
pub(super) fn enter(routine: &'static str, rule: Rule) -> (Arc<Kernel>, u8) {
    let (kernel, irql, terminated) = with_context(|c| (c.kernel.clone(), c.irql, c.terminated));
    if !rule.allows(irql) {
        kernel.fail(format!(
            "{routine} called at IRQL {irql} ({}) — Driver Verifier would bug check",
            rule.text()
        ));
    }
    if terminated {
        kernel.fail(format!(
            "{routine} called by a system thread after PsTerminateSystemThread"
        ));
    }
    if kernel.lock().image.unloaded {
        kernel.fail(format!(
            "{routine} called after the driver image was unloaded"
        ));
    }
    scheduling_point(&kernel, true);
    (kernel, irql)
}

/// Whether the image is loaded, and the failure state of DriverEntry/unload.
#[derive(Default)]
pub(super) struct ImageState {
    /// DriverEntry was called.
    pub(super) loaded: bool,
    /// DriverUnload returned, or DriverEntry failed: no driver code may run any more.
    pub(super) unloaded: bool,
    /// The driver objects DriverEntry got (what `IoInitializeWorkItem` accepts besides devices).
    pub(super) driver_objects: Vec<usize>,
}

/// Everything behind the kernel lock.
#[derive(Default)]
pub(super) struct State {
    pub(super) cpus: Vec<Cpu>,
    pub(super) dpc: DpcState,
    pub(super) sync: SyncState,
    pub(super) handles: Handles,
    pub(super) threads: Threads,
    pub(super) io: IoState,
    pub(super) work: WorkState,
    pub(super) registry: RegistryState,
    pub(super) callbacks: Callbacks,
    pub(super) scheduler: Scheduler,
    pub(super) image: ImageState,
    /// The machine is being torn down: service threads end.
    pub(super) shutdown: bool,
    next_thread: u64,
}

/// The emulated kernel.
pub(super) struct Kernel {
    pub(super) config: MachineConfig,
    pub(super) boot: Instant,
    state: Mutex<State>,
    /// Signalled on every change a waiter may wait for (events, threads, DPC completion, locks).
    pub(super) changed: Condvar,
    /// One per processor slot: its DPC queue or its owner changed.
    pub(super) cpu_changed: Vec<Condvar>,
    pub(super) pool: Pool,
    /// The deepest kernel-stack use of driver calls.
    pub(super) stacks: StackUsage,
    failures: Mutex<Vec<String>>,
    failed: AtomicBool,
    /// Processor loops, the clock and the workers, joined when the machine stops.
    service: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl Kernel {
    /// A kernel for `config` with the given processor slots.
    pub(super) fn new(config: MachineConfig, cpus: Vec<Cpu>) -> Arc<Kernel> {
        let cpu_changed = cpus.iter().map(|_| Condvar::new()).collect();
        let pool = Pool::new(&config);
        Arc::new(Kernel {
            config,
            boot: Instant::now(),
            state: Mutex::new(State {
                scheduler: Scheduler::new(cpus.len()),
                cpus,
                ..State::default()
            }),
            changed: Condvar::new(),
            cpu_changed,
            pool,
            stacks: StackUsage::default(),
            failures: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
            service: Mutex::new(Vec::new()),
        })
    }

    /// Takes the kernel lock (a panic on another thread does not make the state unusable).
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a failure of the machine: the test fails with `what` and the calling thread.
    pub(super) fn fail(&self, what: String) {
        let line = format!("{what} [{}]", describe_current());
        if std::env::var_os("NTEMU_LOG").is_some() {
            std::eprintln!("ntemu: FAILURE: {line}");
        }
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(line);
        self.failed.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Whether anything failed.
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The failures so far.
    pub(super) fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Removes and returns the failures so far (tests of the checks themselves).
    pub(super) fn take_failures(&self) -> Vec<String> {
        self.failed.store(false, Ordering::SeqCst);
        std::mem::take(
            &mut *self
                .failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Blocks on `condvar` until `done` holds, at most the machine's wait deadline (as
    /// [`Kernel::wait_for`]); meanwhile the calling thread does not run driver code, so DPCs may run
    /// on its processor.
    pub(super) fn wait_until<'a>(
        &self,
        mut guard: MutexGuard<'a, State>,
        condvar: &Condvar,
        what: impl Fn(&State) -> String,
        done: impl FnMut(&mut State) -> bool,
    ) -> MutexGuard<'a, State> {
        let was_counted = block(&mut guard);
        let guard = self.wait_for(guard, condvar, what, done);
        unblock(&guard, was_counted);
        guard
    }

    /// Waits on `condvar` until `done` holds, at most the machine's wait deadline. Past it the
    /// machine fails with `what()` and the thread parks for good: a stuck wait never returns success.
    pub(super) fn wait_for<'a>(
        &self,
        mut guard: MutexGuard<'a, State>,
        condvar: &Condvar,
        what: impl Fn(&State) -> String,
        mut done: impl FnMut(&mut State) -> bool,
    ) -> MutexGuard<'a, State> {
        let deadline = Instant::now() + self.config.wait_deadline;
        loop {
            if done(&mut guard) {
                return guard;
            }
            let now = Instant::now();
            if now >= deadline {
                let description = what(&guard);
                drop(guard);
                self.fail(format!(
                    "waited more than {:?} for {description}",
                    self.config.wait_deadline
                ));
                park_forever();
            }
            let slice = (deadline - now).min(Duration::from_millis(50));
            guard = condvar
                .wait_timeout(guard, slice)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Keeps a service thread to join when the machine stops.
    pub(super) fn keep_service_thread(&self, thread: thread::JoinHandle<()>) {
        self.service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(thread);
    }

    /// The service threads started so far.
    pub(super) fn take_service_threads(&self) -> Vec<thread::JoinHandle<()>> {
        std::mem::take(&mut *self.service.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A fresh emulated thread id.
    pub(super) fn new_thread_id(&self) -> u64 {
        let mut state = self.lock();
        state.next_thread += 1;
        state.next_thread
    }

    /// Starts an OS thread as emulated thread `id` with `role`, on processor slot `cpu` at `irql`,
    /// running `body`. A panic in it is a failure of the machine.
    pub(super) fn spawn(
        self: &Arc<Kernel>,
        id: u64,
        role: Role,
        cpu: usize,
        irql: u8,
        body: impl FnOnce() + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let kernel = self.clone();
        let seed = self.config.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        thread::Builder::new()
            .name(format!("ntemu-{role:?}-{id}"))
            .stack_size(HOST_STACK_SIZE)
            .spawn(move || {
                mark_stack_top();
                CONTEXT.with(|cell| {
                    *cell.borrow_mut() = Some(Context {
                        kernel: kernel.clone(),
                        thread: id,
                        role,
                        irql,
                        cpu,
                        affinity: None,
                        rng: seed,
                        terminated: false,
                        critical_regions: 0,
                        counted: false,
                    })
                });
                if matches!(role, Role::Caller | Role::System) {
                    start_driver_code(&kernel);
                }
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
                if let Err(payload) = result {
                    kernel.fail(format!(
                        "emulated thread {id} ({role:?}) panicked: {}",
                        panic_text(&payload)
                    ));
                }
                stop_driver_code(&kernel, true);
                let regions = CONTEXT.with(|cell| cell.borrow().as_ref().map_or(0, |c| c.critical_regions));
                if regions != 0 {
                    kernel.fail(format!(
                        "emulated thread {id} ({role:?}) ended inside {regions} critical region(s) (KeEnterCriticalRegion without KeLeaveCriticalRegion)"
                    ));
                }
                CONTEXT.with(|cell| cell.borrow_mut().take());
            })
            .expect("spawning an emulated thread")
    }
}

/// The message of a panic payload.
pub(super) fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(non-text panic payload)".to_string()
    }
}

/// Stops the calling thread for good (after a failure that leaves it nothing valid to return).
pub(super) fn park_forever() -> ! {
    loop {
        thread::park_timeout(Duration::from_secs(3600));
    }
}

/// The text of a `UNICODE_STRING` (empty for null).
///
/// # Safety
/// `string` is null or a valid `UNICODE_STRING` whose buffer holds `Length` bytes.
pub(super) unsafe fn read_unicode(string: *const crate::nt::UNICODE_STRING) -> String {
    if string.is_null() {
        return String::new();
    }
    // SAFETY: per the caller.
    unsafe {
        let s = &*string;
        if s.Buffer.is_null() {
            return String::new();
        }
        String::from_utf16_lossy(core::slice::from_raw_parts(
            s.Buffer,
            usize::from(s.Length / 2),
        ))
    }
}
