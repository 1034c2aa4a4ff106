//! Parallel mode's machine threads: which one the calling thread is, how often each one ran (its
//! ticks, the clock of [`crate::machine::SchedulingProbe`]), and what their stop does to the work they
//! are in the middle of: the rules for starting a task step while the run winds down, and the unwinding
//! of waits that could only end by other work that will no longer run.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{Shared, State, TaskId};

/// Which machine thread an OS thread is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ThreadRole {
    /// The thread of the CPU in this slot.
    Cpu(usize),
    /// The thread that hands timer expiries to CPUs.
    Timer,
    /// The thread that runs passive work items.
    Passive,
    /// The thread that runs hot-add phases.
    HotPlug,
}

/// The service threads, in the order of [`ThreadTicks::services`].
pub(crate) const SERVICE_ROLES: [ThreadRole; 3] =
    [ThreadRole::Timer, ThreadRole::Passive, ThreadRole::HotPlug];

thread_local! {
    /// (machine id, role) of the calling thread, if it is a parallel-mode machine thread.
    static MACHINE_THREAD: Cell<Option<(usize, ThreadRole)>> = const { Cell::new(None) };
}

/// How many times each machine thread passed through its loop (one count per pass).
pub(crate) struct ThreadTicks {
    /// Per CPU slot.
    pub cpus: Vec<AtomicU64>,
    /// Timer, passive and hot-plug threads.
    pub services: [AtomicU64; 3],
}

impl ThreadTicks {
    pub fn new(cpus: usize) -> ThreadTicks {
        ThreadTicks {
            cpus: (0..cpus).map(|_| AtomicU64::new(0)).collect(),
            services: Default::default(),
        }
    }

    /// The counter of `role`.
    pub fn of(&self, role: ThreadRole) -> &AtomicU64 {
        match role {
            ThreadRole::Cpu(slot) => &self.cpus[slot],
            ThreadRole::Timer => &self.services[0],
            ThreadRole::Passive => &self.services[1],
            ThreadRole::HotPlug => &self.services[2],
        }
    }
}

/// Unwinding payload of a machine thread whose wait could not end before the run stopped: the wait
/// depended on task steps, work items or handlers that no longer run.
pub(crate) struct MachineStopped {
    /// What the innermost blocked call was waiting for.
    pub blocked_in: String,
    /// A task step or work item cut short by the unwinding was recorded as abandoned.
    pub reported: bool,
}

/// Counts a blocked parallel-mode wait of a machine thread while it lasts (also when it unwinds).
pub(crate) struct CountedWait<'a>(&'a AtomicUsize);

impl Drop for CountedWait<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Marks the calling OS thread as machine thread `role` of this machine.
    pub fn become_machine_thread(&self, role: ThreadRole) {
        MACHINE_THREAD.with(|t| t.set(Some((self.id, role))));
    }

    /// The calling thread's role, if it is a machine thread of this machine.
    pub fn machine_thread(&self) -> Option<ThreadRole> {
        match MACHINE_THREAD.with(Cell::get) {
            Some((machine, role)) if machine == self.id => Some(role),
            _ => None,
        }
    }

    /// One pass of the calling machine thread through its loop (nothing for other threads).
    pub fn tick(&self) {
        if let Some(role) = self.machine_thread() {
            self.ticks.of(role).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A machine thread starts blocking in a wait: counted until the guard drops. Other threads'
    /// waits are not counted (the run's stop neither waits for them nor unwinds them).
    pub fn count_wait(&self) -> Option<CountedWait<'_>> {
        self.machine_thread()?;
        self.machine_waits.fetch_add(1, Ordering::AcqRel);
        Some(CountedWait(&self.machine_waits))
    }

    /// The run has stopped (its threads are told to exit).
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// A machine thread blocked in `what` after the run stopped unwinds with [`MachineStopped`]:
    /// nothing that could end the wait runs any more. Other threads, and a thread already unwinding,
    /// carry on.
    pub fn unwind_if_stopped(&self, what: &str) {
        if self.is_stopping() && self.machine_thread().is_some() && !std::thread::panicking() {
            std::panic::resume_unwind(Box::new(MachineStopped {
                blocked_in: what.to_string(),
                reported: false,
            }));
        }
    }

    /// Whether task `tid` may start a step now (`st` is the locked state). Always in deterministic
    /// mode. In parallel mode: not once the run stopped; while it winds down, only to finish what is
    /// in progress — a task holding its CPU at DISPATCH across steps, or any task while a machine
    /// thread is blocked in a wait (the wait may depend on that task's next step).
    pub fn may_start_step(&self, st: &State, tid: TaskId) -> bool {
        if !self.is_parallel() {
            return true;
        }
        if self.is_stopping() {
            return false;
        }
        if !self.winding_down.load(Ordering::Acquire) {
            return true;
        }
        let task = &st.tasks[tid];
        st.cpus[task.cpu].held_by == Some(tid) || self.machine_waits.load(Ordering::Acquire) > 0
    }

    /// What a winding-down run still has in progress (`st` is the locked state): task steps, blocked
    /// waits of machine threads, CPUs held at DISPATCH by tasks, running work items. `None` when
    /// nothing is, and the run can stop without cutting anything short.
    pub fn work_in_progress(&self, st: &State) -> Option<String> {
        let mut parts = Vec::new();
        if st.running_tasks > 0 {
            parts.push(format!("{} task step(s) in progress", st.running_tasks));
        }
        let waits = self.machine_waits.load(Ordering::Acquire);
        if waits > 0 {
            parts.push(format!("{waits} wait(s) blocked"));
        }
        for (slot, cpu) in st.cpus.iter().enumerate() {
            if let Some(tid) = cpu.held_by {
                parts.push(format!(
                    "{} held at DISPATCH by task {tid}",
                    self.cpu_label(slot)
                ));
            }
        }
        for (id, work) in &st.works {
            if work.running {
                parts.push(format!("passive work item #{id} running"));
            }
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}
