//! The driver's own NT code (`DriverEntry`, the IOCTL dispatch routine, the load generator, the
//! platform's DPCs, timer and processor-change callback, `DriverUnload`) run on the emulated kernel of
//! `kepoch_ntemu` (crate `ntemu/`): processors are threads, IRQL and DISPATCH exclusion are enforced, and
//! every documented IRQL rule, leak, use after free and late DPC fails the test.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

mod broken_ioctl;
mod common;
mod faults;
mod hotplug;
mod ioctl;
mod lifecycle;
mod registry;
