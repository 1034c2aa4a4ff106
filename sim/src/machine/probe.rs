//! A clock of host scheduling for parallel runs. In parallel mode every simulated CPU is an OS thread,
//! and a loaded host may leave one of them unscheduled for a while: the simulated CPU then does
//! nothing, although nothing in the simulated machine is stuck. A liveness bound that counts wall time
//! or cycles while such a thread waits for the host blames the protocol for the host. A
//! [`SchedulingProbe`] tells the two apart: it advances only when every machine thread has run.

use std::sync::atomic::Ordering;

use super::state::{Shared, SimPlatform, SERVICE_ROLES};
use super::Machine;

/// Watches the machine threads of a parallel run: [`SchedulingProbe::every_thread_ran`] says whether
/// each of them — the thread of every running CPU and the timer, passive-work and hot-plug threads —
/// has passed through its scheduling loop (or through a pass of a wait) since the last time it said so.
/// Counting its `true` answers gives a clock of rounds in which the host ran every thread.
#[derive(Debug)]
pub struct SchedulingProbe {
    platform: SimPlatform,
    /// Ticks of every CPU slot's thread and of the service threads at the last completed round.
    seen_cpus: Vec<u64>,
    seen_services: [u64; SERVICE_ROLES.len()],
}

/// The ticks of every CPU slot's thread and of the service threads now.
fn ticks_now(sh: &Shared) -> (Vec<u64>, [u64; SERVICE_ROLES.len()]) {
    let cpus = sh
        .ticks
        .cpus
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .collect();
    let services = SERVICE_ROLES.map(|role| sh.ticks.of(role).load(Ordering::Relaxed));
    (cpus, services)
}

impl SchedulingProbe {
    /// True if every machine thread ran since the probe was made or since the last `true`; the next
    /// round starts then. Outside a parallel run (no threads to wait for) always true.
    pub fn every_thread_ran(&mut self) -> bool {
        let sh = &*self.platform.shared;
        let (cpus, services) = ticks_now(sh);
        let ran = !sh.is_parallel() || {
            let running = sh.st.lock().running_cpus();
            running.iter().all(|&c| cpus[c] != self.seen_cpus[c])
                && services
                    .iter()
                    .zip(&self.seen_services)
                    .all(|(now, seen)| now != seen)
        };
        if ran {
            self.seen_cpus = cpus;
            self.seen_services = services;
        }
        ran
    }
}

impl Machine {
    /// A new [`SchedulingProbe`] of this machine; its first round starts now.
    pub fn scheduling_probe(&self) -> SchedulingProbe {
        let (seen_cpus, seen_services) = ticks_now(self.sh());
        SchedulingProbe {
            platform: self.platform(),
            seen_cpus,
            seen_services,
        }
    }
}
