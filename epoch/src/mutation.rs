//! Known bug shapes that tests re-introduce on purpose, to prove the checks catch them.
//!
//! A domain honours the mutations in its [`Config`](crate::Config) only when the crate is built with
//! the `mutations` feature; otherwise every check below is a compile-time `false` and the code is gone.

use core::fmt;

/// Whether a mutation breaks the protocol's logic or weakens/reorders a memory-ordering step that the
/// safety argument (PROTOCOL.md) relies on. Ordering mutations must be caught by a check that does
/// not depend on x86 timing (loom or the controlled-schedule mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MutationKind {
    /// A wrong statement or a missing step.
    Logic,
    /// A weakened ordering, a removed fence or two steps in the other order.
    Ordering,
}

macro_rules! mutations {
    ($($(#[doc = $doc:literal])* $variant:ident = $bit:literal, $name:literal, $kind:ident;)*) => {
        /// One re-introduced bug.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u64)]
        pub enum Mutation {
            $($(#[doc = $doc])* $variant = 1 << $bit,)*
        }

        impl Mutation {
            /// Every mutation.
            pub const ALL: &'static [Mutation] = &[$(Mutation::$variant,)*];

            /// Command-line name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Mutation::$variant => $name,)*
                }
            }

            /// Logic or ordering.
            pub fn kind(self) -> MutationKind {
                match self {
                    $(Mutation::$variant => MutationKind::$kind,)*
                }
            }
        }
    };
}

mutations! {
    /// The loop over a processor's readers never runs: cycles ignore every reader.
    SkipReaderScan = 0, "skip-reader-scan", Logic;
    /// Retirement is stamped with the processor's lagging local epoch instead of the global epoch.
    LocalEpochStamp = 1, "local-epoch-stamp", Logic;
    /// AddStart makes the new processor's slot ready and participating at once, so cycles send it
    /// messages before AddComplete (S3).
    RouteBeforeComplete = 2, "route-before-complete", Logic;
    /// A cycle skips participants that joined since the last snapshot, as if their unknown epoch did
    /// not matter (S5).
    ReleaseWhileJoining = 3, "release-while-joining", Logic;
    /// A processor that leaves during its visit unlinks itself from the ring of the cycle in flight,
    /// so the traversal ends early and skips the members after it.
    ChangeRingInFlight = 4, "change-ring-in-flight", Logic;
    /// AddComplete (on the notification thread) activates the new processor's slot instead of leaving
    /// that to the processor's own first epoch use, so idle processors are visited (S4).
    ActivateRemote = 5, "activate-remote", Logic;
    /// Core spin locks are taken at the caller's IRQL instead of raising to DISPATCH: a DPC on the
    /// holder's processor spins on the lock forever (S9, bugcheck 0x133).
    LockWithoutRaise = 6, "lock-without-raise", Logic;
    /// Exits on the entering processor are not recorded: the participant holds its epoch forever and
    /// reclamation stops (L1/L2).
    LostExit = 7, "lost-exit", Logic;
    /// A cycle that ends while another was requested starts it by recursion instead of iteration: a
    /// flush storm grows the DPC's stack without bound (L3).
    RecursiveChaining = 8, "recursive-chaining", Logic;
    /// Unload disposes of retired items once, before work items ran: what a work callback or a
    /// destructor retires during unload leaks (S8).
    UnloadDrainOnce = 9, "unload-drain-once", Logic;
    /// `join` drops the fence after loading the global epoch: the reader's pointer loads may see an
    /// object unlinked before the epoch it entered, and a cycle may miss the joining participant.
    JoinNoFence = 10, "join-no-fence", Ordering;
    /// The cycle drops the fence between publishing its epoch and reading `participating`.
    CycleNoFence = 11, "cycle-no-fence", Ordering;
    /// The cycle snapshots the ring before publishing its epoch (the two steps swapped).
    CycleSnapshotFirst = 12, "cycle-snapshot-before-publish", Ordering;
    /// The retirement stamp is read without the fence that orders it after the unlink.
    StampNoFence = 13, "stamp-no-fence", Ordering;
    /// An overflow reader that finds the overflow participating reads the global epoch without the
    /// fence that orders its later pointer loads.
    OverflowEnterNoFence = 14, "overflow-enter-no-fence", Ordering;
    /// A migrated reader's exit is a relaxed add: the visit that counts it does not synchronise with
    /// the reader's loads before it frees what they read.
    RemoteExitRelaxed = 15, "remote-exit-relaxed", Ordering;
    /// A cycle start does not re-check `shutting_down` after it owns `in_flight`: it can start after
    /// unload saw no cycle in flight.
    StartWithoutShutdownRecheck = 16, "start-without-shutdown-recheck", Ordering;
    /// A finished work item decrements the outstanding count and then signals the domain's event
    /// whether or not unload waits: unload can see zero and free the domain under the signal.
    WorkSignalAfterCount = 17, "work-signal-after-count", Ordering;
    /// Unload flushes messages without first waiting for the in-flight cycle, whose visits then keep
    /// sending messages to slots being freed.
    UnloadSkipCycleWait = 18, "unload-skip-cycle-wait", Ordering;
    /// The safe [`Atomic`](crate::Atomic) publishes a value without the Release half of its
    /// read-modify-write: a reader that loads the pointer may not see the value initialised.
    PublishWithoutRelease = 19, "publish-without-release", Ordering;
    /// `schedule_work` and `cancel_work` accept a work item of another domain: the scheduling domain
    /// counts and queues it, its trampoline accounts to (and may outlive) the domain that made it.
    ForeignWorkItem = 20, "foreign-work-item", Logic;
    /// A work item cancelled and scheduled again runs when its old entry is released, with the first
    /// schedule's stamp: it does not wait for readers that entered between the two schedules.
    RescheduleKeepsStamp = 21, "reschedule-keeps-stamp", Logic;
    /// A retirement, flush or `synchronize` does not restart the cycle timer that stopped when the
    /// domain was idle: what is retired then waits for a flush that may never come.
    TimerNeverRestarts = 22, "timer-never-restarts", Logic;
    /// The timer's idle check drops fence FT between storing `timer_idle` and reading who
    /// participates: it can miss a retirement's join while the retirement misses the flag, and stop
    /// the timer under a pending item.
    IdleCheckNoFence = 23, "idle-check-no-fence", Ordering;
    /// A processor between AddStart and AddComplete that runs epoch code gets a routable slot from the
    /// lazy path (as if its add had completed): cycles message it before AddComplete (S3), and after an
    /// AddFailure wait forever for a processor that never came up.
    PrepareInAddWindow = 24, "prepare-in-add-window", Logic;
    /// AddStart returns an error when the new processor's preparation fails, vetoing the hot-add of a
    /// processor the lazy path could serve (S7: kepoch never vetoes).
    VetoOnPrepareFailure = 25, "veto-on-prepare-failure", Logic;
    /// The safe layer's failed compare-exchange reads the value it hands back with Relaxed instead of
    /// Acquire: the caller may read a value whose initialisation it does not see.
    FailedCasRelaxed = 26, "failed-cas-relaxed", Ordering;
    /// The slot table files every processor under group 0 by its number alone: processors of
    /// different groups with the same number share one slot, and each writes the other's reader
    /// table with plain stores (S1).
    TableIgnoresGroup = 27, "table-ignores-group", Logic;
    /// A cycle start does not look at `shutting_down` (neither before nor after owning
    /// `in_flight`): a flush or `synchronize` from a work item during unload starts a cycle whose
    /// messages are still queued, and whose visits still run, while unload releases and frees the
    /// slots (S8).
    StartIgnoresUnload = 32, "start-ignores-unload", Logic;
    /// A chain's unlink swings the predecessor's link before it marks the node (and marks it only
    /// if that succeeded): an insertion after the node can still succeed once it is unlinked, and
    /// the inserted node is lost; a failed unlink leaves the node unmarked.
    UnlinkBeforeMark = 28, "unlink-before-mark", Logic;
    /// The map's replace unlinks the old entry before linking the new one: a reader looking the key
    /// up in between finds nothing, although the key was never absent.
    MapReplaceUnlinksFirst = 29, "map-replace-unlinks-first", Logic;
    /// `callback_barrier` skips its grace periods: a callback still waiting in a retired list is
    /// not counted yet, and the barrier returns before it ran.
    BarrierWithoutGracePeriod = 30, "barrier-without-grace-period", Logic;
    /// A polled grace period reads as elapsed once its epoch is released, before the cycle that
    /// disposes of what was retired before it has run.
    PollOnReleasedEpoch = 31, "poll-on-released-epoch", Logic;
    /// A callback barrier that finds a barrier round in progress waits for that round only: the
    /// callbacks queued since the round started, its own among them, are not covered, and it
    /// returns before they ran.
    BarrierJoinsRoundInProgress = 33, "barrier-joins-round-in-progress", Logic;
    /// Queueing a work item counts it in the phase it read without checking that no barrier
    /// round started meanwhile: the round can complete without it, and the next round drains the
    /// other phase.
    QueuePhaseNoRecheck = 34, "queue-phase-no-recheck", Logic;
    /// `finish_cycle` publishes `freed_through` as the released epoch the cycle started from even
    /// when a visit left released items at its `max_frees_per_visit` bound or its time budget: a
    /// grace period reads as
    /// elapsed, and `synchronize` and the barrier return, before those items were disposed of.
    FreedThroughIgnoresLeftovers = 35, "freed-through-ignores-leftovers", Logic;
}

impl Mutation {
    /// The mutation with this command-line name.
    pub fn from_name(name: &str) -> Option<Mutation> {
        Mutation::ALL.iter().copied().find(|m| m.name() == name)
    }
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of mutations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations(u64);

impl Mutations {
    /// No mutation: the correct protocol.
    pub const NONE: Mutations = Mutations(0);

    /// This set plus `mutation`.
    pub fn with(self, mutation: Mutation) -> Mutations {
        Mutations(self.0 | mutation as u64)
    }

    /// Whether `mutation` is in effect: in the set and compiled in.
    #[inline(always)]
    pub fn active(self, mutation: Mutation) -> bool {
        cfg!(feature = "mutations") && self.0 & mutation as u64 != 0
    }
}
