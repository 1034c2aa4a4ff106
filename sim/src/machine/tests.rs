//! Tests of the simulated machine, with tiny fake handlers (no kepoch core needed).

use std::alloc::Layout;
use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kepoch::platform::{
    CurrentProcessor, Handler, Irql, LogLevel, Platform, ProcessorChange, ProcessorNumber, Status,
};
use rand::Rng;

use super::*;

fn machine(cfg: MachineConfig) -> Machine {
    Machine::new(cfg).expect("valid config")
}

fn cfg(active: u32, max: u32, slots: u32) -> MachineConfig {
    MachineConfig {
        max_reported: max,
        active_at_boot: active,
        hot_add_slots: slots,
        ..MachineConfig::default()
    }
}

/// (cpu index, irql, tag) of every probe handler run.
type Events = Arc<Mutex<Vec<(u32, Irql, u64)>>>;

/// Records (cpu index, irql, tag) each time its handler runs.
struct Probe {
    p: SimPlatform,
    tag: u64,
    events: Events,
}

/// # Safety
/// `ctx` points to a live `Probe`.
unsafe fn probe_handler(ctx: *const ()) {
    // SAFETY: the tests keep every Probe alive while its object is initialised.
    let probe = unsafe { &*ctx.cast::<Probe>() };
    let cpu = probe.p.current_processor().index;
    let irql = probe.p.current_irql();
    probe.events.lock().unwrap().push((cpu, irql, probe.tag));
}

fn probe(p: &SimPlatform, tag: u64, events: &Events) -> Box<Probe> {
    Box::new(Probe {
        p: p.clone(),
        tag,
        events: events.clone(),
    })
}

fn handler(probe: &Probe) -> Handler {
    Handler {
        func: probe_handler,
        context: (probe as *const Probe).cast(),
    }
}

/// A message bound to `target` with a probe handler. Returned boxes must stay alive.
fn bound_message(
    p: &SimPlatform,
    target: ProcessorNumber,
    tag: u64,
    events: &Events,
) -> (Box<SimMessage>, Box<Probe>) {
    let pr = probe(p, tag, events);
    let mut msg = Box::new(SimMessage::default());
    // SAFETY: `msg` is boxed (stable address) and outlives its use in the test.
    unsafe { p.message_init(&mut *msg, target, handler(&pr)) }.expect("message_init");
    (msg, pr)
}

fn kinds(m: &Machine) -> Vec<ViolationKind> {
    m.violations().iter().map(|v| v.kind).collect()
}

// ---------------------------------------------------------------- topology

#[test]
fn topology_accurate() {
    let m = machine(MachineConfig {
        group_size: 4,
        ..cfg(6, 16, 2)
    });
    let p = m.platform();
    assert_eq!(p.max_processor_count(), 16);
    assert_eq!(p.active_processor_count(), 6);
    for i in 0..6 {
        let n = p.processor_number_from_index(i).unwrap();
        assert_eq!(n, ProcessorNumber::new((i / 4) as u16, (i % 4) as u8));
    }
    // Hot-add slots (6, 7) and never-present indexes fail, as on real hardware.
    for i in [6, 7, 8, 15, 16, 1000] {
        assert_eq!(
            p.processor_number_from_index(i),
            Err(Status::INVALID_PARAMETER)
        );
    }
    assert_eq!(m.slots()[6].index, 6);
    // Accurate firmware: everything that ever runs is below max_reported.
    assert!(Machine::new(cfg(4, 4, 1)).is_err());
    assert!(Machine::new(MachineConfig {
        group_size: 0,
        ..cfg(1, 1, 0)
    })
    .is_err());
}

#[test]
fn topology_under_report() {
    let m = machine(MachineConfig {
        firmware: Firmware::UnderReport,
        ..cfg(6, 4, 0)
    });
    let p = m.platform();
    assert_eq!(p.max_processor_count(), 4);
    assert_eq!(p.active_processor_count(), 6);
    assert_eq!(
        p.processor_number_from_index(5),
        Ok(ProcessorNumber::new(0, 5))
    );
    assert!(m.running_indexes().iter().any(|&i| i >= 4));
    // A task on CPU 5 sees index 5 >= max_reported.
    let seen = Arc::new(AtomicU64::new(u64::MAX));
    let s = seen.clone();
    m.spawn(5, move |ctx: &mut StepContext<'_>| {
        s.store(
            u64::from(ctx.platform().current_processor().index),
            Ordering::Relaxed,
        );
        StepOutcome::Done
    });
    assert!(m.run_until_idle(100));
    assert_eq!(seen.load(Ordering::Relaxed), 5);
    assert!(Machine::new(MachineConfig {
        firmware: Firmware::UnderReport,
        ..cfg(4, 4, 0)
    })
    .is_err());
}

#[test]
fn topology_sparse() {
    let m = machine(MachineConfig {
        firmware: Firmware::Sparse,
        group_size: 8,
        ..cfg(4, 16, 2)
    });
    let p = m.platform();
    // per = 4, groups = max(2, ceil(6 / 4)) = 2: slot k -> group k % 2, number k / 2.
    let expect = [
        (0, 0, 0),
        (1, 0, 8),
        (0, 1, 1),
        (1, 1, 9),
        (0, 2, 2),
        (1, 2, 10),
    ];
    for (k, &(g, n, i)) in expect.iter().enumerate() {
        assert_eq!(m.slots()[k].number, ProcessorNumber::new(g, n));
        assert_eq!(m.slots()[k].index, i);
    }
    assert_eq!(m.running_indexes(), vec![0, 8, 1, 9]);
    assert_eq!(
        p.processor_number_from_index(9),
        Ok(ProcessorNumber::new(1, 1))
    );
    for gap in [2, 3, 7, 10, 11] {
        assert_eq!(
            p.processor_number_from_index(gap),
            Err(Status::INVALID_PARAMETER)
        );
    }
    let cur = Arc::new(Mutex::new(None));
    let c2 = cur.clone();
    m.spawn(9, move |ctx: &mut StepContext<'_>| {
        *c2.lock().unwrap() = Some(ctx.cpu());
        StepOutcome::Done
    });
    m.run_until_idle(10);
    assert_eq!(
        *cur.lock().unwrap(),
        Some(CurrentProcessor {
            number: ProcessorNumber::new(1, 1),
            index: 9
        })
    );
}

// ---------------------------------------------------------------- messages, IRQL, exclusion

#[test]
fn message_runs_on_target_at_dispatch() {
    let m = machine(cfg(4, 4, 0));
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let (msg, _pr) = bound_message(&p, ProcessorNumber::new(0, 2), 7, &ev);
    p.message_send(&msg);
    p.message_send(&msg); // already queued: no-op
    assert!(m.run_until_idle(100));
    assert_eq!(*ev.lock().unwrap(), vec![(2, Irql::DISPATCH, 7)]);
    let r = m.report();
    assert_eq!(r.cpus[2].messages_delivered, 1);
    assert_eq!(r.counters.messages_coalesced, 1);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    // SAFETY: initialised above, not queued.
    unsafe { p.message_release(&mut *Box::into_raw(msg)) };
}

#[test]
fn holding_dispatch_excludes_other_work_on_that_cpu() {
    let m = machine(cfg(2, 2, 0));
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let (msg, _pr) = bound_message(&p, ProcessorNumber::new(0, 1), 1, &ev);
    let msg: &'static SimMessage = Box::leak(msg);
    let ev2 = ev.clone();
    let mut n = 0;
    let mut prev = Irql::PASSIVE;
    m.spawn(1, move |ctx: &mut StepContext<'_>| {
        let p = ctx.platform().clone();
        n += 1;
        match n {
            1 => {
                prev = p.raise_to_dispatch();
                p.message_send(msg);
                ev2.lock().unwrap().push((1, p.current_irql(), 100));
                ctx.hold_dispatch(true);
                StepOutcome::Continue
            }
            2..=20 => {
                assert_eq!(p.current_irql(), Irql::DISPATCH);
                ev2.lock().unwrap().push((1, p.current_irql(), 100 + n));
                StepOutcome::Continue
            }
            _ => {
                p.lower_irql(prev);
                ctx.hold_dispatch(false);
                StepOutcome::Done
            }
        }
    });
    // Another task on CPU 1 must not run while the first holds.
    let ev3 = ev.clone();
    m.spawn(1, move |_: &mut StepContext<'_>| {
        ev3.lock().unwrap().push((1, Irql::PASSIVE, 999));
        StepOutcome::Done
    });
    assert!(m.run_until_idle(1000));
    let ev = ev.lock().unwrap().clone();
    let pos = |tag| ev.iter().position(|e| e.2 == tag).unwrap();
    let first = pos(100);
    let last = pos(120);
    assert!(
        pos(1) > last,
        "DPC ran while the task held DISPATCH: {ev:?}"
    );
    let other = pos(999);
    assert!(
        other < first || other > last,
        "other task ran inside the hold: {ev:?}"
    );
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn irql_violations_are_recorded() {
    let m = machine(cfg(2, 2, 0));
    m.spawn(0, |ctx: &mut StepContext<'_>| {
        ctx.platform().raise_to_dispatch();
        StepOutcome::Done
    });
    m.spawn(1, |ctx: &mut StepContext<'_>| {
        ctx.platform().lower_irql(Irql::DISPATCH);
        StepOutcome::Done
    });
    m.run_until_idle(100);
    let k = kinds(&m);
    assert_eq!(
        k.iter().filter(|&&k| k == ViolationKind::Irql).count(),
        2,
        "{:?}",
        m.violations()
    );
    // The CPU lock was released: CPU 0 still runs DPCs.
    let ev = Arc::new(Mutex::new(Vec::new()));
    let (msg, _pr) = bound_message(&m.platform(), ProcessorNumber::new(0, 0), 3, &ev);
    m.platform().message_send(&msg);
    assert!(m.run_until_idle(100));
    assert_eq!(ev.lock().unwrap().len(), 1);
}

#[test]
fn message_to_cpu_not_started_is_a_violation() {
    let m = machine(cfg(2, 4, 2));
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let (msg, _pr) = bound_message(&p, ProcessorNumber::new(0, 2), 1, &ev);
    assert_eq!(kinds(&m), vec![ViolationKind::Routing]);
    p.message_send(&msg);
    assert_eq!(
        kinds(&m),
        vec![ViolationKind::Routing, ViolationKind::Routing]
    );
    assert_eq!(m.counters().messages_to_not_running, 1);
    m.run_until_idle(100);
    assert!(ev.lock().unwrap().is_empty());
    // A processor that does not exist at all cannot be bound.
    let mut other = SimMessage::default();
    let pr = probe(&p, 0, &ev);
    // SAFETY: `other` lives on the stack for the rest of the test.
    let r = unsafe { p.message_init(&mut other, ProcessorNumber::new(3, 0), handler(&pr)) };
    assert_eq!(r, Err(Status::INVALID_PARAMETER));
}

#[test]
fn flush_messages_waits_for_queued_messages() {
    let m = machine(cfg(4, 4, 0));
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let msgs: Vec<_> = (0..4)
        .map(|i| bound_message(&p, ProcessorNumber::new(0, i), u64::from(i), &ev))
        .collect();
    for (msg, _) in &msgs {
        p.message_send(msg);
    }
    m.with_cpu(0, || p.flush_messages());
    assert_eq!(ev.lock().unwrap().len(), 4);
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

// ---------------------------------------------------------------- timer, passive work, events

#[test]
fn timer_fires_periodically_at_dispatch_and_stops() {
    let m = machine(cfg(3, 3, 0));
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let pr = probe(&p, 5, &ev);
    let mut timer = Box::new(SimTimer::default());
    // SAFETY: boxed, released below.
    unsafe { p.timer_init(&mut *timer, handler(&pr)) }.unwrap();
    p.timer_start(&timer, 100);
    m.run_for(1_050);
    let fires = ev.lock().unwrap().len();
    assert!((9..=11).contains(&fires), "{fires} fires");
    assert!(ev
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.1 == Irql::DISPATCH && e.0 < 3));
    p.timer_stop(&timer);
    m.run_for(1_000);
    assert_eq!(ev.lock().unwrap().len(), fires);
    // SAFETY: stopped.
    unsafe { p.timer_release(&mut *timer) };
    assert_eq!(m.counters().timer_fires, fires as u64);
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn passive_work_runs_once_per_queue_at_passive() {
    let m = machine(cfg(2, 2, 0));
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let pr = probe(&p, 9, &ev);
    let mut w = Box::new(SimPassiveWork::default());
    // SAFETY: boxed, released below.
    unsafe { p.passive_init(&mut *w, handler(&pr)) }.unwrap();
    p.passive_queue(&w);
    assert!(m.run_until_idle(100));
    p.passive_queue(&w);
    assert!(m.run_until_idle(100));
    let ev = ev.lock().unwrap().clone();
    assert_eq!(ev.len(), 2);
    assert!(ev.iter().all(|e| e.1 == Irql::PASSIVE));
    // SAFETY: not queued, not running.
    unsafe { p.passive_release(&mut *w) };
    assert!(m.violations().is_empty());
}

struct EventCtx {
    p: SimPlatform,
    ev: SimEvent,
}

/// # Safety
/// `ctx` points to a live EventCtx.
unsafe fn signal_handler(ctx: *const ()) {
    // SAFETY: the test keeps the EventCtx alive.
    let c = unsafe { &*ctx.cast::<EventCtx>() };
    c.p.event_signal(&c.ev);
}

#[test]
fn event_wait_pumps_in_deterministic_mode() {
    let m = machine(cfg(2, 2, 0));
    let p = m.platform();
    let ec: &'static EventCtx = Box::leak(Box::new(EventCtx {
        p: p.clone(),
        ev: SimEvent::default(),
    }));
    let woke_at = Arc::new(AtomicU64::new(0));
    let w = woke_at.clone();
    // The waiter (CPU 0) blocks; a DPC bound to the waiter's own CPU, sent by a task on CPU 1 after a
    // sleep, signals it: the pump must run steps on the waiter's CPU, too.
    m.spawn(0, move |ctx: &mut StepContext<'_>| {
        let p = ctx.platform().clone();
        p.event_wait(&ec.ev);
        assert_eq!(p.current_irql(), Irql::PASSIVE);
        assert_eq!(p.current_processor().index, 0);
        w.store(m_now(&p), Ordering::Relaxed);
        StepOutcome::Done
    });
    let msg: &'static mut SimMessage = Box::leak(Box::default());
    // SAFETY: leaked storage, never moves.
    unsafe {
        p.message_init(
            msg,
            ProcessorNumber::new(0, 0),
            Handler {
                func: signal_handler,
                context: (ec as *const EventCtx).cast(),
            },
        )
    }
    .unwrap();
    let msg: &'static SimMessage = msg;
    let mut slept = false;
    m.spawn(1, move |ctx: &mut StepContext<'_>| {
        if !slept {
            slept = true;
            return StepOutcome::Sleep(500);
        }
        ctx.platform().message_send(msg);
        StepOutcome::Done
    });
    assert!(m.run_until_idle(10_000));
    assert!(woke_at.load(Ordering::Relaxed) >= 500);
    assert!(m.violations().is_empty(), "{:?}", m.violations());

    // A wait that nothing satisfies gives up with a violation instead of hanging.
    let lonely = SimEvent::default();
    m.with_cpu(1, || p.event_wait(&lonely));
    assert_eq!(kinds(&m), vec![ViolationKind::WaitNeverSatisfied]);
}

fn m_now(p: &SimPlatform) -> u64 {
    p.machine().now_us()
}

// ---------------------------------------------------------------- allocator

#[test]
fn allocator_poisons_aligns_counts_and_detects_bad_frees() {
    let m = machine(cfg(1, 1, 0));
    let p = m.platform();
    let layout = Layout::from_size_align(100, 64).unwrap();
    let a = p.allocate(layout).unwrap();
    assert_eq!(a.as_ptr() as usize % 64, 0);
    let b = p.allocate(Layout::new::<u32>()).unwrap();
    let s = m.alloc_stats();
    assert_eq!((s.live_objects, s.live_bytes, s.allocations), (2, 104, 2));
    assert_eq!(m.live_allocations().len(), 2);
    // SAFETY: `a` is a live 100-byte block.
    unsafe { a.as_ptr().write_bytes(0x11, 100) };
    // SAFETY: allocated with `layout`.
    unsafe { p.free(a, layout) };
    assert!(m.is_quarantined(a.as_ptr()));
    assert!(m.is_poisoned(a.as_ptr(), 100));
    assert!(m.is_poisoned(a.as_ptr().wrapping_add(13), 7));
    // A use-after-free read sees poison (read atomically, as a racing reader would).
    // SAFETY: quarantined blocks stay allocated until the machine drops; 8-aligned.
    let word = unsafe { AtomicU64::from_ptr(a.as_ptr().cast::<u64>()) }.load(Ordering::Relaxed);
    assert_eq!(word, POISON);
    assert_eq!(m.live_allocations().len(), 1);
    assert_eq!(m.live_allocations()[0].addr, b.as_ptr() as usize);
    assert_eq!(m.alloc_stats().peak_bytes, 104);
    // Double free, wrong layout, never allocated.
    // SAFETY: these are the bugs under test; the allocator does not touch the memory.
    unsafe {
        p.free(a, layout);
        p.free(b, Layout::new::<u64>());
        p.free(NonNull::dangling(), Layout::new::<u8>());
    }
    assert_eq!(
        kinds(&m),
        vec![
            ViolationKind::DoubleFree,
            ViolationKind::BadFree,
            ViolationKind::BadFree
        ]
    );
    // Write after free is caught by the quarantine check.
    // SAFETY: deliberate write into a quarantined block (still allocated).
    unsafe { AtomicU64::from_ptr(a.as_ptr().cast::<u64>()) }.store(1, Ordering::Relaxed);
    assert_eq!(m.check_quarantine(), 1);
    assert!(!m.is_poisoned(a.as_ptr(), 8));
    // SAFETY: allocated with this layout.
    unsafe { p.free(b, Layout::new::<u32>()) };
    assert!(m.live_allocations().is_empty());
}

#[test]
fn allocator_fault_injection() {
    let m = machine(MachineConfig {
        alloc_fail_every: 3,
        ..cfg(1, 1, 0)
    });
    let p = m.platform();
    let l = Layout::new::<u64>();
    let got: Vec<bool> = (0..6).map(|_| p.allocate(l).is_some()).collect();
    assert_eq!(got, [true, true, false, true, true, false]);
    m.set_alloc_fail_every(0);
    m.fail_next_allocations(2);
    let got: Vec<bool> = (0..3).map(|_| p.allocate(l).is_some()).collect();
    assert_eq!(got, [false, false, true]);
    m.set_alloc_fault_hook(Some(Arc::new(|r: &AllocRequest| r.layout.align() == 64)));
    assert!(p
        .allocate(Layout::from_size_align(64, 64).unwrap())
        .is_none());
    assert!(p.allocate(l).is_some());
    m.set_alloc_fault_hook(None);
    let s = m.alloc_stats();
    assert_eq!((s.failed, s.allocations, s.attempts), (5, 6, 11));
}

// ---------------------------------------------------------------- processor-change notifications

struct CbRec {
    log: Mutex<Vec<(ProcessorChange, u32)>>,
    p: SimPlatform,
    veto_index: Option<u32>,
    active_seen: Mutex<Vec<u32>>,
}

/// # Safety
/// `ctx` points to a live CbRec.
unsafe fn cb(ctx: *const (), change: ProcessorChange, cpu: CurrentProcessor) -> Status {
    // SAFETY: the tests keep the CbRec alive until deregistration.
    let r = unsafe { &*ctx.cast::<CbRec>() };
    assert!(r.p.current_irql() <= Irql::APC);
    r.log.lock().unwrap().push((change, cpu.index));
    r.active_seen
        .lock()
        .unwrap()
        .push(r.p.active_processor_count());
    if change == ProcessorChange::AddStart && r.veto_index == Some(cpu.index) {
        return Status::INSUFFICIENT_RESOURCES;
    }
    Status::SUCCESS
}

fn cb_rec(p: &SimPlatform, veto_index: Option<u32>) -> Box<CbRec> {
    Box::new(CbRec {
        log: Mutex::new(Vec::new()),
        p: p.clone(),
        veto_index,
        active_seen: Mutex::new(Vec::new()),
    })
}

fn register(p: &SimPlatform, r: &CbRec) -> Result<Option<NonNull<()>>, Status> {
    // SAFETY: the tests keep `r` alive until deregistration.
    unsafe { p.processor_change_register(cb, (r as *const CbRec).cast()) }
}

use ProcessorChange::{AddComplete, AddFailure, AddStart};

#[test]
fn registration_replays_start_then_complete() {
    let m = machine(cfg(3, 8, 1));
    let p = m.platform();
    let r = cb_rec(&p, None);
    let h = register(&p, &r).unwrap().unwrap();
    assert_eq!(
        *r.log.lock().unwrap(),
        vec![
            (AddStart, 0),
            (AddStart, 1),
            (AddStart, 2),
            (AddComplete, 0),
            (AddComplete, 1),
            (AddComplete, 2)
        ]
    );
    // SAFETY: registered above.
    unsafe { p.processor_change_deregister(h) };
    m.schedule_hot_add(10, 1, false);
    m.run_until_idle(100);
    assert_eq!(
        r.log.lock().unwrap().len(),
        6,
        "no callbacks after deregistration"
    );
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn registration_failure_halfway() {
    let m = machine(cfg(4, 4, 0));
    let p = m.platform();
    let r = cb_rec(&p, Some(2));
    assert_eq!(register(&p, &r), Err(Status::INSUFFICIENT_RESOURCES));
    let st = Status::INSUFFICIENT_RESOURCES;
    assert_eq!(
        *r.log.lock().unwrap(),
        vec![
            (AddStart, 0),
            (AddStart, 1),
            (AddStart, 2),
            (AddFailure(st), 0),
            (AddFailure(st), 1)
        ]
    );
    // Not registered: a hot-add later notifies nobody.
    let absent = machine(MachineConfig {
        callback_api_present: false,
        ..cfg(2, 2, 0)
    });
    assert_eq!(register(&absent.platform(), &r), Ok(None));
}

#[test]
fn hot_add_start_complete_and_failure_then_retry() {
    let m = machine(cfg(2, 8, 2));
    let p = m.platform();
    let r = cb_rec(&p, None);
    let h = register(&p, &r).unwrap().unwrap();
    r.log.lock().unwrap().clear();
    r.active_seen.lock().unwrap().clear();
    m.schedule_hot_add(100, 1, true);
    m.schedule_hot_add(300, 1, false);
    m.run_for(200);
    assert_eq!(p.active_processor_count(), 2);
    assert_eq!(
        p.processor_number_from_index(2),
        Err(Status::INVALID_PARAMETER)
    );
    m.run_for(200);
    assert_eq!(p.active_processor_count(), 3);
    assert_eq!(
        *r.log.lock().unwrap(),
        vec![
            (AddStart, 2),
            (AddFailure(STATUS_UNSUCCESSFUL), 2),
            (AddStart, 2),
            (AddComplete, 2)
        ]
    );
    // The CPU was not running at AddStart and was at AddComplete.
    assert_eq!(*r.active_seen.lock().unwrap(), vec![2, 2, 2, 3]);
    let c = m.counters();
    assert_eq!(
        (c.hot_add_start, c.hot_add_complete, c.hot_add_failure),
        (2, 1, 1)
    );
    // The new CPU runs DPCs and tasks.
    let ev = Arc::new(Mutex::new(Vec::new()));
    let (msg, _pr) = bound_message(&p, ProcessorNumber::new(0, 2), 4, &ev);
    p.message_send(&msg);
    m.spawn(2, |_: &mut StepContext<'_>| StepOutcome::Done);
    assert!(m.run_until_idle(100));
    assert_eq!(*ev.lock().unwrap(), vec![(2, Irql::DISPATCH, 4)]);
    // SAFETY: registered above.
    unsafe { p.processor_change_deregister(h) };
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

/// At AddStart the core may bind a message to the new CPU (legal) but must not send it until
/// AddComplete (S3).
struct EarlySend {
    p: SimPlatform,
    msg: SimMessage,
    probe: Box<Probe>,
}

/// # Safety
/// `ctx` points to a live EarlySend, which is only touched from the (serialised) callbacks.
unsafe fn early_cb(ctx: *const (), change: ProcessorChange, cpu: CurrentProcessor) -> Status {
    // SAFETY: the test keeps EarlySend alive; callbacks are serialised, so the &mut is unique.
    let e = unsafe { &mut *ctx.cast::<EarlySend>().cast_mut() };
    if change == AddStart && cpu.index == 1 {
        let h = handler(&e.probe);
        // SAFETY: `e.msg` is inside a leaked EarlySend that never moves.
        unsafe { e.p.message_init(&mut e.msg, cpu.number, h) }.unwrap();
        e.p.message_send(&e.msg);
    }
    Status::SUCCESS
}

#[test]
fn send_before_add_complete_is_a_violation() {
    let m = machine(cfg(1, 2, 1));
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let e: &'static mut EarlySend = Box::leak(Box::new(EarlySend {
        p: p.clone(),
        msg: SimMessage::default(),
        probe: probe(&p, 1, &ev),
    }));
    let ctx = (e as *mut EarlySend).cast_const().cast();
    // SAFETY: leaked context.
    let h = unsafe { p.processor_change_register(early_cb, ctx) }
        .unwrap()
        .unwrap();
    m.schedule_hot_add(10, 1, false);
    m.run_until_idle(100);
    assert_eq!(
        kinds(&m),
        vec![ViolationKind::Routing],
        "{:?}",
        m.violations()
    );
    // SAFETY: registered above.
    unsafe { p.processor_change_deregister(h) };
}

// ---------------------------------------------------------------- determinism

/// A workload with random choices: messages to random CPUs, sleeps, migrations, DISPATCH holds.
fn random_workload(seed: u64) -> (u64, Vec<(u32, Irql, u64)>, Counters) {
    let m = machine(MachineConfig {
        seed,
        ..cfg(4, 6, 2)
    });
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let msgs: &'static [(Box<SimMessage>, Box<Probe>)] = Vec::leak(
        (0..4)
            .map(|i| bound_message(&p, ProcessorNumber::new(0, i), u64::from(i), &ev))
            .collect(),
    );
    let pr = Box::leak(probe(&p, 99, &ev));
    let timer: &'static mut SimTimer = Box::leak(Box::default());
    // SAFETY: leaked storage.
    unsafe { p.timer_init(timer, handler(pr)) }.unwrap();
    p.timer_start(timer, 50);
    m.schedule_hot_add(300, 2, false);
    for t in 0..8u32 {
        let mut steps = 0;
        let mut prev = Irql::PASSIVE;
        m.spawn(t % 4, move |ctx: &mut StepContext<'_>| {
            steps += 1;
            let p = ctx.platform().clone();
            if ctx.holds_dispatch() {
                p.lower_irql(prev);
                ctx.hold_dispatch(false);
                return StepOutcome::Continue;
            }
            if steps > 40 {
                return StepOutcome::Done;
            }
            let choice: u32 = ctx.rng().gen_range(0..5);
            let arg: u32 = ctx.rng().gen_range(0..4);
            ctx.trace(u64::from(choice) << 8 | u64::from(arg));
            match choice {
                0 => {
                    p.message_send(&msgs[arg as usize].0);
                    StepOutcome::Continue
                }
                1 => StepOutcome::Sleep(u64::from(arg) * 10),
                2 => StepOutcome::MigrateRandom,
                3 => {
                    prev = p.raise_to_dispatch();
                    ctx.hold_dispatch(true);
                    StepOutcome::Continue
                }
                _ => StepOutcome::MigrateTo(arg),
            }
        });
    }
    m.run_for(2_000);
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    assert_eq!(m.tasks_remaining(), 0);
    let events = ev.lock().unwrap().clone();
    (m.trace_hash(), events, m.counters())
}

#[test]
fn same_seed_same_run_different_seed_different_run() {
    let a = random_workload(7);
    let b = random_workload(7);
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
    assert!(a.2.timer_fires > 10 && a.2.messages_delivered > 10 && a.2.migrations > 0);
    assert_eq!(a.2.hot_add_complete, 2);
    let c = random_workload(8);
    assert_ne!(a.0, c.0);
}

// ---------------------------------------------------------------- parallel mode

#[test]
fn parallel_mode_runs_on_several_threads_and_joins() {
    let m = machine(cfg(4, 6, 1));
    let p = m.platform();
    let threads = Arc::new(Mutex::new(BTreeSet::new()));
    let wrong_cpu = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicUsize::new(0));
    let ev = Arc::new(Mutex::new(Vec::new()));
    let msgs: &'static [(Box<SimMessage>, Box<Probe>)] = Vec::leak(
        (0..4)
            .map(|i| bound_message(&p, ProcessorNumber::new(0, i), u64::from(i), &ev))
            .collect(),
    );
    let pr = Box::leak(probe(&p, 99, &ev));
    let timer: &'static mut SimTimer = Box::leak(Box::default());
    // SAFETY: leaked storage.
    unsafe { p.timer_init(timer, handler(pr)) }.unwrap();
    p.timer_start(timer, 1_000);
    m.schedule_hot_add(20_000, 1, false);
    for t in 0..8u32 {
        let (th, wc, st) = (threads.clone(), wrong_cpu.clone(), steps.clone());
        m.spawn(t % 4, move |ctx: &mut StepContext<'_>| {
            let p = ctx.platform().clone();
            th.lock()
                .unwrap()
                .insert(format!("{:?}", std::thread::current().id()));
            let prev = p.raise_to_dispatch();
            if p.current_processor() != ctx.cpu() {
                wc.store(true, Ordering::Relaxed);
            }
            let i = ctx.rng().gen_range(0..4);
            p.message_send(&msgs[i].0);
            p.lower_irql(prev);
            st.fetch_add(1, Ordering::Relaxed);
            if ctx.rng().gen_bool(0.1) {
                StepOutcome::MigrateRandom
            } else {
                StepOutcome::Sleep(100)
            }
        });
    }
    m.run_parallel(Duration::from_millis(150));
    assert!(threads.lock().unwrap().len() >= 2);
    assert!(!wrong_cpu.load(Ordering::Relaxed));
    assert!(steps.load(Ordering::Relaxed) > 50);
    let c = m.counters();
    assert!(c.messages_delivered > 10, "{c:?}");
    assert!(c.timer_fires > 5, "{c:?}");
    assert_eq!(c.hot_add_complete, 1);
    assert_eq!(p.active_processor_count(), 5);
    let ev = ev.lock().unwrap().clone();
    assert!(ev
        .iter()
        .all(|e| e.1 == Irql::DISPATCH && (e.2 == 99 || u64::from(e.0) == e.2)));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    // After the parallel run the machine is deterministic again (waits pump).
    p.timer_stop(timer);
    m.with_cpu(0, || p.flush_messages());
}

#[test]
fn parallel_event_wait_blocks_until_signalled() {
    let m = machine(cfg(2, 2, 0));
    let p = m.platform();
    let ec: &'static EventCtx = Box::leak(Box::new(EventCtx {
        p: p.clone(),
        ev: SimEvent::default(),
    }));
    let w: &'static mut SimPassiveWork = Box::leak(Box::default());
    // SAFETY: leaked storage.
    unsafe {
        p.passive_init(
            w,
            Handler {
                func: signal_handler,
                context: (ec as *const EventCtx).cast(),
            },
        )
    }
    .unwrap();
    let w: &'static SimPassiveWork = w;
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    m.spawn(0, move |ctx: &mut StepContext<'_>| {
        ctx.platform().passive_queue(w);
        ctx.platform().event_wait(&ec.ev);
        d.store(true, Ordering::Relaxed);
        StepOutcome::Done
    });
    m.run_parallel(Duration::from_millis(50));
    assert!(done.load(Ordering::Relaxed));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn log_lines_are_kept() {
    let m = machine(cfg(1, 1, 0));
    m.platform()
        .log(LogLevel::Warning, format_args!("x = {}", 5));
    let logs = m.logs();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].level, LogLevel::Warning);
    assert_eq!(logs[0].text, "x = 5");
}

/// Reads one byte at `addr` in a forked child; returns how the child ended: `Ok(())` if the read
/// succeeded, `Err(signal)` if a signal killed it.
fn read_in_child(addr: usize) -> Result<(), i32> {
    // SAFETY: the child only performs a volatile read and `_exit`, both async-signal-safe, so forking a
    // multi-threaded test process is sound; the parent only waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            std::ptr::read_volatile(addr as *const u8);
            libc::_exit(0);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        if libc::WIFSIGNALED(status) {
            Err(libc::WTERMSIG(status))
        } else {
            assert_eq!(libc::WEXITSTATUS(status), 0);
            Ok(())
        }
    }
}

/// The permissions column of the `/proc/self/maps` line that contains `addr`.
fn maps_permissions(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let (range, rest) = line.split_once(' ')?;
        let (lo, hi) = range.split_once('-')?;
        let lo = usize::from_str_radix(lo, 16).ok()?;
        let hi = usize::from_str_radix(hi, 16).ok()?;
        (lo..hi)
            .contains(&addr)
            .then(|| rest.split(' ').next().unwrap_or("").to_string())
    })
}

#[test]
fn guard_page_blocks_are_protected_when_freed_and_unmapped_past_the_limit() {
    let m = machine(cfg(1, 1, 0));
    let p = m.platform();
    let page = page_size();
    let layout = Layout::from_size_align(100, 64).unwrap();
    // Off: an ordinary heap block.
    let plain = p.allocate(layout).unwrap();
    m.set_guard_pages(true);
    let a = p.allocate(layout).unwrap();
    let big = Layout::from_size_align(page + 1, 8).unwrap();
    let too_big = p.allocate(big).unwrap();
    assert_eq!(
        a.as_ptr() as usize % page,
        0,
        "a guard block starts its own page"
    );
    // SAFETY: live blocks of these layouts.
    unsafe {
        a.as_ptr().write_bytes(0x11, 100);
        p.free(plain, layout);
        p.free(too_big, big);
    }
    assert!(!m.is_guard_protected(plain.as_ptr()));
    assert!(!m.is_guard_protected(too_big.as_ptr()));
    assert_eq!(read_in_child(a.as_ptr() as usize), Ok(()));
    assert_eq!(
        maps_permissions(a.as_ptr() as usize).as_deref(),
        Some("rw-p")
    );
    // SAFETY: allocated with `layout`.
    unsafe { p.free(a, layout) };
    assert!(m.is_guard_protected(a.as_ptr()));
    assert!(m.is_guard_protected(a.as_ptr().wrapping_add(page - 1)));
    assert!(m.is_poisoned(a.as_ptr(), 100));
    assert_eq!(
        maps_permissions(a.as_ptr() as usize).as_deref(),
        Some("---p")
    );
    // A late read faults.
    assert_eq!(read_in_child(a.as_ptr() as usize + 8), Err(libc::SIGSEGV));
    assert_eq!(m.check_quarantine(), 0);
    assert!(m.live_allocations().is_empty());
    // The quarantine is bounded: past the limit the oldest pages are unmapped (the kernel may hand the
    // same addresses out again, so count bytes rather than probe `a`).
    let limit_pages = QUARANTINE_LIMIT / page;
    for _ in 0..limit_pages + 1 {
        let b = p.allocate(Layout::new::<u64>()).unwrap();
        // SAFETY: allocated just now with this layout.
        unsafe { p.free(b, Layout::new::<u64>()) };
    }
    let s = m.alloc_stats();
    assert!(s.quarantine_bytes <= QUARANTINE_LIMIT as u64, "{s:?}");
    assert!(s.frees as usize > limit_pages + 1, "{s:?}");
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}
