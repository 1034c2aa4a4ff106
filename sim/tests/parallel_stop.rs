//! The stop of a parallel run always ends it: steps in progress finish with the steps they wait for,
//! a CPU held at DISPATCH is given back, and what can never finish — waits nested by the pump, a work
//! item's wait — is unwound and reported, so `run_parallel` returns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use kepoch::platform::{Handler, Platform};
use kepoch_sim::machine::{
    Machine, MachineConfig, SimEvent, SimPassiveWork, SimPlatform, StepContext, StepOutcome,
    ViolationKind,
};

/// Generous: a run here takes well under a second; on the code before the stop protocol these runs
/// never returned.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// Runs in a row the tests allow a busy host to start the tasks they look at.
const RUNS_UNTIL_STARTED: usize = 50;

fn machine(stop_limit_ms: u64) -> Machine {
    Machine::new(MachineConfig {
        max_reported: 2,
        active_at_boot: 2,
        parallel_stop_limit_ms: stop_limit_ms,
        ..MachineConfig::default()
    })
    .expect("valid machine")
}

/// Runs `m` in parallel for `wall` on another thread; panics if the call has not returned within
/// [`RUN_DEADLINE`] (a hang fails the test instead of hanging it).
fn run_bounded(m: &Machine, wall: Duration) {
    let (done, finished) = mpsc::channel();
    let runner = m.clone();
    thread::spawn(move || {
        runner.run_parallel(wall);
        let _ = done.send(());
    });
    finished
        .recv_timeout(RUN_DEADLINE)
        .unwrap_or_else(|_| panic!("run_parallel did not return within {RUN_DEADLINE:?}: a hang"));
}

fn leaked_event() -> &'static SimEvent {
    Box::leak(Box::default())
}

/// What the never-ending work item waits on.
struct Waiter {
    p: SimPlatform,
    never: SimEvent,
    started: AtomicBool,
}

/// # Safety
/// `ctx` points to a leaked [`Waiter`].
unsafe fn wait_for_ever(ctx: *const ()) {
    // SAFETY: the test leaks the Waiter.
    let waiter = unsafe { &*ctx.cast::<Waiter>() };
    waiter.started.store(true, Ordering::SeqCst);
    loop {
        waiter.p.event_wait(&waiter.never);
    }
}

#[test]
fn the_stop_unwinds_waits_nested_by_the_pump_and_the_run_ends() {
    let m = machine(300);
    let p = m.platform();
    // Task 0 waits on CPU 0 for an event nobody signals, again and again, as `synchronize` does;
    // its wait pumps CPU 0's tasks, so task 1 steps inside that wait and waits the same way.
    let outer_thread: Arc<Mutex<Option<ThreadId>>> = Arc::default();
    let nested = Arc::new(AtomicBool::new(false));
    let never = leaked_event();
    let outer = outer_thread.clone();
    m.spawn(0, move |ctx: &mut StepContext<'_>| {
        *outer.lock().unwrap() = Some(thread::current().id());
        loop {
            ctx.platform().event_wait(never);
        }
    });
    let (outer, inner_nested) = (outer_thread.clone(), nested.clone());
    m.spawn(0, move |ctx: &mut StepContext<'_>| {
        let in_outer_step = *outer.lock().unwrap() == Some(thread::current().id());
        inner_nested.store(in_outer_step, Ordering::SeqCst);
        loop {
            ctx.platform().event_wait(never);
        }
    });
    // CPU 1 has nothing to do: its thread exits at the stop while CPU 0's is still blocked.
    m.spawn(1, |_: &mut StepContext<'_>| StepOutcome::Done);
    // The passive-work thread blocks too.
    let waiter: &'static Waiter = Box::leak(Box::new(Waiter {
        p: p.clone(),
        never: SimEvent::default(),
        started: AtomicBool::new(false),
    }));
    let work: &'static mut SimPassiveWork = Box::leak(Box::default());
    let handler = Handler {
        func: wait_for_ever,
        context: (waiter as *const Waiter).cast(),
    };
    // SAFETY: leaked storage and context.
    unsafe { p.passive_init(work, handler) }.expect("work item");
    p.passive_queue(work);

    // A run in which the host did not start the blocking steps and the work item before the stop
    // leaves them for the next run (a stop starts nothing new); the first run that starts them ends
    // by unwinding them.
    for _ in 0..RUNS_UNTIL_STARTED {
        run_bounded(&m, Duration::from_millis(100));
        if nested.load(Ordering::SeqCst) && waiter.started.load(Ordering::SeqCst) {
            break;
        }
    }
    assert!(
        nested.load(Ordering::SeqCst),
        "task 1 did not step inside task 0's wait"
    );
    assert!(waiter.started.load(Ordering::SeqCst));
    let violations = m.violations();
    let text: Vec<&str> = violations.iter().map(|v| v.message.as_str()).collect();
    let has = |part: &str| text.iter().any(|t| t.contains(part));
    assert!(
        has("parallel stop: the run did not wind down within 300ms"),
        "{text:#?}"
    );
    for abandoned in [
        "task 0 on CPU 0 (0:0) was abandoned, its step blocked in event_wait",
        "task 1 on CPU 0 (0:0) was abandoned, its step blocked in event_wait",
        "passive work item #",
    ] {
        assert!(has(abandoned), "no `{abandoned}` in {text:#?}");
    }
    assert!(violations
        .iter()
        .all(|v| v.kind == ViolationKind::WaitNeverSatisfied));
    // The abandoned tasks are done, and the machine runs again.
    assert_eq!(m.tasks_remaining(), 0);
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    m.spawn(1, move |_: &mut StepContext<'_>| {
        flag.store(true, Ordering::SeqCst);
        StepOutcome::Done
    });
    run_bounded(&m, Duration::from_millis(20));
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(m.tasks_remaining(), 0);
}

#[test]
fn a_wait_in_progress_at_the_stop_ends_with_the_steps_it_waits_for() {
    // The default stop limit (60 s): nothing here may need it.
    let m = Machine::new(MachineConfig {
        max_reported: 2,
        active_at_boot: 2,
        ..MachineConfig::default()
    })
    .expect("valid machine");
    let signal = leaked_event();
    let started = Arc::new(AtomicBool::new(false));
    let waited = Arc::new(AtomicBool::new(false));
    let (start, done) = (started.clone(), waited.clone());
    // Blocks past the end of the run: the event comes from a step of task 1 that starts later.
    m.spawn(0, move |ctx: &mut StepContext<'_>| {
        start.store(true, Ordering::SeqCst);
        ctx.platform().event_wait(signal);
        done.store(true, Ordering::SeqCst);
        StepOutcome::Done
    });
    let steps = Arc::new(AtomicUsize::new(0));
    let counted = steps.clone();
    m.spawn(1, move |ctx: &mut StepContext<'_>| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            // Asleep when the 20 ms run ends.
            return StepOutcome::Sleep(200_000);
        }
        ctx.platform().event_signal(signal);
        StepOutcome::Done
    });
    // Holds CPU 1 at DISPATCH across the end of the run, then gives it back.
    let held = Arc::new(AtomicUsize::new(0));
    let holder_steps = held.clone();
    let mut previous = None;
    m.spawn(1, move |ctx: &mut StepContext<'_>| {
        let p = ctx.platform().clone();
        match holder_steps.fetch_add(1, Ordering::SeqCst) {
            0 => {
                previous = Some(p.raise_to_dispatch());
                ctx.hold_dispatch(true);
                StepOutcome::Sleep(100_000)
            }
            _ => {
                p.lower_irql(previous.take().expect("raised in the first step"));
                ctx.hold_dispatch(false);
                StepOutcome::Done
            }
        }
    });

    run_bounded(&m, Duration::from_millis(20));
    // What had started before the stop finished within the same run (a host that started nothing
    // leaves nothing to check here; the runs below finish the tasks then).
    if started.load(Ordering::SeqCst) {
        assert!(waited.load(Ordering::SeqCst), "the wait did not end");
        assert_eq!(steps.load(Ordering::SeqCst), 2);
    }
    if held.load(Ordering::SeqCst) != 0 {
        assert_eq!(
            held.load(Ordering::SeqCst),
            2,
            "the hold was not given back"
        );
    }
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    for _ in 0..RUNS_UNTIL_STARTED {
        if m.tasks_remaining() == 0 {
            break;
        }
        run_bounded(&m, Duration::from_millis(20));
    }
    assert_eq!(m.tasks_remaining(), 0);
    assert!(waited.load(Ordering::SeqCst));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}
