//! `kepoch-nt`: [kepoch] in your Windows kernel driver — the NT
//! [`Platform`](kepoch::platform::Platform) that hosts kepoch domains, with the bindings, registry
//! configuration, passive lock and logging a driver needs around it. `no_std`, for any Rust WDM or
//! KMDF driver.
//!
//! | module | what |
//! |---|---|
//! | [`platform`] | [`NtPlatform`]: one per domain, with the driver's [`Settings`] (pool tag, work-item owner, DPC-delivery probe); in debug builds the checks of guards per thread (`platform::guards`) |
//! | [`sys`] | the bindings facade: Microsoft's `windows-sys` plus the declarations it gets wrong for a driver; IRQL on CR8 |
//! | [`routines`] | the routines resolved at run time, never imported ([`OptionalRoutines`]) |
//! | [`registry`] | a key's values under the service key → [`Config`](kepoch::config::Config), with warnings |
//! | [`pool`] | tagged non-paged pool ([`PoolTag`], [`Pool`]) |
//! | [`lock`] | [`PassiveLock`] |
//! | [`log`] | `DbgPrintEx` lines ([`log_line`]) |
//! | [`mod@panic`] | what a `#[panic_handler]` calls ([`bug_check_on_panic`]) |
//!
//! # A minimal driver
//!
//! DriverEntry creates a domain (its own pool tag, work items of the driver object, no device), a
//! reader looks up the published value at DISPATCH_LEVEL, a writer swaps in a new one and retires the
//! old, and unload drops the domain (which waits for its DPCs and work items and frees everything
//! retired). The whole driver is `examples/minimal_driver/`: `cargo build --release -p kepoch-nt
//! --target x86_64-pc-windows-msvc --example minimal_driver` writes `minimal_driver.sys` (imports from
//! ntoskrnl.exe and hal.dll only), and `nt/tests/example_driver.rs` runs it on the emulated kernel of
//! `kepoch-ntemu`.
//!
//! `driver.rs` of the example, as compiled and tested (`main.rs` adds the `DriverEntry` symbol and the
//! panic handler, which calls [`bug_check_on_panic`]):
//!
#![doc = concat!("```ignore\n", include_str!("../examples/minimal_driver/driver.rs"), "```\n")]
//!
//! Several domains in one driver each have their own platform and share nothing but the kernel.
//!
//! # Minimum Windows version
//!
//! x64, **Windows 8 / Server 2012**: the processor-group routines (`KeQueryMaximumProcessorCountEx`,
//! `KeGetCurrentProcessorNumberEx`, `KeSetTargetProcessorDpcEx`, …) need Windows 7, the work items
//! (`IoSizeofWorkItem`, `IoInitializeWorkItem`, `IoQueueWorkItemEx`) Vista, and the fallback pool
//! type `NonPagedPoolNx` Windows 8. Resolved at run time and never imported (see [`routines`]):
//!
//! | routine | from | without it |
//! |---|---|---|
//! | `KeRegisterProcessorChangeCallback`, `KeDeregisterProcessorChangeCallback` | Windows 7 | no processor-change notifications: `callback` works as `lazy` |
//! | `ExAllocatePool2` | Windows 10 2004 | `ExAllocatePoolWithTag(NonPagedPoolNx)` |
//! | `KeGetProcessorNumberFromIndex` | Windows 7 | `eager` refuses to load (`STATUS_NOT_SUPPORTED`) |
//!
//! # Debug checks
//!
//! Builds with debug assertions (and every build for the emulated kernel) count the guards each
//! thread holds per domain (`platform::guards`: a fixed table keyed by `PsGetCurrentThreadId`, one
//! pool block allocated with the platform, nothing allocated after that). A thread that calls `synchronize`, `wait_for_grace_period` or `callback_barrier`
//! while it holds a guard of the same domain would wait for itself forever; instead kepoch-nt logs
//! `kepoch: thread 0x… waits for a grace period inside an epoch: it holds N guard(s) …` and bug checks
//! with `MANUALLY_INITIATED_CRASH` (0xE2; parameters: thread id, guards, the platform's address, the
//! marker `WAIT_INSIDE_EPOCH`). Threads that still hold guards when the domain drops are logged by
//! thread. Only guards entered below DISPATCH_LEVEL count, and a report needs the thread's own count,
//! so a report is never false as long as every guard and raw token is exited on the thread that
//! entered it; a driver that exits raw tokens on other threads calls
//! [`NtPlatform::disable_guard_checks`]. Release builds for Windows have none of it (the core's empty
//! hooks; `PsGetCurrentThreadId` is not imported).
//!
//! # Testing a driver on Linux
//!
//! On hosts other than Windows the bindings are the same declarations without the `raw-dylib` link;
//! a test that links `kepoch-ntemu` (a dev-dependency) resolves them to its emulated kernel, which
//! checks IRQL rules, pool leaks and tags, late DPCs and work items like Driver Verifier, and
//! records the bug check of a wait inside an epoch as a failure the test can inspect. Data
//! structures alone are tested on `kepoch-user`'s user-mode platform.
#![no_std]

pub mod lock;
pub mod log;
pub mod panic;
pub mod platform;
pub mod pool;
pub mod registry;
pub mod routines;
pub mod sys;
pub mod wide;

pub use lock::PassiveLock;
pub use log::log_line;
pub use panic::bug_check_on_panic;
pub use platform::{
    delay_passive, performance_counter, DpcDelivery, NtPlatform, Settings, WorkItemOwner,
};
pub use pool::{Pool, PoolTag};
pub use registry::{read_config, RegistryConfig};
pub use routines::OptionalRoutines;

pub use kepoch;

// The unit tests link the emulated kernel, which resolves the routines the bindings declare.
#[cfg(all(test, not(target_os = "windows"), target_pointer_width = "64"))]
use kepoch_ntemu as _;
