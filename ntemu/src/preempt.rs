//! Threads below DISPATCH_LEVEL and what interrupts them, as on NT: a DPC runs on its processor at
//! DISPATCH_LEVEL and nothing else runs there until it returns, so the thread it interrupted waits;
//! a thread below DISPATCH may move to another processor at any scheduling point; a thread that wakes
//! a waiter may be preempted by it.
//!
//! The emulation cannot stop a host thread between two instructions, so it does this where a thread
//! calls into the kernel (every emulated routine, raising and lowering the IRQL) and where it blocks.
//! A thread running driver code below DISPATCH is counted on its processor, and a DPC starts there
//! only while no counted thread runs there (the processor's DPC loop waits for that). A thread that
//! arrives at a kernel call steps aside (stops being counted), may move to another processor (seeded:
//! one call in `MachineConfig::migrate_one_in`), lets a DPC that is due or running on its processor
//! return first, and goes on. So a PASSIVE thread that holds a lock without raising and then calls
//! the kernel, while a DPC on its processor spins on that lock, deadlocks as it would on NT; the DPC
//! watchdog (`MachineConfig::dpc_watchdog`, bug check 0x133 on NT) reports it and lets the preempted
//! threads go on so that the test can end.

use core::sync::atomic::{AtomicU32, Ordering};
use std::collections::HashMap;
use std::format;
use std::string::String;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};
use std::vec;
use std::vec::Vec;

use super::kernel::{try_with_context, with_context, Context, Kernel, Role, State, DISPATCH};
use super::processor::maybe_migrate;

/// Scheduling state, behind the kernel lock.
#[derive(Default)]
pub(super) struct Scheduler {
    /// Per processor slot: threads below DISPATCH running driver code there. Atomic only so that a
    /// migration, which sees the state shared, can move a count; every change is made under the
    /// kernel lock.
    running: Vec<AtomicU32>,
    /// Per slot: the threads waiting at a kernel call for a DPC there to return, in the order they
    /// stepped aside (a DPC that starts there interrupted the last one: its current thread).
    preempted: Vec<Vec<u64>>,
    /// Per slot: how often a thread arriving at a kernel call there let a DPC go first.
    preemptions: Vec<u64>,
    /// Per slot: the DPC the watchdog last saw running there (its processor's completed-DPC count
    /// and its KDPC) and since when.
    watched: Vec<Option<((u64, usize), Instant)>>,
    /// The watchdog fired: the machine has failed, and preempted threads no longer wait.
    released: bool,
    /// Per thread: how often it blocked (in a wait) or ended. A signaller held up after waking
    /// waiters watches these.
    blocked: HashMap<u64, u64>,
}

impl Scheduler {
    /// The scheduler of a machine with `slots` processor slots.
    pub(super) fn new(slots: usize) -> Scheduler {
        Scheduler {
            running: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            preempted: vec![Vec::new(); slots],
            preemptions: vec![0; slots],
            watched: vec![None; slots],
            ..Scheduler::default()
        }
    }

    /// Whether no thread runs driver code below DISPATCH on `slot`: a DPC may start there.
    pub(super) fn idle(&self, slot: usize) -> bool {
        self.running[slot].load(Ordering::Relaxed) == 0
    }

    /// How often a thread at a kernel call on `slot` let a DPC there go first.
    pub(super) fn preemptions(&self, slot: usize) -> u64 {
        self.preemptions[slot]
    }

    /// The thread a DPC starting on `slot` now interrupts (its current thread, what
    /// `PsGetCurrentThreadId` returns in it): the last one that stepped aside there at a kernel call,
    /// or 0, the processor's idle thread, when none did.
    pub(super) fn interrupted(&self, slot: usize) -> u64 {
        self.preempted[slot].last().copied().unwrap_or(0)
    }

    /// How often `thread` blocked or ended so far.
    pub(super) fn blocked(&self, thread: u64) -> u64 {
        self.blocked.get(&thread).copied().unwrap_or(0)
    }
}

/// Whether threads of `role` run driver code below DISPATCH (the processor loops run DPCs at
/// DISPATCH, the clock runs kernel code only).
fn runs_driver_code(role: Role) -> bool {
    matches!(role, Role::System | Role::Caller | Role::Worker)
}

/// Counts the thread on its processor: it runs driver code there from now on.
fn count(state: &State, context: &mut Context) {
    if !context.counted {
        state.scheduler.running[context.cpu].fetch_add(1, Ordering::Relaxed);
        context.counted = true;
    }
}

/// Stops counting the thread (it blocks, raises or steps aside); returns whether it was counted.
fn uncount(state: &State, context: &mut Context) -> bool {
    if !context.counted {
        return false;
    }
    state.scheduler.running[context.cpu].fetch_sub(1, Ordering::Relaxed);
    context.counted = false;
    context.kernel.cpu_changed[context.cpu].notify_all();
    true
}

/// Moves the thread (seen through `context`, under the kernel lock) to processor slot `to`. A thread
/// running driver code is not moved onto a processor held at DISPATCH_LEVEL (by a DPC or a raised
/// thread) unless it `must` leave its own (outside its affinity).
pub(super) fn move_to(state: &State, context: &mut Context, to: usize, must: bool) {
    if to == context.cpu {
        return;
    }
    if context.counted {
        if state.cpus[to].owner.is_some() && !must {
            return;
        }
        uncount(state, context);
        context.cpu = to;
        count(state, context);
    } else {
        context.cpu = to;
    }
}

/// Whether a thread arriving on `slot` must let a DPC return first: one runs there, or one is due
/// and could start.
fn dpc_first(kernel: &Kernel, state: &State, slot: usize) -> bool {
    let cpu = &state.cpus[slot];
    if cpu.running.is_some() {
        return true;
    }
    let stalled = kernel.boot.elapsed() < kernel.config.dpc_stall;
    let now = Instant::now();
    !stalled
        && cpu.owner.is_none()
        && state.scheduler.idle(slot)
        && cpu.queue.front().is_some_and(|dpc| dpc.due <= now)
}

/// The calling (uncounted) thread lets the DPCs due or running on its processor return, then is
/// counted there again.
fn resume<'a>(kernel: &Kernel, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    let (slot, thread) = with_context(|c| (c.cpu, c.thread));
    let mut state = state;
    if dpc_first(kernel, &state, slot) {
        state.scheduler.preemptions[slot] += 1;
    }
    state.scheduler.preempted[slot].push(thread);
    let mut state = kernel.wait_for(
        state,
        &kernel.cpu_changed[slot],
        |s| {
            format!(
                "the DPC on {} to return (it preempted this thread at a kernel call)",
                s.cpus[slot].name()
            )
        },
        |s| s.scheduler.released || !dpc_first(kernel, s, slot),
    );
    let waiting = &mut state.scheduler.preempted[slot];
    if let Some(at) = waiting.iter().rposition(|&t| t == thread) {
        waiting.remove(at);
    }
    with_context(|c| count(&state, c));
    state
}

/// A scheduling point of the calling thread (a kernel call): if it runs driver code below DISPATCH,
/// it steps aside, may move to another processor (seeded) when `may_migrate`, and waits for the DPCs
/// due or running on its processor.
pub(super) fn scheduling_point(kernel: &Kernel, may_migrate: bool) {
    if !with_context(|c| c.irql < DISPATCH && c.counted) {
        return;
    }
    let state = kernel.lock();
    with_context(|c| uncount(&state, c));
    if may_migrate {
        maybe_migrate(&state);
    }
    drop(resume(kernel, state));
}

/// The calling thread starts running driver code below DISPATCH (a new thread, a work item): a DPC
/// running on its processor returns first.
pub(super) fn start_driver_code(kernel: &Kernel) {
    if with_context(|c| c.irql < DISPATCH && !c.counted && runs_driver_code(c.role)) {
        drop(resume(kernel, kernel.lock()));
    }
}

/// The calling thread stops running driver code (its work item returned); `ended` when the thread
/// ends, which counts as blocking.
pub(super) fn stop_driver_code(kernel: &Kernel, ended: bool) {
    let mut state = kernel.lock();
    let thread = with_context(|c| {
        uncount(&state, c);
        c.thread
    });
    if ended {
        *state.scheduler.blocked.entry(thread).or_default() += 1;
        drop(state);
        kernel.changed.notify_all();
    }
}

/// The calling thread is about to raise to DISPATCH: a DPC due on its processor runs first (on NT its
/// interrupt is taken before the IRQL goes up).
pub(crate) fn before_raise() {
    let kernel = with_context(|c| c.kernel.clone());
    scheduling_point(&kernel, false);
}

/// The calling thread raised to DISPATCH: it holds its processor and is no longer counted.
pub(crate) fn raised() {
    with_context(|c| {
        if c.irql >= DISPATCH && c.counted {
            let kernel = c.kernel.clone();
            uncount(&kernel.lock(), c);
        }
    });
}

/// The calling thread lowered below DISPATCH: the DPCs queued to its processor meanwhile run first
/// (on NT they interrupt it as soon as the IRQL drops), then it runs driver code there again.
pub(crate) fn lowered() {
    let kernel = with_context(|c| c.kernel.clone());
    start_driver_code(&kernel);
}

/// The calling thread blocks in a wait (with `state` locked): it stops being counted, and the block
/// is recorded. Returns whether it was counted (to be counted again by [`unblock`]). Threads the
/// machine did not create are ignored.
pub(super) fn block(state: &mut State) -> bool {
    let Some((thread, was_counted)) = try_with_context(|c| (c.thread, uncount(state, c))) else {
        return false;
    };
    *state.scheduler.blocked.entry(thread).or_default() += 1;
    was_counted
}

/// The calling thread's wait ended: counted again if [`block`] uncounted it.
pub(super) fn unblock(state: &State, was_counted: bool) {
    if was_counted {
        with_context(|c| count(state, c));
    }
}

/// `KeDelayExecutionThread`: the calling thread sleeps blocked, then wakes at a scheduling point.
pub(super) fn sleep(kernel: &Kernel, duration: Duration) {
    let was_counted = block(&mut kernel.lock());
    std::thread::sleep(duration);
    if was_counted {
        let state = kernel.lock();
        maybe_migrate(&state);
        drop(resume(kernel, state));
    }
}

/// After the calling thread (below DISPATCH) woke `woken` (thread, blocked count at the signal), it
/// may be preempted by them (seeded: one signal in `MachineConfig::migrate_one_in`): it waits until
/// one of them blocked again or ended, at most `MachineConfig::signal_delay`, as if the woken thread
/// ran first, then goes on at a scheduling point.
pub(super) fn after_wake(kernel: &Kernel, woken: &[(u64, u64)]) {
    if woken.is_empty()
        || !with_context(|c| {
            c.irql < DISPATCH && c.counted && c.next_random() % kernel.config.migrate_one_in == 0
        })
    {
        return;
    }
    let until = Instant::now() + kernel.config.signal_delay;
    let mut state = kernel.lock();
    with_context(|c| uncount(&state, c));
    loop {
        let ran = woken
            .iter()
            .any(|&(thread, blocked)| state.scheduler.blocked(thread) > blocked);
        let now = Instant::now();
        if ran || now >= until {
            break;
        }
        state = kernel
            .changed
            .wait_timeout(state, (until - now).min(Duration::from_millis(20)))
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
    maybe_migrate(&state);
    drop(resume(kernel, state));
}

/// The DPC watchdog, run by the clock: a DPC that runs longer than `MachineConfig::dpc_watchdog`
/// fails the machine (`DPC_WATCHDOG_VIOLATION` on NT), naming the threads it preempted, and from
/// then on preempted threads no longer wait for it.
pub(super) fn watchdog(kernel: &Kernel, state: &mut State) {
    let limit = kernel.config.dpc_watchdog;
    let now = Instant::now();
    let mut violations = Vec::new();
    for (slot, cpu) in state.cpus.iter().enumerate() {
        let watched = &mut state.scheduler.watched[slot];
        let Some(dpc) = cpu.running else {
            *watched = None;
            continue;
        };
        let seen = (cpu.completed_total, dpc);
        match *watched {
            Some((last, since)) if last == seen => {
                if now - since > limit && !state.scheduler.released {
                    violations.push(violation(
                        cpu.name(),
                        dpc,
                        limit,
                        state.scheduler.preempted[slot].len(),
                    ));
                }
            }
            _ => *watched = Some((seen, now)),
        }
    }
    if violations.is_empty() {
        return;
    }
    state.scheduler.released = true;
    for violation in violations {
        kernel.fail(violation);
    }
    for condvar in &kernel.cpu_changed {
        condvar.notify_all();
    }
}

/// The failure text of a DPC that ran too long on `processor`.
fn violation(processor: String, dpc: usize, limit: Duration, preempted: usize) -> String {
    let mut text = format!(
        "DPC_WATCHDOG_VIOLATION (bug check 0x133): DPC {dpc:#x} has run on {processor} for more \
         than {limit:?}"
    );
    if preempted > 0 {
        text.push_str(&format!(
            "; {preempted} thread(s) it preempted there wait at a kernel call for it to return: if \
             it waits for one of them (a spin lock taken below DISPATCH_LEVEL), the processor is \
             deadlocked"
        ));
    }
    text
}
