//! A domain on a model machine ([`World`]): the objects readers check (S1), readers, writers,
//! cycles, schedule gates and the checks after unload (S8).

use super::machine::{lock, on_cpu, ModelPlatform};
use super::rt;
use kepoch::{Config, Domain, DomainBox, Mutation, Mutations, Strategy};
use rt::atomic::{AtomicPtr, Ordering};
use std::alloc::Layout;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Value of a live object's payload.
const ALIVE: u64 = 0xA11E;
/// Value the destructor writes into the payload.
const DESTROYED: u64 = 0xDEAD;

/// An object readers reach through the world's shared pointer. Its payload sits in a model
/// `UnsafeCell` that readers read and the destructor writes: loom reports the two accesses when
/// happens-before does not order them, and a reader that runs after the destructor reads
/// `DESTROYED`. The cell itself is never dropped (its memory is kept until the machine drops).
pub struct Object {
    payload: ManuallyDrop<rt::UnsafeCell<u64>>,
}

// SAFETY: the payload is only written by the destructor, which the protocol orders after every
// reader; that ordering is exactly what the models check.
unsafe impl Send for Object {}
// SAFETY: readers on several threads only read the payload; the one write (the destructor) is
// what the protocol orders after them, which is what the models check.
unsafe impl Sync for Object {}

impl Object {
    /// A live object.
    pub(super) fn new() -> Self {
        Object {
            payload: ManuallyDrop::new(rt::UnsafeCell::new(ALIVE)),
        }
    }

    /// Reads the payload and panics if the destructor already ran (S1).
    pub(super) fn check_alive(&self, reader: &str) {
        // SAFETY: a plain read; a concurrent destructor write is what loom reports.
        let value = self.payload.with(|p| unsafe { *p });
        assert_ne!(value, DESTROYED, "S1: object freed while {reader} holds it");
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: the destructor runs once the protocol released the object: no reader remains.
        self.payload.with_mut(|p| unsafe { *p = DESTROYED });
    }
}

/// The mutation named by `KEPOCH_MUTATION` (or the older `KEPOCH_LOOM_MUTATION`), so that the
/// mutation score can prove the models catch re-introduced bugs.
pub fn mutations() -> Mutations {
    let name = std::env::var("KEPOCH_MUTATION").or_else(|_| std::env::var("KEPOCH_LOOM_MUTATION"));
    let name = match name {
        Ok(name) if !name.is_empty() => name,
        _ => return Mutations::NONE,
    };
    let mutation = Mutation::from_name(&name)
        .unwrap_or_else(|| panic!("KEPOCH_MUTATION={name}: no such mutation"));
    let set = Mutations::NONE.with(mutation);
    assert!(
        set.active(mutation),
        "KEPOCH_MUTATION={name} needs the test built with `--features mutations`"
    );
    set
}

/// A domain on a model machine, with one shared pointer that readers follow and writers replace.
pub struct World {
    /// The machine.
    pub platform: ModelPlatform,
    /// The domain under test. Unloaded only by [`World::finish`] or a scenario that takes it out:
    /// a world dropped while a check panics leaks its domain instead of unloading it, so that the
    /// first failure is the one reported.
    pub domain: ManuallyDrop<DomainBox<ModelPlatform>>,
    /// The shared pointer.
    pub cell: AtomicPtr<Object>,
    /// Schedule gates of a directed scenario (see [`Gate`]).
    pub gates: [Gate; GATES],
}

/// Gates a [`World`] offers its scenario.
pub const GATES: usize = 4;

/// A point in a directed scenario that one model thread opens and another waits for: a plain std
/// flag, which neither checker sees. It fixes the order of two threads' steps, so that the checker
/// spends no preemptions on reaching the race, and adds no happens-before edge: loom still lets
/// every load return any value the memory model allows, as if the two threads raced.
pub struct Gate(AtomicBool);

impl Gate {
    /// A closed gate.
    pub const fn new() -> Self {
        Gate(AtomicBool::new(false))
    }

    /// Opens the gate.
    pub fn open(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits (giving the other model threads turns) until the gate is open.
    pub fn wait(&self) {
        while !self.0.load(std::sync::atomic::Ordering::Relaxed) {
            rt::yield_now();
        }
    }
}

impl World {
    /// The domain's counters in a heap buffer: a `Stats` (40 KB) on a model thread's small stack would
    /// overflow it.
    pub fn stats(&self) -> Box<kepoch::Stats> {
        let layout = Layout::new::<kepoch::Stats>();
        // SAFETY: `Stats` is made of integers only, so zeroed memory is a valid value; the layout is
        // that of `Stats` (not zero-sized) and a failed allocation is reported, not dereferenced.
        let mut stats = unsafe {
            let raw = std::alloc::alloc_zeroed(layout).cast::<kepoch::Stats>();
            if raw.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(raw)
        };
        self.domain.stats_into(&mut stats);
        stats
    }

    /// Loads a domain with `strategy` on a machine where CPUs `0..running` run, all in group 0.
    pub fn new(strategy: Strategy, running: usize) -> Arc<World> {
        Self::grouped(strategy, running, 64)
    }

    /// [`World::new`] on a machine of `group_size` processors per group.
    pub fn grouped(strategy: Strategy, running: usize, group_size: usize) -> Arc<World> {
        let platform = ModelPlatform::grouped(running, group_size);
        platform
            .0
            .check_idle_messages
            .store(strategy != Strategy::Eager, Ordering::SeqCst);
        let config = Config {
            mutations: mutations(),
            ..Config::with_strategy(strategy)
        };
        let domain = on_cpu(0, || {
            Domain::create(platform.clone(), config).expect("load")
        });
        let first = domain.alloc(Object::new()).expect("alloc");
        Arc::new(World {
            platform,
            domain: ManuallyDrop::new(domain),
            cell: AtomicPtr::new(first.as_ptr()),
            gates: [const { Gate::new() }; GATES],
        })
    }

    /// Runs `f` on a new model thread that shares this world.
    pub fn spawn(
        self: &Arc<Self>,
        f: impl FnOnce(&World) + Send + 'static,
    ) -> rt::thread::JoinHandle<()> {
        let world = Arc::clone(self);
        rt::thread::spawn(move || f(&world))
    }

    /// A reader on `cpu`: enters, follows the pointer, and checks the object is alive while inside.
    pub fn read(&self, cpu: usize) {
        self.read_migrating(cpu, cpu);
    }

    /// A reader that enters on `from`, follows the pointer, migrates to `to` (below DISPATCH a
    /// thread may), checks the object there and exits on `to`.
    pub fn read_migrating(&self, from: usize, to: usize) {
        // SAFETY: exited below, before the domain can be dropped (the world is borrowed).
        let token = on_cpu(from, || unsafe { self.domain.enter_raw() });
        let object = self.cell.load(Ordering::Acquire);
        rt::yield_now();
        on_cpu(to, || {
            // SAFETY: protected by the epoch entered above; freed memory is kept during a model,
            // so even a protocol bug reads stale bytes, which the check reports.
            if let Some(object) = unsafe { object.as_ref() } {
                object.check_alive(&format!("a reader that entered on CPU {from}"));
            }
            // SAFETY: the token came from this domain and is exited once.
            unsafe { self.domain.exit_raw(token) };
        });
    }

    /// A reader on `cpu` that, once it holds the object, opens gate `entered` and waits for gate
    /// `proceed` before it checks the object and exits.
    pub fn read_gated(&self, cpu: usize, entered: usize, proceed: usize) {
        // SAFETY: exited below, before the domain can be dropped (the world is borrowed).
        let token = on_cpu(cpu, || unsafe { self.domain.enter_raw() });
        let object = self.cell.load(Ordering::Acquire);
        self.gates[entered].open();
        self.gates[proceed].wait();
        on_cpu(cpu, || {
            // SAFETY: protected by the epoch entered above; freed memory is kept during a model.
            if let Some(object) = unsafe { object.as_ref() } {
                object.check_alive(&format!("a reader on CPU {cpu}"));
            }
            // SAFETY: the token came from this domain and is exited once.
            unsafe { self.domain.exit_raw(token) };
        });
    }

    /// A writer on `cpu`: publishes a new object, unlinking the current one, and retires that one.
    /// Does nothing if the allocation fails (allocations on `cpu` were made to fail).
    pub fn replace(&self, cpu: usize) {
        on_cpu(cpu, || {
            let Ok(fresh) = self.domain.alloc(Object::new()) else {
                return;
            };
            let old = self.cell.swap(fresh.as_ptr(), Ordering::AcqRel);
            if let Some(old) = NonNull::new(old) {
                // SAFETY: unlinked just now; allocated by this domain.
                unsafe { self.domain.retire(old) }.expect("retire");
            }
        });
    }

    /// Runs one cycle to its end from the calling thread.
    pub fn cycle(&self) {
        self.platform.cycle(&self.domain);
    }

    /// Retires what is still published, runs a few idle cycles and checks that everything retired
    /// was disposed of (L1: no reader is inside any more), then unloads and checks S8.
    pub fn finish(this: Arc<Self>) {
        let world = Arc::try_unwrap(this).ok().expect("threads joined");
        let last = world.cell.swap(ptr::null_mut(), Ordering::AcqRel);
        on_cpu(0, || {
            if let Some(last) = NonNull::new(last) {
                // SAFETY: unlinked; allocated by this domain.
                unsafe { world.domain.retire(last) }.expect("retire");
            }
            for _ in 0..3 {
                world.cycle();
            }
        });
        let pending = world.stats().pending;
        assert_eq!(
            pending, 0,
            "L1: {pending} retired item(s) still pending after three cycles with no reader inside"
        );
        let (platform, domain) = world.into_parts();
        on_cpu(0, || drop(domain));
        check_unloaded(&platform);
    }

    /// Takes the world apart for a scenario that unloads the domain itself.
    pub fn into_parts(self) -> (ModelPlatform, DomainBox<ModelPlatform>) {
        let World {
            platform, domain, ..
        } = self;
        (platform, ManuallyDrop::into_inner(domain))
    }
}

/// Checks S8 after the domain was dropped: nothing of it runs any more (leftover messages, work
/// items and timer firings run now, and any that touches the freed domain is a use after free) and
/// nothing is leaked.
pub fn check_unloaded(platform: &ModelPlatform) {
    let workers = std::mem::take(&mut *lock(&platform.0.workers));
    for worker in workers {
        worker.join().unwrap();
    }
    platform.deliver_all();
    platform.run_passive_work();
    platform.fire_timer();
    let live = platform.live_blocks();
    assert_eq!(live, 0, "S8: {live} block(s) leaked by unload");
}

/// A work callback that allocates an object in the domain at `context` and retires it at once:
/// what a work callback or a destructor retiring more during unload looks like.
pub fn retire_fresh_object(context: usize) {
    // SAFETY: the scenarios pass the address of a domain that outlives its work items (unload
    // waits for them).
    let domain = unsafe { &*(context as *const Domain<ModelPlatform>) };
    if let Ok(object) = domain.alloc(Object::new()) {
        // SAFETY: never published, allocated by this domain.
        unsafe { domain.retire(object) }.expect("retire");
    }
}
