//! What a machine lifetime is made of: the machine a seed describes, the allocation fault hook and
//! the workload's tasks on the busy CPUs.

use super::linked::{LinkedReader, LinkedWriter};
use super::map::{MapReader, MapWriter};
use super::monitor::Monitor;
use super::tasks::{FlushStorm, Poller, Reader, Staller, Synchronizer, Writer};
use super::work::{WorkEnv, WorkItems};
use super::{Mode, RunOptions, Shared, TORTURE_CYCLE_US};
use crate::machine::{AllocRequest, FaultHook, Firmware, Machine, MachineConfig};
use kepoch::platform::Irql;
use kepoch::Strategy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// Processors per group of the dense machines (accurate and under-reporting firmware): mostly
/// several groups (1: every processor is number 0 of a group of its own), sometimes one.
const DENSE_GROUP_SIZES: [u8; 4] = [1, 2, 4, 64];

/// The machine a seed describes. `eager` gets an accurate machine with max == active (it cannot load
/// elsewhere); the other strategies get max > active, under-reporting firmware or sparse groups.
/// Every strategy gets machines of several processor groups: `DENSE_GROUP_SIZES` for dense
/// numbering, half-populated groups for sparse firmware.
pub fn machine_for(
    strategy: Strategy,
    seed: u64,
    hot_add_rate: u32,
    duration_us: u64,
) -> MachineConfig {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x746F_7274_7572_6521);
    let hot_add_slots = if hot_add_rate == 0 || strategy == Strategy::Eager {
        0
    } else {
        let expected = (hot_add_rate as u64 * duration_us).div_ceil(1_000_000);
        expected.clamp(1, 8) as u32
    };
    let mut config = MachineConfig {
        seed,
        hot_add_slots,
        callback_api_present: true,
        ..MachineConfig::default()
    };
    let active = rng.gen_range(2..=5);
    config.active_at_boot = active;
    if strategy == Strategy::Eager {
        config.max_reported = active;
        config.firmware = Firmware::Accurate;
        config.group_size = DENSE_GROUP_SIZES[rng.gen_range(0..DENSE_GROUP_SIZES.len())];
        return config;
    }
    match rng.gen_range(0..3) {
        0 => {
            config.firmware = Firmware::Accurate;
            config.max_reported = active + hot_add_slots + rng.gen_range(0..60);
            config.group_size = DENSE_GROUP_SIZES[rng.gen_range(0..DENSE_GROUP_SIZES.len())];
        }
        1 => {
            config.firmware = Firmware::UnderReport;
            config.max_reported = rng.gen_range(1..active);
            config.group_size = DENSE_GROUP_SIZES[rng.gen_range(0..DENSE_GROUP_SIZES.len())];
        }
        _ => {
            config.firmware = Firmware::Sparse;
            config.group_size = [2u8, 4, 8][rng.gen_range(0..3)];
            config.max_reported = active + hot_add_slots + rng.gen_range(0..8);
        }
    }
    config
}

/// The allocation fault hook of a lifetime: the caller's, plus (overflow workload) every allocation at
/// DISPATCH on `overflow_cpu` — the lazy preparation of its slot — so that CPU runs on the overflow slot.
pub(super) fn fault_hook(options: &RunOptions, overflow_cpu: Option<u32>) -> Option<FaultHook> {
    let user = options.alloc_fault_hook.clone();
    match (user, overflow_cpu) {
        (user, Some(cpu)) => Some(Arc::new(move |req: &AllocRequest| {
            user.as_ref().is_some_and(|hook| hook(req))
                || (req.cpu == cpu && req.irql >= Irql::DISPATCH)
        })),
        (user, None) => user,
    }
}

/// Spawns the workload of a lifetime on its busy CPUs.
pub(super) fn spawn_tasks(
    machine: &Machine,
    shared: &Arc<Shared>,
    env: &Arc<WorkEnv>,
    busy: &[u32],
    rng: &mut ChaCha8Rng,
) {
    let workloads = shared.workloads;
    for &cpu in busy {
        machine.spawn(cpu, Reader::new(shared.clone()));
        machine.spawn(cpu, Reader::new(shared.clone()));
    }
    for &cpu in busy.iter().step_by(2) {
        machine.spawn(
            cpu,
            Writer {
                shared: shared.clone(),
            },
        );
    }
    machine.spawn(
        busy[0],
        Synchronizer {
            shared: shared.clone(),
        },
    );
    if workloads.work_items {
        for &cpu in busy.iter().take(2) {
            machine.spawn(cpu, WorkItems::new(shared.clone(), env.clone()));
        }
    }
    if workloads.stats {
        machine.spawn(
            busy[rng.gen_range(0..busy.len())],
            Poller {
                shared: shared.clone(),
                released: 0,
            },
        );
    }
    if workloads.storms {
        for &cpu in busy.iter().take(3) {
            machine.spawn(
                cpu,
                FlushStorm {
                    shared: shared.clone(),
                },
            );
        }
    }
    if workloads.map {
        for &cpu in busy {
            machine.spawn(cpu, MapReader::new(shared.clone()));
        }
        for &cpu in busy.iter().rev().take(2) {
            machine.spawn(
                cpu,
                MapWriter {
                    shared: shared.clone(),
                },
            );
        }
    }
    if workloads.list || workloads.map {
        for &cpu in busy {
            machine.spawn(cpu, LinkedReader::new(shared.clone()));
        }
        for &cpu in busy.iter().take(2) {
            machine.spawn(
                cpu,
                LinkedWriter {
                    shared: shared.clone(),
                },
            );
        }
    }
    if workloads.stalls {
        machine.spawn(
            busy[rng.gen_range(0..busy.len())],
            Staller::new(shared.clone()),
        );
    }
    let interval_us = match shared.mode {
        Mode::Deterministic => 2 * u64::from(TORTURE_CYCLE_US),
        Mode::Parallel => 1_000,
    };
    machine.spawn(busy[0], Monitor::new(shared.clone(), interval_us));
}
