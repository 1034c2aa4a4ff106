//! The built-in scenarios of the A/B lab (TOML). Each round lasts 1 s per strategy and gives
//! every strategy at least 100 first-enter samples over the default 8 rounds: busy CPUs × loads per
//! round (`reloads`) plus the CPUs hot-added during the round.

/// A built-in scenario's TOML text.
pub struct Builtin {
    /// Name (`--scenario NAME`).
    pub name: &'static str,
    /// The scenario file.
    pub text: &'static str,
}

/// Every built-in scenario, in listing order.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "hyperv-maxproc",
        text: r#"
name = "hyperv-maxproc"
description = "Hyper-V guest booted with bcdedit /set maxproc yes: maximum 64, 4 running, no live hot-add (Hyper-V cannot add vCPUs to a running guest); the driver is reloaded 5 times per round"
max_reported = 64
active_at_boot = 4
group_size = 64
firmware = "accurate"
seed = 1
[workload]
duration_ms = 1000
readers_per_cpu = 2
retire_per_ms = 20
idle_cpus = 1
reloads = 5
"#,
    },
    Builtin {
        name: "qemu-hotadd",
        text: r#"
name = "qemu-hotadd"
description = "QEMU/KVM guest started with -smp 2,maxcpus=16; 8 vCPUs hot-added over QMP device_add during load (one more add fails); the driver is reloaded 4 times per round"
max_reported = 16
active_at_boot = 2
group_size = 64
firmware = "accurate"
seed = 2
[[hot_add]]
at_ms = 100
count = 2
[[hot_add]]
at_ms = 300
count = 1
fail = true
[[hot_add]]
at_ms = 400
count = 2
[[hot_add]]
at_ms = 600
count = 2
[[hot_add]]
at_ms = 800
count = 2
[workload]
duration_ms = 1000
readers_per_cpu = 2
retire_per_ms = 20
reloads = 4
"#,
    },
    Builtin {
        name: "vmware-hotadd",
        text: r#"
name = "vmware-hotadd"
description = "VMware VM with CPU hot-add enabled: 4 vCPUs at boot, maximum 128, vCPUs added in bursts of 4; the driver is reloaded 4 times per round"
max_reported = 128
active_at_boot = 4
group_size = 64
firmware = "accurate"
seed = 3
[[hot_add]]
at_ms = 200
count = 4
[[hot_add]]
at_ms = 550
count = 4
[workload]
duration_ms = 1000
readers_per_cpu = 1
retire_per_ms = 10
idle_cpus = 1
reloads = 4
"#,
    },
    Builtin {
        name: "firmware-underreport",
        text: r#"
name = "firmware-underreport"
description = "Firmware (MADT/ACPI) that reports fewer processors than run: maximum 2, 4 running; CPUs 2 and 3 have indexes at or above the maximum; the driver is reloaded 5 times per round"
max_reported = 2
active_at_boot = 4
group_size = 64
firmware = "under-report"
seed = 4
[workload]
duration_ms = 1000
readers_per_cpu = 2
retire_per_ms = 20
idle_cpus = 1
reloads = 5
"#,
    },
    Builtin {
        name: "multi-group",
        text: r#"
name = "multi-group"
description = "Server with several processor groups (bcdedit /set groupsize 4): 8 CPUs spread over groups with gaps in the indexes, one added later; the driver is reloaded 3 times per round"
max_reported = 16
active_at_boot = 8
group_size = 4
firmware = "sparse"
seed = 5
[[hot_add]]
at_ms = 400
count = 1
[workload]
duration_ms = 1000
readers_per_cpu = 1
retire_per_ms = 10
idle_cpus = 2
reloads = 3
"#,
    },
    Builtin {
        name: "idle-fleet",
        text: r#"
name = "idle-fleet"
description = "Large host where few CPUs use the driver: 24 CPUs (maximum = active, so eager loads), 20 never run epoch code: the energy cost of waking idle CPUs; the driver is reloaded 4 times per round"
max_reported = 24
active_at_boot = 24
group_size = 64
firmware = "accurate"
seed = 6
[workload]
duration_ms = 1000
readers_per_cpu = 2
retire_per_ms = 20
idle_cpus = 20
reloads = 4
"#,
    },
    Builtin {
        name: "stalled-reader",
        text: r#"
name = "stalled-reader"
description = "A reader stuck inside its epoch for 350 ms of each 500 ms load (a driver bug or a preempted thread): reclamation is held back, bounded and reported, never silent"
max_reported = 8
active_at_boot = 8
group_size = 64
firmware = "accurate"
seed = 7
[workload]
duration_ms = 1000
readers_per_cpu = 2
retire_per_ms = 10
idle_cpus = 1
stall_reader_ms = 350
reloads = 2
"#,
    },
    Builtin {
        name: "alloc-failure",
        text: r#"
name = "alloc-failure"
description = "Non-paged pool under pressure while CPUs are added: every 5th allocation fails, including per-CPU preparations; the driver is reloaded 4 times per round"
max_reported = 16
active_at_boot = 4
group_size = 64
firmware = "accurate"
seed = 8
[[hot_add]]
at_ms = 150
count = 2
[[hot_add]]
at_ms = 450
count = 2
[workload]
duration_ms = 1000
readers_per_cpu = 2
retire_per_ms = 10
alloc_fail_every = 5
reloads = 4
"#,
    },
    Builtin {
        name: "retire-storm",
        text: r#"
name = "retire-storm"
description = "A high retire rate with bursts (every 100 ms each writer retires 5000 objects at once, as a driver tearing down a table): each visit (one DPC) frees at most MaxFreesPerVisit items, the rest follows in chained cycles; compare dpc_us and frees_per_visit, and run it with workload.max_frees_per_visit = 0 to see the unbounded DPCs"
max_reported = 4
active_at_boot = 4
group_size = 64
firmware = "accurate"
seed = 9
[workload]
duration_ms = 1000
readers_per_cpu = 2
retire_per_ms = 200
burst_every_ms = 100
burst_size = 5000
reloads = 4
"#,
    },
];
