//! The epoch domain: the state every processor shares, loading, and the owner that unloads it. One
//! file per job, each next to its section of `PROTOCOL.md`:
//!
//! | file | job |
//! |---|---|
//! | `activation.rs` | preparing per-CPU slots: `lazy` at first use, `callback` notifications and rollback, `eager` |
//! | `enter.rs` | the hot path: enter, join, exit (owned slot, migrated reader, overflow slot) |
//! | `blocks.rs` | allocation options: pool tags, in-place and zeroed initialisation |
//! | `retire.rs` | allocation, retirement, the retirement stamp, disposal, double-retire detection |
//! | `work.rs` | work items: typed callbacks, schedule, cancel, reschedule, the callback barrier, the passive trampoline and its unload handshake |
//! | `cycle.rs` | the reclamation cycle: start, visit, finish, iterative chaining, `flush` |
//! | `grace.rs` | waiting: `synchronize`, polled grace periods, the "inside an epoch here" check |
//! | `timer.rs` | the cycle timer: its handler, stopping it when idle, restarting it |
//! | `report.rs` | statistics and the holdback diagnosis |
//! | `shutdown.rs` | unload (`PROTOCOL.md` S8) |

mod activation;
mod blocks;
mod cycle;
mod enter;
mod grace;
mod report;
mod retire;
mod shutdown;
mod timer;
mod work;

pub use blocks::Zeroable;
pub use grace::GracePeriod;
pub use report::{Holdback, Holder};
pub use retire::CacheAligned;
pub use work::{WorkItem, WorkState};

use cycle::Cycle;
use timer::TimerMode;

use crate::config::{Config, Strategy};
use crate::deferred::{state, RetireHeader, RetiredList};
use crate::guard::{Guard, RawGuard};
use crate::mutation::Mutation;
use crate::participant::{Participant, Slot};
use crate::platform::{
    CurrentProcessor, Handler, IrqlRule, LogLevel, Platform, PoolTag, ProcessorChange,
    ProcessorNumber, Status, WorkInstant,
};
use crate::spin::{SpinGuard, SpinLock};
use crate::stats::{
    CallbackState, DomainCounters, LatencyHistogram, ParticipantCounters, Stats, STATS_VERSION,
};
use crate::sync::{
    fence, owner_add, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, LockedRmw, Ordering,
};
use crate::table::{Entry, ProcessorSet, SlotTable};
use core::alloc::Layout;
use core::fmt;
use core::mem::{self, ManuallyDrop, MaybeUninit};
use core::ops::Deref;
use core::ptr::{self, NonNull};

/// Why a domain could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The NTSTATUS `DriverEntry` returns.
    pub status: Status,
    /// What failed.
    pub reason: LoadFailure,
}

/// The step of the load that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadFailure {
    /// Allocating the domain, its timer or its events failed.
    Resources,
    /// `eager`: `KeGetProcessorNumberFromIndex` failed for this index (max > active).
    ProcessorIndex(u32),
    /// `eager`: preparing the slot of this index failed.
    Prepare(u32),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            LoadFailure::Resources => write!(f, "allocating the epoch domain failed: {}", self.status),
            LoadFailure::ProcessorIndex(index) => write!(
                f,
                "eager: KeGetProcessorNumberFromIndex({index}) failed with {} (reported maximum exceeds active processors)",
                self.status
            ),
            LoadFailure::Prepare(index) => {
                write!(f, "eager: preparing processor index {index} failed with {}", self.status)
            }
        }
    }
}

/// Why a retirement (or the schedule of a work item) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireError {
    /// The item was already retired.
    AlreadyRetired,
    /// The work item is already scheduled and has not started running; it is where the
    /// [`WorkState`] says. Cancel it first to schedule it anew.
    AlreadyScheduled(WorkState),
    /// The work item belongs to another domain: only the domain whose
    /// [`new_work_item`](Domain::new_work_item) made it may schedule it (another domain would
    /// account for it and run it against the domain it came from, which may be gone by then).
    ForeignWorkItem,
}

impl fmt::Display for RetireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RetireError::AlreadyRetired => "the item is already retired",
            RetireError::AlreadyScheduled(state) => {
                return write!(f, "the work item is already scheduled ({state})");
            }
            RetireError::ForeignWorkItem => "the work item belongs to another domain",
        })
    }
}

/// A failed allocation, holding the value that was to be moved into the block: the pool had no
/// memory for it (non-paged pool exhausted on NT), or a block for a `T` that large would overflow
/// its size. Returned by [`Domain::alloc`], [`Domain::alloc_tagged`],
/// [`Owned::new`](crate::Owned::new), [`Node::new`](crate::atomic::Node::new),
/// [`List::push_front`](crate::list::List::push_front) and [`Map::insert`](crate::map::Map::insert)
/// (which holds the key and the value), so that nothing is lost or dropped behind the caller's
/// back: [`into_inner`](Self::into_inner) hands the value back to retry, keep or drop.
///
/// Its `Debug` prints no value and needs no `T: Debug`, so `.expect(..)` and `.unwrap()` work
/// for any `T`:
///
/// ```
/// # use kepoch::{Config, Domain, Owned};
/// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
/// struct NotDebug(u32);
///
/// let value = Owned::new(&domain, NotDebug(7)).unwrap();
/// let other = Owned::new(&domain, NotDebug(8)).expect("memory");
/// assert_eq!(value.0 + other.0, 15);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AllocError<T> {
    value: T,
}

impl<T> AllocError<T> {
    /// The failure of an allocation that was to hold `value`.
    pub(crate) fn new(value: T) -> Self {
        AllocError { value }
    }

    /// The value that could not be moved into a block, handed back.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// The value that could not be moved into a block, borrowed (to log it, say).
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The same failure with its value turned into another (a node's value out of the node).
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> AllocError<U> {
        AllocError::new(f(self.value))
    }
}

impl<T> fmt::Debug for AllocError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllocError").finish_non_exhaustive()
    }
}

impl<T> fmt::Display for AllocError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the allocation failed (non-paged pool exhausted); the value is handed back")
    }
}

impl<T> core::error::Error for AllocError<T> {}

/// All prepared slots, for building cycle rings and for teardown.
struct Registry<P: Platform> {
    head: *mut Slot<P>,
}

// SAFETY: the registry only holds pointers to slots owned by the domain; it is reached under its lock.
unsafe impl<P: Platform> Send for Registry<P> {}

impl<P: Platform> Registry<P> {
    /// Adds to the prepared-processor counters (`cpus_prepared`, `per_cpu_bytes`; negative: a
    /// rollback). Only the registry lock's holder writes them (`&mut self` is the proof), so a plain
    /// load and store do, not a locked add: a lazy first enter pays this at DISPATCH. Statistics read
    /// them with relaxed loads.
    fn count_prepared(&mut self, counters: &DomainCounters, cpus: i64, bytes: i64) {
        owner_add(&counters.cpus_prepared, cpus as u64);
        owner_add(&counters.per_cpu_bytes, bytes as u64);
    }
}

/// A unit test's code run at one point inside the core. The flag is read first, so that a point
/// with no hook set takes no lock (a lock would order the threads of every other unit test, which
/// Miri would then not check); the hook is cloned out of the lock before it runs.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct TestHook {
    set: AtomicBool,
    hook: std::sync::Mutex<Option<std::sync::Arc<dyn Fn() + Send + Sync>>>,
}

#[cfg(test)]
impl TestHook {
    /// Sets (or with `None` removes) the code to run (the unit tests, which loom builds leave out).
    #[cfg(not(loom))]
    pub(crate) fn set(&self, hook: Option<std::sync::Arc<dyn Fn() + Send + Sync>>) {
        let mut slot = self
            .hook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.set.store(hook.is_some(), Ordering::SeqCst);
        *slot = hook;
    }

    /// Runs the hook, if one is set.
    pub(crate) fn run(&self) {
        if !self.set.load(Ordering::Relaxed) {
            return;
        }
        let hook = self
            .hook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// Per-CPU epoch-based reclamation over a platform `P`. Create with [`Domain::create`].
#[repr(C, align(64))]
pub struct Domain<P: Platform> {
    global_epoch: AtomicU64,
    released_epoch: AtomicU64,
    /// Every item stamped at or below this has been disposed of.
    freed_through: AtomicU64,
    cycle: Cycle,
    table: SlotTable<P>,
    /// Processors whose add completed (AddComplete seen, replayed at registration for those
    /// already running): the only ones a lazy preparation may make routable while registered.
    completed: ProcessorSet,
    registry: SpinLock<Registry<P>>,
    overflow: SpinLock<Participant>,
    counters: DomainCounters,
    cycle_latency: SpinLock<LatencyHistogram>,
    config: Config,
    callback_state: AtomicU32,
    callback_handle: AtomicPtr<()>,
    /// Set while `processor_change_register` runs: its notifications are the replay for processors
    /// already active (registration and live hot-adds are serialised by the kernel).
    registering: AtomicBool,
    shutting_down: AtomicBool,
    /// Epoch before which a failed lazy preparation is not retried (keeps DISPATCH cheap under
    /// memory pressure).
    prepare_retry_epoch: AtomicU64,
    outstanding_work: AtomicU64,
    /// Barrier generation: a queued work item is counted in `work_in_phase[generation & 1]`.
    work_phase: AtomicU64,
    /// Work items queued and not finished, by the barrier phase they were queued in.
    work_in_phase: [AtomicU64; 2],
    /// Barrier rounds completed: round `k` flips `work_phase` from `k` to `k + 1` and completes
    /// once the count of phase `k & 1` is zero. At most one round is in progress
    /// (`work_phase <= work_rounds_done + 1`), so each phase is drained before it is used again.
    work_rounds_done: AtomicU64,
    /// Times a callback barrier waited for a round (unit tests: where a barrier is).
    #[cfg(test)]
    pub(crate) barrier_round_waits: AtomicU64,
    /// Unit tests: runs between a queue's read of the barrier generation and its count, where a
    /// barrier on another processor may start and complete a round (no platform call is there to
    /// hook).
    #[cfg(test)]
    pub(crate) between_phase_read_and_count: TestHook,
    /// Where the cycle timer is (`timer.rs`).
    timer_mode: SpinLock<TimerMode>,
    /// Set while the timer is stopped or stopping for want of work: a retirement that sees it
    /// restarts the timer.
    timer_idle: AtomicBool,
    /// `synchronize` calls in progress: the timer does not stop while one waits for cycles.
    sync_waiters: AtomicU64,
    platform: ManuallyDrop<P>,
    timer: MaybeUninit<P::Timer>,
    /// Duration and items freed of every visit (16 KB): initialised in place in `create` (empty
    /// histograms are all-zero), never built on a stack.
    visits: MaybeUninit<SpinLock<VisitHistograms>>,
    /// The passive work item that stops an idle timer (its handler cannot wait for itself).
    cycle_done: MaybeUninit<P::Event>,
    work_idle: MaybeUninit<P::Event>,
}

// SAFETY: all shared state is atomics, spin-locked or platform objects that are Send + Sync.
unsafe impl<P: Platform> Sync for Domain<P> {}
// SAFETY: as above; the domain owns its slots.
unsafe impl<P: Platform> Send for Domain<P> {}

/// What the visits (one DPC each) of a domain took: their duration and the items each freed.
#[repr(C)]
pub(crate) struct VisitHistograms {
    /// Duration of each visit, in nanoseconds.
    pub(crate) duration_ns: LatencyHistogram,
    /// Items each visit freed (a count, in the histogram's units).
    pub(crate) frees: LatencyHistogram,
}

/// Owner of a [`Domain`]: dereferences to it; dropping it shuts the domain down (`PROTOCOL.md`, S8).
pub struct DomainBox<P: Platform> {
    domain: NonNull<Domain<P>>,
}

// SAFETY: the box is the unique owner of a Sync + Send domain.
unsafe impl<P: Platform> Send for DomainBox<P> {}
// SAFETY: shared access goes through `&Domain`, which is Sync.
unsafe impl<P: Platform> Sync for DomainBox<P> {}

impl<P: Platform> Deref for DomainBox<P> {
    type Target = Domain<P>;
    fn deref(&self) -> &Domain<P> {
        // SAFETY: the domain lives until the box drops.
        unsafe { self.domain.as_ref() }
    }
}

impl<P: Platform> Drop for DomainBox<P> {
    fn drop(&mut self) {
        let domain = self.domain.as_ptr();
        // SAFETY: we own the domain; no guard can outlive the box (guards borrow it), and shutdown
        // stops every platform callback before the memory is released.
        unsafe {
            (*domain).shutdown();
            let platform = ManuallyDrop::take(&mut (*domain).platform);
            ptr::drop_in_place(domain);
            platform.free(self.domain.cast(), Layout::new::<Domain<P>>());
        }
    }
}

impl<P: Platform> Domain<P> {
    /// Creates a domain: prepares per-CPU state as the strategy says, registers for processor-change
    /// notifications (`callback`), starts the cycle timer and logs one line. PASSIVE only.
    pub fn create(platform: P, config: Config) -> Result<DomainBox<P>, LoadError> {
        platform.verify_irql("Domain::create", IrqlRule::Passive);
        let resources = LoadError {
            status: Status::INSUFFICIENT_RESOURCES,
            reason: LoadFailure::Resources,
        };
        let Some(memory) = platform.allocate(Layout::new::<Domain<P>>()) else {
            return Err(resources);
        };
        let raw = memory.as_ptr().cast::<Domain<P>>();
        // SAFETY: fresh allocation with the layout of `Domain<P>`, not shared yet.
        unsafe {
            raw.write(Domain {
                global_epoch: AtomicU64::new(1),
                released_epoch: AtomicU64::new(0),
                freed_through: AtomicU64::new(0),
                cycle: Cycle::new(),
                table: SlotTable::new(config.mutations),
                completed: ProcessorSet::new(),
                registry: SpinLock::new(Registry {
                    head: ptr::null_mut(),
                }),
                overflow: SpinLock::new(Participant::new()),
                counters: DomainCounters::default(),
                cycle_latency: SpinLock::new(LatencyHistogram::default()),
                config,
                callback_state: AtomicU32::new(CallbackState::NotUsed as u32),
                registering: AtomicBool::new(false),
                callback_handle: AtomicPtr::new(ptr::null_mut()),
                shutting_down: AtomicBool::new(false),
                prepare_retry_epoch: AtomicU64::new(0),
                outstanding_work: AtomicU64::new(0),
                work_phase: AtomicU64::new(0),
                work_in_phase: [AtomicU64::new(0), AtomicU64::new(0)],
                work_rounds_done: AtomicU64::new(0),
                #[cfg(test)]
                barrier_round_waits: AtomicU64::new(0),
                #[cfg(test)]
                between_phase_read_and_count: TestHook::default(),
                timer_mode: SpinLock::new(TimerMode::Running),
                timer_idle: AtomicBool::new(false),
                sync_waiters: AtomicU64::new(0),
                platform: ManuallyDrop::new(platform),
                timer: MaybeUninit::uninit(),
                visits: MaybeUninit::uninit(),
                cycle_done: MaybeUninit::uninit(),
                work_idle: MaybeUninit::uninit(),
            })
        };
        let this = raw as *const ();
        // SAFETY: initialised just above. The events and the timer live inside the domain, which
        // never moves; they are initialised in place through the allocation's own pointer, next to a
        // reference to the platform field only (no reference to the whole domain exists yet).
        let timer_ok = unsafe {
            // All-zero is a valid `VisitHistograms`: two histograms made of integers only, empty.
            SpinLock::<VisitHistograms>::init_zeroed_in_place(
                ptr::addr_of_mut!((*raw).visits).cast(),
            );
            let platform = &*ptr::addr_of!((*raw).platform);
            platform.event_init(ptr::addr_of_mut!((*raw).cycle_done).cast());
            platform.event_init(ptr::addr_of_mut!((*raw).work_idle).cast());
            platform.timer_init(
                ptr::addr_of_mut!((*raw).timer).cast(),
                Handler {
                    func: Self::on_timer,
                    context: this,
                },
            )
        };
        if timer_ok.is_err() {
            // SAFETY: nothing refers to the domain yet (the timer never started); free it without
            // a shutdown.
            unsafe {
                let platform = ManuallyDrop::take(&mut (*raw).platform);
                ptr::drop_in_place(raw);
                platform.free(memory, Layout::new::<Domain<P>>());
            }
            return Err(resources);
        }
        // SAFETY: fully initialised above; shared from here on.
        let domain = unsafe { &*raw };
        // The box keeps the allocation's own pointer (not one derived from the shared `domain`
        // reference), so that unload may take the platform out mutably.
        let boxed = DomainBox {
            domain: memory.cast::<Domain<P>>(),
        };

        match config.strategy {
            Strategy::Eager => domain.prepare_eager()?,
            Strategy::Callback | Strategy::Lazy => domain.register_callback(),
        }
        domain
            .platform
            .timer_start(domain.timer(), config.cycle_period_us);
        domain.platform.log(
            LogLevel::Info,
            format_args!(
                "kepoch: strategy {} (registry value {}), max {} active {} processors, callback {}, idle deactivation {}, cycle {} us",
                config.strategy,
                config.strategy.registry_value(),
                domain.platform.max_processor_count(),
                domain.platform.active_processor_count(),
                match domain.callback_state() {
                    CallbackState::NotUsed => "not used",
                    CallbackState::Registered => "registered",
                    CallbackState::ApiMissing => "API missing, running as lazy",
                    CallbackState::RegistrationFailed => "registration failed, running as lazy",
                },
                config.idle_deactivation,
                config.cycle_period_us
            ),
        );
        Ok(boxed)
    }

    /// The platform this domain runs on.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The configuration the domain was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn timer(&self) -> &P::Timer {
        // SAFETY: initialised in `create` before any use.
        unsafe { self.timer.assume_init_ref() }
    }

    fn visits(&self) -> &SpinLock<VisitHistograms> {
        // SAFETY: initialised in `create` before any use.
        unsafe { self.visits.assume_init_ref() }
    }

    fn cycle_done(&self) -> &P::Event {
        // SAFETY: initialised in `create` before any use.
        unsafe { self.cycle_done.assume_init_ref() }
    }

    fn work_idle(&self) -> &P::Event {
        // SAFETY: initialised in `create` before any use.
        unsafe { self.work_idle.assume_init_ref() }
    }

    pub(crate) fn mutated(&self, mutation: Mutation) -> bool {
        self.config.mutations.active(mutation)
    }

    /// Takes one of the domain's spin locks: raises to DISPATCH, spins, and restores the IRQL when the
    /// guard drops. Any IRQL up to DISPATCH.
    fn locked<'a, T>(&'a self, lock: &'a SpinLock<T>) -> SpinGuard<'a, T, P> {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::LockWithoutRaise) {
            return lock.lock_without_raise(&*self.platform);
        }
        lock.lock(&*self.platform)
    }

    /// How the `callback` strategy is running.
    pub fn callback_state(&self) -> CallbackState {
        match self.callback_state.load(Ordering::Relaxed) {
            1 => CallbackState::Registered,
            2 => CallbackState::ApiMissing,
            3 => CallbackState::RegistrationFailed,
            _ => CallbackState::NotUsed,
        }
    }

    /// The current global epoch.
    pub fn global_epoch(&self) -> u64 {
        self.global_epoch.load(Ordering::SeqCst)
    }

    /// The newest epoch whose items may be freed: every item stamped at or below it is unreachable by
    /// any active reader. It never decreases (PROTOCOL.md, "The released epoch only grows"). Tests
    /// compare it with what readers hold.
    pub fn released_epoch(&self) -> u64 {
        self.released_epoch.load(Ordering::Acquire)
    }
}
