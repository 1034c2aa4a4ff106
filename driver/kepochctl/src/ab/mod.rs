//! `kepochctl ab`: the guest A/B of the activation strategies (host-testable; the Windows calls sit
//! behind [`system::GuestSystem`]).
//!
//! [`args`] holds the options and the round plan, [`service`] the bounded service restart,
//! [`restore`] what was found and putting it back, [`record`] the guest documents, [`output`] the
//! whole-file writes and [`mod@run`] the loop.

pub mod args;
pub mod output;
pub mod record;
pub mod restore;
pub mod run;
pub mod service;
pub mod system;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use args::AbArgs;
#[cfg_attr(not(windows), allow(unused_imports))]
pub use run::{run, AbError, PARAMETERS_KEY};
