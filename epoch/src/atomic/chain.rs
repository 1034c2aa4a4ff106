//! Linked nodes in safe code: a [`Chain`] of [`Node`]s, each holding a value and an atomic link to
//! the next node of the same domain. A node reached while traversing under a guard ([`NodeRef`])
//! can be linked from another link (an insertion stores it as the new node's successor, an unlink
//! stores it into its predecessor's link), and unlinking a node hands back exactly one
//! [`Unlinked`] token.
//!
//! # Why it is sound
//!
//! The argument of the [module](super) carries over, with three more rules that the types enforce.
//!
//! - **Each linked node has at most one live incoming link.** A link is *live* while its mark bit
//!   (bit 0 of the pointer) is clear: the chain's head, or the `next` of a node not being removed.
//!   A node enters a chain only as an [`Owned`] (a new node: [`Chain::insert_after`] makes the link
//!   that held `expected` point to it, and its own link to `expected`), and a node leaves only through
//!   [`Chain::unlink`]: it first marks the node's own link (freezing it: no insertion or unlink can
//!   change a marked link, since both compare-exchange against an unmarked pointer; mutation
//!   `unlink-before-mark` swaps the two steps), then
//!   compare-exchanges the predecessor's live link from the node to its frozen successor. Exactly
//!   one compare-exchange can take a node out of its one live link, so exactly one token exists.
//! - **A reader only follows links it reached under its guard.** [`NodeRef`] — the only way to read a
//!   link — comes from [`Chain::first`] or [`NodeRef::next`] under one guard. If the guard entered
//!   at `T0`, every node it reaches was still linked at `T0`: the first node was in the chain when
//!   it was loaded; a successor loaded from a live link was in the chain then; a successor loaded
//!   from a frozen link of node `Y` was `Y`'s successor when `Y` was marked, and cannot be unlinked
//!   before `Y` is (its only live link would be `Y`'s, which is frozen), which happened after `T0`.
//!   A node is retired only after it is unlinked, so the protocol keeps everything the reader
//!   reaches alive until the guard exits. An [`Unlinked`] node or an [`Owned`] one only exposes its
//!   value (`Deref`), never its link: its successor may be gone.
//! - **Nothing a caller can move holds a pointer.** An [`Owned`] node's link is null; a failed
//!   insertion clears it again before handing the node back. Moving a node out of its box (through
//!   `DerefMut`) therefore moves no pointer with it.
//!
//! **Memory ordering.** An insertion initialises the new node (its value, then its link) and
//! publishes it with a `Release` compare-exchange; every load of a link is `Acquire` (the loom model
//! `list_reader_sees_every_node_during_an_insertion`). An unlink publishes a node that
//! is already published: it needs no ordering beyond the retirement's fence that follows.
//!
//! Writers may race (every step is a compare-exchange): a failed [`Chain::unlink`] leaves the node
//! marked — removed for readers, still linked — and any writer that finds it again completes the
//! unlink. [`List`](crate::list::List) and [`Map`](crate::map::Map) serialise their writers, so
//! their unlinks never fail.
//!
//! # What the compiler refuses
//!
//! A node reference kept after its guard exited:
//!
//! ```compile_fail,E0597
//! # use kepoch::{atomic::{Chain, Node}, Config, Domain};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let chain = Chain::new(&domain);
//! let first = {
//!     let guard = domain.enter();
//!     let node = Node::new(&domain, 1u32).unwrap();
//!     chain.insert_after(None, None, node, &guard).unwrap()
//! };
//! assert_eq!(*first, 1);
//! ```
//!
//! Following the link of a node that was unlinked (its successor may have been freed): an
//! [`Unlinked`] node has no `next`.
//!
//! ```compile_fail,E0599
//! # use kepoch::{atomic::{Chain, Node}, Config, Domain};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let chain = Chain::new(&domain);
//! let guard = domain.enter();
//! let first = chain.insert_after(None, None, Node::new(&domain, 1u32).unwrap(), &guard).unwrap();
//! let token = chain.unlink(None, first, &guard).unwrap();
//! let _ = token.next();
//! ```
//!
//! Retiring an unlinked node twice:
//!
//! ```compile_fail,E0382
//! # use kepoch::{atomic::{Chain, Node}, Config, Domain};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let chain = Chain::new(&domain);
//! let guard = domain.enter();
//! let first = chain.insert_after(None, None, Node::new(&domain, 1u32).unwrap(), &guard).unwrap();
//! let token = chain.unlink(None, first, &guard).unwrap();
//! token.retire();
//! token.retire();
//! ```
//!
//! Dropping the chain (which frees its nodes) while a reader holds one:
//!
//! ```compile_fail,E0505
//! # use kepoch::{atomic::{Chain, Node}, Config, Domain};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let chain = Chain::new(&domain);
//! let guard = domain.enter();
//! let first = chain.insert_after(None, None, Node::new(&domain, 1u32).unwrap(), &guard).unwrap();
//! drop(chain);
//! assert_eq!(*first, 1);
//! ```

use super::{Owned, Unlinked};
use crate::domain::{AllocError, Domain};
use crate::guard::Guard;
use crate::mutation::Mutation;
use crate::platform::Platform;
use crate::sync::{AtomicPtr, Ordering};
use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

/// Bit 0 of a link: the node that holds the link is being removed, and the link is frozen.
const MARK: usize = 1;

fn is_marked<T>(ptr: *mut T) -> bool {
    ptr as usize & MARK != 0
}

fn unmarked<T>(ptr: *mut T) -> *mut T {
    ptr.map_addr(|addr| addr & !MARK)
}

/// A value and the link to the next node of its chain. Built with [`Node::new`] as an [`Owned`]
/// box; readable as `&T` (`Deref`). Its link is only followed through a [`NodeRef`].
pub struct Node<T> {
    value: T,
    next: AtomicPtr<Node<T>>,
}

impl<T: Send> Node<T> {
    /// A node holding `value`, linked to nothing, in a block from `domain`'s allocator. If the
    /// allocation fails, the [`AllocError`] holds the value (not the node). Any IRQL up to
    /// DISPATCH.
    pub fn new<P: Platform>(
        domain: &Domain<P>,
        value: T,
    ) -> Result<Owned<'_, Node<T>, P>, AllocError<T>> {
        let node = Node {
            value,
            next: AtomicPtr::new(ptr::null_mut()),
        };
        Owned::new(domain, node).map_err(|error| error.map(|node| node.value))
    }
}

impl<T> Node<T> {
    /// Whether a writer has started to remove this node (readers should skip it).
    pub fn is_removed(&self) -> bool {
        is_marked(self.next.load(Ordering::Acquire))
    }
}

impl<T> Deref for Node<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Node<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Node").field(&self.value).finish()
    }
}

/// A node reached under a guard: usable as `&T` until the guard exits (`'g`), and the one handle
/// through which its link may be followed. Copy it freely; comparing two compares the nodes.
pub struct NodeRef<'g, T> {
    ptr: NonNull<Node<T>>,
    _guard: PhantomData<&'g Node<T>>,
}

impl<'g, T> NodeRef<'g, T> {
    fn new(ptr: *mut Node<T>) -> Option<Self> {
        NonNull::new(unmarked(ptr)).map(|ptr| NodeRef {
            ptr,
            _guard: PhantomData,
        })
    }

    fn node(self) -> &'g Node<T> {
        // SAFETY: the node was reached under a guard that is still inside ('g), following only
        // links reached under it: the module's argument keeps it alive until the guard exits.
        unsafe { self.ptr.as_ref() }
    }

    /// The value, for as long as the guard lives (a [`Deref`] borrow is shorter).
    pub fn get(self) -> &'g T {
        &self.node().value
    }

    /// The next node (`None`: the end of the chain), also when this node is being removed.
    pub fn next(self) -> Option<NodeRef<'g, T>> {
        // Acquire pairs with the Release of the insertion that published the successor.
        NodeRef::new(self.node().next.load(Ordering::Acquire))
    }

    /// Whether a writer has started to remove this node (readers should skip it).
    pub fn is_removed(self) -> bool {
        self.node().is_removed()
    }

    /// The address of the node (for identity checks and diagnostics).
    pub fn as_ptr(self) -> *const Node<T> {
        self.ptr.as_ptr()
    }
}

impl<T> Clone for NodeRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for NodeRef<'_, T> {}

impl<T> PartialEq for NodeRef<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr
    }
}

impl<T> Eq for NodeRef<'_, T> {}

impl<T> Deref for NodeRef<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        (*self).get()
    }
}

impl<T> fmt::Debug for NodeRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NodeRef").field(&self.ptr).finish()
    }
}

/// A singly linked chain of [`Node`]s of one domain: the building block of
/// [`List`](crate::list::List) and [`Map`](crate::map::Map). It owns its nodes: dropping it frees
/// every node still linked.
///
/// A position is a link: `None` names the head, `Some(node)` the link of `node`.
///
/// ```
/// # use kepoch::{atomic::{Chain, Node}, Config, Domain};
/// # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
/// let chain = Chain::new(&domain);
/// let guard = domain.enter();
/// let b = chain.insert_after(None, None, Node::new(&domain, 'b').expect("memory"), &guard).unwrap();
/// let a = chain.insert_after(None, Some(b), Node::new(&domain, 'a').expect("memory"), &guard).unwrap();
/// // Link a third node after `b`, which is linked from `a`'s link: `b` is now a predecessor too.
/// chain.insert_after(Some(b), None, Node::new(&domain, 'c').expect("memory"), &guard).unwrap();
/// // Unlink the middle node: `a`'s link now holds `c`; the one token for `b` is handed back.
/// let token = chain.unlink(Some(a), b, &guard).expect("b follows a");
/// assert_eq!(**token, 'b');
/// token.retire();
/// let seen: Vec<char> = core::iter::successors(chain.first(&guard), |n| n.next())
///     .map(|n| *n)
///     .collect();
/// assert_eq!(seen, ['a', 'c']);
/// ```
pub struct Chain<'d, T, P: Platform> {
    head: AtomicPtr<Node<T>>,
    domain: &'d Domain<P>,
    _owns: PhantomData<Node<T>>,
}

// SAFETY: moving the chain moves ownership of its nodes (freed wherever it is dropped).
unsafe impl<T: Send, P: Platform> Send for Chain<'_, T, P> {}
// SAFETY: readers on other processors get `&T` (T: Sync); unlinked nodes are retired and dropped
// elsewhere (T: Send).
unsafe impl<T: Send + Sync, P: Platform> Sync for Chain<'_, T, P> {}

/// A [`Chain::insert_after`] that found another successor (or a link being removed): the node is
/// given back, unlinked again.
pub struct InsertError<'g, 'o, T, P: Platform> {
    /// What the link holds now (`None`: the end of the chain).
    pub current: Option<NodeRef<'g, T>>,
    /// Whether the link is frozen because its node is being removed: retrying there cannot succeed.
    pub frozen: bool,
    /// The node that was to be inserted.
    pub new: Owned<'o, Node<T>, P>,
}

impl<T, P: Platform> fmt::Debug for InsertError<'_, '_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InsertError")
            .field("current", &self.current)
            .field("frozen", &self.frozen)
            .finish_non_exhaustive()
    }
}

/// Why a [`Chain::unlink`] did not unlink: the node stays marked (removed for readers) and any
/// writer that finds its predecessor again completes the unlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnlinkError;

impl<'d, T, P: Platform> Chain<'d, T, P> {
    /// An empty chain of `domain`.
    pub fn new(domain: &'d Domain<P>) -> Self {
        Chain {
            head: AtomicPtr::new(ptr::null_mut()),
            domain,
            _owns: PhantomData,
        }
    }

    /// The domain this chain belongs to.
    pub fn domain(&self) -> &'d Domain<P> {
        self.domain
    }

    /// The first node, for a reader until `guard` exits (`None`: empty).
    ///
    /// # Panics
    /// If `guard` belongs to another domain.
    pub fn first<'g>(&'g self, guard: &'g Guard<'_, P>) -> Option<NodeRef<'g, T>> {
        self.check_guard(guard);
        NodeRef::new(self.head.load(Ordering::Acquire))
    }

    fn link<'g>(&'g self, at: Option<NodeRef<'g, T>>) -> &'g AtomicPtr<Node<T>> {
        at.map_or(&self.head, |node| &node.node().next)
    }

    fn check_guard(&self, guard: &Guard<'_, P>) {
        assert!(
            ptr::eq(guard.domain(), self.domain),
            "kepoch: a guard of another domain cannot protect this chain's nodes"
        );
    }
}

impl<'d, T: Send + 'static, P: Platform> Chain<'d, T, P> {
    /// Links `new` at `at` (`None`: the head) if that link still holds `expected`: `new`'s link then
    /// holds `expected`. Returns the inserted node, or gives `new` back with what the link holds.
    ///
    /// # Panics
    /// If `guard` belongs to, or `new` was allocated by, another domain.
    pub fn insert_after<'g, 'o>(
        &'g self,
        at: Option<NodeRef<'g, T>>,
        expected: Option<NodeRef<'g, T>>,
        new: Owned<'o, Node<T>, P>,
        guard: &'g Guard<'_, P>,
    ) -> Result<NodeRef<'g, T>, InsertError<'g, 'o, T, P>> {
        self.check_guard(guard);
        assert!(
            ptr::eq(new.domain, self.domain),
            "kepoch: a node allocated by another domain cannot be linked in this chain"
        );
        let expected = expected.map_or(ptr::null_mut(), |node| node.ptr.as_ptr());
        // Published by the Release of the compare-exchange below.
        new.next.store(expected, Ordering::Relaxed);
        let desired = new.ptr.as_ptr();
        match self
            .link(at)
            .compare_exchange(expected, desired, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(NodeRef {
                ptr: new.into_ptr(),
                _guard: PhantomData,
            }),
            Err(actual) => {
                // A node handed back holds no pointer (see the module's argument).
                new.next.store(ptr::null_mut(), Ordering::Relaxed);
                Err(InsertError {
                    current: NodeRef::new(actual),
                    frozen: is_marked(actual),
                    new,
                })
            }
        }
    }

    /// Removes `node`, which follows the link at `at` (`None`: the head): marks it removed, then
    /// links its successor at `at`. Returns the one token that retires it, or [`UnlinkError`] if
    /// the link at `at` no longer holds `node` (another writer changed it, or `at`'s node is
    /// being removed): `node` stays marked, and a later call from its current predecessor completes
    /// the unlink.
    ///
    /// # Panics
    /// If `guard` belongs to another domain.
    pub fn unlink<'g>(
        &'g self,
        at: Option<NodeRef<'g, T>>,
        node: NodeRef<'g, T>,
        guard: &'g Guard<'_, P>,
    ) -> Result<Unlinked<'d, Node<T>, P>, UnlinkError> {
        self.check_guard(guard);
        if self.domain.mutated(Mutation::UnlinkBeforeMark) {
            let successor = unmarked(node.node().next.load(Ordering::Acquire));
            self.swing(at, node, successor)?;
            Self::freeze(node);
            return Ok(Unlinked::new(node.ptr.as_ptr(), self.domain)
                .expect("kepoch: an unlinked node is not null"));
        }
        // Freeze the node's link first: from now on no insertion or unlink can change it.
        let successor = Self::freeze(node);
        self.swing(at, node, successor)?;
        Ok(Unlinked::new(node.ptr.as_ptr(), self.domain)
            .expect("kepoch: an unlinked node is not null"))
    }

    /// Marks `node`'s link (if no one did yet) and returns the successor it is frozen at.
    fn freeze(node: NodeRef<'_, T>) -> *mut Node<T> {
        let next = &node.node().next;
        let mut successor = next.load(Ordering::Acquire);
        while !is_marked(successor) {
            let marked = successor.map_addr(|addr| addr | MARK);
            match next.compare_exchange_weak(successor, marked, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => successor = actual,
            }
        }
        unmarked(successor)
    }

    /// Moves the link at `at` from `node` to `successor`, if it still holds `node` (unmarked).
    fn swing<'g>(
        &'g self,
        at: Option<NodeRef<'g, T>>,
        node: NodeRef<'g, T>,
        successor: *mut Node<T>,
    ) -> Result<(), UnlinkError> {
        self.link(at)
            .compare_exchange(
                node.ptr.as_ptr(),
                successor,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .map(|_| ())
            .map_err(|_| UnlinkError)
    }
}

impl<T, P: Platform> Drop for Chain<'_, T, P> {
    fn drop(&mut self) {
        let mut next = unmarked(self.head.load(Ordering::Acquire));
        while let Some(node) = NonNull::new(next) {
            // SAFETY: `&mut self` means no reader holds a node of this chain (each `NodeRef`
            // borrows it); a linked node came from `alloc` of this domain and is in no retired
            // list (only unlinked nodes are retired), and the walk reads its link before freeing it.
            unsafe {
                next = unmarked(node.as_ref().next.load(Ordering::Acquire));
                self.domain.free_now(node);
            }
        }
    }
}

impl<T, P: Platform> fmt::Debug for Chain<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Chain")
            .field(&self.head.load(Ordering::Relaxed))
            .finish()
    }
}
