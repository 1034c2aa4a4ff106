//! The values the safe layer hands out: [`Owned`] (a box not yet published), [`Shared`] (what a
//! reader loaded) and [`Unlinked`] (what a writer took out). The soundness argument is in the
//! parent module's documentation.

use crate::domain::{AllocError, Domain};
use crate::guard::Guard;
use crate::platform::Platform;
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

/// A value in a block from its domain's allocator, not yet published: the unique
/// owner, like a `Box`. Publish it with [`Atomic::new`], [`Atomic::swap`], [`Atomic::store`] or
/// [`Atomic::compare_exchange`]; dropping it instead runs the destructor and frees the block at
/// once.
///
/// [`Atomic::new`]: crate::Atomic::new
/// [`Atomic::swap`]: crate::Atomic::swap
/// [`Atomic::store`]: crate::Atomic::store
/// [`Atomic::compare_exchange`]: crate::Atomic::compare_exchange
///
/// ```
/// # use kepoch::{Config, Domain, Owned};
/// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
/// let mut counter = Owned::new(&domain, 41u64).expect("non-paged memory");
/// *counter += 1; // not shared yet: mutable
/// assert_eq!(*counter, 42);
/// ```
pub struct Owned<'d, T, P: Platform> {
    pub(super) ptr: NonNull<T>,
    pub(super) domain: &'d Domain<P>,
    _owns: PhantomData<T>,
}

// SAFETY: an `Owned` is the unique owner of its value, like `Box<T>`; the domain is `Sync`.
unsafe impl<T: Send, P: Platform> Send for Owned<'_, T, P> {}
// SAFETY: shared access gives `&T` only, like `Box<T>`.
unsafe impl<T: Sync, P: Platform> Sync for Owned<'_, T, P> {}

impl<'d, T: Send, P: Platform> Owned<'d, T, P> {
    /// Moves `value` into a block from `domain`'s allocator. If the allocation fails (non-paged
    /// pool exhausted), the [`AllocError`] holds the value: [`AllocError::into_inner`] hands it
    /// back. Any IRQL up to DISPATCH.
    ///
    /// The error's `Debug` needs no `T: Debug`, so `unwrap` and `expect` work for any value:
    ///
    /// ```
    /// # use kepoch::{Config, Domain, Owned};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// struct NotDebug;
    ///
    /// let owned = Owned::new(&domain, NotDebug).unwrap();
    /// let _: &NotDebug = &owned;
    /// ```
    pub fn new(domain: &'d Domain<P>, value: T) -> Result<Self, AllocError<T>> {
        let ptr = domain.alloc(value)?;
        Ok(Owned {
            ptr,
            domain,
            _owns: PhantomData,
        })
    }
}

impl<T, P: Platform> Owned<'_, T, P> {
    /// Gives up ownership of the block to the caller (an atomic that publishes it).
    pub(super) fn into_ptr(self) -> NonNull<T> {
        ManuallyDrop::new(self).ptr
    }
}

impl<T, P: Platform> Deref for Owned<'_, T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the block holds an initialised `T` that this box owns.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, P: Platform> DerefMut for Owned<'_, T, P> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; the box is unique and the value was never published.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T, P: Platform> Drop for Owned<'_, T, P> {
    fn drop(&mut self) {
        // SAFETY: the block came from `alloc` of this domain and was never published or retired
        // (publishing consumes the box).
        unsafe { self.domain.free_now(self.ptr) };
    }
}

impl<T: fmt::Debug, P: Platform> fmt::Debug for Owned<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Owned").field(&**self).finish()
    }
}

/// A value a reader loaded from an [`Atomic`](crate::Atomic): usable as `&T` until the guard it
/// was loaded under exits (`'g`). Copy it freely; comparing two compares the pointers.
pub struct Shared<'g, T> {
    ptr: NonNull<T>,
    _guard: PhantomData<&'g T>,
}

impl<'g, T> Shared<'g, T> {
    pub(super) fn new(ptr: *mut T) -> Option<Self> {
        NonNull::new(ptr).map(|ptr| Shared {
            ptr,
            _guard: PhantomData,
        })
    }

    /// The value, for as long as the guard lives (a [`Deref`] borrow is shorter).
    pub fn get(self) -> &'g T {
        // SAFETY: the value was reachable when it was loaded under a guard of its domain that is
        // still inside (it outlives 'g): the protocol keeps it alive until that guard exits.
        unsafe { self.ptr.as_ref() }
    }

    /// The address of the value (for identity checks and diagnostics).
    pub fn as_ptr(self) -> *const T {
        self.ptr.as_ptr()
    }

    pub(super) fn as_mut_ptr(self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Clone for Shared<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Shared<'_, T> {}

impl<T> PartialEq for Shared<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr
    }
}

impl<T> Eq for Shared<'_, T> {}

impl<T> Deref for Shared<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        (*self).get()
    }
}

impl<T> fmt::Debug for Shared<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Shared").field(&self.ptr).finish()
    }
}

/// A value taken out of an [`Atomic`](crate::Atomic): no reader that enters from now on can reach
/// it, readers already inside may still read it. The one token that can retire it; readable until
/// then. Dropping it retires it.
pub struct Unlinked<'a, T: Send + 'static, P: Platform> {
    ptr: NonNull<T>,
    domain: &'a Domain<P>,
}

// SAFETY: readers may still share the value (T: Sync) and its destructor runs wherever it is
// retired or disposed of (T: Send); the domain is Sync.
unsafe impl<T: Send + Sync + 'static, P: Platform> Send for Unlinked<'_, T, P> {}
// SAFETY: shared access gives `&T` only.
unsafe impl<T: Send + Sync + 'static, P: Platform> Sync for Unlinked<'_, T, P> {}

impl<'a, T: Send + 'static, P: Platform> Unlinked<'a, T, P> {
    pub(super) fn new(ptr: *mut T, domain: &'a Domain<P>) -> Option<Self> {
        NonNull::new(ptr).map(|ptr| Unlinked { ptr, domain })
    }

    /// The address of the value (for identity checks and diagnostics).
    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr()
    }

    /// Retires the value: its destructor runs and its block is freed once every reader that could
    /// still see it has exited. Returns the epoch it was stamped with. Any IRQL up to DISPATCH.
    ///
    /// # Panics
    /// If the block was retired already through the raw [`Domain::retire`], which that function's
    /// contract forbids (the core refuses the second retirement and counts it).
    pub fn retire(self) -> u64 {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is the only token of a value unlinked from its atomic (see `retire_now`).
        unsafe { Self::retire_now(this.ptr, this.domain) }
    }

    /// Retires the value and keeps reading it under `guard`, which was entered before this call and
    /// so holds the value back until it exits. Returns the value and the epoch it was stamped with.
    ///
    /// ```
    /// # use kepoch::{Atomic, Config, Domain, Owned};
    /// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
    /// let slot = Atomic::new(Owned::new(&domain, 7u32).expect("memory"));
    /// let guard = domain.enter();
    /// let old = slot.swap(Owned::new(&domain, 8).expect("memory")).expect("was set");
    /// let (old, _stamp) = old.retire_protected(&guard);
    /// domain.flush(); // a cycle now (the timer runs more): none can free it
    /// assert_eq!((*old, domain.stats().pending), (7, 1));
    /// drop(guard);
    /// domain.synchronize();
    /// assert_eq!(domain.stats().pending, 0);
    /// ```
    ///
    /// # Panics
    /// If `guard` belongs to another domain, or as for [`Unlinked::retire`].
    pub fn retire_protected<'g>(self, guard: &'g Guard<'_, P>) -> (Shared<'g, T>, u64) {
        assert!(
            ptr::eq(guard.domain(), self.domain),
            "kepoch: a guard of another domain does not hold this value back"
        );
        let ptr = self.ptr;
        let stamp = self.retire();
        let shared = Shared {
            ptr,
            _guard: PhantomData,
        };
        (shared, stamp)
    }

    /// # Safety
    /// `ptr` came from `alloc` of `domain`, was unlinked from the atomic that owned it, and is
    /// retired by no one else.
    unsafe fn retire_now(ptr: NonNull<T>, domain: &Domain<P>) -> u64 {
        // SAFETY: per the caller: unreachable for readers that enter from now on, retired once.
        match unsafe { domain.retire(ptr) } {
            Ok(stamp) => stamp,
            Err(error) => {
                panic!("kepoch: a value unlinked from an Atomic was retired twice ({error:?})")
            }
        }
    }
}

impl<T: Send + 'static, P: Platform> Deref for Unlinked<'_, T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the value is not retired yet (only this token can do it), so nothing frees it.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: Send + 'static, P: Platform> Drop for Unlinked<'_, T, P> {
    fn drop(&mut self) {
        // SAFETY: this token is the only one for a value unlinked from its atomic; it retires it
        // once, here, since `retire` consumes the token without dropping it.
        unsafe { Self::retire_now(self.ptr, self.domain) };
    }
}

impl<T: Send + 'static, P: Platform> fmt::Debug for Unlinked<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Unlinked").field(&self.ptr).finish()
    }
}
