//! kepoch: per-CPU epoch-based memory reclamation for Windows kernel drivers.
//!
//! Readers [`enter`](Domain::enter) an epoch; writers unlink an object and
//! [`retire`](Domain::retire) it; a reclamation cycle visits the participating processors with pinned
//! per-CPU messages, finds the oldest epoch still in use and frees what was retired before it.
//! Processors join the cycle when they first run epoch code and leave when idle, so processors that
//! were never used (or were hot-added, or that the firmware misreports) cost nothing and never block
//! reclamation.
//!
//! The crate is `no_std` and allocation-free: everything it needs from its host — the NT kernel or a
//! simulated machine — goes through [`Platform`](platform::Platform).
#![no_std]

#[cfg(test)]
extern crate std;

pub mod config;
mod deferred;
pub mod domain;
pub mod guard;
pub mod mutation;
mod participant;
pub mod platform;
mod readers;
mod spin;
pub mod stats;
mod sync;
pub mod table;
#[cfg(all(test, not(loom)))]
mod tests;

pub use config::{select_config, Config, Strategy};
pub use domain::{
    Domain, DomainBox, Holdback, Holder, LoadError, LoadFailure, RetireError, WorkItem,
};
pub use guard::{Guard, RawGuard};
pub use mutation::{Mutation, MutationKind, Mutations};
pub use readers::READER_ENTRIES;
pub use stats::{CallbackState, Stats, STATS_VERSION};
