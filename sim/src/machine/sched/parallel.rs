//! The parallel runner: one OS thread per running CPU plus timer, passive and hot-plug threads, and
//! the protocol that stops them.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use kepoch::platform::Irql;
use rand::Rng;

use super::super::report::{Bugcheck, ViolationKind};
use super::super::state::{
    ctx_set, ContextKind, MachineHalted, MachineStopped, SimPlatform, State, TaskId, TaskSlot,
    ThreadRole, SERVICE_ROLES,
};
use super::{hot_finish, hot_start, hot_window, run_dpc, run_passive, run_task, run_timer};

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

/// Parallel mode: the next task to step on `cpu` (round robin over its ready tasks; the task holding
/// the CPU at DISPATCH, if any, is the only candidate), among those that may start a step now.
pub(crate) fn par_pick_task(p: &SimPlatform, cpu: usize) -> Option<TaskId> {
    let sh = &*p.shared;
    let now = sh.now();
    let mut st = sh.st.lock();
    let ready = |t: &TaskSlot| !t.done && t.body.is_some() && t.wake_at <= now;
    if let Some(h) = st.cpus[cpu].held_by {
        return (ready(&st.tasks[h]) && sh.may_start_step(&st, h)).then_some(h);
    }
    let n = st.tasks.len();
    let start = st.cpus[cpu].rr;
    for k in 0..n {
        let tid = (start + k) % n;
        let t = &st.tasks[tid];
        if t.cpu == cpu && ready(t) && sh.may_start_step(&st, tid) {
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
    while !sh.is_stopping() && !sh.is_halted() {
        sh.tick();
        if par_drain_dispatch_work(&p, cpu) {
            continue;
        }
        if par_pick_task(&p, cpu).is_some_and(|tid| run_task(&p, tid)) {
            continue;
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
    spawn_machine_thread(p, name, ThreadRole::Cpu(cpu), move |p| {
        cpu_thread_main(p, cpu)
    })
}

/// Spawns parallel-mode machine thread `role` running `body`. If it panics (a bugcheck, or a panic in
/// a task, a handler or the core), the machine halts, so the other threads stop instead of waiting
/// for it, and [`run_parallel`] hands the panic on to its caller. If the run's stop unwinds it out of
/// a blocked wait, the machine goes on; the wait is recorded as a violation unless an abandoned task
/// step or work item already was.
fn spawn_machine_thread(
    p: &SimPlatform,
    name: String,
    role: ThreadRole,
    body: impl FnOnce(SimPlatform) + Send + 'static,
) -> thread::JoinHandle<()> {
    let p = p.clone();
    thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let sh = p.shared.clone();
            sh.become_machine_thread(role);
            let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| body(p))) else {
                return;
            };
            if let Some(stopped) = payload.downcast_ref::<MachineStopped>() {
                if !stopped.reported {
                    sh.violation(
                        ViolationKind::WaitNeverSatisfied,
                        format!(
                            "parallel stop: thread {name} was unwound, blocked in {}",
                            stopped.blocked_in
                        ),
                    );
                }
                return;
            }
            if !payload.is::<MachineHalted>() && !payload.is::<Bugcheck>() {
                sh.thread_panic.lock().get_or_insert(payload);
            }
            sh.halt();
        })
        .expect("spawn simulator thread")
}

/// A running CPU that no task holds at DISPATCH, for code that runs at PASSIVE in a CPU's context (a
/// PASSIVE thread cannot run on a CPU held at DISPATCH); `None` if every running CPU is held.
fn passive_capable_cpu(st: &mut State) -> Option<usize> {
    let free: Vec<usize> = st
        .running_cpus()
        .into_iter()
        .filter(|&c| st.cpus[c].held_by.is_none())
        .collect();
    (!free.is_empty()).then(|| free[st.rng.gen_range(0..free.len())])
}

fn timer_thread_main(p: SimPlatform) {
    let sh = &*p.shared;
    while !sh.is_stopping() && !sh.is_halted() {
        sh.tick();
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
    while !sh.is_stopping() && !sh.is_halted() {
        sh.tick();
        let cpu = {
            let mut st = sh.st.lock();
            let cpu = if st.passive_queue.is_empty() {
                None
            } else {
                passive_capable_cpu(&mut st)
            };
            let Some(cpu) = cpu else {
                sh.work_cv.wait_for(&mut st, Duration::from_millis(1));
                continue;
            };
            cpu
        };
        run_passive(&p, cpu);
    }
}

fn hotplug_thread_main(p: SimPlatform) {
    let sh = &*p.shared;
    while !sh.is_stopping() && !sh.is_halted() {
        sh.tick();
        let now = sh.now();
        let what = {
            let mut st = sh.st.lock();
            let finish = st.hot_cur.is_some();
            if finish || st.pending_adds.front().is_some_and(|a| a.due_us <= now) {
                passive_capable_cpu(&mut st).map(|c| (finish, c))
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

/// Runs the machine with real threads for `wall` wall-clock time, then stops (see [`wind_down`]) and
/// joins every thread.
pub(crate) fn run_parallel(p: &SimPlatform, wall: Duration) {
    let sh = &*p.shared;
    assert!(!sh.is_parallel(), "run_parallel is already running");
    let base = sh.now_us.load(Ordering::Relaxed);
    let origin = sh.wall_origin.elapsed().as_micros() as u64;
    sh.wall_offset
        .store(base.wrapping_sub(origin), Ordering::Relaxed);
    sh.stop.store(false, Ordering::Release);
    sh.winding_down.store(false, Ordering::Release);
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
    .zip(SERVICE_ROLES)
    .map(|((name, f), role)| spawn_machine_thread(p, name.into(), role, f))
    .collect();
    let end = Instant::now() + wall;
    while !sh.is_halted() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(Duration::from_millis(5)));
    }
    wind_down(p);
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
    sh.winding_down.store(false, Ordering::Release);
    // Every machine thread has ended (one that panicked, the others by unwinding or leaving their
    // loops): the bugcheck, or the panic, goes on to the caller.
    if let Some(bugcheck) = sh.bugcheck.lock().clone() {
        std::panic::resume_unwind(Box::new(bugcheck));
    }
    if let Some(payload) = sh.thread_panic.lock().take() {
        std::panic::resume_unwind(payload);
    }
}

/// The stop of a parallel run. First it winds down: task steps start only to finish what is in
/// progress ([`super::super::state::Shared::may_start_step`]) while handlers, timers, work items and
/// hot-adds go on, until nothing is in progress — no task step, no blocked wait of a machine thread,
/// no CPU held at DISPATCH by a task, no running work item. That is decided under the state lock that
/// every start of a step or work item takes, so the run stops with nothing cut short. If it takes
/// longer than [`super::super::MachineConfig::parallel_stop_limit_ms`] (a wait that cannot end), the
/// run stops anyway with a violation naming what is in progress, and every wait still blocked in a
/// machine thread — also waits nested by the pump, and those of work items — unwinds: the task
/// steps and work items it cuts short are abandoned, each with a violation.
fn wind_down(p: &SimPlatform) {
    let sh = &*p.shared;
    sh.winding_down.store(true, Ordering::Release);
    sh.work_cv.notify_all();
    let limit = Duration::from_millis(sh.config.parallel_stop_limit_ms);
    let start = Instant::now();
    while !sh.is_halted() {
        let st = sh.st.lock();
        let Some(busy) = sh.work_in_progress(&st) else {
            sh.stop.store(true, Ordering::Release);
            break;
        };
        if start.elapsed() > limit {
            sh.stop.store(true, Ordering::Release);
            drop(st);
            sh.violation(
                ViolationKind::WaitNeverSatisfied,
                format!(
                    "parallel stop: the run did not wind down within {limit:?} ({busy}); what is \
                     still blocked is unwound"
                ),
            );
            break;
        }
        drop(st);
        thread::sleep(Duration::from_millis(1));
    }
    sh.stop.store(true, Ordering::Release);
    sh.work_cv.notify_all();
    p.wake_waiters();
}
