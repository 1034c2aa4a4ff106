//! kepoch: per-CPU epoch-based memory reclamation for Windows kernel drivers.
//!
//! Readers [`enter`](Domain::enter) an epoch; writers unlink an object and retire it; a reclamation
//! cycle visits the participating processors with pinned per-CPU messages (DPCs), finds the oldest
//! epoch still in use and frees what was retired before it. Processors join the cycle when they
//! first run epoch code and leave when idle, so processors that were never used (or were hot-added,
//! or that the firmware misreports) cost nothing and never block reclamation.
//!
//! # Example
//!
//! Enter, read, swap, retire, synchronize, with the safe pointer types of [`atomic`]:
//!
//! ```
//! use kepoch::{Atomic, Config, Domain, Owned, Stats, Strategy};
//! use kepoch_user::UserPlatform;
//!
//! /// What readers look up. Replaced as a whole, never changed in place.
//! #[derive(Debug)]
//! struct Route {
//!     gateway: u32,
//! }
//!
//! // A domain on a platform (see "Platforms": a driver passes the NT platform; this runs on the
//! // threads of this process). At PASSIVE_LEVEL.
//! let domain = Domain::create(UserPlatform::new(), Config::with_strategy(Strategy::Callback))
//!     .expect("load");
//! let route = Atomic::new(Owned::new(&domain, Route { gateway: 1 }).expect("memory"));
//!
//! // Enter and read: what `load` returns is valid until the guard drops, on any processor.
//! let guard = domain.enter();
//! let seen = route.load(&guard).expect("published");
//! assert_eq!(seen.gateway, 1);
//!
//! // Swap in a new value (any processor may, while readers are inside) and retire the old one:
//! // it is freed once every reader that could still see it has exited.
//! let old = route.swap(Owned::new(&domain, Route { gateway: 2 }).expect("memory"));
//! old.expect("was published").retire();
//! domain.flush(); // a cycle now (the timer runs one every millisecond anyway)
//! assert_eq!(seen.gateway, 1, "no cycle can free what a reader inside holds");
//! // Statistics are written in place: a `Stats` is about 40 KB, larger than a kernel stack, so
//! // a driver keeps one in its device extension (here a box stands in for it).
//! let mut stats = Box::new(Stats::default());
//! domain.stats_into(&mut stats);
//! assert_eq!(stats.pending, 1);
//! drop(guard);
//!
//! // Synchronize (PASSIVE, outside any epoch): everything retired before the call is freed.
//! domain.synchronize();
//! domain.stats_into(&mut stats);
//! assert_eq!(stats.pending, 0);
//! assert_eq!(route.load(&domain.enter()).map(|r| r.gateway), Some(2));
//! ```
//!
//! Dropping `route` frees the value it holds; dropping the [`DomainBox`] unloads the domain
//! (`PROTOCOL.md`, S8): it stops the cycles, waits for work items and frees everything still retired.
//!
//! # Platforms
//!
//! The core reaches its host only through [`platform::Platform`]; a domain is created the same way
//! on each:
//!
//! | where | crate | platform |
//! |---|---|---|
//! | a Windows kernel driver (WDM or KMDF) | `kepoch-nt` | the NT platform: per-processor DPCs, a kernel timer, work items, processor-change notifications; the driver creates its domains in `DriverEntry` and drops them at unload |
//! | unit tests of your data structures, user-mode programs | `kepoch-user` | `kepoch_user::UserPlatform`: each thread is a virtual processor (registered on first use), cycles run on a timer thread, `synchronize` sleeps on a real event; misuse (more threads than processors, `synchronize` inside an epoch, a wait at DISPATCH_LEVEL) is reported, never a hang |
//!
//! The example above, `examples/threads.rs` (`cargo run --release -p kepoch --example threads`:
//! four readers and a writer for two seconds) and every example in this documentation run on
//! `kepoch-user`, which a driver's crate adds as a dev-dependency for its tests.
//!
//! # Strategies
//!
//! Selected at load by [`Config::strategy`] (the driver reads the registry value
//! `ActivationStrategy`, see [`select_config`]). They differ in when and where a processor's
//! per-CPU state (its slot: reader table, retired list, DPC) is prepared:
//!
//! | registry value | [`Strategy`] | a processor's slot is prepared | notes |
//! |---|---|---|---|
//! | 0 | [`Lazy`](Strategy::Lazy) | on its first epoch use, at DISPATCH_LEVEL, on that processor, once its AddComplete was seen (it registers for the notifications too; before that it uses the overflow slot) | memory O(processors ever used); the first enter pays the preparation |
//! | 1 | [`Callback`](Strategy::Callback) (default) | in processor-change notifications at PASSIVE: every existing processor at registration, a hot-added one at AddStart, ready at AddComplete | falls back to lazy when the API is missing, registration fails or a preparation fails |
//! | 2 | [`Eager`](Strategy::Eager) | for every index below the reported maximum, at load | the original design, kept to reproduce its failure: refuses to load where max > active |
//!
//! With `lazy` and `callback`, processors take part in cycles only while they have readers or
//! retired objects ([`Config::idle_deactivation`]); `eager` keeps every processor in every cycle.
//!
//! # Layers
//!
//! - [`atomic`]: [`Atomic`], [`Owned`], [`Shared`], [`Unlinked`] — the safe layer; its module
//!   documentation gives the argument for why its safe path is sound; [`atomic::chain`] links
//!   nodes of one domain to each other ([`Chain`](atomic::Chain), [`Node`](atomic::Node)).
//! - [`list::List`] (an RCU list) and [`map::Map`] (a fixed-bucket hash map): read under a guard
//!   without locks, written under their own spin locks.
//! - [`Domain`]: [`enter`](Domain::enter) / [`Guard`], [`synchronize`](Domain::synchronize),
//!   [`flush`](Domain::flush), polled grace periods ([`Domain::grace_period`]), typed work items
//!   ([`Domain::work_item`]) and the [`callback_barrier`](Domain::callback_barrier),
//!   [`stats_into`](Domain::stats_into), [`inside_epoch_here`](Domain::inside_epoch_here); and
//!   the raw layer under the safe one: [`Domain::alloc`], the `unsafe` [`Domain::retire`],
//!   [`Domain::enter_raw`] for callers that cannot hold a borrow.
//! - [`platform::Platform`]: everything the core needs from its host (the NT kernel, threads of a
//!   user-mode process, a simulated machine). The crate is `no_std` and needs no global allocator: all memory comes from
//!   [`Platform::allocate`](platform::Platform::allocate).
//!
//! The protocol and the argument for why it is safe are in `PROTOCOL.md` next to this crate.
#![no_std]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod atomic;
pub mod config;
mod deferred;
pub mod domain;
pub mod guard;
pub mod list;
pub mod map;
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

pub use atomic::{Atomic, CompareExchangeError, Owned, Shared, Unlinked};
pub use config::{select_config, Config, Strategy};
pub use domain::{
    AllocError, CacheAligned, Domain, DomainBox, GracePeriod, Holdback, Holder, LoadError,
    LoadFailure, RetireError, WorkItem, WorkState,
};
pub use guard::{Guard, RawGuard};
pub use mutation::{Mutation, MutationKind, Mutations};
pub use readers::READER_ENTRIES;
pub use stats::{CallbackState, Stats, STATS_VERSION};
