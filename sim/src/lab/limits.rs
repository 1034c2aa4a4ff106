//! What the host can simulate within the lab's time and memory plan, and how the lab reads the files
//! it is given (regular files only, with a size limit, so that a FIFO, a device or a huge file is a
//! clear error instead of a hang or a run out of memory).
//!
//! The plan, measured on a 2-core host: in parallel mode every simulated processor is a host thread,
//! and a reclamation cycle needs every participating processor's thread to run its DPC, so cycles get
//! rarer as processors are added (32 processors: about 50 cycles in a 1 s round; 64: about 14; 128:
//! about 1, so a round measures nothing). Tasks and retirements cost host time and memory per
//! simulated millisecond: each reader keeps a histogram of about 30 KB, and every retired object stays
//! allocated (about 128 bytes with the simulated allocator's bookkeeping) until a cycle frees it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Most simulated processors a lab machine may have (running at boot plus hot-add slots).
pub const MAX_LAB_PROCESSORS: u32 = 64;
/// Most workload tasks of one load: a writer and the readers of every busy CPU.
pub const MAX_LAB_TASKS: u64 = 1_024;
/// Most retirements per simulated millisecond over all busy CPUs: a second of them without
/// reclamation is 10 million pending objects, about 1.3 GB.
pub const MAX_RETIRE_PER_MS_TOTAL: u64 = 10_000;
/// Most `[[hot_add]]` entries (or `--hot-add` flags) of a scenario.
pub const MAX_HOT_ADD_ENTRIES: usize = 256;
/// Most processors the hot-add schedule may ask for in total, failed adds included (each is a pending
/// event of the machine).
pub const MAX_HOT_ADD_REQUESTS: u64 = 1_024;
/// Largest scenario file, in bytes.
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;
/// Largest file `report` reads, in bytes.
pub const MAX_REPORT_BYTES: u64 = 256 << 20;
/// Longest scenario `name` kept, in characters (longer ones are cut, in every output).
pub const MAX_NAME_CHARS: usize = 64;
/// Longest scenario `description` kept, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 240;

/// What a file that is not a regular file is.
fn kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads the regular file at `path` as UTF-8 text of at most `limit` bytes; `what` names it in the
/// error (`scenario file`). Opening does not block (a FIFO is refused, not waited on).
pub fn read_text_file(path: &Path, limit: u64, what: &str) -> Result<String, String> {
    let name = path.display();
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {what} {name}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {what} {name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{what} {name} is {}, not a regular file",
            kind(meta.file_type())
        ));
    }
    let too_big =
        |size: String| format!("{what} {name} is {size}, over the limit of {limit} bytes");
    if meta.len() > limit {
        return Err(too_big(format!("{} bytes", meta.len())));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} {name}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(format!("more than {limit} bytes")));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{what} {name} is not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

impl super::scenario::Scenario {
    /// Checks that the host can simulate the scenario within the lab's time and memory plan; the error
    /// names the limit.
    pub fn check_host_plan(&self) -> Result<(), super::scenario::ScenarioError> {
        let err = |m: String| Err(super::scenario::ScenarioError(m));
        let entries = self.hot_add.len();
        if entries > MAX_HOT_ADD_ENTRIES {
            return err(format!(
                "the hot-add schedule has {entries} entries ([[hot_add]] or --hot-add); the lab's plan allows at most {MAX_HOT_ADD_ENTRIES}"
            ));
        }
        let requested: u64 = self.hot_add.iter().map(|h| u64::from(h.count)).sum();
        if requested > MAX_HOT_ADD_REQUESTS {
            return err(format!(
                "the hot-add schedule asks for {requested} processors (failed adds included); the lab's plan allows at most {MAX_HOT_ADD_REQUESTS}"
            ));
        }
        let processors = u64::from(self.active_at_boot) + u64::from(self.hot_add_slots());
        if processors > u64::from(MAX_LAB_PROCESSORS) {
            return err(format!(
                "{processors} simulated processors (active {} + hot-add slots {}) exceed what the lab can simulate in its time plan: at most {MAX_LAB_PROCESSORS} (each is a host thread, and a reclamation cycle waits for all of them)",
                self.active_at_boot,
                self.hot_add_slots()
            ));
        }
        let w = &self.workload;
        // Busy CPUs: the running ones the workload uses, plus every CPU hot-added later (readers
        // migrate to them, and the next load puts tasks on them).
        let busy = processors.saturating_sub(u64::from(w.idle_cpus));
        let tasks = busy * (u64::from(w.readers_per_cpu) + 1);
        if tasks > MAX_LAB_TASKS {
            return err(format!(
                "{busy} busy CPUs x ({} readers + 1 writer) = {tasks} tasks exceed the lab's plan of at most {MAX_LAB_TASKS} tasks per load (host time and memory: each reader keeps a 30 KB histogram)",
                w.readers_per_cpu
            ));
        }
        // Bursts count at their average rate.
        let burst_rate = u64::from(w.burst_size)
            .checked_div(w.burst_every_ms)
            .unwrap_or(0);
        let retire = busy * (u64::from(w.retire_per_ms) + burst_rate);
        if retire > MAX_RETIRE_PER_MS_TOTAL {
            return err(format!(
                "{busy} busy CPUs x (workload.retire_per_ms {} + bursts {burst_rate} per ms on average) = {retire} retirements per ms exceed the lab's plan of at most {MAX_RETIRE_PER_MS_TOTAL} per ms (memory: a second without reclamation leaves that many thousand objects pending)",
                w.retire_per_ms
            ));
        }
        Ok(())
    }
}
