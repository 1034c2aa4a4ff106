//! `kepoch-sim` library: the simulated machine and (later) the A/B lab.

pub mod machine;
pub mod torture;
