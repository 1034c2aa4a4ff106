//! Known bug shapes that tests re-introduce on purpose, to prove the checks catch them.
//!
//! A domain honours the mutations in its [`Config`](crate::Config) only when the crate is built with
//! the `mutations` feature; otherwise every check below is a compile-time `false` and the code is gone.

use core::fmt;

/// One re-introduced bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Mutation {
    /// The loop over a processor's readers never runs: cycles ignore every reader.
    SkipReaderScan = 1 << 0,
    /// Retirement is stamped with the processor's lagging local epoch instead of the global epoch.
    LocalEpochStamp = 1 << 1,
    /// AddStart makes the new processor's slot ready and participating at once, so cycles send it
    /// messages before AddComplete (S3).
    RouteBeforeComplete = 1 << 2,
    /// A cycle skips participants that joined since the last snapshot, as if their unknown epoch did
    /// not matter (S5).
    ReleaseWhileJoining = 1 << 3,
    /// A processor that leaves during its visit unlinks itself from the ring of the cycle in flight,
    /// so the traversal ends early and skips the members after it.
    ChangeRingInFlight = 1 << 4,
    /// AddComplete (on the notification thread) activates the new processor's slot instead of leaving
    /// that to the processor's own first epoch use, so idle processors are visited (S4).
    ActivateRemote = 1 << 5,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 6] = [
        Mutation::SkipReaderScan,
        Mutation::LocalEpochStamp,
        Mutation::RouteBeforeComplete,
        Mutation::ReleaseWhileJoining,
        Mutation::ChangeRingInFlight,
        Mutation::ActivateRemote,
    ];

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::SkipReaderScan => "skip-reader-scan",
            Mutation::LocalEpochStamp => "local-epoch-stamp",
            Mutation::RouteBeforeComplete => "route-before-complete",
            Mutation::ReleaseWhileJoining => "release-while-joining",
            Mutation::ChangeRingInFlight => "change-ring-in-flight",
            Mutation::ActivateRemote => "activate-remote",
        }
    }

    /// The mutation with this command-line name.
    pub fn from_name(name: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of mutations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations(u32);

impl Mutations {
    /// No mutation: the correct protocol.
    pub const NONE: Mutations = Mutations(0);

    /// This set plus `mutation`.
    pub fn with(self, mutation: Mutation) -> Mutations {
        Mutations(self.0 | mutation as u32)
    }

    /// Whether `mutation` is in effect: in the set and compiled in.
    #[inline(always)]
    pub fn active(self, mutation: Mutation) -> bool {
        cfg!(feature = "mutations") && self.0 & mutation as u32 != 0
    }
}
