//! The deterministic scheduler and the parallel (one thread per CPU) runner: they decide when each
//! message, timer, work item, task step and hot-add phase runs. They act on the machine's state only.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use kepoch::platform::{Handler, Irql, LogLevel, ProcessorChange, ProcessorChangeFn};
use rand::Rng;

use super::report::Bugcheck;
use super::report::{CpuStatus, ViolationKind};
use super::state::{
    ctx_set, ContextKind, HotCur, MachineHalted, Shared, SimPlatform, StepContext, StepOutcome,
    TaskId, TaskSlot, STATUS_UNSUCCESSFUL,
};

/// At most this many handlers run nested at one preemption point; what is left runs later.
const NESTED_DRAIN_LIMIT: usize = 64;

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
    let ((), end) = sh.in_ctx(cpu, Irql::PASSIVE, ContextKind::PassiveWork(id), || {
        // SAFETY: the handler was copied out of the work record above, and the record is initialised
        // and not released (releasing a queued item is refused; a running one may be released only
        // once its handler made its last access to it, and the handler copy stays valid).
        unsafe { handler.invoke() }
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

/// Runs one step of task `tid` on its CPU.
pub(crate) fn run_task(p: &SimPlatform, tid: TaskId) {
    let sh = &*p.shared;
    let (mut task, mut rng, cpu, irql, hold, now) = {
        let mut st = sh.st.lock();
        let slot = &mut st.tasks[tid];
        let Some((task, rng)) = slot.body.take() else {
            return;
        };
        let (cpu, irql, hold) = (slot.cpu, slot.irql, slot.hold);
        st.running_tasks += 1;
        st.counters.task_steps += 1;
        st.cpus[cpu].task_steps += 1;
        (LeakOnUnwind(Some(task)), rng, cpu, irql, hold, sh.now())
    };
    let mut sc = StepContext::new(p, sh.current(cpu), now, &mut rng, hold, tid);
    let (outcome, end) = sh.in_ctx(cpu, irql, ContextKind::Task(tid), || {
        task.get_mut().step(&mut sc)
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
                let handle = spawn_cpu_thread(p, h.slot);
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

enum Action {
    Dpc(usize),
    Task(TaskId),
    Timer(u64),
    Passive,
    HotStart,
    HotWindow,
    HotFinish,
}

/// Deterministic mode: runs one scheduler action. Jumps simulated time forward (not beyond `horizon`)
/// when nothing is runnable now. Returns false when nothing is runnable before `horizon`.
pub(crate) fn det_step_until(p: &SimPlatform, horizon: u64) -> bool {
    let sh = &*p.shared;
    if sh.is_halted() {
        return false;
    }
    let mut st = sh.st.lock();
    let (action, avail) = loop {
        let now = sh.now_us.load(Ordering::Relaxed);
        let n = st.cpus.len();
        let avail: Vec<usize> = (0..n)
            .filter(|&c| {
                st.cpus[c].status == CpuStatus::Running
                    && st.cpus[c].held_by.is_none()
                    && !sh.cpu_locks[c].is_locked()
            })
            .collect();
        let mut actions = Vec::new();
        for &c in &avail {
            if !st.cpus[c].dpcs.is_empty() {
                actions.push(Action::Dpc(c));
            }
        }
        for (tid, t) in st.tasks.iter().enumerate() {
            if t.done || t.body.is_none() || t.wake_at > now {
                continue;
            }
            let c = &st.cpus[t.cpu];
            let ok = c.status == CpuStatus::Running
                && match c.held_by {
                    Some(h) => h == tid,
                    None => !sh.cpu_locks[t.cpu].is_locked(),
                };
            if ok {
                actions.push(Action::Task(tid));
            }
        }
        if !avail.is_empty() {
            for (&id, t) in &st.timers {
                if !t.running && t.next_due.is_some_and(|d| d <= now) {
                    actions.push(Action::Timer(id));
                }
            }
            if !st.passive_queue.is_empty() {
                actions.push(Action::Passive);
            }
        }
        // Both phases run on a CPU that is free now (the callback raises there to take the core's
        // locks); the notification thread may have moved since AddStart.
        if !sh.callback_lock.is_locked() && !avail.is_empty() {
            if let Some(h) = &st.hot_cur {
                actions.push(if h.window_ran {
                    Action::HotFinish
                } else {
                    Action::HotWindow
                });
            } else if st.pending_adds.front().is_some_and(|a| a.due_us <= now) {
                actions.push(Action::HotStart);
            }
        }
        if !actions.is_empty() {
            let pick = st.rng.gen_range(0..actions.len());
            break (actions.swap_remove(pick), avail);
        }
        // Nothing now: jump to the next time something becomes runnable.
        let next = st
            .timers
            .values()
            .filter_map(|t| t.next_due)
            .chain(
                st.tasks
                    .iter()
                    .filter(|t| !t.done && t.body.is_some() && t.wake_at > now)
                    .map(|t| t.wake_at),
            )
            .chain(st.pending_adds.front().map(|a| a.due_us))
            .filter(|&t| t > now)
            .min();
        match next {
            Some(t) if t <= horizon => sh.now_us.store(t, Ordering::Relaxed),
            _ => {
                if horizon != u64::MAX && horizon > now {
                    sh.now_us.store(horizon, Ordering::Relaxed);
                }
                return false;
            }
        }
    };
    let now = sh.now_us.fetch_add(1, Ordering::Relaxed);
    st.counters.scheduler_steps += 1;
    match action {
        Action::Dpc(c) => {
            drop(st);
            run_dpc(p, c, false);
        }
        Action::Task(tid) => {
            drop(st);
            run_task(p, tid);
        }
        Action::Timer(id) => {
            let c = avail[st.rng.gen_range(0..avail.len())];
            st.expire_timer(id, now);
            let handler = st.begin_timer(c, id, false);
            drop(st);
            if let Some(handler) = handler {
                run_timer(p, c, id, handler);
            }
        }
        Action::Passive => {
            let c = avail[st.rng.gen_range(0..avail.len())];
            drop(st);
            run_passive(p, c);
        }
        Action::HotStart => {
            let c = avail[st.rng.gen_range(0..avail.len())];
            drop(st);
            hot_start(p, c);
        }
        Action::HotWindow => {
            drop(st);
            hot_window(p);
        }
        Action::HotFinish => {
            let c = avail[st.rng.gen_range(0..avail.len())];
            drop(st);
            hot_finish(p, c);
        }
    }
    true
}

/// Deterministic mode, at a preemption point of a context below DISPATCH on `cpu`: runs the CPU's
/// queued messages (also those they queue, up to [`NESTED_DRAIN_LIMIT`]) and then a due timer, each at
/// DISPATCH on `cpu`, nested in the preempted context, as NT drains a processor's DPC queue when a
/// DISPATCH interrupt is taken. Each handler takes a microsecond of simulated time.
pub(crate) fn run_nested_dispatch(p: &SimPlatform, cpu: usize) {
    let sh = &*p.shared;
    for _ in 0..NESTED_DRAIN_LIMIT {
        if sh.st.lock().cpus[cpu].dpcs.is_empty() {
            break;
        }
        sh.now_us.fetch_add(1, Ordering::Relaxed);
        run_dpc(p, cpu, true);
    }
    let timer = {
        let mut st = sh.st.lock();
        let now = sh.now();
        st.due_timer(now).and_then(|id| {
            st.expire_timer(id, now);
            st.begin_timer(cpu, id, true).map(|handler| (id, handler))
        })
    };
    if let Some((id, handler)) = timer {
        sh.now_us.fetch_add(1, Ordering::Relaxed);
        run_timer(p, cpu, id, handler);
    }
}

/// Deterministic mode: one scheduler action, with time jumps unbounded.
pub(crate) fn det_step(p: &SimPlatform) -> bool {
    det_step_until(p, u64::MAX)
}

/// Parallel mode: runs one message or timer expiry queued on `cpu`, if the CPU is not held.
pub(crate) fn par_drain_dispatch_work(p: &SimPlatform, cpu: usize) -> bool {
    let sh = &*p.shared;
    let timer = {
        let mut st = sh.st.lock();
        if st.cpus[cpu].held_by.is_some() {
            return false;
        }
        if !st.cpus[cpu].dpcs.is_empty() {
            None
        } else if let Some(id) = st.cpus[cpu].timer_runs.pop_front() {
            // Taken and marked running in one critical section: timer_stop either removed the expiry
            // from the queue first or sees the handler running and waits for it.
            Some((id, st.begin_timer(cpu, id, false)))
        } else {
            return false;
        }
    };
    match timer {
        None => run_dpc(p, cpu, false),
        Some((id, handler)) => {
            if let Some(handler) = handler {
                run_timer(p, cpu, id, handler);
            }
            true
        }
    }
}

pub(crate) fn par_pick_task(p: &SimPlatform, cpu: usize) -> Option<TaskId> {
    let sh = &*p.shared;
    let now = sh.now();
    let mut st = sh.st.lock();
    let ready = |t: &TaskSlot| !t.done && t.body.is_some() && t.wake_at <= now;
    if let Some(h) = st.cpus[cpu].held_by {
        return ready(&st.tasks[h]).then_some(h);
    }
    let n = st.tasks.len();
    let start = st.cpus[cpu].rr;
    for k in 0..n {
        let tid = (start + k) % n;
        let t = &st.tasks[tid];
        if t.cpu == cpu && ready(t) {
            st.cpus[cpu].rr = tid + 1;
            return Some(tid);
        }
    }
    None
}

fn cpu_thread_main(p: SimPlatform, cpu: usize) {
    let sh = &*p.shared;
    ctx_set(Some(sh.new_ctx(
        cpu,
        Irql::PASSIVE,
        ContextKind::Idle,
        true,
    )));
    while !sh.stop.load(Ordering::Acquire) && !sh.is_halted() {
        if par_drain_dispatch_work(&p, cpu) {
            continue;
        }
        if !sh.stop_tasks.load(Ordering::Acquire) {
            if let Some(tid) = par_pick_task(&p, cpu) {
                run_task(&p, tid);
                continue;
            }
        }
        let mut st = sh.st.lock();
        if st.cpus[cpu].dpcs.is_empty() && st.cpus[cpu].timer_runs.is_empty() {
            sh.work_cv.wait_for(&mut st, Duration::from_micros(300));
        }
    }
    ctx_set(None);
}

pub(crate) fn spawn_cpu_thread(p: &SimPlatform, cpu: usize) -> thread::JoinHandle<()> {
    let name = format!("sim-cpu-{}", p.shared.slots[cpu].index);
    spawn_machine_thread(p, name, move |p| cpu_thread_main(p, cpu))
}

/// Spawns a parallel-mode machine thread running `body`. If it panics (a bugcheck, or a panic in a
/// task, a handler or the core), the machine halts, so the other threads stop instead of waiting for
/// it, and [`run_parallel`] hands the panic on to its caller.
fn spawn_machine_thread(
    p: &SimPlatform,
    name: String,
    body: impl FnOnce(SimPlatform) + Send + 'static,
) -> thread::JoinHandle<()> {
    let p = p.clone();
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let sh = p.shared.clone();
            if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| body(p))) {
                if !payload.is::<MachineHalted>() && !payload.is::<Bugcheck>() {
                    sh.thread_panic.lock().get_or_insert(payload);
                }
                sh.halt();
            }
        })
        .expect("spawn simulator thread")
}

fn timer_thread_main(p: SimPlatform) {
    let sh = &*p.shared;
    while !sh.stop.load(Ordering::Acquire) && !sh.is_halted() {
        let now = sh.now();
        let mut next = now + 500;
        {
            let mut st = sh.st.lock();
            let running = st.running_cpus();
            let ids: Vec<u64> = st.timers.keys().copied().collect();
            let mut fired = false;
            for id in ids {
                let Some(t) = st.timers.get(&id) else {
                    continue;
                };
                let Some(due) = t.next_due else { continue };
                if due > now {
                    next = next.min(due);
                    continue;
                }
                let busy = t.pending || t.running;
                let period = t.period_us;
                let due = if due + period <= now {
                    now + period
                } else {
                    due + period
                };
                let c = running[st.rng.gen_range(0..running.len())];
                let t = st.timers.get_mut(&id).expect("timer present");
                t.next_due = Some(due);
                next = next.min(due);
                if !busy {
                    t.pending = true;
                    st.cpus[c].timer_runs.push_back(id);
                    fired = true;
                }
            }
            if fired {
                sh.work_cv.notify_all();
            }
        }
        let wait = next.saturating_sub(sh.now()).clamp(20, 500);
        thread::sleep(Duration::from_micros(wait));
    }
}

fn passive_thread_main(p: SimPlatform) {
    let sh = &*p.shared;
    while !sh.stop.load(Ordering::Acquire) && !sh.is_halted() {
        let cpu = {
            let mut st = sh.st.lock();
            if st.passive_queue.is_empty() {
                sh.work_cv.wait_for(&mut st, Duration::from_millis(1));
                continue;
            }
            let running = st.running_cpus();
            running[st.rng.gen_range(0..running.len())]
        };
        run_passive(&p, cpu);
    }
}

fn hotplug_thread_main(p: SimPlatform) {
    let sh = &*p.shared;
    while !sh.stop.load(Ordering::Acquire) && !sh.is_halted() {
        let now = sh.now();
        let what = {
            let mut st = sh.st.lock();
            let finish = st.hot_cur.is_some();
            if finish || st.pending_adds.front().is_some_and(|a| a.due_us <= now) {
                let running = st.running_cpus();
                Some((finish, running[st.rng.gen_range(0..running.len())]))
            } else {
                None
            }
        };
        match what {
            Some((true, c)) => {
                // The add window opens while the other CPUs run, and closes later.
                hot_window(&p);
                thread::sleep(Duration::from_micros(100));
                hot_finish(&p, c)
            }
            Some((false, c)) => hot_start(&p, c),
            None => {}
        }
        // Let the other CPUs run between AddStart and AddComplete.
        thread::sleep(Duration::from_micros(200));
    }
}

/// Runs the machine with real threads for `wall` wall-clock time, then stops and joins every thread.
pub(crate) fn run_parallel(p: &SimPlatform, wall: Duration) {
    let sh = &*p.shared;
    assert!(!sh.is_parallel(), "run_parallel is already running");
    let base = sh.now_us.load(Ordering::Relaxed);
    let origin = sh.wall_origin.elapsed().as_micros() as u64;
    sh.wall_offset
        .store(base.wrapping_sub(origin), Ordering::Relaxed);
    sh.stop.store(false, Ordering::Release);
    sh.stop_tasks.store(false, Ordering::Release);
    sh.parallel.store(true, Ordering::Release);
    let running = sh.st.lock().running_cpus();
    for c in running {
        let h = spawn_cpu_thread(p, c);
        sh.st.lock().cpu_threads.push(h);
    }
    let services: Vec<thread::JoinHandle<()>> = [
        ("sim-timer", timer_thread_main as fn(SimPlatform)),
        ("sim-passive", passive_thread_main),
        ("sim-hotplug", hotplug_thread_main),
    ]
    .into_iter()
    .map(|(name, f)| spawn_machine_thread(p, name.into(), f))
    .collect();
    let end = Instant::now() + wall;
    while !sh.is_halted() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(Duration::from_millis(5)));
    }
    // Phase 1: no new task steps; steps in progress may still wait for messages, timers, work items.
    sh.stop_tasks.store(true, Ordering::Release);
    let start = Instant::now();
    while !sh.is_halted() && sh.st.lock().running_tasks > 0 {
        if start.elapsed() > Duration::from_secs(60) {
            sh.violation(
                ViolationKind::WaitNeverSatisfied,
                "parallel stop: a task step did not finish within 60 s".into(),
            );
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    // Phase 2: every thread exits.
    sh.stop.store(true, Ordering::Release);
    sh.work_cv.notify_all();
    for h in services {
        let _ = h.join();
    }
    loop {
        let handles = std::mem::take(&mut sh.st.lock().cpu_threads);
        if handles.is_empty() {
            break;
        }
        for h in handles {
            let _ = h.join();
        }
    }
    sh.now_us.store(sh.now(), Ordering::Relaxed);
    sh.parallel.store(false, Ordering::Release);
    sh.stop.store(false, Ordering::Release);
    sh.stop_tasks.store(false, Ordering::Release);
    // Every machine thread has ended (one that panicked, the others by unwinding or leaving their
    // loops): the bugcheck, or the panic, goes on to the caller.
    if let Some(bugcheck) = sh.bugcheck.lock().clone() {
        std::panic::resume_unwind(Box::new(bugcheck));
    }
    if let Some(payload) = sh.thread_panic.lock().take() {
        std::panic::resume_unwind(payload);
    }
}
