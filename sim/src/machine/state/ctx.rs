//! Execution contexts: which machine, CPU, IRQL and code the calling thread runs, kept in a
//! thread-local, entered and left around every handler and task step, and described in messages.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::Ordering;

use kepoch::platform::Irql;

use super::super::report::ViolationKind;
use super::Shared;

/// What kind of code a context runs (for the messages of violations and bugchecks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ContextKind {
    /// Code on the calling thread outside any task or handler: load, unload, a test's `with_cpu`.
    Caller,
    /// A parallel-mode CPU thread between the things it runs.
    Idle,
    /// A step of a task.
    Task(usize),
    /// A passive work item (by id).
    PassiveWork(u64),
    /// A message handler, i.e. a DPC (by message id).
    Message(u64),
    /// A timer handler, i.e. the timer's DPC (by timer id).
    Timer(u64),
    /// Processor-change notifications (registration replay, hot-add phases).
    ProcessorChange,
    /// Code at DISPATCH on a hot-added CPU between AddStart and AddComplete/AddFailure: a DPC another
    /// driver targeted at it, or an interrupt (`AddWindowHook`).
    AddWindow,
}

impl ContextKind {
    /// Handlers that run at DISPATCH by definition.
    pub fn is_dpc(self) -> bool {
        matches!(
            self,
            ContextKind::Message(_) | ContextKind::Timer(_) | ContextKind::AddWindow
        )
    }
}

impl fmt::Display for ContextKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextKind::Caller => write!(f, "the calling thread"),
            ContextKind::Idle => write!(f, "the idle loop"),
            ContextKind::Task(tid) => write!(f, "task {tid}"),
            ContextKind::PassiveWork(id) => write!(f, "passive work item #{id}"),
            ContextKind::Message(id) => write!(f, "DPC (message #{id})"),
            ContextKind::Timer(id) => write!(f, "timer DPC (timer #{id})"),
            ContextKind::ProcessorChange => write!(f, "a processor-change callback"),
            ContextKind::AddWindow => write!(f, "a DPC in a hot-add window"),
        }
    }
}

/// Execution context of the calling thread: which machine, which CPU, which IRQL, which code.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub machine: usize,
    pub cpu: usize,
    pub irql: Irql,
    /// The thread is the parallel-mode thread of `cpu` (it must pump its own queue while waiting).
    pub cpu_thread: bool,
    pub kind: ContextKind,
    /// Unique per context instance on its machine (tells a recursive acquisition from a nested one).
    pub serial: u64,
    /// The last core routine that announced itself through `verify_irql` in this context.
    pub entry: Option<&'static str>,
}

thread_local! {
    static CTX: Cell<Option<Ctx>> = const { Cell::new(None) };
}

pub(crate) fn ctx_get() -> Option<Ctx> {
    CTX.with(|c| c.get())
}

pub(crate) fn ctx_set(ctx: Option<Ctx>) {
    CTX.with(|c| c.set(ctx));
}

impl Shared {
    /// A new context of `kind` on `cpu` at `irql`.
    pub fn new_ctx(&self, cpu: usize, irql: Irql, kind: ContextKind, cpu_thread: bool) -> Ctx {
        Ctx {
            machine: self.id,
            cpu,
            irql,
            cpu_thread,
            kind,
            serial: self.next_serial.fetch_add(1, Ordering::Relaxed),
            entry: None,
        }
    }

    /// The calling thread's context on this machine (the boot CPU at PASSIVE if it has none).
    pub fn ctx(&self) -> Ctx {
        match ctx_get() {
            Some(c) if c.machine == self.id => c,
            _ => {
                let c = self.new_ctx(0, Irql::PASSIVE, ContextKind::Caller, false);
                ctx_set(Some(c));
                c
            }
        }
    }

    /// "CPU 1 (0:1)": the index and the group-relative number of `cpu`.
    pub fn cpu_label(&self, cpu: usize) -> String {
        format!("CPU {} ({})", self.slots[cpu].index, self.slots[cpu].number)
    }

    /// "task 3"; for the calling thread, which runs many unrelated things, also the last core entry
    /// point it announced ("the calling thread (last core entry point: unload)").
    pub fn label(&self, kind: ContextKind, entry: Option<&'static str>) -> String {
        match (kind, entry) {
            (ContextKind::Caller, Some(routine)) => {
                format!("{kind} (last core entry point: {routine})")
            }
            _ => kind.to_string(),
        }
    }

    /// "task 3 on CPU 1 (0:1) at IRQL 0 (PASSIVE)".
    pub fn describe(
        &self,
        kind: ContextKind,
        entry: Option<&'static str>,
        cpu: usize,
        irql: Irql,
    ) -> String {
        format!(
            "{} on {} at IRQL {}",
            self.label(kind, entry),
            self.cpu_label(cpu),
            irql_name(irql)
        )
    }

    /// [`Shared::describe`] of the calling context.
    pub fn describe_ctx(&self, c: &Ctx) -> String {
        self.describe(c.kind, c.entry, c.cpu, c.irql)
    }

    pub fn set_irql(&self, irql: Irql) {
        let mut c = self.ctx();
        c.irql = irql;
        ctx_set(Some(c));
    }

    /// Runs `f` in a new context of `kind` (`cpu`, `irql`) on this thread, restoring the previous
    /// context afterwards, also when `f` unwinds (a bugcheck). Returns the IRQL `f` ended at.
    pub fn in_ctx<R>(
        &self,
        cpu: usize,
        irql: Irql,
        kind: ContextKind,
        f: impl FnOnce() -> R,
    ) -> (R, Irql) {
        let saved = ctx_get();
        let cpu_thread =
            matches!(saved, Some(c) if c.machine == self.id && c.cpu_thread && c.cpu == cpu);
        ctx_set(Some(self.new_ctx(cpu, irql, kind, cpu_thread)));
        let restore = CtxRestore { sh: self, saved };
        let r = f();
        let end = self.ctx().irql;
        drop(restore);
        (r, end)
    }

    /// Records an IRQL violation if `end != expected`.
    pub fn check_irql(&self, what: &str, expected: Irql, end: Irql, cpu: usize) {
        if end != expected {
            self.violation(
                ViolationKind::Irql,
                format!(
                    "{what} on CPU {} returned at IRQL {} instead of {}",
                    self.slots[cpu].index, end.0, expected.0
                ),
            );
        }
    }
}

/// Restores the thread's previous context when a context ends. When it ends by unwinding, it also gives
/// back the DISPATCH exclusion the unwound context held (its CPU lock), so no machine lock stays held.
struct CtxRestore<'a> {
    sh: &'a Shared,
    saved: Option<Ctx>,
}

impl Drop for CtxRestore<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(inner) = ctx_get().filter(|c| c.machine == self.sh.id) {
                let outer_holds = matches!(self.saved, Some(o) if o.machine == self.sh.id
                    && o.cpu == inner.cpu && o.irql >= Irql::DISPATCH);
                if inner.irql >= Irql::DISPATCH && !outer_holds {
                    self.sh.unlock_cpu(inner.cpu);
                }
            }
        }
        ctx_set(self.saved);
    }
}

/// "0 (PASSIVE)", "2 (DISPATCH)".
pub(crate) fn irql_name(irql: Irql) -> String {
    let name = match irql {
        Irql::PASSIVE => "PASSIVE",
        Irql::APC => "APC",
        Irql::DISPATCH => "DISPATCH",
        _ => "above DISPATCH",
    };
    format!("{} ({name})", irql.0)
}
