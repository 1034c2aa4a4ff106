//! kepoch on the threads of a user-mode process: a [`Platform`](kepoch::platform::Platform) for
//! unit tests of data structures built on kepoch (a driver author's tests, on Linux or Windows,
//! with `cargo test`) and for user-mode programs. The kernel's platform is `kepoch-nt`.
//!
//! ```
//! use kepoch::{Atomic, Config, Domain, Owned};
//! use kepoch_user::UserPlatform;
//!
//! let domain = Domain::create(UserPlatform::new(), Config::default()).expect("load");
//! let current = Atomic::new(Owned::new(&domain, 0u64).expect("memory"));
//! std::thread::scope(|s| {
//!     for _ in 0..3 {
//!         // Readers: any thread, no setup.
//!         s.spawn(|| {
//!             for _ in 0..1_000 {
//!                 let guard = domain.enter();
//!                 assert!(current.load(&guard).is_some_and(|v| *v <= 1_000));
//!             }
//!         });
//!     }
//!     // A writer: replaces the value, retiring the old one; `synchronize` returns on its own.
//!     s.spawn(|| {
//!         for i in 1..=1_000 {
//!             current.store(Owned::new(&domain, i).expect("memory"));
//!             if i % 100 == 0 {
//!                 domain.synchronize();
//!             }
//!         }
//!     });
//! });
//! domain.synchronize();
//! assert_eq!(domain.stats().pending, 0);
//! ```
//!
//! # The machine it emulates
//!
//! - **Every thread is a processor.** A thread that runs epoch code gets a virtual processor of its
//!   own the first time (the lowest free one; a new one arrives as a hot-added processor), keeps it
//!   until it exits, and then leaves it, still active, to the next thread. The number of processors
//!   is fixed ([`Builder::max_processors`], 64 by default); index `i` is processor `i / 64 : i % 64`
//!   (group : number). [`UserPlatform::pin_current_thread`] chooses one explicitly.
//! - **DISPATCH_LEVEL excludes.** While a thread is at DISPATCH (inside `enter`, `exit`, a core
//!   spin lock, or between [`raise_to_dispatch`](kepoch::platform::Platform::raise_to_dispatch)
//!   and [`lower_irql`](kepoch::platform::Platform::lower_irql)), nothing else runs as its
//!   processor; a reader inside an epoch is at PASSIVE, so a cycle's visit may run "on" its
//!   processor meanwhile, as a DPC would.
//! - **Cycles run by themselves.** A timer thread fires each domain's cycle timer with the period
//!   the domain asks for ([`Config::cycle_period_us`](kepoch::Config::cycle_period_us), 1 ms by
//!   default), at DISPATCH as each active processor in turn; a dispatcher thread runs the cycle's
//!   messages at DISPATCH as their target processor; a worker thread runs work items at PASSIVE.
//!   Events are real (a condition variable): `synchronize` sleeps until a cycle ends.
//! - **Processor changes** are delivered like NT's: registration replays AddStart and AddComplete
//!   for every active processor; a thread's new processor arrives as AddStart and AddComplete, on
//!   that thread, before it runs any epoch code.
//!
//! # Misuse is reported, never a hang
//!
//! | misuse | what happens |
//! |---|---|
//! | more live threads than processors | the thread that finds none panics, naming the maximum and the owners |
//! | [`synchronize`](kepoch::Domain::synchronize) inside an epoch the same thread entered (it would wait for itself) | panic naming the thread and its readers |
//! | a PASSIVE-only call at DISPATCH (`synchronize`, creating or dropping a domain, a wait) — e.g. from the destructor of a retired value, which runs at DISPATCH | diagnosis on standard error, then the process aborts, as a kernel bug-checks: the caller is inside the core, whose state unwinding would corrupt |
//! | a message, timer or work-item handler that panics | the same: diagnosis, abort |
//! | any wait of the platform longer than [`Builder::wait_limit`] (60 s by default): a thread that stays at DISPATCH, a handler that never returns | panic with a diagnosis |
//!
//! The `synchronize` check counts readers that entered on the thread's processor and have not
//! exited: a guard this thread entered and moved to another thread counts until it is dropped. A
//! reader that had to use the core's shared overflow slot is not counted.

#![deny(missing_docs)]

mod bounded;
mod event;
mod platform;
mod processors;
mod seat;
mod threads;

pub use event::UserEvent;
pub use platform::{UserMessage, UserTimer, UserWork};

use kepoch::platform::{LogLevel, Status};
use processors::Processors;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use threads::{Messages, Threads, Timers, Work};

/// The largest [`Builder::max_processors`]: 64 groups of 64.
pub const MAX_PROCESSORS: u32 = 4096;

/// What [`Builder`] configures.
#[derive(Clone, Copy, Debug)]
struct Settings {
    max_processors: u32,
    wait_limit: Duration,
    log_level: LogLevel,
}

/// State shared by every clone of a platform, its threads, and the threads that use it.
pub(crate) struct Shared {
    settings: Settings,
    processors: Processors,
    messages: Messages,
    work: Work,
    timers: Timers,
    wakeup: Arc<event::Wakeup>,
    /// Blocks allocated and not freed.
    blocks: AtomicU64,
    started: Instant,
    /// Platform threads that have returned, and the signal of each return.
    exited: Mutex<u32>,
    thread_exited: Condvar,
}

/// The user-mode platform. Cheap to clone; clones share the machine. Its threads stop when the
/// last clone (and every domain created on it) is dropped.
#[derive(Clone)]
pub struct UserPlatform {
    shared: Arc<Shared>,
    _threads: Arc<Threads>,
}

impl UserPlatform {
    /// A platform with the default settings (64 processors, 60 s wait limit, warnings logged).
    ///
    /// # Panics
    /// If its threads cannot be started.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|error| panic!("kepoch-user: {error}"))
    }

    /// Settings for a platform other than the default.
    pub fn builder() -> Builder {
        Builder {
            settings: Settings {
                max_processors: 64,
                wait_limit: Duration::from_secs(60),
                log_level: LogLevel::Warning,
            },
        }
    }

    /// Makes the calling thread run as processor `index` from now on, instead of the one it got
    /// automatically (which it leaves to other threads). At PASSIVE only; refused if another live
    /// thread runs as `index`.
    pub fn pin_current_thread(&self, index: u32) -> Result<(), PinError> {
        seat::pin(&self.shared, index)
    }

    /// Blocks allocated through the platform and not freed yet: 0 once every domain on it has been
    /// dropped, unless something leaked.
    pub fn allocated_blocks(&self) -> u64 {
        self.shared.blocks.load(Ordering::SeqCst)
    }
}

impl Default for UserPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UserPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPlatform")
            .field("max_processors", &self.shared.settings.max_processors)
            .field("active", &self.shared.processors.active_count())
            .field("wait_limit", &self.shared.settings.wait_limit)
            .finish()
    }
}

/// Settings of a [`UserPlatform`]; [`Builder::build`] starts it.
#[derive(Clone, Debug)]
pub struct Builder {
    settings: Settings,
}

impl Builder {
    /// How many virtual processors exist at most, `1..=`[`MAX_PROCESSORS`]: the number of threads
    /// that may use the platform at the same time (the worker takes one for each work item it runs,
    /// waiting while threads hold them all, and gives it back). Default 64.
    pub fn max_processors(mut self, max: u32) -> Self {
        self.settings.max_processors = max;
        self
    }

    /// How long any wait of the platform may last before it panics with a diagnosis. Default 60 s.
    pub fn wait_limit(mut self, limit: Duration) -> Self {
        self.settings.wait_limit = limit;
        self
    }

    /// The least severe log line written to standard error. Default [`LogLevel::Warning`] (stalled
    /// readers, fallbacks); [`LogLevel::Info`] adds the load summary.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.settings.log_level = level;
        self
    }

    /// Checks the settings and starts the platform's threads.
    pub fn build(self) -> Result<UserPlatform, BuildError> {
        let settings = self.settings;
        if !(1..=MAX_PROCESSORS).contains(&settings.max_processors) {
            return Err(BuildError::MaxProcessors(settings.max_processors));
        }
        if settings.wait_limit.is_zero() {
            return Err(BuildError::WaitLimit(settings.wait_limit));
        }
        let shared = Arc::new(Shared {
            settings,
            processors: Processors::new(settings.max_processors, settings.wait_limit),
            messages: Messages::new(),
            work: Work::new(),
            timers: Timers::new(),
            wakeup: Arc::new(event::Wakeup::new()),
            blocks: AtomicU64::new(0),
            started: Instant::now(),
            exited: Mutex::new(0),
            thread_exited: Condvar::new(),
        });
        let threads = Threads::spawn(&shared).map_err(BuildError::Spawn)?;
        Ok(UserPlatform {
            shared,
            _threads: Arc::new(threads),
        })
    }
}

/// Why [`Builder::build`] failed.
#[derive(Debug)]
pub enum BuildError {
    /// [`Builder::max_processors`] outside `1..=`[`MAX_PROCESSORS`].
    MaxProcessors(u32),
    /// [`Builder::wait_limit`] of zero.
    WaitLimit(Duration),
    /// Starting the platform's threads failed.
    Spawn(std::io::Error),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::MaxProcessors(max) => write!(
                f,
                "max_processors({max}): a platform has 1 to {MAX_PROCESSORS} virtual processors"
            ),
            BuildError::WaitLimit(limit) => {
                write!(f, "wait_limit({limit:?}): the wait limit must not be zero")
            }
            BuildError::Spawn(error) => {
                write!(f, "starting the platform's threads failed: {error}")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Why [`UserPlatform::pin_current_thread`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinError {
    /// The index is not below the platform's maximum.
    OutOfRange {
        /// The index asked for.
        index: u32,
        /// The platform's maximum.
        max: u32,
    },
    /// Another live thread runs as that processor.
    Taken {
        /// The index asked for.
        index: u32,
        /// That thread.
        owner: String,
    },
    /// The caller is at DISPATCH_LEVEL, where a thread cannot change processors.
    AtDispatch,
    /// Starting the processor failed: a processor-change callback vetoed its AddStart.
    Vetoed {
        /// The processor.
        index: u32,
        /// The callback's status.
        status: Status,
    },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::OutOfRange { index, max } => write!(
                f,
                "processor {index} does not exist: the platform has {max} (indexes 0 to {})",
                max - 1
            ),
            PinError::Taken { index, owner } => {
                write!(f, "processor {index} is taken by the live thread {owner}")
            }
            PinError::AtDispatch => {
                f.write_str("a thread at DISPATCH_LEVEL cannot change processors")
            }
            PinError::Vetoed { index, status } => write!(
                f,
                "starting processor {index} was vetoed by a processor-change callback: {status}"
            ),
        }
    }
}

impl std::error::Error for PinError {}
