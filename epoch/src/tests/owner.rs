//! The slot-owner check (`Platform::verify_slot_owner`): the core names the processor whose slot
//! it uses as that processor's own, and the test platform panics when the caller runs elsewhere. A
//! (group, number) confusion shows at the first use of the wrong slot, whatever the schedule.

use super::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Enters and exits on `cpu`; the panic message if the platform reported a broken rule. The
/// processor and IRQL of the test thread are reset after a panic (it left them raised).
fn enter_and_exit_on(domain: &Domain<TestPlatform>, cpu: usize) -> Option<String> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        TestPlatform::on_cpu(cpu, || drop(domain.enter()))
    }));
    CPU.with(|c| c.set(0));
    IRQL.with(|i| i.set(0));
    let payload = result.err()?;
    Some(match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_string(), |m| m.to_string()),
    })
}

#[test]
fn every_processor_of_every_group_uses_its_own_slot() {
    for strategy in Strategy::ALL {
        for group_size in GROUP_SIZES {
            let (platform, domain) = grouped_domain(4, group_size, strategy);
            let drops = Arc::new(AtomicUsize::new(0));
            for cpu in 0..4 {
                assert_eq!(enter_and_exit_on(&domain, cpu), None, "{strategy}");
                TestPlatform::on_cpu(cpu, || retire_new(&domain, &drops));
            }
            domain.synchronize();
            assert_eq!(drops.load(Ordering::SeqCst), 4, "{strategy}");
            assert_eq!(domain.stats().cpus_prepared, 4, "{strategy}");
            drop(domain);
            assert_eq!(platform.live_allocations(), 0);
        }
    }
}

/// The `table-ignores-group` mutation files processor (1, 0) under (0, 0): its first enter finds
/// processor 0's slot, and the check reports it there, before any reader is recorded in it.
#[cfg(feature = "mutations")]
#[test]
fn a_slot_table_that_ignores_the_group_is_reported_at_the_first_enter() {
    let platform = TestPlatform::grouped(2, 2, 1);
    let config = Config {
        mutations: crate::Mutations::NONE.with(crate::Mutation::TableIgnoresGroup),
        ..test_config(Strategy::Lazy)
    };
    let domain = Domain::create(platform.clone(), config).expect("load");
    assert_eq!(enter_and_exit_on(&domain, 0), None);
    let report = enter_and_exit_on(&domain, 1).expect("the wrong slot was used unnoticed");
    assert!(
        report.contains("enter on processor 1:0 used the slot of processor 0:0"),
        "{report}"
    );
    drop(domain);
    assert_eq!(platform.live_allocations(), 0);
}
