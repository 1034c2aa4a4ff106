//! Epoch guards: proof that the holder is inside an epoch.

use crate::domain::Domain;
use crate::participant::Participant;
use crate::platform::Platform;
use crate::readers::EntryIndex;

/// Token of one epoch entry: which participant recorded the reader and in which entry. Exiting on
/// another processor than the one it entered on is allowed (migrated readers).
#[derive(Debug)]
pub struct RawGuard {
    pub(crate) participant: *const Participant,
    pub(crate) entry: EntryIndex,
}

// SAFETY: the token names a participant of a domain that outlives it; exiting from any thread is part
// of the protocol (remote exits use an atomic counter).
unsafe impl Send for RawGuard {}

/// Inside an epoch until dropped. Moving a guard to another thread is a migration, which the exit
/// handles.
pub struct Guard<'d, P: Platform> {
    domain: &'d Domain<P>,
    token: Option<RawGuard>,
}

impl<'d, P: Platform> Guard<'d, P> {
    pub(crate) fn new(domain: &'d Domain<P>, token: RawGuard) -> Self {
        Guard {
            domain,
            token: Some(token),
        }
    }

    /// The domain this guard belongs to.
    pub fn domain(&self) -> &'d Domain<P> {
        self.domain
    }
}

impl<P: Platform> Drop for Guard<'_, P> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            // SAFETY: the token came from this domain's `enter_raw` and is exited once, here.
            unsafe { self.domain.exit_raw(token) };
        }
    }
}
