//! A hash map for read-mostly kernel use: lookups under a guard at PASSIVE or DISPATCH take no lock;
//! insert, replace and remove are serialised per bucket by the bucket's spin lock (each bucket is a
//! [`List`]).
//!
//! **Why fixed buckets.** The bucket count is a const parameter chosen when the map is built, and
//! the buckets live inline in the map. A lookup is one hash, one load and a short chain walk with no
//! table pointer to follow and no resize in flight to check; writers never allocate more than one
//! node, so every call keeps the bounded cost a DISPATCH caller needs. A resizable table
//! (`rhashtable`-style) needs a migration that readers must follow across two tables and a grace
//! period per resize — worth it only when the size is unknown, which kernel tables (routes, flows,
//! handles) rarely are. Size the map for its expected load; chains grow linearly past it.
//!
//! Keys are hashed with FNV-1a over their bytes, one multiply per whole integer (no allocation, no
//! state). It is not resistant to chosen keys: do not key the map by values an attacker controls
//! without a keyed hash of your own first.
//!
//! ```
//! # use kepoch::{map::Map, Config, Domain};
//! # let domain = Domain::create(kepoch_user::UserPlatform::new(), Config::default()).unwrap();
//! let flows: Map<u32, &str, _, 16> = Map::new(&domain);
//! assert!(flows.insert(7, "seven").expect("memory").is_none());
//! let guard = domain.enter();
//! let held = flows.get(&7, &guard).expect("present");
//! // Replace: readers see the old or the new value, never nothing; the old one is handed back.
//! let old = flows.insert(7, "SEVEN").expect("memory").expect("was present");
//! assert_eq!(*old.value(), "seven");
//! drop(old); // dropping an Unlinked retires it
//! assert_eq!((*held, flows.get(&7, &guard).copied()), ("seven", Some("SEVEN")));
//! assert!(flows.remove(&7).is_some());
//! assert!(flows.get(&7, &guard).is_none());
//! ```

use crate::atomic::{Node, Unlinked};
use crate::domain::{AllocError, Domain};
use crate::guard::Guard;
use crate::list::List;
use crate::mutation::Mutation;
use crate::platform::Platform;
use core::fmt;
use core::hash::{Hash, Hasher};

/// A key and its value, as stored in a [`Map`] node.
pub struct Entry<K, V> {
    key: K,
    value: V,
}

impl<K, V> Entry<K, V> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Entry<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("value", &self.value)
            .finish()
    }
}

/// A token for an entry taken out of a [`Map`]: dropping or retiring it frees the entry once every
/// reader that could see it has exited.
pub type Removed<'d, K, V, P> = Unlinked<'d, Node<Entry<K, V>>, P>;

/// What [`Map::insert`] did: the entry it replaced (`None`: the key was new), or, when the
/// allocation failed (the only error), an [`AllocError`] holding the key and value.
pub type Insertion<'d, K, V, P> = Result<Option<Removed<'d, K, V, P>>, AllocError<(K, V)>>;

/// A hash map with `BUCKETS` fixed buckets in one domain (see the [module](self) documentation).
/// Dropping it frees every entry still in it.
pub struct Map<'d, K, V, P: Platform, const BUCKETS: usize> {
    buckets: [List<'d, Entry<K, V>, P>; BUCKETS],
}

impl<'d, K: Hash + Eq, V, P: Platform, const BUCKETS: usize> Map<'d, K, V, P, BUCKETS> {
    /// An empty map of `domain`.
    ///
    /// # Panics
    /// If `BUCKETS` is 0.
    pub fn new(domain: &'d Domain<P>) -> Self {
        assert!(BUCKETS > 0, "kepoch: a map needs at least one bucket");
        Map {
            buckets: core::array::from_fn(|_| List::new(domain)),
        }
    }

    /// An empty map of `domain` that does not borrow it, for a structure that holds the map next to
    /// the [`DomainBox`](crate::DomainBox) (as [`Atomic::null_detached`](crate::Atomic::null_detached)).
    ///
    /// # Safety
    /// The domain must outlive the map: drop the map before the `DomainBox`.
    ///
    /// # Panics
    /// If `BUCKETS` is 0.
    pub unsafe fn new_detached(domain: &Domain<P>) -> Map<'static, K, V, P, BUCKETS> {
        // SAFETY: the caller keeps the domain alive for as long as the map exists; every value
        // derived from the map borrows the map or the domain it gave out.
        let domain: &'static Domain<P> = unsafe { &*core::ptr::from_ref(domain) };
        Map::new(domain)
    }

    /// The value stored under `key`, readable until `guard` exits. Takes no lock: any IRQL up to
    /// DISPATCH.
    ///
    /// # Panics
    /// If `guard` belongs to another domain.
    pub fn get<'g>(&'g self, key: &K, guard: &'g Guard<'_, P>) -> Option<&'g V> {
        self.bucket(key)
            .find(guard, |entry| entry.key == *key)
            .map(Entry::value)
    }

    fn bucket(&self, key: &K) -> &List<'d, Entry<K, V>, P> {
        &self.buckets[bucket_of(key, BUCKETS)]
    }
}

impl<'d, K, V, P, const BUCKETS: usize> Map<'d, K, V, P, BUCKETS>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    P: Platform,
{
    /// Stores `value` under `key`. If the key was present, the new entry is linked in front of the
    /// old one before the old one is unlinked (a reader finds one of them at every moment), and the
    /// old entry is handed back. If the allocation fails, the [`AllocError`] holds the key and the
    /// value. Any IRQL up to DISPATCH.
    pub fn insert(&self, key: K, value: V) -> Insertion<'d, K, V, P> {
        let bucket = self.bucket(&key);
        let domain = bucket.domain();
        let node = Node::new(domain, Entry { key, value })
            .map_err(|error| error.map(|entry| (entry.key, entry.value)))?;
        let _writer = bucket.writer.lock(domain.platform());
        let guard = domain.enter();
        let serialised = "kepoch: the bucket's writer lock serialises its writers";
        let Some((before, old)) = bucket.locate(&guard, |entry| entry.key == node.key) else {
            let first = bucket.chain.first(&guard);
            bucket
                .chain
                .insert_after(None, first, node, &guard)
                .expect(serialised);
            return Ok(None);
        };
        if domain.mutated(Mutation::MapReplaceUnlinksFirst) {
            let removed = bucket.chain.unlink(before, old, &guard).expect(serialised);
            let after = before.map_or_else(|| bucket.chain.first(&guard), |node| node.next());
            bucket
                .chain
                .insert_after(before, after, node, &guard)
                .expect(serialised);
            return Ok(Some(removed));
        }
        let new = bucket
            .chain
            .insert_after(before, Some(old), node, &guard)
            .expect(serialised);
        let removed = bucket
            .chain
            .unlink(Some(new), old, &guard)
            .expect(serialised);
        Ok(Some(removed))
    }

    /// Removes the entry stored under `key` and hands back its one retire token. Any IRQL up to
    /// DISPATCH.
    pub fn remove(&self, key: &K) -> Option<Removed<'d, K, V, P>> {
        self.bucket(key).remove(|entry| entry.key == *key)
    }
}

impl<K, V, P: Platform, const BUCKETS: usize> fmt::Debug for Map<'_, K, V, P, BUCKETS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map").field("buckets", &BUCKETS).finish()
    }
}

/// The bucket `key` falls in, in a [`Map`] of `buckets` buckets: the one its lookups walk. Public so
/// that a driver can check how its keys spread (every lookup in a bucket walks its chain) and a
/// benchmark can build a peer map of the same shape.
///
/// ```
/// // How 64 handles spread over a 16-bucket map: the longest chain is what a lookup may walk.
/// let mut chains = [0u32; 16];
/// for handle in 0u64..64 {
///     chains[kepoch::map::bucket_of(&handle, 16)] += 1;
/// }
/// assert_eq!(chains.iter().sum::<u32>(), 64);
/// assert!(*chains.iter().max().unwrap() < 16);
/// ```
///
/// # Panics
/// If `buckets` is 0.
pub fn bucket_of<K: Hash + ?Sized>(key: &K, buckets: usize) -> usize {
    let mut hasher = Fnv1a::default();
    key.hash(&mut hasher);
    // The remainder is below `buckets`, which is a usize.
    (hasher.finish() % buckets as u64) as usize
}

/// The map's hash: FNV-1a over bytes, and one multiply per whole integer (the common key); the
/// finish folds the high half into the low bits that pick the bucket. No state, no allocation.
struct Fnv1a(u64);

/// The 64-bit FNV offset basis.
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// The 64-bit FNV prime.
const FNV_PRIME: u64 = 0x0100_0000_01b3;
/// An odd constant with well-spread bits (2^64 divided by the golden ratio), for whole integers.
const WORD_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(FNV_BASIS)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(WORD_MULTIPLIER);
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn finish(&self) -> u64 {
        // A product's low bits depend only on the factors' low bits: fold the high half in.
        self.0 ^ (self.0 >> 32)
    }
}
