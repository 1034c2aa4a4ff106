//! A domain and the structures that borrow it, in one value and without `unsafe`: what a driver's
//! device extension holds (the domain, and the atomics, lists and maps of that domain next to it).
//!
//! [`Anchored`] owns a [`DomainBox`] and a structure built from `&Domain`. The structure's type is
//! named by a [`DomainBound`] family, so that `Anchored` can lend it out with the lifetime of each
//! borrow: [`Anchored::with`] passes the domain and the structure to a closure that is generic over
//! that lifetime.
//!
//! **Why it is sound.** The domain sits at a fixed address for as long as its box exists (moving an
//! `Anchored` moves the box, not the domain), and `Anchored` drops the structure before the box, so
//! the structure's borrow of the domain never dangles. The structure is never handed out with the
//! lifetime it was stored under: [`with`](Anchored::with)'s closure works for *every* lifetime `'d`,
//! so its result type cannot mention `'d` — nothing borrowed from the structure or the domain (a
//! guard, a value read, an unlink token) outlives the call; and anything the closure stores into
//! the structure must live for any `'d`, that is, at least as long as the domain itself.
//!
//! ```
//! use kepoch::atomic::{Anchored, DomainBound};
//! use kepoch::map::Map;
//! use kepoch::platform::Platform;
//! use kepoch::{Config, Domain};
//!
//! /// The routing table of a device extension: a map of the extension's own domain.
//! struct Routes;
//! impl<P: Platform> DomainBound<P> for Routes {
//!     type With<'d> = Map<'d, u32, u32, P, 64>;
//! }
//!
//! let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let extension = Anchored::<_, Routes>::new(domain, |domain| Map::new(domain));
//! let gateway = extension.with(|domain, routes| {
//!     routes.insert(10, 1).expect("memory");
//!     let guard = domain.enter();
//!     routes.get(&10, &guard).copied()
//! });
//! assert_eq!(gateway, Some(1));
//! drop(extension); // the map first, then the domain
//! ```
//!
//! A guard (or a value read under it) cannot leave the closure:
//!
//! ```compile_fail
//! # use kepoch::atomic::{Anchored, DomainBound};
//! # use kepoch::map::Map;
//! # use kepoch::platform::Platform;
//! # use kepoch::{Config, Domain};
//! # struct Routes;
//! # impl<P: Platform> DomainBound<P> for Routes {
//! #     type With<'d> = Map<'d, u32, u32, P, 64>;
//! # }
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let extension = Anchored::<_, Routes>::new(domain, |domain| Map::new(domain));
//! let guard = extension.with(|domain, _| domain.enter());
//! drop(extension);
//! drop(guard);
//! ```
//!
//! Nor can the structure itself:
//!
//! ```compile_fail
//! # use kepoch::atomic::{Anchored, DomainBound};
//! # use kepoch::map::Map;
//! # use kepoch::platform::Platform;
//! # use kepoch::{Config, Domain};
//! # struct Routes;
//! # impl<P: Platform> DomainBound<P> for Routes {
//! #     type With<'d> = Map<'d, u32, u32, P, 64>;
//! # }
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let extension = Anchored::<_, Routes>::new(domain, |domain| Map::new(domain));
//! let routes = extension.with(|_, routes| routes);
//! drop(extension);
//! ```

use crate::domain::{Domain, DomainBox};
use crate::platform::Platform;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ptr;

/// Names a structure that borrows a domain of platform `P` for `'d` (an [`Atomic`](crate::Atomic),
/// a [`Chain`](super::Chain), a [`List`](crate::list::List), a [`Map`](crate::map::Map), or a
/// struct of them), so that [`Anchored`] can hold it next to the domain.
pub trait DomainBound<P: Platform> {
    /// The structure, borrowing the domain for `'d`.
    type With<'d>;
}

/// A domain and a structure of that domain, owned together (see the [module](self) documentation).
pub struct Anchored<P: Platform, F: DomainBound<P>> {
    // Dropped by hand before `domain` (see `Drop`).
    value: ManuallyDrop<F::With<'static>>,
    domain: DomainBox<P>,
}

impl<P: Platform, F: DomainBound<P>> Anchored<P, F> {
    /// Takes ownership of `domain` and of the structure `build` makes from it.
    pub fn new(domain: DomainBox<P>, build: impl FnOnce(&Domain<P>) -> F::With<'_>) -> Self {
        // SAFETY: the domain stays at its address until `domain` drops, and `Drop` drops the value
        // first; the value is only lent out with the lifetime of a borrow of `self` (`with`).
        let pinned: &'static Domain<P> = unsafe { &*ptr::from_ref(&*domain) };
        Anchored {
            value: ManuallyDrop::new(build(pinned)),
            domain,
        }
    }

    /// Runs `f` with the domain and the structure, borrowed for the call. Whatever `f` returns
    /// cannot borrow either.
    pub fn with<R>(&self, f: impl for<'d> FnOnce(&'d Domain<P>, &'d F::With<'d>) -> R) -> R {
        let value: *const F::With<'static> = &*self.value;
        // SAFETY: the same type with a shorter lifetime: the structure borrows the domain, which
        // outlives this borrow of `self`; `f` is generic over the lifetime, so nothing tied to it
        // outlives the call (see the module's argument).
        let value: &F::With<'_> = unsafe { &*value.cast::<F::With<'_>>() };
        f(&self.domain, value)
    }

    /// The domain.
    pub fn domain(&self) -> &Domain<P> {
        &self.domain
    }
}

impl<P: Platform, F: DomainBound<P>> Drop for Anchored<P, F> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here, before `domain` (a field, dropped after this body); never
        // used again.
        unsafe { ManuallyDrop::drop(&mut self.value) };
    }
}

impl<P: Platform, F: DomainBound<P>> fmt::Debug for Anchored<P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anchored").finish_non_exhaustive()
    }
}
