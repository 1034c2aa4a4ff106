//! The deterministic scheduler: one OS thread, every choice (which message, task step, timer, work
//! item or hot-add phase runs next) drawn from the machine's seeded RNG, so a seed replays a run.

use std::sync::atomic::Ordering;

use rand::Rng;

use super::super::report::CpuStatus;
use super::super::state::{SimPlatform, TaskId};
use super::{hot_finish, hot_start, hot_window, run_dpc, run_passive, run_task, run_timer};

/// At most this many handlers run nested at one preemption point; what is left runs later.
const NESTED_DRAIN_LIMIT: usize = 64;

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
