//! DPCs: `KDPC` objects queued to their target processor's DPC loop and `KeFlushQueuedDpcs`; the
//! registry of DPC and timer objects the pool's free checks consult.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::format;
use std::string::String;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::kernel::{enter, with_context, Kernel, Rule, State, STATUS_INVALID_PARAMETER};
use super::processor::Phase;
use super::stack::{on_kernel_stack, StackKind};
use super::timer::TimerObject;
use crate::nt::{KDEFERRED_ROUTINE, KDPC, NTSTATUS, PKDEFERRED_ROUTINE, PROCESSOR_NUMBER};

/// Signature written into the first word of an initialised KDPC.
pub(super) const DPC_SIGNATURE: u64 = u64::from_le_bytes(*b"ntemuDPC");

/// A deferred routine (with the parameters windows-sys's `PKDEFERRED_ROUTINE` lacks).
pub(super) type DeferredRoutine = KDEFERRED_ROUTINE;

/// A DPC in a processor's queue.
pub(super) struct QueuedDpc {
    pub(super) dpc: usize,
    pub(super) routine: DeferredRoutine,
    pub(super) context: usize,
    pub(super) argument1: usize,
    pub(super) argument2: usize,
    /// Not delivered before this (the machine's DPC latency).
    pub(super) due: Instant,
}

/// `LowImportance` (`KDPC_IMPORTANCE`).
const LOW_IMPORTANCE: i32 = 0;
/// `MediumImportance`, what `KeInitializeDpc` sets.
const MEDIUM_IMPORTANCE: i32 = 1;
/// `MediumHighImportance`: a remote target processor takes the DPC at once.
const MEDIUM_HIGH_IMPORTANCE: i32 = 3;

/// An initialised KDPC.
pub(super) struct DpcObject {
    routine: DeferredRoutine,
    context: usize,
    /// Slot set by `KeSetTargetProcessorDpcEx`.
    target: Option<usize>,
    /// Slot whose queue holds it.
    pub(super) queued: Option<usize>,
    /// `KDPC_IMPORTANCE` (`KeSetImportanceDpc`; `MediumImportance` after `KeInitializeDpc`).
    importance: i32,
}

/// DPC and timer objects by address.
#[derive(Default)]
pub(super) struct DpcState {
    pub(super) objects: HashMap<usize, DpcObject>,
    pub(super) timers: HashMap<usize, TimerObject>,
    /// Round-robin cursor for timer DPCs (expired "on" some processor).
    pub(super) next_timer_cpu: usize,
}

impl DpcState {
    /// DPCs queued or running and timers armed inside `[start, start + len)`, for frees.
    pub(super) fn busy_in(
        &self,
        cpus: &[super::processor::Cpu],
        start: usize,
        len: usize,
    ) -> Vec<String> {
        let inside = |address: usize| address >= start && address < start + len;
        let mut busy = Vec::new();
        for (address, object) in &self.objects {
            if inside(*address) && object.queued.is_some() {
                busy.push(format!("KDPC at +{:#x} is queued", address - start));
            }
        }
        for cpu in cpus {
            if let Some(address) = cpu.running.filter(|a| inside(*a)) {
                busy.push(format!(
                    "KDPC at +{:#x} is running on {}",
                    address - start,
                    cpu.name()
                ));
            }
        }
        for (address, timer) in &self.timers {
            if inside(*address) && timer.due.is_some() {
                busy.push(format!("KTIMER at +{:#x} is armed", address - start));
            }
        }
        busy
    }

    /// Forgets the objects inside a freed range.
    pub(super) fn forget(&mut self, start: usize, len: usize) {
        let inside = |address: &usize| *address >= start && *address < start + len;
        self.objects.retain(|address, _| !inside(address));
        self.timers.retain(|address, _| !inside(address));
    }

    /// Armed timers (leak report).
    pub(super) fn armed_timers(&self) -> usize {
        self.timers.values().filter(|t| t.due.is_some()).count()
    }
}

/// Writes `signature` into the first word of an object.
///
/// # Safety
/// `object` is writable, 8-aligned storage of at least 8 bytes.
pub(super) unsafe fn sign(object: *mut c_void, signature: u64) {
    // SAFETY: per the caller; atomic because poisoning of freed pool uses atomic stores too.
    unsafe { (*object.cast::<AtomicU64>()).store(signature, Ordering::Relaxed) }
}

/// Checks the signature of an object the driver passed to `routine`.
///
/// # Safety
/// `object` is readable, 8-aligned storage of at least 8 bytes.
pub(super) unsafe fn check_signature(
    kernel: &Kernel,
    routine: &str,
    object: *mut c_void,
    signature: u64,
) -> bool {
    // SAFETY: per the caller.
    let found = unsafe { (*object.cast::<AtomicU64>()).load(Ordering::Relaxed) };
    if found != signature {
        kernel.fail(format!(
            "{routine}({object:p}): not an initialised object (its first word reads {found:#018x}: \
             never initialised, overwritten, or in freed pool)"
        ));
    }
    found == signature
}

/// Queues `dpc` to `slot` (the caller checked the object). Returns whether it was queued.
pub(super) fn queue(
    kernel: &Kernel,
    state: &mut State,
    dpc: usize,
    slot: usize,
    arguments: (usize, usize),
) -> bool {
    let Some(object) = state.dpc.objects.get_mut(&dpc) else {
        return false;
    };
    if object.queued.is_some() {
        return false;
    }
    object.queued = Some(slot);
    let targeted = object.target.is_some();
    let slow = targeted && object.importance < MEDIUM_HIGH_IMPORTANCE;
    let latency = kernel.config.dpc_latency.as_nanos() as u64;
    let delay = if latency == 0 {
        0
    } else {
        with_context(|c| c.next_random()) % (latency + 1)
    };
    let entry = QueuedDpc {
        due: Instant::now() + Duration::from_nanos(delay),
        dpc,
        routine: object.routine,
        context: object.context,
        argument1: arguments.0,
        argument2: arguments.1,
    };
    let cpu = &mut state.cpus[slot];
    if cpu.phase != Phase::Complete {
        let text = format!(
            "DPC {dpc:#x} queued to {} before its AddComplete was delivered (phase {:?})",
            cpu.name(),
            cpu.phase
        );
        kernel.fail(text);
    }
    cpu.queue.push_back(entry);
    cpu.queued_total += 1;
    cpu.targeted_total += u64::from(targeted);
    cpu.targeted_slow_total += u64::from(slow);
    kernel.cpu_changed[slot].notify_all();
    true
}

/// Runs a dequeued DPC's routine on the DPC stack of the processor whose loop calls it (measured).
pub(super) fn run_routine(kernel: &Kernel, entry: &QueuedDpc) {
    on_kernel_stack(
        kernel,
        StackKind::Dpc,
        || format!("DPC routine {:p}", entry.routine as *const ()),
        // SAFETY: the routine and its arguments were given to KeInsertQueueDpc/KeSetTimerEx by the
        // driver, whose contract is that the KDPC and its context stay valid while it is queued; it
        // runs at DISPATCH on its target processor, as the DDI promises.
        || unsafe {
            (entry.routine)(
                entry.dpc as *mut _,
                entry.context as *mut _,
                entry.argument1 as *mut _,
                entry.argument2 as *mut _,
            )
        },
    );
}

/// `KeInitializeDpc`.
///
/// # Safety
/// `dpc` is writable KDPC storage that stays in place while the DPC is used.
#[no_mangle]
pub unsafe extern "system" fn KeInitializeDpc(
    dpc: *mut KDPC,
    routine: PKDEFERRED_ROUTINE,
    context: *const c_void,
) {
    let (kernel, _) = enter("KeInitializeDpc", Rule::Any);
    let Some(routine) = routine else {
        kernel.fail("KeInitializeDpc without a deferred routine".into());
        return;
    };
    // SAFETY: the driver converted a KDEFERRED_ROUTINE (`nt::deferred_routine`); this restores its
    // type (function pointers of the same size).
    let routine =
        unsafe { core::mem::transmute::<unsafe extern "system" fn(), DeferredRoutine>(routine) };
    let mut state = kernel.lock();
    let address = dpc as usize;
    if state
        .dpc
        .objects
        .get(&address)
        .is_some_and(|o| o.queued.is_some())
    {
        drop(state);
        kernel.fail(format!("KeInitializeDpc({dpc:p}) while the DPC is queued"));
        return;
    }
    state.dpc.objects.insert(
        address,
        DpcObject {
            routine,
            context: context as usize,
            target: None,
            queued: None,
            importance: MEDIUM_IMPORTANCE,
        },
    );
    // SAFETY: per the caller (KDPC is 0x40 bytes, 8-aligned).
    unsafe { sign(dpc.cast(), DPC_SIGNATURE) };
}

/// `KeSetTargetProcessorDpcEx`: `STATUS_INVALID_PARAMETER` for a processor number that is not valid,
/// and the DPC keeps its previous target. A number is valid once its processor has a system-wide
/// index: present at boot, or hot-added from AddStart on (the AddStart notification already carries
/// the index), as `KeGetProcessorIndexFromNumber` converts it. Slots below the maximum that were never
/// added, and numbers beyond it, are not valid.
///
/// # Safety
/// `dpc` was initialised; `number` is readable.
#[no_mangle]
pub unsafe extern "system" fn KeSetTargetProcessorDpcEx(
    dpc: *mut KDPC,
    number: *const PROCESSOR_NUMBER,
) -> NTSTATUS {
    let (kernel, _) = enter("KeSetTargetProcessorDpcEx", Rule::Any);
    // SAFETY: per the caller.
    if !unsafe {
        check_signature(
            &kernel,
            "KeSetTargetProcessorDpcEx",
            dpc.cast(),
            DPC_SIGNATURE,
        )
    } {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: per the caller.
    let number = unsafe { *number };
    let mut state = kernel.lock();
    let Some(slot) = state.cpus.iter().position(|cpu| {
        cpu.group == number.Group && cpu.number == number.Number && cpu.phase != Phase::Absent
    }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if let Some(object) = state.dpc.objects.get_mut(&(dpc as usize)) {
        if object.queued.is_none() {
            object.target = Some(slot);
        }
    }
    0
}

/// `KeSetImportanceDpc`: sets how urgently the DPC's target processor takes it. Checked: the DPC was
/// initialised, is not queued, and the value is a `KDPC_IMPORTANCE` (0..=3).
///
/// # Safety
/// `dpc` was initialised.
#[no_mangle]
pub unsafe extern "system" fn KeSetImportanceDpc(dpc: *mut KDPC, importance: i32) {
    let (kernel, _) = enter("KeSetImportanceDpc", Rule::Any);
    // SAFETY: per the caller.
    if !unsafe { check_signature(&kernel, "KeSetImportanceDpc", dpc.cast(), DPC_SIGNATURE) } {
        return;
    }
    if !(LOW_IMPORTANCE..=MEDIUM_HIGH_IMPORTANCE).contains(&importance) {
        kernel.fail(format!(
            "KeSetImportanceDpc({dpc:p}, {importance}): not a KDPC_IMPORTANCE value"
        ));
        return;
    }
    let mut state = kernel.lock();
    match state.dpc.objects.get_mut(&(dpc as usize)) {
        Some(object) if object.queued.is_some() => {
            drop(state);
            kernel.fail(format!("KeSetImportanceDpc({dpc:p}) on a queued DPC"));
        }
        Some(object) => object.importance = importance,
        None => {
            drop(state);
            kernel.fail(format!("KeSetImportanceDpc({dpc:p}): DPC not initialised"));
        }
    }
}

/// `KeInsertQueueDpc`: queues to the target processor, or the current one without a target.
///
/// # Safety
/// `dpc` was initialised and stays valid while queued.
#[no_mangle]
pub unsafe extern "system" fn KeInsertQueueDpc(
    dpc: *mut KDPC,
    argument1: *const c_void,
    argument2: *const c_void,
) -> bool {
    let (kernel, _) = enter("KeInsertQueueDpc", Rule::Any);
    // SAFETY: per the caller.
    if !unsafe { check_signature(&kernel, "KeInsertQueueDpc", dpc.cast(), DPC_SIGNATURE) } {
        return false;
    }
    let here = with_context(|c| c.cpu);
    let mut state = kernel.lock();
    let Some(object) = state.dpc.objects.get(&(dpc as usize)) else {
        drop(state);
        kernel.fail(format!("KeInsertQueueDpc({dpc:p}): DPC not initialised"));
        return false;
    };
    let slot = object.target.unwrap_or(here);
    let queued = queue(
        &kernel,
        &mut state,
        dpc as usize,
        slot,
        (argument1 as usize, argument2 as usize),
    );
    drop(state);
    // A DPC queued to the caller's own processor interrupts it before the call returns.
    super::preempt::scheduling_point(&kernel, false);
    queued
}

/// `KeFlushQueuedDpcs`: returns once every DPC queued before the call has run.
///
/// # Safety
/// None (kept `unsafe` like the import).
#[no_mangle]
pub unsafe extern "system" fn KeFlushQueuedDpcs() {
    let (kernel, _) = enter("KeFlushQueuedDpcs", Rule::Passive);
    let state = kernel.lock();
    let targets: Vec<u64> = state.cpus.iter().map(|cpu| cpu.queued_total).collect();
    let _state = kernel.wait_until(
        state,
        &kernel.changed,
        |s| {
            let pending: Vec<String> = s
                .cpus
                .iter()
                .zip(&targets)
                .filter(|(cpu, target)| cpu.completed_total < **target)
                .map(|(cpu, target)| {
                    format!(
                        "{} ({:?}): {} DPC(s)",
                        cpu.name(),
                        cpu.phase,
                        target - cpu.completed_total
                    )
                })
                .collect();
            format!(
                "KeFlushQueuedDpcs: DPCs still queued or running on {}",
                pending.join(", ")
            )
        },
        |s| {
            s.cpus
                .iter()
                .zip(&targets)
                .all(|(cpu, target)| cpu.completed_total >= *target)
        },
    );
}
