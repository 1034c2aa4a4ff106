//! The simulated machine: virtual CPUs with groups and sparse indexes, per-CPU DPC queues with DISPATCH
//! exclusion, a periodic timer, passive work items, events, an allocator that poisons and quarantines
//! freed memory, processor-change notifications with live hot-add, and two execution modes:
//!
//! * **deterministic** ([`Machine::run_for`], [`Machine::run_until_idle`], [`Machine::step`]): one OS
//!   thread; a seeded scheduler picks every action, so the same seed replays the same run;
//! * **parallel** ([`Machine::run_parallel`]): one OS thread per running virtual CPU plus timer, passive
//!   and hot-plug threads, for real memory-ordering effects; a [`SchedulingProbe`] tells a host that
//!   did not schedule a thread from a machine that is stuck.
//!
//! ```
//! use kepoch_sim::machine::{Machine, MachineConfig, StepOutcome};
//! let m = Machine::new(MachineConfig::default()).unwrap();
//! m.spawn(0, |_ctx: &mut kepoch_sim::machine::StepContext<'_>| StepOutcome::Done);
//! m.run_for(1_000);
//! assert!(m.violations().is_empty());
//! ```
//!
//! Code that runs outside a task (driver load/unload in a test) runs in the context of the boot CPU at
//! PASSIVE on the calling thread, or of a chosen CPU with [`Machine::with_cpu`]; its waits pump the
//! deterministic scheduler.
//!
//! The machine checks IRQL discipline the way Driver Verifier does: core routines announce their rule
//! (`Platform::verify_irql`, a broken rule is a [`ViolationKind::Irql`]), PASSIVE-only services called
//! at DISPATCH are [`ViolationKind::BlockingAtDispatch`], and a core spin lock acquired below DISPATCH
//! is a [`ViolationKind::SpinLockIrql`]; the machine records who holds each core spin lock (CPU, IRQL,
//! context). In deterministic mode DPCs preempt code running below DISPATCH
//! ([`MachineConfig::nested_dpc_percent`]): at platform calls made there, the CPU's queued messages
//! and a due timer may run nested, at DISPATCH, as after an interrupt on NT. A spin on a core spin
//! lock that can never end is a [`ViolationKind::Deadlock`] and halts the machine with a [`Bugcheck`]
//! panic payload, which callers catch with `std::panic::catch_unwind`.
//!
//! The modules depend in one direction: `state` (the machine's data, the task interface and the
//! [`SimPlatform`] handle) knows nothing of the others; `sched` (when each handler, task step and
//! hot-add phase runs) uses the state only; `platform` (the `kepoch::platform::Platform` implementation,
//! whose waits pump the scheduler) uses both; this module (the [`Machine`] API) sits on top.

mod alloc;
mod config;
mod freed_pages;
mod platform;
mod probe;
mod report;
mod sched;
mod state;

#[cfg(test)]
mod barrier_tests;
#[cfg(test)]
mod epoch_wait_tests;
#[cfg(test)]
mod owner_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;

use std::alloc::Layout;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kepoch::platform::Irql;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use alloc::{
    page_size, AllocRequest, AllocStats, FaultHook, LiveAllocation, FRESH, POISON, QUARANTINE_LIMIT,
};
pub use config::{
    ConfigError, CpuSlot, Firmware, MachineConfig, DEFAULT_NESTED_DPC_PERCENT,
    DEFAULT_PARALLEL_SPIN_LIMIT_MS, DEFAULT_PARALLEL_STOP_LIMIT_MS, MAX_SIM_CPUS,
};
pub use freed_pages::freed_block_at;
pub use platform::{
    SimEvent, SimMessage, SimPassiveWork, SimTimer, PARALLEL_WAIT_LIMIT, PUMP_LIMIT, SPIN_LIMIT,
};
pub use probe::SchedulingProbe;
pub use report::{
    Bugcheck, Counters, CpuReport, CpuStatus, LogLine, MachineReport, Violation, ViolationKind,
};
pub use state::{
    AddWindowHook, SimPlatform, StepContext, StepOutcome, Task, TaskId, HALTED_WAIT_LIMIT,
    STATUS_UNSUCCESSFUL,
};

use state::{PendingAdd, Shared, TaskSlot};

/// A simulated machine. Cheap to clone (all clones control the same machine).
#[derive(Clone, Debug)]
pub struct Machine {
    platform: SimPlatform,
}

impl Machine {
    /// Builds a machine; `active_at_boot` CPUs run, the hot-add slots are absent.
    pub fn new(config: MachineConfig) -> Result<Machine, ConfigError> {
        let slots = config.topology()?;
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Ok(Machine {
            platform: SimPlatform {
                shared: Shared::new(config, slots, rng),
            },
        })
    }

    fn sh(&self) -> &Shared {
        &self.platform.shared
    }

    /// The platform to hand to the core.
    pub fn platform(&self) -> SimPlatform {
        self.platform.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.sh().config
    }

    /// Every processor slot (boot CPUs first, then hot-add slots in the order they will be added).
    pub fn slots(&self) -> &[CpuSlot] {
        &self.sh().slots
    }

    /// System indexes of the running CPUs, in slot order.
    pub fn running_indexes(&self) -> Vec<u32> {
        let st = self.sh().st.lock();
        st.running_cpus()
            .into_iter()
            .map(|c| self.sh().slots[c].index)
            .collect()
    }

    /// Adds a task on the running CPU with system index `cpu_index`. Its RNG is seeded from the machine
    /// seed and the task id. Panics if no running CPU has that index.
    pub fn spawn(&self, cpu_index: u32, task: impl Task + 'static) -> TaskId {
        let sh = self.sh();
        let slot = sh
            .slot_by_index(cpu_index)
            .unwrap_or_else(|| panic!("no CPU with index {cpu_index}"));
        let mut st = sh.st.lock();
        assert_eq!(
            st.cpus[slot].status,
            CpuStatus::Running,
            "CPU {cpu_index} is not running"
        );
        let tid = st.tasks.len();
        let seed = sh
            .config
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(tid as u64 + 1);
        st.tasks.push(TaskSlot {
            body: Some((Box::new(task), ChaCha8Rng::seed_from_u64(seed))),
            cpu: slot,
            wake_at: 0,
            irql: Irql::PASSIVE,
            hold: false,
            done: false,
        });
        drop(st);
        if sh.is_parallel() {
            sh.work_cv.notify_all();
        }
        tid
    }

    /// Schedules `count` hot-adds at simulated time `at_us`: each is AddStart → add window (the hook of
    /// [`Machine::set_add_window_hook`] runs on the new CPU) → AddComplete (tasks may run there), or
    /// with `fail`, AddStart → add window → AddFailure (the CPU stops, stays absent and can be added
    /// again later).
    pub fn schedule_hot_add(&self, at_us: u64, count: u32, fail: bool) {
        let mut st = self.sh().st.lock();
        let pos = st.pending_adds.partition_point(|a| a.due_us <= at_us);
        for _ in 0..count {
            st.pending_adds.insert(
                pos,
                PendingAdd {
                    due_us: at_us,
                    fail,
                },
            );
        }
    }

    /// Deterministic mode: runs one scheduler action (jumping time forward if needed). False if nothing
    /// can ever run again.
    pub fn step(&self) -> bool {
        sched::det_step(&self.platform)
    }

    /// Deterministic mode: runs until `duration_us` of simulated time has passed.
    pub fn run_for(&self, duration_us: u64) {
        let end = self.now_us().saturating_add(duration_us);
        while self.now_us() < end {
            if !sched::det_step_until(&self.platform, end) {
                break;
            }
        }
    }

    /// Deterministic mode: runs until no message, task, work item or hot-add is left (armed timers do
    /// not count), or `max_steps` actions ran. Returns true if the machine became idle.
    pub fn run_until_idle(&self, max_steps: u64) -> bool {
        for _ in 0..max_steps {
            if self.is_idle() {
                return true;
            }
            if !self.step() {
                return self.is_idle();
            }
        }
        self.is_idle()
    }

    /// True if no message, task, passive work item or hot-add is pending.
    pub fn is_idle(&self) -> bool {
        let st = self.sh().st.lock();
        st.cpus
            .iter()
            .all(|c| c.dpcs.is_empty() && c.in_flight.is_none())
            && st.tasks.iter().all(|t| t.done)
            && st.passive_queue.is_empty()
            && st.pending_adds.is_empty()
            && st.hot_cur.is_none()
    }

    /// Parallel mode: one thread per running CPU for `wall` wall-clock time; then stops and joins every
    /// thread. Simulated time advances with the wall clock. The stop first winds the run down: task
    /// steps start only to finish what is in progress (a task holding its CPU at DISPATCH; any task
    /// while a step or work item is blocked in a wait, which may depend on it), until no step, wait,
    /// hold or work item is in progress. If that takes longer than
    /// [`MachineConfig::parallel_stop_limit_ms`], the run stops anyway: every wait still blocked in a
    /// machine thread, nested ones included, unwinds, and the task steps and work items it cuts short
    /// are abandoned (done, never resumed), each recorded as a [`ViolationKind::WaitNeverSatisfied`].
    /// So the call always returns. If a machine thread bugchecks or panics, the machine halts, every
    /// thread ends at once, and the [`Bugcheck`] (or the thread's own panic payload) unwinds out of
    /// this call.
    pub fn run_parallel(&self, wall: Duration) {
        sched::run_parallel(&self.platform, wall);
    }

    /// Runs `f` on the calling thread in the context of CPU `cpu_index` at PASSIVE (e.g. driver load);
    /// records an IRQL violation if `f` does not return at PASSIVE.
    pub fn with_cpu<R>(&self, cpu_index: u32, f: impl FnOnce() -> R) -> R {
        let sh = self.sh();
        let slot = sh
            .slot_by_index(cpu_index)
            .unwrap_or_else(|| panic!("no CPU with index {cpu_index}"));
        let (r, end) = sh.in_ctx(slot, Irql::PASSIVE, state::ContextKind::Caller, f);
        if end >= Irql::DISPATCH {
            sh.unlock_cpu(slot);
        }
        sh.check_irql("with_cpu closure", Irql::PASSIVE, end, slot);
        r
    }

    /// Simulated time in microseconds.
    pub fn now_us(&self) -> u64 {
        self.sh().now()
    }

    /// The bugcheck that halted the machine, if one did (see [`Bugcheck`]). A halted machine runs
    /// nothing more: steps return false and waits raise the bugcheck again. (A panic of a parallel-mode
    /// machine thread halts it too, without a bugcheck; [`Machine::run_parallel`] re-raises it.)
    pub fn bugcheck(&self) -> Option<Bugcheck> {
        self.sh().bugcheck.lock().clone()
    }

    /// Violations recorded so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.sh().violations.lock().clone()
    }

    /// Log lines written so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.sh().logs.lock().clone()
    }

    /// Echo log lines and violations to stderr.
    pub fn set_log_echo(&self, echo: bool) {
        self.sh().log_echo.store(echo, Ordering::Relaxed);
    }

    /// Hash of every scheduling decision so far (and of values tasks passed to [`StepContext::trace`]).
    pub fn trace_hash(&self) -> u64 {
        self.sh().st.lock().trace_hash
    }

    /// Tasks that are not done.
    pub fn tasks_remaining(&self) -> usize {
        self.sh().st.lock().tasks.iter().filter(|t| !t.done).count()
    }

    /// Counters snapshot.
    pub fn counters(&self) -> Counters {
        self.sh().st.lock().counters.clone()
    }

    /// Full snapshot.
    pub fn report(&self) -> MachineReport {
        let sh = self.sh();
        let st = sh.st.lock();
        let cpus = st
            .cpus
            .iter()
            .enumerate()
            .map(|(k, c)| CpuReport {
                index: sh.slots[k].index,
                number: sh.slots[k].number,
                status: c.status,
                messages_delivered: c.delivered,
                timer_fires: c.timer_fires,
                task_steps: c.task_steps,
            })
            .collect();
        let counters = st.counters.clone();
        let trace_hash = st.trace_hash;
        drop(st);
        MachineReport {
            now_us: sh.now(),
            cpus,
            counters,
            alloc: sh.alloc.stats(),
            violations: self.violations(),
            trace_hash,
        }
    }

    /// Allocator statistics.
    pub fn alloc_stats(&self) -> AllocStats {
        self.sh().alloc.stats()
    }

    /// Blocks allocated and not freed (for leak checks at the end of a run).
    pub fn live_allocations(&self) -> Vec<LiveAllocation> {
        self.sh().alloc.live()
    }

    /// The next `count` allocation attempts fail.
    pub fn fail_next_allocations(&self, count: u64) {
        self.sh().alloc.fail_next(count);
    }

    /// Installs (or removes) the code every hot-add runs at DISPATCH on the new CPU between AddStart and
    /// AddComplete or AddFailure, as a DPC of another driver or an interrupt could (NT starts the
    /// processor around AddStart but schedules threads on it only after AddComplete). Tasks never run
    /// on a CPU before its AddComplete.
    pub fn set_add_window_hook(&self, hook: Option<AddWindowHook>) {
        *self.sh().add_window.lock() = hook;
    }

    /// Every `every`-th allocation attempt fails (0 = never).
    pub fn set_alloc_fail_every(&self, every: u64) {
        self.sh().alloc.set_fail_every(every);
    }

    /// Installs (or removes) a hook that decides per attempt whether it fails. It runs on the
    /// allocating thread without allocator locks held, and must not allocate through the platform.
    pub fn set_alloc_fault_hook(&self, hook: Option<FaultHook>) {
        self.sh().alloc.set_hook(hook);
    }

    /// Guard-page mode: while on, every new block of at most one page gets a page of its own (`mmap`);
    /// when freed, the page is poisoned, made `PROT_NONE` and kept in quarantine (bounded by
    /// [`QUARANTINE_LIMIT`], then unmapped), so a late read faults (SIGSEGV) instead of reading poison.
    /// Blocks allocated before the switch keep their kind.
    pub fn set_guard_pages(&self, on: bool) {
        self.sh().alloc.set_guard_pages(on);
    }

    /// True if `ptr` lies in a freed guard page that is still protected (`PROT_NONE`) in quarantine.
    pub fn is_guard_protected(&self, ptr: *const u8) -> bool {
        self.sh().alloc.is_guard_protected(ptr)
    }

    /// True if `[ptr, ptr + len)` is inside a freed (quarantined) block and still reads as poison.
    pub fn is_poisoned(&self, ptr: *const u8, len: usize) -> bool {
        self.sh().alloc.is_poisoned(ptr, len)
    }

    /// True if `ptr` is the start of a freed block held in quarantine.
    pub fn is_quarantined(&self, ptr: *const u8) -> bool {
        self.sh().alloc.is_quarantined(ptr)
    }

    /// Checks the poison of every quarantined block; records a violation per overwritten block and
    /// returns how many there were.
    pub fn check_quarantine(&self) -> usize {
        let bad = self.sh().alloc.corrupted_quarantine();
        for addr in &bad {
            self.sh().violation(
                ViolationKind::WriteAfterFree,
                format!("freed block {addr:#x} was written after free"),
            );
        }
        bad.len()
    }

    /// Convenience for tests: allocates through the platform in the caller's context.
    pub fn allocate(&self, layout: Layout) -> Option<std::ptr::NonNull<u8>> {
        kepoch::platform::Platform::allocate(&self.platform, layout)
    }
}
