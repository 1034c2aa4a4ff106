//! The model machine shared by the loom models (`tests/loom.rs`) and the shuttle torture
//! (`tests/shuttle.rs`): a [`Platform`] whose processors are model threads, so that the checker
//! schedules (and, for loom, weakens) every shared access of the core.
//!
//! What the machine gives the scenarios:
//! - processors `0..CPUS` with DISPATCH exclusion (a per-processor flag that raising takes), a
//!   thread-local current processor and IRQL, and hot-add slots that run only after AddStart; in
//!   one group, or `group_size` per group (CPU `i` is (`i / group_size`, `i % group_size`));
//! - per-CPU messages queued and run at DISPATCH on their processor by whichever model thread
//!   delivers them (a waiter, a cycle driver or a dedicated "DPC" thread); `flush_messages` waits
//!   only for what was queued or running when it was called, as `KeFlushQueuedDpcs` does;
//! - the periodic timer (fired by waiters: time passes while they wait), events, passive work items
//!   (run by waiters, or each on a worker thread of its own), processor-change notifications;
//! - allocation that fails on demand on a chosen processor (so the overflow slot is used);
//! - checks on every path: S1 (an object's payload sits in a model `UnsafeCell` that readers read
//!   and the destructor writes: loom reports an access not ordered by happens-before, and a reader
//!   that reads the destroyed value panics), S3 (no message to a processor that does not run), S4
//!   (no message to a processor that never ran epoch code), S8 (nothing leaked at unload), S9 (IRQL
//!   rules and spin locks at DISPATCH), S1 again where the core uses a slot as its owner's (the
//!   caller must run on the slot's processor), and **use after free of the platform's own objects**: freed
//!   memory is kept until the machine is dropped and every later platform access to an object inside
//!   a freed block (an event, a message, a work item, the timer) panics with "use after free".
//!
//! Directed races and the checkers' search. loom's partial-order reduction only reorders steps
//! that touch the same loom object: a payload cell access is no scheduling point, and the
//! machine's std bookkeeping (freed blocks, routing checks) is invisible to it, so a race whose
//! harm shows only there (a destructor's write against a reader's late read, a free against a
//! late signal) needs preemptions in the middle of long paths that a bound of 2 rarely spends
//! there. Two means bring such races within reach without adding a happens-before edge: a
//! scenario orders its threads' steps with [`Gate`]s (std flags), and the machine yields where a
//! real thread may be delayed (a worker thread just started, a signaller about to signal), so
//! that the switch costs no preemption.

//!
//! Files: `machine.rs` (the machine's state, its processors, queues and memory, and what the
//! scenarios drive directly), `platform.rs` (its [`Platform`](kepoch::platform::Platform)
//! implementation with the checks), `world.rs` (a domain on a machine, the checked objects,
//! readers and writers), `scenarios.rs`, `api.rs`, `linked.rs` and `barrier.rs` (the directed scenarios), `rt.rs` (loom or
//! shuttle behind one set of names).

pub mod api;
pub mod barrier;
pub mod linked;
mod machine;
mod platform;
pub mod rt;
pub mod scenarios;
mod world;

pub use machine::{on_cpu, ModelPlatform};
pub use world::{check_unloaded, retire_fresh_object, Gate, Object, World};

/// Processors of the model machine (the reported maximum).
pub const CPUS: usize = 3;
