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

pub(super) fn domain(cpus: usize, strategy: Strategy) -> (TestPlatform, DomainBox<TestPlatform>) {
    let platform = TestPlatform::new(cpus, cpus as u32);
    let domain = Domain::create(platform.clone(), test_config(strategy)).expect("load");
    (platform, domain)
}

pub(super) fn retire_new(domain: &Domain<TestPlatform>, drops: &Arc<AtomicUsize>) -> u64 {
    let object = domain.alloc(Tracked(drops.clone())).ok().expect("alloc");
    // SAFETY: never published to readers.
    unsafe { domain.retire(object) }.expect("first retire")
}
