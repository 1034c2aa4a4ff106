//! An RCU-protected singly linked list: readers iterate under a guard without locks at PASSIVE or
//! DISPATCH; writers push, insert and remove, serialised by the list's own spin lock.
//!
//! **Why an internal writer lock.** Readers never take it, so it costs read-mostly users nothing;
//! writers of a kernel list are rare and short, and a spin lock gives them a bounded critical
//! section at DISPATCH with no retry loops, no helping and no failed unlink (every
//! [`Chain::unlink`] under the lock succeeds, so every removal hands back its token at once). A
//! caller's own lock would have to cover every writer of every list; the internal one cannot be
//! forgotten. The underlying [`Chain`] stays sound without any lock, for callers who want
//! lock-free writers.
//!
//! ```
//! # use kepoch::{list::List, Config, Domain};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let routes = List::new(&domain);
//! routes.push_front(10u32).expect("memory");
//! routes.push_front(20).expect("memory");
//! {
//!     let guard = domain.enter();
//!     let seen: Vec<u32> = routes.iter(&guard).copied().collect();
//!     assert_eq!(seen, [20, 10]);
//!     // A removal while a reader holds the node: the reader keeps reading it.
//!     let held = routes.find(&guard, |r| *r == 10).expect("present");
//!     let removed = routes.remove(|r| *r == 10).expect("present");
//!     removed.retire(); // freed once every reader that could see it has exited
//!     assert_eq!(*held, 10);
//!     assert_eq!(routes.iter(&guard).count(), 1);
//! }
//! domain.synchronize();
//! assert_eq!(domain.stats().pending, 0);
//! ```

use crate::atomic::{Chain, Node, NodeRef, Unlinked};
use crate::domain::{AllocError, Domain};
use crate::guard::Guard;
use crate::platform::Platform;
use crate::spin::SpinLock;
use core::fmt;

/// A list of `T` in one domain, newest first (see the [module](self) documentation). Dropping it
/// frees every value still in it.
pub struct List<'d, T, P: Platform> {
    pub(crate) chain: Chain<'d, T, P>,
    pub(crate) writer: SpinLock<()>,
}

impl<'d, T, P: Platform> List<'d, T, P> {
    /// An empty list of `domain`.
    pub fn new(domain: &'d Domain<P>) -> Self {
        List {
            chain: Chain::new(domain),
            writer: SpinLock::new(()),
        }
    }

    /// An empty list of `domain` that does not borrow it, for a structure that holds the list next
    /// to the [`DomainBox`](crate::DomainBox) (as [`Atomic::null_detached`](crate::Atomic::null_detached)).
    ///
    /// # Safety
    /// The domain must outlive the list: drop the list before the `DomainBox`.
    pub unsafe fn new_detached(domain: &Domain<P>) -> List<'static, T, P> {
        // SAFETY: the caller keeps the domain alive for as long as the list exists; every value
        // derived from the list borrows the list or the domain it gave out.
        let domain: &'static Domain<P> = unsafe { &*core::ptr::from_ref(domain) };
        List::new(domain)
    }

    /// The values in order, readable until `guard` exits (a value removed while the walk is under
    /// way may still appear: the walk reached it before it was unlinked).
    ///
    /// # Panics
    /// If `guard` belongs to another domain.
    pub fn iter<'g>(&'g self, guard: &'g Guard<'_, P>) -> Iter<'g, T> {
        Iter {
            next: self.chain.first(guard),
        }
    }

    /// The first value for which `matches` is true, readable until `guard` exits.
    pub fn find<'g>(
        &'g self,
        guard: &'g Guard<'_, P>,
        mut matches: impl FnMut(&T) -> bool,
    ) -> Option<&'g T> {
        self.iter(guard).find(|value| matches(value))
    }

    /// The domain this list belongs to.
    pub fn domain(&self) -> &'d Domain<P> {
        self.chain.domain()
    }
}

impl<'d, T: Send + 'static, P: Platform> List<'d, T, P> {
    /// Adds `value` at the front. If the allocation fails, the [`AllocError`] holds the value.
    /// Any IRQL up to DISPATCH.
    pub fn push_front(&self, value: T) -> Result<(), AllocError<T>> {
        let node = Node::new(self.domain(), value)?;
        let domain = self.domain();
        let _writer = self.writer.lock(domain.platform());
        let guard = domain.enter();
        let first = self.chain.first(&guard);
        self.chain
            .insert_after(None, first, node, &guard)
            .expect("kepoch: the list's writer lock serialises its writers");
        Ok(())
    }

    /// Removes the first value for which `matches` is true and hands back its one retire token
    /// (dropping the token retires it). Any IRQL up to DISPATCH.
    pub fn remove(&self, mut matches: impl FnMut(&T) -> bool) -> Option<Unlinked<'d, Node<T>, P>> {
        let domain = self.domain();
        let _writer = self.writer.lock(domain.platform());
        let guard = domain.enter();
        let (before, node) = self.locate(&guard, |value| matches(value))?;
        let token = self
            .chain
            .unlink(before, node, &guard)
            .expect("kepoch: the list's writer lock serialises its writers");
        Some(token)
    }

    /// Under the writer lock: the first node for which `matches` is true, and its predecessor
    /// (`None`: the head). No node is marked without being unlinked under the lock.
    pub(crate) fn locate<'g>(
        &'g self,
        guard: &'g Guard<'_, P>,
        mut matches: impl FnMut(&T) -> bool,
    ) -> Option<(Option<NodeRef<'g, T>>, NodeRef<'g, T>)> {
        let mut before = None;
        let mut current = self.chain.first(guard);
        while let Some(node) = current {
            if matches(&node) {
                return Some((before, node));
            }
            before = Some(node);
            current = node.next();
        }
        None
    }
}

impl<T, P: Platform> fmt::Debug for List<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("List").field(&self.chain).finish()
    }
}

/// The values of a [`List`] under a guard (see [`List::iter`]).
pub struct Iter<'g, T> {
    next: Option<NodeRef<'g, T>>,
}

impl<'g, T> Iterator for Iter<'g, T> {
    type Item = &'g T;

    fn next(&mut self) -> Option<&'g T> {
        // A node being removed is still returned: the reader reached it before its unlink, and a
        // replacement may be linked behind the reader (skipping it would hide a key that was never
        // absent; the map's loom model checks this).
        let node = self.next?;
        self.next = node.next();
        Some(node.get())
    }
}
