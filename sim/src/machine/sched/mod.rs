//! When each message, timer, work item, task step and hot-add phase runs: the handler runners shared by
//! both modes (this module), the deterministic scheduler (`det`) and the parallel runner (`parallel`).
//! They act on the machine's state only.

mod det;
mod parallel;

pub(crate) use det::{det_step, det_step_until, run_nested_dispatch};
pub(crate) use parallel::{par_drain_dispatch_work, par_pick_task, run_parallel};

use std::panic::AssertUnwindSafe;

use kepoch::platform::{Handler, Irql, LogLevel, ProcessorChange, ProcessorChangeFn};
use rand::Rng;

use super::report::{CpuStatus, ViolationKind};
use super::state::{
    ContextKind, HotCur, MachineStopped, Shared, SimPlatform, StepContext, StepOutcome, TaskId,
    STATUS_UNSUCCESSFUL,
};

/// Finishes a handler that was run at DISPATCH with the CPU lock taken by the runner.
fn finish_dispatch(sh: &Shared, cpu: usize, what: &str, end: Irql) {
    if end >= Irql::DISPATCH {
        sh.unlock_cpu(cpu);
    }
    sh.check_irql(what, Irql::DISPATCH, end, cpu);
}

/// Finishes a handler that was run at PASSIVE.
fn finish_passive(sh: &Shared, cpu: usize, what: &str, end: Irql) {
    if end >= Irql::DISPATCH {
        sh.unlock_cpu(cpu);
    }
    sh.check_irql(what, Irql::PASSIVE, end, cpu);
}

/// Runs the first queued message of `cpu` (`nested`: in a preempted context). Returns false if there
/// was none.
pub(crate) fn run_dpc(p: &SimPlatform, cpu: usize, nested: bool) -> bool {
    let sh = &*p.shared;
    let handler = {
        let mut st = sh.st.lock();
        if st.cpus[cpu].status != CpuStatus::Running {
            return false;
        }
        let Some((id, seq)) = st.cpus[cpu].dpcs.pop_front() else {
            return false;
        };
        let Some(rec) = st.msgs.get_mut(&id) else {
            return true;
        };
        rec.queued = false;
        let handler = rec.handler;
        let c = &mut st.cpus[cpu];
        c.in_flight = Some(seq);
        c.delivered += 1;
        st.counters.messages_delivered += 1;
        if nested {
            st.counters.nested_messages += 1;
        }
        st.trace(&[1, cpu as u64, id]);
        (id, handler)
    };
    let (id, handler) = handler;
    sh.lock_cpu(cpu, "message handler");
    let ((), end) = sh.in_ctx(cpu, Irql::DISPATCH, ContextKind::Message(id), || {
        // SAFETY: the message is initialised and not released (release of a queued message removes it
        // from the queue first), so its handler's context is alive.
        unsafe { handler.invoke() }
    });
    finish_dispatch(sh, cpu, "message handler", end);
    sh.st.lock().cpus[cpu].in_flight = None;
    p.wake_waiters();
    true
}

/// Runs timer `id`'s handler on `cpu`, which [`super::state::State::begin_timer`] returned.
pub(crate) fn run_timer(p: &SimPlatform, cpu: usize, id: u64, handler: Handler) {
    let sh = &*p.shared;
    sh.lock_cpu(cpu, "timer handler");
    let ((), end) = sh.in_ctx(cpu, Irql::DISPATCH, ContextKind::Timer(id), || {
        // SAFETY: the timer is initialised and not released (release requires a stopped timer, and
        // stop waits for a running handler).
        unsafe { handler.invoke() }
    });
    finish_dispatch(sh, cpu, "timer handler", end);
    if let Some(rec) = sh.st.lock().timers.get_mut(&id) {
        rec.running = false;
    }
    p.wake_waiters();
}

/// Runs the first queued passive work item in the context of `cpu`. Returns false if there was none.
pub(crate) fn run_passive(p: &SimPlatform, cpu: usize) -> bool {
    let sh = &*p.shared;
    let (id, handler) = {
        let mut st = sh.st.lock();
        if sh.is_stopping() {
            return false;
        }
        let Some(id) = st.passive_queue.pop_front() else {
            return false;
        };
        let Some(rec) = st.works.get_mut(&id) else {
            return true;
        };
        rec.queued = false;
        rec.running = true;
        let handler = rec.handler;
        st.counters.passive_run += 1;
        st.trace(&[3, cpu as u64, id]);
        (id, handler)
    };
    let run = || {
        sh.in_ctx(cpu, Irql::PASSIVE, ContextKind::PassiveWork(id), || {
            // SAFETY: the handler was copied out of the work record above, and the record is
            // initialised and not released (releasing a queued item is refused; a running one may be
            // released only once its handler made its last access to it, and the handler copy stays
            // valid).
            unsafe { handler.invoke() }
        })
    };
    let ((), end) = on_stop_unwind(run, |stopped| {
        if let Some(rec) = sh.st.lock().works.get_mut(&id) {
            rec.running = false;
        }
        sh.violation(
            ViolationKind::WaitNeverSatisfied,
            format!(
                "parallel stop: passive work item #{id} on {} was abandoned, blocked in {}",
                sh.cpu_label(cpu),
                stopped.blocked_in
            ),
        );
    });
    finish_passive(sh, cpu, "passive work item", end);
    if let Some(rec) = sh.st.lock().works.get_mut(&id) {
        rec.running = false;
    }
    p.wake_waiters();
    true
}

/// Owns a task body while it runs a step. If the step unwinds (a bugcheck, a panic), the body is leaked
/// instead of dropped: it may hold the last reference to a domain, whose unload would then run during
/// the unwinding and wait for handlers that a halted machine never runs again.
struct LeakOnUnwind<T>(Option<T>);

impl<T> LeakOnUnwind<T> {
    fn get_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("owned until into_inner")
    }

    fn into_inner(mut self) -> T {
        self.0.take().expect("owned until into_inner")
    }
}

impl<T> Drop for LeakOnUnwind<T> {
    fn drop(&mut self) {
        // Still owned only when the step unwound: `run_task` takes the body back otherwise.
        if let Some(body) = self.0.take() {
            std::mem::forget(body);
        }
    }
}

/// Runs `f`; if it unwinds because the parallel run stopped while it was blocked
/// ([`MachineStopped`]), calls `abandon` with the payload on the way out, then unwinds on.
fn on_stop_unwind<R>(f: impl FnOnce() -> R, abandon: impl FnOnce(&MachineStopped)) -> R {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(mut payload) => {
            if let Some(stopped) = payload.downcast_mut::<MachineStopped>() {
                abandon(stopped);
                stopped.reported = true;
            }
            std::panic::resume_unwind(payload)
        }
    }
}

/// Runs one step of task `tid` on its CPU, if it may start one ([`Shared::may_start_step`]); returns
/// whether it ran. A step the run's stop unwinds is abandoned: the task is done, its body leaked.
pub(crate) fn run_task(p: &SimPlatform, tid: TaskId) -> bool {
    let sh = &*p.shared;
    let (mut task, mut rng, cpu, irql, hold, now) = {
        let mut st = sh.st.lock();
        if !sh.may_start_step(&st, tid) {
            return false;
        }
        let slot = &mut st.tasks[tid];
        let Some((task, rng)) = slot.body.take() else {
            return false;
        };
        let (cpu, irql, hold) = (slot.cpu, slot.irql, slot.hold);
        st.running_tasks += 1;
        st.counters.task_steps += 1;
        st.cpus[cpu].task_steps += 1;
        (LeakOnUnwind(Some(task)), rng, cpu, irql, hold, sh.now())
    };
    let mut sc = StepContext::new(p, sh.current(cpu), now, &mut rng, hold, tid);
    let step = || {
        sh.in_ctx(cpu, irql, ContextKind::Task(tid), || {
            task.get_mut().step(&mut sc)
        })
    };
    let (outcome, end) = on_stop_unwind(step, |stopped| {
        let mut st = sh.st.lock();
        st.tasks[tid].done = true;
        st.running_tasks -= 1;
        if st.cpus[cpu].held_by == Some(tid) {
            st.cpus[cpu].held_by = None;
        }
        drop(st);
        sh.violation(
            ViolationKind::WaitNeverSatisfied,
            format!(
                "parallel stop: task {tid} on {} was abandoned, its step blocked in {}",
                sh.cpu_label(cpu),
                stopped.blocked_in
            ),
        );
    });
    let task = task.into_inner();
    let (mut hold, trace) = sc.finish();
    let expected = if hold { Irql::DISPATCH } else { Irql::PASSIVE };
    if end != expected {
        sh.violation(
            ViolationKind::Irql,
            format!(
                "step of task {tid} on CPU {} ended at IRQL {} (expected {}{})",
                sh.slots[cpu].index,
                end.0,
                expected.0,
                if hold {
                    ", task declares to hold DISPATCH"
                } else {
                    ""
                }
            ),
        );
        if end >= Irql::DISPATCH && !hold {
            sh.unlock_cpu(cpu);
        }
        if hold && end < Irql::DISPATCH {
            hold = false;
        }
    }
    let mut finished = None;
    {
        let mut st = sh.st.lock();
        st.trace(&[4, tid as u64, cpu as u64]);
        st.trace(&trace);
        if hold {
            st.cpus[cpu].held_by = Some(tid);
        } else if st.cpus[cpu].held_by == Some(tid) {
            st.cpus[cpu].held_by = None;
        }
        let mut bad = None;
        let mut target = None;
        match outcome {
            StepOutcome::Continue => {}
            StepOutcome::Sleep(us) => st.tasks[tid].wake_at = now.saturating_add(us),
            StepOutcome::Done => {
                if hold {
                    bad = Some((
                        ViolationKind::Irql,
                        format!("task {tid} finished while holding DISPATCH"),
                    ));
                    st.cpus[cpu].held_by = None;
                    sh.unlock_cpu(cpu);
                    hold = false;
                }
                st.tasks[tid].done = true;
            }
            StepOutcome::MigrateTo(_) | StepOutcome::MigrateRandom if hold => {
                bad = Some((
                    ViolationKind::Migration,
                    format!("task {tid} asked to migrate while holding DISPATCH"),
                ));
            }
            StepOutcome::MigrateTo(index) => match sh.slot_by_index(index) {
                Some(c) if st.cpus[c].status == CpuStatus::Running => target = Some(c),
                _ => {
                    bad = Some((
                        ViolationKind::Migration,
                        format!("task {tid} asked to migrate to CPU {index}, which is not running"),
                    ))
                }
            },
            StepOutcome::MigrateRandom => {
                let running = st.running_cpus();
                let pick = st.rng.gen_range(0..running.len());
                target = Some(running[pick]);
            }
        }
        if let Some(c) = target {
            st.tasks[tid].cpu = c;
            st.counters.migrations += 1;
        }
        let slot = &mut st.tasks[tid];
        slot.hold = hold;
        slot.irql = if hold { Irql::DISPATCH } else { Irql::PASSIVE };
        if slot.done {
            finished = Some(task);
        } else {
            slot.body = Some((task, rng));
        }
        st.running_tasks -= 1;
        drop(st);
        if let Some((kind, m)) = bad {
            sh.violation(kind, m);
        }
    }
    drop(finished);
    if sh.is_parallel() {
        sh.work_cv.notify_all();
    }
    p.wake_waiters();
    true
}

/// Hot-add, phase 1: takes the next pending add, announces AddStart from the context of `ctx_cpu`.
pub(crate) fn hot_start(p: &SimPlatform, ctx_cpu: usize) {
    let sh = &*p.shared;
    let _guard = sh.callback_lock.lock();
    let (slot, fail, regs) = {
        let mut st = sh.st.lock();
        let Some(add) = st.pending_adds.pop_front() else {
            return;
        };
        let Some(slot) = (0..st.cpus.len()).find(|&c| st.cpus[c].status == CpuStatus::Absent)
        else {
            st.counters.hot_add_no_slot += 1;
            drop(st);
            sh.log_line(
                LogLevel::Warning,
                "sim: hot-add requested but no slot is left".into(),
            );
            return;
        };
        st.cpus[slot].status = CpuStatus::Starting;
        st.counters.hot_add_start += 1;
        st.trace(&[5, slot as u64]);
        let regs: Vec<(u64, ProcessorChangeFn, *const ())> = st
            .regs
            .iter()
            .map(|(&id, r)| (id, r.callback, r.context))
            .collect();
        (slot, add.fail, regs)
    };
    let mut notified = Vec::new();
    let mut veto = None;
    let ((), end) = sh.in_ctx(ctx_cpu, Irql::PASSIVE, ContextKind::ProcessorChange, || {
        for (id, f, c) in regs {
            let status = p.deliver((f, c), ProcessorChange::AddStart, slot);
            notified.push(id);
            if !status.is_success() {
                veto = Some(status);
                break;
            }
        }
    });
    finish_passive(sh, ctx_cpu, "hot-add AddStart", end);
    let window_ran = veto.is_some() || sh.add_window.lock().is_none();
    sh.st.lock().hot_cur = Some(HotCur {
        slot,
        fail,
        notified,
        veto,
        window_ran,
    });
    p.wake_waiters();
}

/// Hot-add, between the phases: the add window's code runs at DISPATCH on the new CPU (which has
/// started, but runs no thread before AddComplete), once per add.
pub(crate) fn hot_window(p: &SimPlatform) {
    let sh = &*p.shared;
    let Some(hook) = sh.add_window.lock().clone() else {
        return;
    };
    let slot = {
        let mut st = sh.st.lock();
        let slot = match st.hot_cur.as_mut() {
            Some(h) if !h.window_ran => {
                h.window_ran = true;
                h.slot
            }
            _ => return,
        };
        st.trace(&[7, slot as u64]);
        slot
    };
    sh.lock_cpu(slot, "hot-add window");
    let index = sh.slots[slot].index;
    let ((), end) = sh.in_ctx(slot, Irql::DISPATCH, ContextKind::AddWindow, || hook(index));
    sh.unlock_cpu(slot);
    sh.check_irql("hot-add window code", Irql::DISPATCH, end, slot);
    p.wake_waiters();
}

/// Hot-add, phase 2: the CPU starts and AddComplete is delivered, or AddFailure, from the context of
/// `ctx_cpu` (a CPU that is free now: the system thread may have moved since AddStart).
pub(crate) fn hot_finish(p: &SimPlatform, ctx_cpu: usize) {
    let sh = &*p.shared;
    let _guard = sh.callback_lock.lock();
    let (h, regs, change) = {
        let mut st = sh.st.lock();
        let Some(h) = st.hot_cur.take() else {
            return;
        };
        let regs: Vec<(ProcessorChangeFn, *const ())> = h
            .notified
            .iter()
            .filter_map(|id| st.regs.get(id).map(|r| (r.callback, r.context)))
            .collect();
        st.trace(&[6, h.slot as u64, u64::from(h.fail)]);
        let change = if h.fail || h.veto.is_some() {
            st.cpus[h.slot].status = CpuStatus::Absent;
            st.counters.hot_add_failure += 1;
            ProcessorChange::AddFailure(h.veto.unwrap_or(STATUS_UNSUCCESSFUL))
        } else {
            st.cpus[h.slot].status = CpuStatus::Running;
            st.counters.hot_add_complete += 1;
            if sh.is_parallel() {
                let handle = parallel::spawn_cpu_thread(p, h.slot);
                st.cpu_threads.push(handle);
            }
            ProcessorChange::AddComplete
        };
        (h, regs, change)
    };
    let ((), end) = sh.in_ctx(ctx_cpu, Irql::PASSIVE, ContextKind::ProcessorChange, || {
        for (f, c) in regs {
            // A veto means the vetoing registration got AddStart too; it receives AddFailure as well.
            p.deliver((f, c), change, h.slot);
        }
    });
    finish_passive(sh, ctx_cpu, "hot-add completion", end);
    sh.log_line(
        LogLevel::Info,
        format!(
            "sim: hot-add of CPU {} ({}): {:?}",
            sh.slots[h.slot].index, sh.slots[h.slot].number, change
        ),
    );
    p.wake_waiters();
}
