//! Tests of the simulated machine, with tiny fake handlers (no kepoch core needed).

use std::alloc::Layout;
use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kepoch::platform::{
    CurrentProcessor, Handler, Irql, IrqlRule, LogLevel, Platform, ProcessorChange,
    ProcessorNumber, Status,
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

/// A workload with random choices: messages to random CPUs, sleeps, migrations, DISPATCH holds, with
/// `nested_dpc_percent` preemption.
fn random_workload(seed: u64, nested_dpc_percent: u8) -> (u64, Vec<(u32, Irql, u64)>, Counters) {
    let m = machine(MachineConfig {
        seed,
        nested_dpc_percent,
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
    for percent in [0, DEFAULT_NESTED_DPC_PERCENT, 100] {
        let a = random_workload(7, percent);
        let b = random_workload(7, percent);
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_eq!(a.2, b.2);
        assert!(a.2.timer_fires > 10 && a.2.messages_delivered > 10 && a.2.migrations > 0);
        assert_eq!(a.2.hot_add_complete, 2);
        let c = random_workload(8, percent);
        assert_ne!(a.0, c.0);
        // Preemption replays too: the nested deliveries are part of the same trace.
        if percent == 0 {
            assert_eq!(a.2.preemptions, 0, "{:?}", a.2);
        } else {
            assert!(
                a.2.preemptions > 5 && a.2.nested_messages > 5 && a.2.nested_timer_fires > 0,
                "{:?}",
                a.2
            );
        }
    }
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

// ---------------------------------------------------------------- IRQL discipline (Verifier-like)

fn no_preemption(cfg: MachineConfig) -> MachineConfig {
    MachineConfig {
        nested_dpc_percent: 0,
        ..cfg
    }
}

#[test]
fn verify_irql_names_the_routine_the_rule_and_the_irql() {
    let m = machine(cfg(1, 1, 0));
    let p = m.platform();
    m.with_cpu(0, || {
        p.verify_irql("Domain::synchronize", IrqlRule::Passive);
        p.verify_irql("processor-change callback", IrqlRule::BelowDispatch);
        p.verify_irql("reclamation cycle start", IrqlRule::Dispatch);
        let previous = p.raise_to_dispatch();
        p.verify_irql("reclamation cycle visit", IrqlRule::Dispatch);
        p.verify_irql("unload", IrqlRule::Passive);
        p.verify_irql("processor-change callback", IrqlRule::BelowDispatch);
        p.lower_irql(previous);
    });
    let v = m.violations();
    let messages: Vec<&str> = v.iter().map(|v| v.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "reclamation cycle start (IRQL rule Dispatch: DISPATCH_LEVEL only) called by the \
             calling thread on CPU 0 (0:0) at IRQL 0 (PASSIVE)",
            "unload (IRQL rule Passive: PASSIVE_LEVEL only) called by the calling thread on CPU 0 \
             (0:0) at IRQL 2 (DISPATCH)",
            "processor-change callback (IRQL rule BelowDispatch: below DISPATCH_LEVEL) called by \
             the calling thread on CPU 0 (0:0) at IRQL 2 (DISPATCH)",
        ]
    );
    assert!(v.iter().all(|v| v.kind == ViolationKind::Irql));
}

#[test]
fn spin_lock_acquired_below_dispatch_is_a_violation() {
    let m = machine(no_preemption(cfg(2, 2, 0)));
    let lock = Box::new(0u64);
    let addr = &*lock as *const u64 as usize;
    m.spawn(1, move |ctx: &mut StepContext<'_>| {
        let p = ctx.platform().clone();
        let lock = addr as *const ();
        // At DISPATCH, as the core's lock takes it: fine.
        let previous = p.raise_to_dispatch();
        p.spin_lock_acquired(lock);
        p.spin_lock_released(lock);
        p.lower_irql(previous);
        // At the caller's PASSIVE, as the `lock-without-raise` mutation takes it.
        p.spin_lock_acquired(lock);
        p.spin_lock_released(lock);
        StepOutcome::Done
    });
    assert!(m.run_until_idle(100));
    let v = m.violations();
    assert_eq!(kinds(&m), [ViolationKind::SpinLockIrql], "{v:?}");
    assert_eq!(
        v[0].message,
        format!(
            "core spin lock {addr:#x} acquired at IRQL 0 (PASSIVE) in task 0 on CPU 1 (0:1): spin \
             locks must be held at DISPATCH"
        )
    );
}

#[test]
fn spin_lock_bookkeeping_catches_two_holders_and_foreign_releases() {
    let m = machine(no_preemption(cfg(2, 2, 0)));
    let p = m.platform();
    let lock = Box::new(0u64);
    let lock = &*lock as *const u64 as *const ();
    let at_dispatch = |cpu: u32, f: &dyn Fn()| {
        m.with_cpu(cpu, || {
            let previous = p.raise_to_dispatch();
            f();
            p.lower_irql(previous);
        })
    };
    at_dispatch(0, &|| p.spin_lock_acquired(lock));
    at_dispatch(1, &|| p.spin_lock_acquired(lock));
    at_dispatch(1, &|| p.spin_lock_released(lock));
    at_dispatch(1, &|| p.spin_lock_released(lock));
    assert_eq!(
        kinds(&m),
        [ViolationKind::Exclusion; 3],
        "{:?}",
        m.violations()
    );
    let v = m.violations();
    assert!(v[0]
        .message
        .contains("while the calling thread on CPU 0 (0:0)"));
    assert!(v[1]
        .message
        .contains("but the calling thread on CPU 1 (0:1)"));
    assert!(v[2].message.contains("but no context holds it"));
}

#[test]
fn passive_only_services_report_being_called_at_dispatch() {
    let m = machine(no_preemption(cfg(2, 2, 0)));
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let pr = probe(&p, 1, &ev);
    let mut timer = Box::new(SimTimer::default());
    // SAFETY: boxed, released below.
    unsafe { p.timer_init(&mut *timer, handler(&pr)) }.unwrap();
    let event = SimEvent::default();
    let r = cb_rec(&p, None);
    m.with_cpu(0, || {
        let previous = p.raise_to_dispatch();
        p.flush_messages();
        p.timer_stop(&timer);
        p.event_wait(&event);
        let h = register(&p, &r).unwrap().unwrap();
        // SAFETY: registered just now.
        unsafe { p.processor_change_deregister(h) };
        p.lower_irql(previous);
    });
    let v = m.violations();
    let routines = [
        "flush_messages",
        "timer_stop",
        "event_wait",
        "processor_change_register",
        "processor_change_deregister",
    ];
    assert_eq!(v.len(), routines.len(), "{v:?}");
    for (v, routine) in v.iter().zip(routines) {
        assert_eq!(v.kind, ViolationKind::BlockingAtDispatch);
        assert_eq!(
            v.message,
            format!(
                "{routine} called by the calling thread on CPU 0 (0:0) at IRQL 2 (DISPATCH): it is \
                 PASSIVE only (it waits)"
            )
        );
    }
    // SAFETY: stopped above.
    unsafe { p.timer_release(&mut *timer) };
}

// ---------------------------------------------------------------- DPCs preempting PASSIVE code

#[test]
fn queued_dpc_runs_nested_in_passive_code_on_its_cpu() {
    for percent in [100, 0] {
        let m = machine(MachineConfig {
            nested_dpc_percent: percent,
            ..cfg(2, 2, 0)
        });
        let p = m.platform();
        let ev = Arc::new(Mutex::new(Vec::new()));
        let (msg, _pr) = bound_message(&p, ProcessorNumber::new(0, 1), 7, &ev);
        let msg: &'static SimMessage = Box::leak(msg);
        let seen_inside = Arc::new(Mutex::new(None));
        let (seen, events) = (seen_inside.clone(), ev.clone());
        m.spawn(1, move |ctx: &mut StepContext<'_>| {
            let p = ctx.platform().clone();
            p.message_send(msg);
            // Still the same step, back at PASSIVE.
            assert_eq!(p.current_irql(), Irql::PASSIVE);
            *seen.lock().unwrap() = Some(events.lock().unwrap().clone());
            StepOutcome::Done
        });
        assert!(m.run_until_idle(100));
        let inside = seen_inside.lock().unwrap().clone().unwrap();
        let c = m.counters();
        if percent == 100 {
            assert_eq!(inside, [(1, Irql::DISPATCH, 7)]);
            assert_eq!((c.preemptions, c.nested_messages), (1, 1), "{c:?}");
        } else {
            assert!(inside.is_empty());
            assert_eq!((c.preemptions, c.nested_messages), (0, 0), "{c:?}");
        }
        assert_eq!(*ev.lock().unwrap(), [(1, Irql::DISPATCH, 7)]);
        assert_eq!(c.messages_delivered, 1);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
    }
}

#[test]
fn due_timer_runs_nested_in_passive_code() {
    let m = machine(MachineConfig {
        nested_dpc_percent: 100,
        ..cfg(2, 2, 0)
    });
    let p = m.platform();
    let ev = Arc::new(Mutex::new(Vec::new()));
    let pr = Box::leak(probe(&p, 99, &ev));
    let timer: &'static mut SimTimer = Box::leak(Box::default());
    // SAFETY: leaked storage.
    unsafe { p.timer_init(timer, handler(pr)) }.unwrap();
    p.timer_start(timer, 20);
    let nested_fires = Arc::new(AtomicUsize::new(0));
    let (n, events) = (nested_fires.clone(), ev.clone());
    let mut steps = 0;
    m.spawn(0, move |ctx: &mut StepContext<'_>| {
        steps += 1;
        let p = ctx.platform().clone();
        let before = events.lock().unwrap().len();
        for _ in 0..10 {
            p.now_ns();
        }
        let inside: Vec<_> = events.lock().unwrap()[before..].to_vec();
        // Fired inside the step: on this CPU, at DISPATCH.
        assert!(
            inside.iter().all(|e| *e == (0, Irql::DISPATCH, 99)),
            "{inside:?}"
        );
        n.fetch_add(inside.len(), Ordering::Relaxed);
        if steps == 200 {
            StepOutcome::Done
        } else {
            StepOutcome::Sleep(3)
        }
    });
    m.run_for(2_000);
    let c = m.counters();
    assert!(c.nested_timer_fires > 0, "{c:?}");
    assert_eq!(
        nested_fires.load(Ordering::Relaxed) as u64,
        c.nested_timer_fires
    );
    assert!(c.timer_fires > c.nested_timer_fires, "{c:?}");
    p.timer_stop(timer);
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

// ---------------------------------------------------------------- deadlocks and bugchecks

/// A fake core-lock user: a handler that spins on `lock` (the spin is what the machine judges).
struct LockSpinner {
    p: SimPlatform,
    lock: usize,
}

/// # Safety
/// `ctx` points to a live LockSpinner.
unsafe fn spin_on_lock(ctx: *const ()) {
    // SAFETY: the tests leak every LockSpinner.
    let s = unsafe { &*ctx.cast::<LockSpinner>() };
    s.p.spin_lock_contended(s.lock as *const ());
}

/// A message bound to `target` whose handler spins on `lock`.
fn spinning_message(p: &SimPlatform, target: ProcessorNumber, lock: usize) -> &'static SimMessage {
    let spinner: &'static LockSpinner = Box::leak(Box::new(LockSpinner { p: p.clone(), lock }));
    let msg: &'static mut SimMessage = Box::leak(Box::default());
    let h = Handler {
        func: spin_on_lock,
        context: (spinner as *const LockSpinner).cast(),
    };
    // SAFETY: leaked storage, never moves.
    unsafe { p.message_init(msg, target, h) }.unwrap();
    msg
}

/// Runs `f`, which must unwind with a [`Bugcheck`] payload, and returns the payload.
fn expect_bugcheck(f: impl FnOnce()) -> Bugcheck {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .expect_err("the machine should have bugchecked");
    payload
        .downcast_ref::<Bugcheck>()
        .expect("a Bugcheck payload")
        .clone()
}

#[test]
fn dpc_spinning_on_a_lock_held_by_preempted_passive_code_bugchecks() {
    let m = machine(MachineConfig {
        nested_dpc_percent: 100,
        ..cfg(2, 2, 0)
    });
    let p = m.platform();
    let lock = Box::leak(Box::new(0u64)) as *const u64 as usize;
    let msg = spinning_message(&p, ProcessorNumber::new(0, 0), lock);
    m.spawn(0, move |ctx: &mut StepContext<'_>| {
        let p = ctx.platform().clone();
        // Taken at PASSIVE (the buggy lock), then a DPC for this CPU arrives and wants it.
        p.spin_lock_acquired(lock as *const ());
        p.message_send(msg);
        p.spin_lock_released(lock as *const ());
        StepOutcome::Done
    });
    let bugcheck = expect_bugcheck(|| {
        m.run_until_idle(100);
    });
    assert_eq!(
        (bugcheck.code, bugcheck.name, bugcheck.kind),
        (0x133, "DPC_WATCHDOG_VIOLATION", ViolationKind::Deadlock)
    );
    assert!(
        bugcheck.message.starts_with("DPC (message #")
            && bugcheck.message.ends_with(&format!(
                ") on CPU 0 (0:0) spins on core spin lock {lock:#x} held by task 0 preempted at \
                 IRQL 0 (PASSIVE) on the same CPU: on NT this is bugcheck 0x133 \
                 DPC_WATCHDOG_VIOLATION"
            )),
        "{bugcheck}"
    );
    assert_eq!(bugcheck.cpu, Some(0));
    assert_eq!(m.bugcheck().as_ref(), Some(&bugcheck));
    assert_eq!(
        kinds(&m),
        [ViolationKind::SpinLockIrql, ViolationKind::Deadlock]
    );
    assert_eq!(m.violations()[1].message, bugcheck.message);
    // Unwinding gave back every machine lock: the state lock (report), the CPU's DISPATCH exclusion,
    // and the thread's context.
    let report = m.report();
    assert_eq!(report.counters.nested_messages, 1);
    assert!(m.platform.shared.cpu_locks.iter().all(|l| !l.is_locked()));
    assert_eq!(p.current_irql(), Irql::PASSIVE);
    // The machine is down: nothing runs, and a wait raises the bugcheck again.
    assert!(!m.step());
    let again = expect_bugcheck(|| m.with_cpu(1, || p.flush_messages()));
    assert_eq!(again, bugcheck);
}

#[test]
fn deadlock_messages_name_the_holder_and_the_spinner() {
    // Recursion: the spinner already holds the lock.
    let m = machine(no_preemption(cfg(1, 1, 0)));
    let p = m.platform();
    let lock = Box::leak(Box::new(0u64)) as *const u64 as usize;
    let bugcheck = expect_bugcheck(|| {
        m.with_cpu(0, || {
            let previous = p.raise_to_dispatch();
            p.spin_lock_acquired(lock as *const ());
            p.spin_lock_contended(lock as *const ());
            p.lower_irql(previous);
        })
    });
    assert_eq!(bugcheck.code, 0x133);
    assert_eq!(
        bugcheck.message,
        format!(
            "the calling thread on CPU 0 (0:0) at IRQL 2 (DISPATCH) spins on core spin lock \
             {lock:#x}, which it already holds (acquired at IRQL 2 (DISPATCH)): a recursive \
             acquisition never succeeds; on NT this is bugcheck 0x133 DPC_WATCHDOG_VIOLATION"
        )
    );
    assert!(m.platform.shared.cpu_locks.iter().all(|l| !l.is_locked()));

    // Deterministic mode: a holder suspended below the spinner (here in a wait) cannot run again.
    let m = machine(no_preemption(cfg(2, 2, 0)));
    let p = m.platform();
    let msg = spinning_message(&p, ProcessorNumber::new(0, 1), lock);
    let bugcheck = expect_bugcheck(|| {
        m.with_cpu(0, || {
            p.spin_lock_acquired(lock as *const ());
            p.message_send(msg);
            p.flush_messages();
        })
    });
    assert_eq!(bugcheck.code, 0x133);
    assert!(
        bugcheck.message.starts_with("DPC (message #")
            && bugcheck.message.ends_with(&format!(
                ") on CPU 1 (0:1) at IRQL 2 (DISPATCH) spins on core spin lock {lock:#x} held by \
                 the calling thread on CPU 0 (0:0) at IRQL 0 (PASSIVE), which cannot run while the \
                 spinner spins (deterministic mode runs one context at a time and the holder is \
                 suspended below the spinner): on NT this is bugcheck 0x133 DPC_WATCHDOG_VIOLATION"
            )),
        "{bugcheck}"
    );
    assert_eq!(
        kinds(&m),
        [ViolationKind::SpinLockIrql, ViolationKind::Deadlock]
    );
}

/// The real core with the `lock-without-raise` mutation: `stats()` at PASSIVE takes the core's locks
/// without raising, and a DPC of the domain preempts it on the same CPU and spins on one of them.
#[cfg(feature = "mutations")]
#[test]
fn core_lock_without_raise_deadlocks_with_a_preempting_dpc() {
    use kepoch::{Config, Domain, Mutation, Mutations, Strategy};
    let m = machine(MachineConfig {
        nested_dpc_percent: 100,
        ..cfg(2, 2, 0)
    });
    let config = Config {
        cycle_period_us: 5,
        mutations: Mutations::NONE.with(Mutation::LockWithoutRaise),
        ..Config::with_strategy(Strategy::Lazy)
    };
    let domain = Arc::new(
        m.with_cpu(0, || Domain::create(m.platform(), config))
            .unwrap(),
    );
    let d = domain.clone();
    m.spawn(1, move |_: &mut StepContext<'_>| {
        let _stats = d.stats();
        StepOutcome::Sleep(1)
    });
    let bugcheck = expect_bugcheck(|| m.run_for(100_000));
    assert_eq!(bugcheck.code, 0x133, "{bugcheck}");
    assert!(
        bugcheck
            .message
            .contains("held by task 0 preempted at IRQL 0 (PASSIVE) on the same CPU"),
        "{bugcheck}"
    );
    assert!(kinds(&m).contains(&ViolationKind::SpinLockIrql));
    // The unwound task's body was leaked, not dropped: its reference keeps the domain from being
    // unloaded on a machine that runs no handler any more.
    assert_eq!(Arc::strong_count(&domain), 2);
    drop(domain);
}

// ---------------------------------------------------------------- contracts: flush, timer_stop

/// A handler that takes a while: flags it started and finished.
#[derive(Default)]
struct SlowHandler {
    started: AtomicUsize,
    running: AtomicUsize,
    finished: AtomicUsize,
}

/// # Safety
/// `ctx` points to a live SlowHandler.
unsafe fn slow_handler(ctx: *const ()) {
    // SAFETY: the tests leak every SlowHandler.
    let s = unsafe { &*ctx.cast::<SlowHandler>() };
    s.started.fetch_add(1, Ordering::SeqCst);
    s.running.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    s.running.fetch_sub(1, Ordering::SeqCst);
    s.finished.fetch_add(1, Ordering::SeqCst);
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} never happened"
        );
        std::thread::yield_now();
    }
}

#[test]
fn flush_messages_waits_for_a_running_handler() {
    let m = machine(cfg(2, 2, 0));
    let p = m.platform();
    let slow: &'static SlowHandler = Box::leak(Box::default());
    let msg: &'static mut SimMessage = Box::leak(Box::default());
    let h = Handler {
        func: slow_handler,
        context: (slow as *const SlowHandler).cast(),
    };
    // SAFETY: leaked storage.
    unsafe { p.message_init(msg, ProcessorNumber::new(0, 0), h) }.unwrap();
    let msg: &'static SimMessage = msg;
    let checked = Arc::new(AtomicBool::new(false));
    let c = checked.clone();
    m.spawn(1, move |ctx: &mut StepContext<'_>| {
        let p = ctx.platform().clone();
        p.message_send(msg);
        wait_for("the handler start", || {
            slow.started.load(Ordering::SeqCst) == 1
        });
        // Not queued any more, but running: the flush must wait for it.
        p.flush_messages();
        assert_eq!(slow.finished.load(Ordering::SeqCst), 1);
        c.store(true, Ordering::SeqCst);
        StepOutcome::Done
    });
    m.run_parallel(Duration::from_millis(100));
    assert!(checked.load(Ordering::SeqCst));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn timer_stop_leaves_no_handler_running_or_starting() {
    let m = machine(cfg(2, 2, 0));
    let p = m.platform();
    let slow: &'static SlowHandler = Box::leak(Box::default());
    let timer: &'static mut SimTimer = Box::leak(Box::default());
    let h = Handler {
        func: slow_handler,
        context: (slow as *const SlowHandler).cast(),
    };
    // SAFETY: leaked storage.
    unsafe { p.timer_init(timer, h) }.unwrap();
    let timer: &'static SimTimer = timer;
    p.timer_start(timer, 1_000);
    let checked = Arc::new(AtomicBool::new(false));
    let c = checked.clone();
    m.spawn(1, move |ctx: &mut StepContext<'_>| {
        let p = ctx.platform().clone();
        wait_for("a timer run", || slow.running.load(Ordering::SeqCst) == 1);
        p.timer_stop(timer);
        assert_eq!(slow.running.load(Ordering::SeqCst), 0);
        let fires = slow.started.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(slow.started.load(Ordering::SeqCst), fires);
        c.store(true, Ordering::SeqCst);
        StepOutcome::Done
    });
    m.run_parallel(Duration::from_millis(100));
    assert!(checked.load(Ordering::SeqCst));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    // SAFETY: stopped by the task.
    unsafe { p.timer_release((timer as *const SimTimer).cast_mut()) };
}

// ---------------------------------------------------------------- parallel deadlocks

/// A passive work item that takes `lock` below DISPATCH, sends the spinning message of `target_of`
/// its own CPU, and waits on an event nobody signals (the machine halting ends the wait).
struct PassiveHolder {
    p: SimPlatform,
    lock: usize,
    /// Spinning message per CPU index.
    messages: Vec<&'static SimMessage>,
    /// Which message to send, given the work item's CPU index.
    target_of: fn(u32) -> u32,
    never: SimEvent,
}

/// # Safety
/// `ctx` points to a live PassiveHolder.
unsafe fn hold_and_wait(ctx: *const ()) {
    // SAFETY: the tests leak every PassiveHolder.
    let h = unsafe { &*ctx.cast::<PassiveHolder>() };
    h.p.spin_lock_acquired(h.lock as *const ());
    let me = h.p.current_processor().index;
    h.p.message_send(h.messages[(h.target_of)(me) as usize]);
    h.p.event_wait(&h.never);
}

/// Runs a parallel machine where a passive work item holds a lock that a DPC on CPU
/// `target_of(holder's CPU)` spins on; returns the bugcheck and the wall time to it.
fn parallel_deadlock(
    target_of: fn(u32) -> u32,
    spin_limit_ms: u64,
) -> (Machine, Bugcheck, Duration) {
    let m = machine(MachineConfig {
        parallel_spin_limit_ms: spin_limit_ms,
        ..cfg(2, 2, 0)
    });
    let p = m.platform();
    let lock = Box::leak(Box::new(0u64)) as *const u64 as usize;
    let messages = (0..2)
        .map(|i| spinning_message(&p, ProcessorNumber::new(0, i), lock))
        .collect();
    let holder: &'static PassiveHolder = Box::leak(Box::new(PassiveHolder {
        p: p.clone(),
        lock,
        messages,
        target_of,
        never: SimEvent::default(),
    }));
    let work: &'static mut SimPassiveWork = Box::leak(Box::default());
    let h = Handler {
        func: hold_and_wait,
        context: (holder as *const PassiveHolder).cast(),
    };
    // SAFETY: leaked storage.
    unsafe { p.passive_init(work, h) }.unwrap();
    p.passive_queue(work);
    let start = std::time::Instant::now();
    let bugcheck = expect_bugcheck(|| m.run_parallel(Duration::from_secs(30)));
    (m, bugcheck, start.elapsed())
}

#[test]
fn parallel_dpc_spinning_on_a_lock_of_its_cpus_passive_code_bugchecks() {
    let (m, bugcheck, took) = parallel_deadlock(|me| me, 60_000);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(bugcheck.code, 0x133);
    assert!(
        bugcheck.message.contains("held by passive work item #")
            && bugcheck
                .message
                .contains("preempted at IRQL 0 (PASSIVE) on the same CPU"),
        "{bugcheck}"
    );
    // Every machine thread ended and the machine is deterministic (and halted) again.
    assert!(m.platform.shared.cpu_locks.iter().all(|l| !l.is_locked()));
    assert!(!m.platform.shared.is_parallel());
    assert!(m.platform.shared.st.lock().cpu_threads.is_empty());
    assert!(!m.step());
}

#[test]
fn parallel_spin_past_the_limit_bugchecks() {
    let (m, bugcheck, took) = parallel_deadlock(|me| 1 - me, 200);
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(bugcheck.code, 0x133);
    assert!(
        bugcheck.message.contains("spun on core spin lock")
            && bugcheck
                .message
                .contains("for 200ms while passive work item #"),
        "{bugcheck}"
    );
    assert_eq!(
        kinds(&m),
        [ViolationKind::SpinLockIrql, ViolationKind::Deadlock]
    );
}

// ---------------------------------------------------------------- hot-add and DISPATCH holders

/// A processor-change callback that takes DISPATCH briefly, as the core's spin locks do.
unsafe fn raising_cb(ctx: *const (), _: ProcessorChange, _: CurrentProcessor) -> Status {
    // SAFETY: the test leaks the platform the context points to.
    let p = unsafe { &*ctx.cast::<SimPlatform>() };
    let previous = p.raise_to_dispatch();
    p.lower_irql(previous);
    Status::SUCCESS
}

#[test]
fn hot_add_phases_run_on_a_cpu_that_is_not_held_at_dispatch() {
    for seed in 0..20 {
        let m = machine(MachineConfig {
            seed,
            ..cfg(1, 4, 3)
        });
        let p: &'static SimPlatform = Box::leak(Box::new(m.platform()));
        // SAFETY: leaked context.
        unsafe { p.processor_change_register(raising_cb, (p as *const SimPlatform).cast()) }
            .unwrap()
            .unwrap();
        m.schedule_hot_add(5, 1, true);
        m.schedule_hot_add(10, 2, false);
        let mut previous = Irql::PASSIVE;
        let mut steps = 0;
        // Holds CPU 0 at DISPATCH for several steps at a time.
        m.spawn(0, move |ctx: &mut StepContext<'_>| {
            steps += 1;
            let p = ctx.platform().clone();
            match steps % 4 {
                1 => {
                    previous = p.raise_to_dispatch();
                    ctx.hold_dispatch(true);
                }
                0 => {
                    p.lower_irql(previous);
                    ctx.hold_dispatch(false);
                }
                _ => {}
            }
            if steps == 200 {
                StepOutcome::Done
            } else {
                StepOutcome::Continue
            }
        });
        assert!(m.run_until_idle(10_000));
        assert_eq!(m.counters().hot_add_complete, 2);
        assert!(
            m.violations().is_empty(),
            "seed {seed}: {:?}",
            m.violations()
        );
    }
}

#[test]
fn parallel_task_panic_halts_the_machine_and_reaches_the_caller() {
    let m = machine(cfg(2, 2, 0));
    m.spawn(1, |ctx: &mut StepContext<'_>| {
        if ctx.now_us() > 1_000 {
            panic!("task gives up");
        }
        StepOutcome::Sleep(100)
    });
    // Another task waits on its CPU for an event nobody signals: the halt must end that wait too.
    let never: &'static SimEvent = Box::leak(Box::default());
    m.spawn(0, move |ctx: &mut StepContext<'_>| {
        ctx.platform().event_wait(never);
        StepOutcome::Done
    });
    let start = std::time::Instant::now();
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.run_parallel(Duration::from_secs(30))
    }))
    .expect_err("the task's panic reaches the caller");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"task gives up"));
    assert!(m.bugcheck().is_none());
    assert!(m.platform.shared.st.lock().cpu_threads.is_empty());
    assert!(!m.platform.shared.is_parallel());
    assert!(m.platform.shared.cpu_locks.iter().all(|l| !l.is_locked()));
}
