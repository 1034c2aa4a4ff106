//! The parallel runner: one OS thread per running CPU plus timer, passive and hot-plug threads, and
//! the protocol that stops them.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use kepoch::platform::Irql;
use rand::Rng;

use super::super::report::{Bugcheck, ViolationKind};
use super::super::state::{ctx_set, ContextKind, MachineHalted, SimPlatform, TaskId, TaskSlot};
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
