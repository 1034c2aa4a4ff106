//! The helpers every test uses: the configuration, a counted test object, a domain on the test
//! platform and a retirement.

use super::platform::TestPlatform;
use crate::config::{Config, Strategy};
use crate::{Domain, DomainBox};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The configuration tests create domains with: `strategy`, plus the mutation named by the
/// `KEPOCH_MUTATION` environment variable (with the `mutations` feature), so that
/// `test-scripts/mutation-score.sh` can run this whole suite against a re-introduced bug.
pub(super) fn test_config(strategy: Strategy) -> Config {
    let mut mutations = crate::Mutations::NONE;
    if let Ok(name) = std::env::var("KEPOCH_MUTATION") {
        let mutation = crate::Mutation::from_name(&name)
            .unwrap_or_else(|| panic!("KEPOCH_MUTATION={name}: no such mutation"));
        mutations = mutations.with(mutation);
    }
    Config {
        mutations,
        ..Config::with_strategy(strategy)
    }
}

/// A retirable test object that counts its drops.
pub(super) struct Tracked(pub(super) Arc<AtomicUsize>);
impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A domain on a machine of `cpus` processors in one group, all reported.
pub(super) fn domain(cpus: usize, strategy: Strategy) -> (TestPlatform, DomainBox<TestPlatform>) {
    grouped_domain(cpus, 64, strategy)
}

/// A domain on a machine of `cpus` processors, `group_size` per group, all reported.
pub(super) fn grouped_domain(
    cpus: usize,
    group_size: usize,
    strategy: Strategy,
) -> (TestPlatform, DomainBox<TestPlatform>) {
    let platform = TestPlatform::grouped(cpus, cpus as u32, group_size);
    let domain = Domain::create(platform.clone(), test_config(strategy)).expect("load");
    (platform, domain)
}

/// Retires a new [`Tracked`] object (never published) on the current processor; returns its stamp.
pub(super) fn retire_new(domain: &Domain<TestPlatform>, drops: &Arc<AtomicUsize>) -> u64 {
    let object = domain.alloc(Tracked(drops.clone())).expect("alloc");
    // SAFETY: never published to readers.
    unsafe { domain.retire(object) }.expect("first retire")
}

/// Processors per group of the machines the topology-sensitive tests run on: one group (as on
/// most machines), two processors per group, and one (every processor is number 0 of its own
/// group, so a slot found by number alone is always another processor's).
pub(super) const GROUP_SIZES: [usize; 3] = [64, 2, 1];

/// Bytes of one group table of the slot directory: kept until unload once allocated (lookups read
/// it without a lock), so a rolled-back add in a new group leaves one behind.
pub(super) fn group_table_bytes() -> u64 {
    crate::table::SlotTable::<TestPlatform>::group_table_layout().size() as u64
}

/// Bytes of one processor's slot.
pub(super) fn slot_bytes() -> u64 {
    core::mem::size_of::<crate::participant::Slot<TestPlatform>>() as u64
}

/// Fires the timer and delivers messages until a work item is handed to a passive thread (held or
/// run); panics after 20 cycles without one.
pub(super) fn run_cycles_until_work_is_queued(platform: &TestPlatform) {
    for _ in 0..20 {
        if !platform.0.lock().unwrap().passive.is_empty() {
            return;
        }
        platform.fire_timer();
        platform.run_messages();
    }
    panic!("no work item was queued after 20 cycles");
}
