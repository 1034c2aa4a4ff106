//! What each thread is on each platform: the virtual processor it runs as and its IRQL. A thread
//! gets a processor of its own the first time it needs one (or when pinned), keeps it until it
//! exits, and then frees it for the next thread. The platform's own threads borrow the processor a
//! handler is bound to while it runs.

use crate::bounded::{bug_check, misuse, panic_message, thread_label};
use crate::processors::{all_taken, ClaimError};
use crate::{PinError, Shared};
use kepoch::platform::Irql;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

thread_local! {
    /// One seat per platform this thread has used.
    static SEATS: RefCell<Vec<Seat>> = const { RefCell::new(Vec::new()) };
}

/// One thread on one platform.
struct Seat {
    shared: Arc<Shared>,
    /// The processor the thread runs as: its own, or the one a handler of the platform is bound to.
    processor: Option<u32>,
    /// `processor` is the thread's own: released when the thread exits or is pinned elsewhere.
    owned: bool,
    irql: Irql,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let Some(index) = self.processor else { return };
        if self.irql >= Irql::DISPATCH {
            self.shared.processors.unexclude(index);
        }
        if self.owned {
            self.shared.processors.release(index);
        }
    }
}

/// Runs `f` on the calling thread's seat for `shared`, made on first use.
fn with_seat<R>(shared: &Arc<Shared>, f: impl FnOnce(&mut Seat) -> R) -> R {
    SEATS
        .try_with(|seats| {
            let mut seats = seats.borrow_mut();
            let position = match seats.iter().position(|s| Arc::ptr_eq(&s.shared, shared)) {
                Some(position) => position,
                None => {
                    seats.push(Seat {
                        shared: Arc::clone(shared),
                        processor: None,
                        owned: false,
                        irql: Irql::PASSIVE,
                    });
                    seats.len() - 1
                }
            };
            f(&mut seats[position])
        })
        .unwrap_or_else(|_| {
            bug_check("a thread used the platform from a thread-local destructor that ran after the thread's platform state was destroyed")
        })
}

/// The calling thread's IRQL.
pub(crate) fn irql(shared: &Arc<Shared>) -> Irql {
    with_seat(shared, |seat| seat.irql)
}

/// The processor the calling thread runs as, claiming one on first use.
pub(crate) fn processor(shared: &Arc<Shared>) -> u32 {
    match with_seat(shared, |seat| seat.processor) {
        Some(index) => index,
        // An automatic claim is never out of range or taken (a full platform panics in `claim`);
        // it fails only if a processor-change callback vetoes the new processor.
        None => claim(shared, None).unwrap_or_else(|error| {
            misuse(&format!(
                "thread {} got no virtual processor: {error}",
                thread_label()
            ))
        }),
    }
}

/// Claims `wanted` (or any free processor) for the calling thread, which has none, starts it if
/// it was not active (AddStart and AddComplete on this thread, which already runs as it) and
/// returns its index. Every processor taken is a panic for an automatic claim.
fn claim(shared: &Arc<Shared>, wanted: Option<u32>) -> Result<u32, PinError> {
    let thread = thread_label();
    let processors = &shared.processors;
    let claim = match processors.claim(wanted, &thread) {
        Ok(claim) => claim,
        Err(ClaimError::OutOfRange) => {
            return Err(PinError::OutOfRange {
                index: wanted.unwrap_or_default(),
                max: processors.max(),
            })
        }
        Err(ClaimError::Taken(owner)) => {
            return Err(PinError::Taken {
                index: wanted.unwrap_or_default(),
                owner,
            })
        }
        Err(ClaimError::AllTaken(owners)) => all_taken(&thread, processors.max(), &owners),
    };
    with_seat(shared, |seat| {
        seat.processor = Some(claim.index);
        seat.owned = true;
    });
    if let Some(registrations) = claim.start {
        if let Err(status) = processors.start(claim.index, &registrations) {
            with_seat(shared, |seat| {
                seat.processor = None;
                seat.owned = false;
            });
            return Err(PinError::Vetoed {
                index: claim.index,
                status,
            });
        }
    }
    Ok(claim.index)
}

/// Makes the calling thread run as processor `index` from now on (releasing the one it had). At
/// PASSIVE only.
pub(crate) fn pin(shared: &Arc<Shared>, index: u32) -> Result<(), PinError> {
    let (previous, irql) = with_seat(shared, |seat| (seat.processor, seat.irql));
    if irql >= Irql::DISPATCH {
        return Err(PinError::AtDispatch);
    }
    if previous == Some(index) {
        return Ok(());
    }
    with_seat(shared, |seat| seat.processor = None);
    match claim(shared, Some(index)) {
        Ok(_) => {
            if let Some(previous) = previous {
                shared.processors.release(previous);
            }
            Ok(())
        }
        Err(error) => {
            with_seat(shared, |seat| {
                seat.processor = previous;
                seat.owned = previous.is_some();
            });
            Err(error)
        }
    }
}

/// Raises the calling thread to DISPATCH: takes its processor's exclusion (claiming a processor
/// on first use). Returns the previous IRQL; a no-op at DISPATCH.
pub(crate) fn raise(shared: &Arc<Shared>) -> Irql {
    let (irql, processor) = with_seat(shared, |seat| (seat.irql, seat.processor));
    if irql >= Irql::DISPATCH {
        return irql;
    }
    let index = processor.unwrap_or_else(|| self::processor(shared));
    shared.processors.exclude(index, false, || {
        format!("thread {} raising to DISPATCH_LEVEL", thread_label())
    });
    with_seat(shared, |seat| seat.irql = Irql::DISPATCH);
    irql
}

/// Lowers the calling thread to `previous`, giving up its processor's exclusion when that leaves
/// DISPATCH. Lowering to a higher level is a bug check, as on NT.
pub(crate) fn lower(shared: &Arc<Shared>, previous: Irql) {
    let (irql, processor) = with_seat(shared, |seat| (seat.irql, seat.processor));
    if previous > irql {
        bug_check(&format!(
            "thread {} lowered the IRQL to {previous:?} from {irql:?}, a higher level (a lower_irql without its raise_to_dispatch)",
            thread_label()
        ));
    }
    with_seat(shared, |seat| seat.irql = previous);
    if let (true, Some(index)) = (
        irql >= Irql::DISPATCH && previous < Irql::DISPATCH,
        processor,
    ) {
        shared.processors.unexclude(index);
    }
}

/// Runs a passive work item on the platform's worker thread as a processor of its own for the item's
/// duration: the worker takes a free processor (waiting, up to the wait limit, while user threads hold
/// them all) and gives it back afterwards, so that it never keeps one a user thread could have.
pub(crate) fn run_work_item(shared: &Arc<Shared>, item: impl FnOnce()) {
    let limit = shared.settings.wait_limit;
    let waited = std::time::Instant::now();
    let thread = thread_label();
    let claim = loop {
        match shared.processors.claim(None, &thread) {
            Ok(claim) => break claim,
            Err(ClaimError::AllTaken(owners)) if waited.elapsed() >= limit => {
                all_taken(&thread, shared.processors.max(), &owners)
            }
            Err(ClaimError::AllTaken(_)) => std::thread::sleep(std::time::Duration::from_millis(1)),
            Err(ClaimError::OutOfRange | ClaimError::Taken(_)) => bug_check(
                "the worker's claim of any processor was refused as out of range or taken",
            ),
        }
    };
    with_seat(shared, |seat| {
        seat.processor = Some(claim.index);
        seat.owned = true;
    });
    if let Some(registrations) = claim.start {
        if shared
            .processors
            .start(claim.index, &registrations)
            .is_err()
        {
            bug_check("a processor-change callback vetoed the processor the worker needed");
        }
    }
    item();
    with_seat(shared, |seat| {
        seat.processor = None;
        seat.owned = false;
    });
    shared.processors.release(claim.index);
}

/// Runs `handler` at DISPATCH as processor `index` on a thread of the platform (a message, a timer
/// tick), holding that processor's exclusion. A panicking handler is a bug check: it left the
/// core mid-way, at DISPATCH.
pub(crate) fn run_as(shared: &Arc<Shared>, index: u32, what: &str, handler: impl FnOnce()) {
    shared.processors.exclude(index, true, || {
        format!("the platform's {what} for processor {index}")
    });
    with_seat(shared, |seat| {
        seat.processor = Some(index);
        seat.irql = Irql::DISPATCH;
    });
    let outcome = catch_unwind(AssertUnwindSafe(handler));
    with_seat(shared, |seat| {
        seat.processor = None;
        seat.irql = Irql::PASSIVE;
    });
    shared.processors.unexclude(index);
    if let Err(payload) = outcome {
        bug_check(&format!(
            "a {what} running as virtual processor {index} panicked: {}",
            panic_message(payload.as_ref())
        ));
    }
}
