//! Processors: topology queries, IRQL with per-processor DISPATCH exclusion, migration of threads below
//! DISPATCH, and each processor's DPC loop.

use std::format;
use std::string::String;
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::dpc::QueuedDpc;
use super::kernel::{enter, with_context, Kernel, Role, Rule, State, DISPATCH};
use crate::nt::{NTSTATUS, PROCESSOR_NUMBER};

/// Where a processor slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Not present (a slot below the maximum that can be hot-added).
    Absent,
    /// AddStart is being delivered; the processor does not run yet.
    Starting,
    /// Started and schedulable; AddComplete not delivered yet.
    Running,
    /// AddComplete delivered (or present at boot).
    Complete,
}

/// One processor slot.
pub(super) struct Cpu {
    pub(super) group: u16,
    pub(super) number: u8,
    /// NT index, once started.
    pub(super) index: Option<u32>,
    pub(super) phase: Phase,
    /// The thread at DISPATCH on this processor (a DPC loop or a raised thread).
    pub(super) owner: Option<u64>,
    pub(super) queue: std::collections::VecDeque<QueuedDpc>,
    /// The KDPC whose routine is running here.
    pub(super) running: Option<usize>,
    /// The thread that DPC interrupted (0: the idle thread): its current thread, as on NT, where a
    /// DPC runs in the context of whatever thread the processor was running.
    pub(super) interrupted: u64,
    /// DPCs ever queued here / finished (or discarded) here: `KeFlushQueuedDpcs` compares them.
    pub(super) queued_total: u64,
    pub(super) completed_total: u64,
    /// DPCs queued here through `KeSetTargetProcessorDpcEx` (the driver's per-CPU messages).
    pub(super) targeted_total: u64,
    /// Of those, DPCs below `MediumHighImportance`: on NT a remote processor takes them only at its next
    /// clock tick or when its queue grows long, so each one can add a tick to a cycle.
    pub(super) targeted_slow_total: u64,
}

impl Cpu {
    /// An absent or boot processor slot.
    pub(super) fn new(group: u16, number: u8, index: Option<u32>) -> Cpu {
        Cpu {
            group,
            number,
            index,
            phase: if index.is_some() {
                Phase::Complete
            } else {
                Phase::Absent
            },
            owner: None,
            queue: Default::default(),
            running: None,
            interrupted: 0,
            queued_total: 0,
            completed_total: 0,
            targeted_total: 0,
            targeted_slow_total: 0,
        }
    }

    /// Whether threads can run here.
    pub(super) fn schedulable(&self) -> bool {
        self.phase >= Phase::Running
    }

    /// `(group, number)` for messages.
    pub(super) fn name(&self) -> String {
        format!("processor ({}, {})", self.group, self.number)
    }
}

/// Slots a thread with `affinity` may run on.
fn eligible(state: &State, affinity: Option<u64>) -> Vec<usize> {
    state
        .cpus
        .iter()
        .enumerate()
        .filter(|(_, cpu)| cpu.schedulable())
        .filter(|(_, cpu)| match affinity {
            None => true,
            Some(mask) => cpu.group == 0 && cpu.number < 64 && mask & (1u64 << cpu.number) != 0,
        })
        .map(|(slot, _)| slot)
        .collect()
}

/// Moves a thread below DISPATCH to another processor now and then (and always when its processor is
/// outside its affinity). Returns the processor it runs on.
pub(super) fn maybe_migrate(state: &State) -> usize {
    with_context(|context| {
        let candidates = eligible(state, context.affinity);
        let stay = candidates.contains(&context.cpu);
        let roll = context.next_random();
        if !candidates.is_empty() && (!stay || roll % context.kernel.config.migrate_one_in == 0) {
            let to = candidates[(roll >> 8) as usize % candidates.len()];
            super::preempt::move_to(state, context, to, !stay);
        }
        context.cpu
    })
}

/// `KfRaiseIrql(DISPATCH_LEVEL)` of the calling thread: takes its processor (waiting while a DPC or
/// another thread at DISPATCH holds it). Returns the previous IRQL.
pub(crate) fn raise_to_dispatch() -> u8 {
    let (kernel, thread, previous) = with_context(|c| (c.kernel.clone(), c.thread, c.irql));
    if previous >= DISPATCH {
        return previous;
    }
    let state = kernel.lock();
    let slot = maybe_migrate(&state);
    let mut state = kernel.wait_until(
        state,
        &kernel.cpu_changed[slot],
        |s| {
            format!(
                "{} to raise to DISPATCH_LEVEL (held by thread {:?}, running DPC {:?})",
                s.cpus[slot].name(),
                s.cpus[slot].owner,
                s.cpus[slot].running
            )
        },
        |s| s.cpus[slot].owner.is_none(),
    );
    state.cpus[slot].owner = Some(thread);
    drop(state);
    with_context(|c| c.irql = DISPATCH);
    previous
}

/// `KeLowerIrql(previous)` of the calling thread.
pub(crate) fn lower(previous: u8) {
    let (kernel, thread, irql, role, slot) =
        with_context(|c| (c.kernel.clone(), c.thread, c.irql, c.role, c.cpu));
    if previous > irql {
        kernel.fail(format!(
            "KeLowerIrql({previous}) at IRQL {irql}: lowering to a higher IRQL bug checks"
        ));
        return;
    }
    if irql >= DISPATCH && previous < DISPATCH {
        if role == Role::Dpc {
            kernel.fail(format!(
                "a DPC routine lowered the IRQL to {previous} (DPCs run at DISPATCH_LEVEL)"
            ));
            return;
        }
        let mut state = kernel.lock();
        if state.cpus[slot].owner != Some(thread) {
            drop(state);
            kernel.fail(format!(
                "KeLowerIrql on a processor slot {slot} this thread does not hold"
            ));
            return;
        }
        state.cpus[slot].owner = None;
        drop(state);
        kernel.cpu_changed[slot].notify_all();
    }
    with_context(|c| c.irql = previous);
}

/// `KeGetCurrentIrql` of the calling thread.
pub(crate) fn current_irql() -> u8 {
    with_context(|c| c.irql)
}

/// The DPC loop of processor slot `slot`: runs queued DPCs at DISPATCH, one at a time, while holding
/// the processor; ends at shutdown.
pub(super) fn dpc_loop(kernel: Arc<Kernel>, slot: usize) {
    let thread = with_context(|c| c.thread);
    loop {
        let mut state = kernel.lock();
        let entry = loop {
            // Shut down, or a processor whose add failed after it started (it runs nothing again).
            if state.shutdown || state.cpus[slot].phase == Phase::Absent {
                return;
            }
            let now = Instant::now();
            let stalled = kernel.boot.elapsed() < kernel.config.dpc_stall;
            let cpu = &state.cpus[slot];
            let due = cpu.queue.front().map(|d| d.due);
            let idle = cpu.owner.is_none() && state.scheduler.idle(slot);
            if !stalled && idle && due.is_some_and(|d| d <= now) {
                break state.cpus[slot].queue.pop_front().expect("non-empty queue");
            }
            let wait = due.map_or(Duration::from_millis(20), |d| {
                d.saturating_duration_since(now)
            });
            state = kernel.cpu_changed[slot]
                .wait_timeout(
                    state,
                    wait.clamp(Duration::from_micros(50), Duration::from_millis(20)),
                )
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        };
        state.cpus[slot].owner = Some(thread);
        state.cpus[slot].running = Some(entry.dpc);
        state.cpus[slot].interrupted = state.scheduler.interrupted(slot);
        if let Some(object) = state.dpc.objects.get_mut(&entry.dpc) {
            object.queued = None;
        }
        let unloaded = state.image.unloaded;
        drop(state);
        if unloaded {
            kernel.fail(format!(
                "DPC {:#x} (routine {:p}) ran after the driver image was unloaded",
                entry.dpc, entry.routine as *const ()
            ));
        } else {
            super::dpc::run_routine(&kernel, &entry);
        }
        let irql = current_irql();
        if irql != DISPATCH {
            kernel.fail(format!(
                "DPC routine {:p} returned at IRQL {irql}",
                entry.routine as *const ()
            ));
            with_context(|c| c.irql = DISPATCH);
        }
        let mut state = kernel.lock();
        let cpu = &mut state.cpus[slot];
        cpu.owner = None;
        cpu.running = None;
        cpu.completed_total += 1;
        drop(state);
        kernel.cpu_changed[slot].notify_all();
        kernel.changed.notify_all();
    }
}

/// Starts the DPC loop of `slot` (boot or hot-add).
pub(super) fn start_processor(kernel: &Arc<Kernel>, slot: usize) -> std::thread::JoinHandle<()> {
    let id = kernel.new_thread_id();
    let k = kernel.clone();
    kernel.spawn(id, Role::Dpc, slot, DISPATCH, move || dpc_loop(k, slot))
}

/// `KeGetCurrentProcessorNumberEx`.
///
/// # Safety
/// `number` is null or writable.
#[no_mangle]
pub unsafe extern "system" fn KeGetCurrentProcessorNumberEx(number: *mut PROCESSOR_NUMBER) -> u32 {
    let (kernel, irql) = enter("KeGetCurrentProcessorNumberEx", Rule::Any);
    let state = kernel.lock();
    let slot = if irql < DISPATCH {
        maybe_migrate(&state)
    } else {
        with_context(|c| c.cpu)
    };
    let cpu = &state.cpus[slot];
    if !number.is_null() {
        // SAFETY: per the caller.
        unsafe {
            number.write(PROCESSOR_NUMBER {
                Group: cpu.group,
                Number: cpu.number,
                Reserved: 0,
            })
        };
    }
    cpu.index.unwrap_or(u32::MAX)
}

/// `KeQueryMaximumProcessorCountEx`.
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn KeQueryMaximumProcessorCountEx(group: u16) -> u32 {
    let (kernel, _) = enter("KeQueryMaximumProcessorCountEx", Rule::Any);
    let state = kernel.lock();
    state
        .cpus
        .iter()
        .filter(|cpu| group == crate::nt::ALL_PROCESSOR_GROUPS || cpu.group == group)
        .count() as u32
}

/// `KeQueryActiveProcessorCountEx`.
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn KeQueryActiveProcessorCountEx(group: u16) -> u32 {
    let (kernel, _) = enter("KeQueryActiveProcessorCountEx", Rule::Any);
    let state = kernel.lock();
    state
        .cpus
        .iter()
        .filter(|cpu| group == crate::nt::ALL_PROCESSOR_GROUPS || cpu.group == group)
        .filter(|cpu| cpu.schedulable())
        .count() as u32
}

/// `KeQueryActiveProcessors`: the active processors of group 0.
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn KeQueryActiveProcessors() -> usize {
    let (kernel, _) = enter("KeQueryActiveProcessors", Rule::Any);
    let state = kernel.lock();
    state
        .cpus
        .iter()
        .filter(|cpu| cpu.group == 0 && cpu.schedulable() && cpu.number < 64)
        .fold(0usize, |mask, cpu| mask | 1 << cpu.number)
}

/// `KeGetProcessorNumberFromIndex` (resolved with `MmGetSystemRoutineAddress`).
///
/// # Safety
/// `number` is writable.
pub unsafe extern "system" fn KeGetProcessorNumberFromIndex(
    index: u32,
    number: *mut PROCESSOR_NUMBER,
) -> NTSTATUS {
    let (kernel, _) = enter("KeGetProcessorNumberFromIndex", Rule::Any);
    let state = kernel.lock();
    match state
        .cpus
        .iter()
        .find(|cpu| cpu.index == Some(index) && cpu.schedulable())
    {
        Some(cpu) => {
            // SAFETY: per the caller.
            unsafe {
                number.write(PROCESSOR_NUMBER {
                    Group: cpu.group,
                    Number: cpu.number,
                    Reserved: 0,
                })
            };
            0
        }
        None => super::kernel::STATUS_INVALID_PARAMETER,
    }
}

/// Ticks per second of the emulated performance counter.
pub(super) const PERFORMANCE_FREQUENCY: i64 = 10_000_000;

/// `KeQueryPerformanceCounter`: 100 ns ticks since boot.
///
/// # Safety
/// `frequency` is null or writable.
#[no_mangle]
pub unsafe extern "system" fn KeQueryPerformanceCounter(frequency: *mut i64) -> i64 {
    let (kernel, _) = enter("KeQueryPerformanceCounter", Rule::Any);
    if !frequency.is_null() {
        // SAFETY: per the caller.
        unsafe { frequency.write(PERFORMANCE_FREQUENCY) };
    }
    (kernel.boot.elapsed().as_nanos() / 100) as i64
}
