//! kepoch-nt on the emulated NT kernel (crate `kepoch-ntemu`): domains with the embedding driver's
//! settings (pool tag, driver- or device-object work items, DPC-delivery probe), two domains at once,
//! the registry configuration, hot-add, and the debug checks of guards per thread (a wait inside an
//! epoch is a bug check naming the thread). The emulation fails a test on any IRQL rule broken, pool
//! leak or tag mismatch, late DPC or work item, and anything of the driver left after unload.
#![cfg(all(not(target_os = "windows"), target_pointer_width = "64"))]

mod common;
mod domains;
mod guards;
mod hotplug;
mod registry;
