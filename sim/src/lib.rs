//! `kepoch-sim` library: the simulated machine, the torture and the A/B lab.
#![deny(missing_docs)]

pub mod bench;
pub mod lab;
pub mod machine;
pub mod objects;
pub mod torture;
