//! The interface of a workload task: what a step sees and what it asks for next. The scheduler runs
//! tasks; this module knows nothing of how it picks them.

use kepoch::platform::{CurrentProcessor, Irql};
use rand_chacha::ChaCha8Rng;

use super::SimPlatform;

/// Identifies a spawned task.
pub type TaskId = usize;

/// What a task asks for after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Run another step later on the same CPU.
    Continue,
    /// The task is finished.
    Done,
    /// Move to the CPU with this system index before the next step (PASSIVE only).
    MigrateTo(u32),
    /// Move to a random running CPU (possibly the same one) before the next step (PASSIVE only).
    MigrateRandom,
    /// Do not run for this many simulated microseconds.
    Sleep(u64),
}

/// A unit of workload: a resumable sequence of steps, each run on one virtual CPU.
pub trait Task: Send {
    /// Runs one step. Called at PASSIVE, or at DISPATCH if the task holds DISPATCH across steps.
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome;
}

impl<F: FnMut(&mut StepContext<'_>) -> StepOutcome + Send> Task for F {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        self(ctx)
    }
}

/// What a step sees: its CPU, the time, its RNG, and the platform. The scheduler makes one per step.
pub struct StepContext<'a> {
    platform: &'a SimPlatform,
    cpu: CurrentProcessor,
    now_us: u64,
    rng: &'a mut ChaCha8Rng,
    hold: bool,
    task: TaskId,
    trace: Vec<u64>,
}

impl<'a> StepContext<'a> {
    /// The context of one step of task `task` on `cpu` at simulated time `now_us`.
    pub(crate) fn new(
        platform: &'a SimPlatform,
        cpu: CurrentProcessor,
        now_us: u64,
        rng: &'a mut ChaCha8Rng,
        hold: bool,
        task: TaskId,
    ) -> Self {
        StepContext {
            platform,
            cpu,
            now_us,
            rng,
            hold,
            task,
            trace: Vec::new(),
        }
    }
    /// Ends the step: whether the task declared to hold DISPATCH, and the values it traced.
    pub(crate) fn finish(self) -> (bool, Vec<u64>) {
        (self.hold, self.trace)
    }
    /// The CPU this step runs on.
    pub fn cpu(&self) -> CurrentProcessor {
        self.cpu
    }
    /// Simulated time at the start of the step (µs).
    pub fn now_us(&self) -> u64 {
        self.now_us
    }
    /// This task's seeded RNG (replayable in deterministic mode).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        self.rng
    }
    /// The platform (for code that needs a `&SimPlatform`).
    pub fn platform(&self) -> &SimPlatform {
        self.platform
    }
    /// The task's id.
    pub fn task_id(&self) -> TaskId {
        self.task
    }
    /// Declares whether the task stays at DISPATCH after this step (it must have raised through the
    /// platform and not lowered). While it holds, nothing else runs on its CPU and it cannot migrate.
    pub fn hold_dispatch(&mut self, hold: bool) {
        self.hold = hold;
    }
    /// Whether the task currently declares to hold DISPATCH.
    pub fn holds_dispatch(&self) -> bool {
        self.hold
    }
    /// Mixes a value into the machine's trace hash (for determinism checks).
    pub fn trace(&mut self, value: u64) {
        self.trace.push(value);
    }
}

/// A spawned task as the machine keeps it between steps.
pub(crate) struct TaskSlot {
    /// The task and its RNG (taken out while a step runs).
    pub body: Option<(Box<dyn Task>, ChaCha8Rng)>,
    /// The CPU slot it runs on next.
    pub cpu: usize,
    /// Simulated time before which it does not run.
    pub wake_at: u64,
    /// IRQL saved between steps (DISPATCH while holding).
    pub irql: Irql,
    /// Whether it holds DISPATCH across steps.
    pub hold: bool,
    /// Whether it finished.
    pub done: bool,
}
