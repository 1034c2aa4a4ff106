//! The safe layer: an atomic shared pointer whose loads are bound to a guard, an owned box from the
//! domain's allocator, and a safe retirement of what was unlinked through the atomic.
//!
//! | type | what it is | how it ends |
//! |---|---|---|
//! | [`Owned`] | a value in a block from [`Domain::alloc`], not published yet; unique, mutable | published into an [`Atomic`], or freed at once when dropped |
//! | [`Atomic`] | the shared slot readers load from and writers replace; owns the value it holds | dropping it frees that value at once |
//! | [`Shared`] | what a reader loaded: a `&T` that cannot outlive the guard or the atomic | nothing to do (it is a borrow) |
//! | [`Unlinked`] | the value a writer took out of an atomic: unreachable for new readers, still readable | [`retire`](Unlinked::retire) or drop: freed once every reader that could see it has exited |
//!
//! # Why the safe path is sound
//!
//! The epoch protocol (`PROTOCOL.md`) frees a retired block only after every reader that entered
//! before its retirement has exited. The types hand out only what that rule covers:
//!
//! - **A reader's pointer lives no longer than its epoch.** [`Atomic::load`] takes `&'g Guard` and
//!   `&'g self` and returns `Shared<'g, T>`: the borrow checker ends every `&T` obtained through it
//!   before the guard exits and before the atomic can be dropped or mutated.
//! - **Only unreachable values are retired.** A value enters an atomic only as an [`Owned`] (never
//!   as a pointer copied from elsewhere), so it is reachable from exactly one atomic. It leaves only
//!   through [`swap`](Atomic::swap), [`take`](Atomic::take), [`store`](Atomic::store) or a successful
//!   [`compare_exchange`](Atomic::compare_exchange), each an atomic read-modify-write: loads ordered
//!   after it in the pointer's modification order can no longer return the value, and every reader
//!   that loaded it earlier entered its epoch before the retirement that follows. The value is
//!   handed back as an [`Unlinked`] — not `Clone`, the one token that can retire it — so it is
//!   retired exactly once, and never while still published.
//! - **Protection and allocation come from the same domain.** An atomic belongs to the domain it
//!   was created with; a guard, or an [`Owned`], of another domain is refused (a panic: a guard of
//!   another domain protects nothing here, and another domain's block would be freed with the
//!   wrong allocator). Everything derived from an atomic borrows it, and the atomic borrows its
//!   domain, so nothing outlives the domain. [`Anchored`] keeps atomics (or lists, maps) next to
//!   their [`DomainBox`](crate::DomainBox) in one value without `unsafe`; [`Atomic::null_detached`]
//!   is the `unsafe` alternative.
//! - **Dropping an atomic frees its value at once.** `Drop` has `&mut self`: no reader can hold a
//!   [`Shared`] of it any more (each borrows the atomic), and the value is in no retired list.
//! - **`Send`/`Sync`.** An atomic is `Sync` only for `T: Send + Sync`: readers on every processor
//!   share `&T`, and the destructor runs on whichever processor disposes of the value. Values that
//!   can be retired are `'static`, because their destructor may run after every borrow the program
//!   holds has ended (at the latest while the domain unloads).
//!
//! **Memory ordering.** A writer initialises the value before publishing it; the atomic publishes
//! with `Release` (the read-modify-writes are `AcqRel`) and [`Atomic::load`] reads with `Acquire`,
//! so a reader that sees the pointer sees the initialised value (mutation `publish-without-release`
//! drops the release half; the loom model `api_reader_sees_the_published_value` catches it). The
//! taking side's `Acquire` lets the writer read the value it unlinked. The unlink itself needs no
//! stronger ordering: the retirement after it executes the full fence the protocol's argument
//! relies on (`retire_stamp`, fence FW).
//!
//! **Guards and IRQL.** Nothing here depends on the processor a guard was entered on: a guard at
//! PASSIVE may migrate, and its [`Shared`] pointers stay valid until it exits; at DISPATCH the
//! cycle's visit on the reader's processor cannot run at all. Every call may be made at PASSIVE or
//! DISPATCH (an allocation at DISPATCH must be non-paged, as the platform's is). A retired value's
//! destructor runs at DISPATCH in a cycle on some processor (or in unload's drain): it must not
//! block, and may retire more.

//!
//! # What the compiler refuses
//!
//! A value read under a guard, used after the guard exited:
//!
//! ```compile_fail,E0597
//! # use kepoch::{Atomic, Config, Domain, Owned};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let atomic = Atomic::new(Owned::new(&domain, 1u32).unwrap());
//! let value = {
//!     let guard = domain.enter();
//!     atomic.load(&guard).unwrap().get()
//! }; // the guard exits here
//! assert_eq!(*value, 1);
//! ```
//!
//! An atomic dropped (which frees its value) while a reader holds that value:
//!
//! ```compile_fail,E0505
//! # use kepoch::{Atomic, Config, Domain, Owned};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let atomic = Atomic::new(Owned::new(&domain, 1u32).unwrap());
//! let guard = domain.enter();
//! let value = atomic.load(&guard).unwrap();
//! drop(atomic);
//! assert_eq!(*value, 1);
//! ```
//!
//! A value retired twice:
//!
//! ```compile_fail,E0382
//! # use kepoch::{Atomic, Config, Domain, Owned};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let atomic = Atomic::new(Owned::new(&domain, 1u32).unwrap());
//! let old = atomic.take().unwrap();
//! old.retire();
//! old.retire();
//! ```
//!
//! Readers on other threads sharing a value that is not `Sync`:
//!
//! ```compile_fail,E0277
//! # use kepoch::{Atomic, Config, Domain, Owned};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let atomic = Atomic::new(Owned::new(&domain, std::cell::Cell::new(1u32)).unwrap());
//! std::thread::scope(|s| {
//!     s.spawn(|| atomic.load(&domain.enter()).map(|v| v.get()));
//! });
//! ```

pub mod anchored;
pub mod chain;
mod values;

pub use anchored::{Anchored, DomainBound};
pub use chain::{Chain, InsertError, Node, NodeRef, UnlinkError};
pub use values::{Owned, Shared, Unlinked};

use crate::domain::Domain;
use crate::guard::Guard;
use crate::mutation::Mutation;
use crate::platform::Platform;
use crate::sync::{AtomicPtr, Ordering};
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

/// A shared pointer that readers load inside an epoch and writers replace: the safe counterpart of
/// an `AtomicPtr` whose old values are retired. It belongs to one domain and owns the value it
/// holds (`None` when null).
///
/// ```
/// # use kepoch::{Atomic, Config, Domain, Owned};
/// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
/// let config = Atomic::new(Owned::new(&domain, 100u32).expect("memory"));
/// let guard = domain.enter();
/// assert_eq!(config.load(&guard).map(|v| *v), Some(100));
/// ```
pub struct Atomic<'d, T, P: Platform> {
    ptr: AtomicPtr<T>,
    domain: &'d Domain<P>,
    _owns: PhantomData<T>,
}

// SAFETY: moving the atomic moves ownership of its value (dropped wherever the atomic is).
unsafe impl<T: Send, P: Platform> Send for Atomic<'_, T, P> {}
// SAFETY: readers on other processors get `&T` (T: Sync); writers take values out and retire them,
// so their destructors run elsewhere (T: Send).
unsafe impl<T: Send + Sync, P: Platform> Sync for Atomic<'_, T, P> {}

impl<'d, T, P: Platform> Atomic<'d, T, P> {
    /// An empty atomic of `domain`.
    pub fn null(domain: &'d Domain<P>) -> Self {
        Atomic {
            ptr: AtomicPtr::new(ptr::null_mut()),
            domain,
            _owns: PhantomData,
        }
    }

    /// An atomic holding `value`, of the domain that allocated it.
    pub fn new(value: Owned<'d, T, P>) -> Self {
        let domain = value.domain;
        Atomic {
            ptr: AtomicPtr::new(value.into_ptr().as_ptr()),
            domain,
            _owns: PhantomData,
        }
    }

    /// An empty atomic of `domain` that does not borrow it, for a structure that holds the atomic
    /// next to the [`DomainBox`](crate::DomainBox) (a driver's device extension).
    ///
    /// # Safety
    /// The domain must outlive the atomic: drop the atomic (or the structure that holds it) before
    /// the `DomainBox`. Struct fields drop in declaration order, so declare the atomic first.
    pub unsafe fn null_detached(domain: &Domain<P>) -> Atomic<'static, T, P> {
        // SAFETY: the caller keeps the domain alive for as long as the atomic exists; every value
        // derived from the atomic borrows the atomic, so nothing else outlives it.
        let domain: &'static Domain<P> = unsafe { &*ptr::from_ref(domain) };
        Atomic::null(domain)
    }

    /// The domain this atomic belongs to.
    pub fn domain(&self) -> &Domain<P> {
        self.domain
    }

    /// Loads the value a reader may use until `guard` exits: `None` when the atomic is empty.
    ///
    /// # Panics
    /// If `guard` belongs to another domain (it would not protect this atomic's values).
    #[inline]
    pub fn load<'g>(&'g self, guard: &'g Guard<'_, P>) -> Option<Shared<'g, T>> {
        self.check_guard(guard);
        // Acquire pairs with the Release of the store that published the value (see the module
        // documentation): the reader sees the value initialised.
        Shared::new(self.ptr.load(Ordering::Acquire))
    }

    fn check_guard(&self, guard: &Guard<'_, P>) {
        assert!(
            ptr::eq(guard.domain(), self.domain),
            "kepoch: a guard of another domain cannot protect this atomic's values"
        );
    }

    fn check_owned(&self, value: &Owned<'_, T, P>) {
        assert!(
            ptr::eq(value.domain, self.domain),
            "kepoch: a value allocated by another domain cannot be published in this atomic"
        );
    }
}

impl<T: Send + 'static, P: Platform> Atomic<'_, T, P> {
    /// Publishes `new` and returns the value it replaced, unlinked: readers that enter from now on
    /// cannot reach it, readers inside may still read it until it is retired and their epoch ends.
    /// Any IRQL up to DISPATCH.
    ///
    /// # Panics
    /// If `new` was allocated by another domain.
    pub fn swap<'a>(&'a self, new: Owned<'_, T, P>) -> Option<Unlinked<'a, T, P>> {
        self.check_owned(&new);
        let old = self.ptr.swap(new.into_ptr().as_ptr(), self.publish());
        Unlinked::new(old, self.domain)
    }

    /// Publishes `new` and retires the value it replaced (a swap whose old value is dropped).
    ///
    /// # Panics
    /// If `new` was allocated by another domain.
    pub fn store(&self, new: Owned<'_, T, P>) {
        if let Some(old) = self.swap(new) {
            old.retire();
        }
    }

    /// Empties the atomic and returns the value it held, unlinked.
    pub fn take(&self) -> Option<Unlinked<'_, T, P>> {
        // Nothing is published (null): Acquire only, so that the caller may read what it took.
        let old = self.ptr.swap(ptr::null_mut(), Ordering::Acquire);
        Unlinked::new(old, self.domain)
    }

    /// Publishes `new` if the atomic still holds `current` (`None`: empty), and returns the value it
    /// replaced, unlinked. Otherwise gives `new` back with the value the atomic holds now, which the
    /// caller may read under `guard` and retry from.
    ///
    /// ```
    /// # use kepoch::{Atomic, Config, Domain, Owned};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let hits = Atomic::new(Owned::new(&domain, 0u64).expect("memory"));
    /// let guard = domain.enter();
    /// loop {
    ///     // Copy on write: build the next version from the one seen, publish it if still current.
    ///     let seen = hits.load(&guard);
    ///     let next = Owned::new(&domain, seen.map_or(0, |v| *v) + 1).expect("memory");
    ///     match hits.compare_exchange(seen, next, &guard) {
    ///         Ok(old) => break drop(old), // dropping an Unlinked retires it
    ///         Err(_lost_the_race) => continue,
    ///     }
    /// }
    /// assert_eq!(hits.load(&guard).map(|v| *v), Some(1));
    /// ```
    ///
    /// # Panics
    /// If `guard` belongs to, or `new` was allocated by, another domain.
    pub fn compare_exchange<'g, 'o>(
        &'g self,
        current: Option<Shared<'_, T>>,
        new: Owned<'o, T, P>,
        guard: &'g Guard<'_, P>,
    ) -> Result<Option<Unlinked<'g, T, P>>, CompareExchangeError<'g, 'o, T, P>> {
        self.check_guard(guard);
        self.check_owned(&new);
        let expected = current.map_or(ptr::null_mut(), Shared::as_mut_ptr);
        let desired = new.ptr.as_ptr();
        // Failure: Acquire, because the caller may read the value found (under `guard`); the
        // `failed-cas-relaxed` mutation weakens it.
        let failure = if self.domain.mutated(Mutation::FailedCasRelaxed) {
            Ordering::Relaxed
        } else {
            Ordering::Acquire
        };
        match self
            .ptr
            .compare_exchange(expected, desired, self.publish(), failure)
        {
            Ok(old) => {
                new.into_ptr();
                Ok(Unlinked::new(old, self.domain))
            }
            Err(actual) => Err(CompareExchangeError {
                current: Shared::new(actual),
                new,
            }),
        }
    }

    /// The ordering of a read-modify-write that publishes a value: its Release half pairs with the
    /// Acquire of [`Atomic::load`]; its Acquire half lets the caller read the value it unlinked.
    #[inline]
    fn publish(&self) -> Ordering {
        if self.domain.mutated(Mutation::PublishWithoutRelease) {
            return Ordering::Acquire;
        }
        Ordering::AcqRel
    }
}

impl<T, P: Platform> Drop for Atomic<'_, T, P> {
    fn drop(&mut self) {
        if let Some(value) = NonNull::new(self.ptr.load(Ordering::Acquire)) {
            // SAFETY: `&mut self` means no `Shared` of this atomic is alive (each borrows it), and
            // the value it holds came from `alloc` of this domain and is in no retired list.
            unsafe { self.domain.free_now(value) };
        }
    }
}

impl<T, P: Platform> fmt::Debug for Atomic<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Atomic")
            .field(&self.ptr.load(Ordering::Relaxed))
            .finish()
    }
}

/// A [`compare_exchange`](Atomic::compare_exchange) that found another value: what the atomic
/// holds now, and the box that was not published.
pub struct CompareExchangeError<'g, 'o, T, P: Platform> {
    /// The value the atomic holds (`None`: empty), readable under the guard passed in.
    pub current: Option<Shared<'g, T>>,
    /// The value that was to be published, given back.
    pub new: Owned<'o, T, P>,
}

impl<T, P: Platform> fmt::Debug for CompareExchangeError<'_, '_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompareExchangeError")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}
