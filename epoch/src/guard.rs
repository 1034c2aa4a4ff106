//! Epoch guards: proof that the holder is inside an epoch.

use crate::domain::Domain;
use crate::participant::Participant;
use crate::platform::Platform;
use crate::readers::EntryIndex;

/// Token of one epoch entry: which participant recorded the reader, in which entry, and the
/// system-wide index of the processor whose slot that is (so that an exit there needs no lookup).
/// Exiting on another processor than the one it entered on is allowed (migrated readers).
#[derive(Debug)]
pub struct RawGuard {
    pub(crate) participant: *const Participant,
    /// `home << 8 | entry`: two full words make the token cheap to copy (no partial-width store that
    /// a later full-width load would have to wait for).
    tag: u64,
}

/// `home` of a token of the overflow slot: no processor's index (indexes are `u32`).
const OVERFLOW_HOME: u64 = u64::MAX >> 8;

impl RawGuard {
    /// A token of `entry` in `participant`, the slot of processor `home` (`None`: the overflow slot).
    #[inline(always)]
    pub(crate) fn new(
        participant: *const Participant,
        home: Option<u32>,
        entry: EntryIndex,
    ) -> Self {
        let home = home.map_or(OVERFLOW_HOME, u64::from);
        RawGuard {
            participant,
            tag: home << 8 | u64::from(entry),
        }
    }

    /// Whether the token's slot is the one of the processor with this system-wide index.
    #[inline(always)]
    pub(crate) fn is_home(&self, index: u32) -> bool {
        self.tag >> 8 == u64::from(index)
    }

    /// Whether the token is of the overflow slot.
    #[inline(always)]
    pub(crate) fn is_overflow(&self) -> bool {
        self.tag >> 8 == OVERFLOW_HOME
    }

    /// The reader-table entry.
    #[inline(always)]
    pub(crate) fn entry(&self) -> EntryIndex {
        self.tag as EntryIndex
    }

    /// The token as two machine words, for callers that keep it in a C structure (the C API's epoch
    /// state). [`RawGuard::from_words`] turns them back into the token.
    #[inline(always)]
    pub fn into_words(self) -> [usize; 2] {
        [self.participant as usize, self.tag as usize]
    }

    /// The token [`RawGuard::into_words`] gave these words for.
    ///
    /// # Safety
    /// `words` came from `into_words` of a token that was not exited yet, and are turned back into
    /// a token once.
    #[inline(always)]
    pub unsafe fn from_words(words: [usize; 2]) -> RawGuard {
        RawGuard {
            participant: words[0] as *const Participant,
            tag: words[1] as u64,
        }
    }
}

// SAFETY: the token names a participant of a domain that outlives it; exiting from any thread is part
// of the protocol (remote exits use an atomic counter).
unsafe impl Send for RawGuard {}

/// Inside an epoch until dropped. Moving a guard to another thread is a migration, which the exit
/// handles.
pub struct Guard<'d, P: Platform> {
    domain: &'d Domain<P>,
    token: RawGuard,
}

impl<'d, P: Platform> Guard<'d, P> {
    pub(crate) fn new(domain: &'d Domain<P>, token: RawGuard) -> Self {
        Guard { domain, token }
    }

    /// The domain this guard belongs to.
    pub fn domain(&self) -> &'d Domain<P> {
        self.domain
    }
}

impl<P: Platform> Drop for Guard<'_, P> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the token came from this domain's `enter_raw` and is exited once, here.
        unsafe { self.domain.exit_token(&self.token) };
    }
}
