//! `kepoch-ntemu`: an emulated NT kernel in user mode, so that a Windows kernel driver's own code runs
//! in `cargo test` on Linux (the role microsoft/usersim plays for eBPF for Windows).
//!
//! The crate exports the kernel routines a driver imports from `ntoskrnl.exe` and `hal.dll` under
//! their own names (`#[no_mangle]`, windows-sys's signatures, checked at compile time below): a
//! driver crate that declares them as plain `extern "system"` functions on hosts other than Windows
//! (windows-sys does exactly that there) links against this crate in its tests, the way it links
//! against ntoskrnl.exe on Windows. The routines a driver resolves at run time
//! (`KeRegisterProcessorChangeCallback`, `KeDeregisterProcessorChangeCallback`, `ExAllocatePool2`,
//! `KeGetProcessorNumberFromIndex`) are reachable only through `MmGetSystemRoutineAddress`, so an
//! accidental import of one of them fails the host link as it would fail the load on an old kernel.
//! On x64 the WDK inlines `KeGetCurrentIrql`/`KfRaiseIrql`/`KeLowerIrql` on CR8; a driver built for
//! the emulation calls them as routines instead (`irql.rs`), and `DbgPrintEx` takes exactly one
//! `"%s"` argument (a C variadic function cannot be defined on stable Rust).
//!
//! A test starts a [`Machine`], calls [`Machine::load`] with the driver's `DriverEntry`, drives it with
//! IRPs through the returned [`Driver`] (or calls its code on the machine's threads with
//! [`Machine::call`]), hot-adds processors, unloads it and calls [`Machine::finish`].
//!
//! The emulated machine ([`Machine`]) has processors in groups with sparse numbers and a maximum above
//! the active count. Every active processor is an OS thread that runs the DPCs queued to it at
//! DISPATCH_LEVEL; a thread at DISPATCH owns its processor, so DPCs and other DISPATCH code on the same
//! processor are excluded from it, as on NT. IRQL is per thread. A DPC preempts the code below DISPATCH
//! on its processor (`preempt`: it waits for that code's next kernel call, and the thread waits for it),
//! and threads below DISPATCH migrate between the processors of their affinity at any kernel call
//! (seeded). Driver calls are held to 24 KiB kernel and DPC stacks (`stack`); the METHOD_BUFFERED
//! system buffer is poison, not zeros (`system_buffer`). Timers, events, system threads, work items,
//! pool, handles, the registry, devices and IRPs, the current thread's id (`PsGetCurrentThreadId`; in
//! a DPC, as on NT, the thread the DPC interrupted, or 0 for the idle thread), and the processor-change
//! callback with
//! `KE_PROCESSOR_CHANGE_ADD_EXISTING` replay and live hot-add (AddStart, the processor running for a
//! window, then AddComplete or AddFailure, also after it ran code) are emulated with their documented
//! semantics.
//!
//! Checks, recorded as failures of the machine (reported by [`Machine::finish`] and by every call that
//! runs driver code): each routine's documented IRQL (as Driver Verifier does), objects used before
//! initialisation or inside freed memory, pool leaks and tags, writes to freed (poisoned, quarantined)
//! pool, DPCs queued to processors whose AddComplete has not been delivered, kernel objects still
//! queued, armed or waited on when the memory holding them is freed, handles and registrations left
//! open, driver code running after the image was unloaded, a DPC running past the watchdog, a driver
//! call deeper than its kernel stack, and IOCTL output reported but never written. Every wait has a
//! deadline: a wait that exceeds it fails the machine with a description of what was waited for.
//!
//! One machine runs at a time per process (a driver has statics, as a kernel image does). The crate
//! is empty on Windows targets, where the real kernel exports these names.
#![cfg(not(target_os = "windows"))]
#![allow(non_snake_case)]
// The modules name what they take from std (they were written inside a `no_std` driver crate).
#![no_std]

extern crate std;

mod callbacks;
mod config;
mod debug;
mod dpc;
mod handles;
mod io;
mod irql;
mod kernel;
mod loaded;
mod machine;
pub mod nt;
mod pool;
mod preempt;
mod processor;
mod registry;
mod security;
mod stack;
mod sync;
mod system_buffer;
mod thread;
mod timer;
mod work;

#[cfg(test)]
mod blind_spot_tests;
#[cfg(test)]
mod preemption_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod work_tests;

pub use config::{GroupConfig, MachineConfig, RegistryData, SERVICES_KEY};
pub use io::IoctlResult;
pub use loaded::Driver;
pub use machine::{DriverEntry, Machine, ProcessorReport};
pub use pool::PoolReport;
pub use security::DeviceSecurity;
pub use stack::{StackReport, KERNEL_STACK_SIZE, STACK_LIMIT};

/// The exported routines (what a driver links against).
pub mod routines {
    pub use super::debug::{DbgPrintEx, KeBugCheckEx, MmGetSystemRoutineAddress};
    pub use super::dpc::{
        KeFlushQueuedDpcs, KeInitializeDpc, KeInsertQueueDpc, KeSetImportanceDpc,
        KeSetTargetProcessorDpcEx,
    };
    pub use super::handles::ZwClose;
    pub use super::io::{
        IoCreateDevice, IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink,
        IofCompleteRequest,
    };
    pub use super::irql::{KeGetCurrentIrql, KeLowerIrql, KfRaiseIrql};
    pub use super::pool::{ExAllocatePoolWithTag, ExFreePoolWithTag};
    pub use super::processor::{
        KeGetCurrentProcessorNumberEx, KeQueryActiveProcessorCountEx, KeQueryActiveProcessors,
        KeQueryMaximumProcessorCountEx, KeQueryPerformanceCounter,
    };
    pub use super::registry::{ZwOpenKey, ZwQueryValueKey};
    pub use super::security::{
        ObOpenObjectByPointer, RtlAddAccessAllowedAce, RtlCreateAcl, RtlCreateSecurityDescriptor,
        RtlSetDaclSecurityDescriptor, ZwSetSecurityObject,
    };
    pub use super::sync::{
        KeClearEvent, KeDelayExecutionThread, KeEnterCriticalRegion, KeInitializeEvent,
        KeLeaveCriticalRegion, KeSetEvent, KeWaitForSingleObject,
    };
    pub use super::thread::{
        KeRevertToUserAffinityThreadEx, KeSetSystemAffinityThreadEx, PsCreateSystemThread,
        PsGetCurrentThreadId, PsTerminateSystemThread, ZwWaitForSingleObject,
    };
    pub use super::timer::{KeCancelTimer, KeInitializeTimerEx, KeSetTimerEx};
    pub use super::work::{
        IoAllocateWorkItem, IoFreeWorkItem, IoInitializeWorkItem, IoQueueWorkItem,
        IoQueueWorkItemEx, IoSizeofWorkItem, IoUninitializeWorkItem,
    };

    /// Proves at compile time that each emulated routine has exactly the type of windows-sys's
    /// declaration (an array of the two function items only type-checks when their signatures are
    /// identical). The routines windows-sys links to ntdll.dll although ntoskrnl.exe exports them (a
    /// driver declares those itself, with windows-sys's signature) are compared with windows-sys's
    /// ntdll declarations. `DbgPrintEx` (C variadic, not definable on stable Rust) and `KeLowerIrql`
    /// (not in windows-sys: a macro over CR8 on x64) are the exceptions. Evaluated at compile time
    /// only: nothing references the windows-sys declarations.
    macro_rules! same_types {
        ($($module:path => [$($name:ident),* $(,)?];)*) => {
            $($(const _: () = {
                use $module as declared;
                let _ = [declared::$name, $name];
            };)*)*
        };
    }
    same_types! {
        windows_sys::Wdk::System::SystemServices => [
            ExAllocatePoolWithTag, ExFreePoolWithTag, IoAllocateWorkItem, IoCreateDevice,
            IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink, IoFreeWorkItem,
            IoInitializeWorkItem, IoQueueWorkItem, IoQueueWorkItemEx, IoSizeofWorkItem,
            IoUninitializeWorkItem, IofCompleteRequest, KeBugCheckEx, KeCancelTimer, KeClearEvent,
            KeDelayExecutionThread, KeEnterCriticalRegion, KeFlushQueuedDpcs, KeGetCurrentIrql,
            KeGetCurrentProcessorNumberEx, KeInitializeDpc, KeInitializeEvent, KeInitializeTimerEx,
            KeInsertQueueDpc, KeLeaveCriticalRegion, KeQueryActiveProcessorCountEx,
            KeQueryActiveProcessors, KeQueryMaximumProcessorCountEx, KeQueryPerformanceCounter,
            KeRevertToUserAffinityThreadEx, KeSetEvent, KeSetImportanceDpc,
            KeSetSystemAffinityThreadEx, KeSetTargetProcessorDpcEx, KeSetTimerEx,
            KeWaitForSingleObject, MmGetSystemRoutineAddress, PsCreateSystemThread,
            KfRaiseIrql, PsGetCurrentThreadId, PsTerminateSystemThread,
            // ntdll-linked in windows-sys: declared by the driver with the same signature.
            RtlCreateSecurityDescriptor, RtlSetDaclSecurityDescriptor, ZwClose,
        ];
        windows_sys::Wdk::Storage::FileSystem => [
            ObOpenObjectByPointer,
            // ntdll-linked in windows-sys, as above.
            RtlAddAccessAllowedAce, RtlCreateAcl, ZwSetSecurityObject,
        ];
        windows_sys::Wdk::System::Registry => [ZwOpenKey, ZwQueryValueKey];
        windows_sys::Wdk::System::Threading => [ZwWaitForSingleObject];
    }
}
