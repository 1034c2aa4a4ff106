//! What the A/B found before it changed anything, and putting it back: every registry value it writes
//! (restored with its type and bytes, or deleted when it was absent), the `Parameters` key when the A/B
//! created it, and the service's state (running again with the restored values, or stopped).

use super::service::{restart, stop, ServiceWait};
use super::system::{GuestSystem, RegValue, ServiceStatus, SysError};

/// The state before the A/B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The values the A/B writes, as found (`None`: absent).
    pub values: Vec<(&'static str, Option<RegValue>)>,
    /// Whether the A/B created the `Parameters` key.
    pub created_key: bool,
    /// Whether the service was running (or starting).
    pub was_running: bool,
}

impl Saved {
    /// Opens the key, reads every value in `names` and the service's state. Nothing is written
    /// except the key when it is missing.
    pub fn capture(sys: &mut dyn GuestSystem, names: &[&'static str]) -> Result<Saved, SysError> {
        let status = sys.service_status()?;
        let created_key = sys.open_parameters()?;
        let mut values = Vec::new();
        for name in names {
            match sys.read_value(name) {
                Ok(value) => values.push((*name, value)),
                Err(e) => {
                    if created_key {
                        let _ = sys.delete_parameters();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Saved {
            values,
            created_key,
            was_running: matches!(
                status.state,
                ServiceStatus::RUNNING | ServiceStatus::START_PENDING
            ),
        })
    }

    /// Puts everything back; returns one line per thing that could not be restored (empty: all
    /// restored). Tries every step even after a failed one.
    pub fn restore(&self, sys: &mut dyn GuestSystem, wait: ServiceWait) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in &self.values {
            let result = match value {
                Some(value) => sys.write_value(name, value),
                None => sys.delete_value(name),
            };
            if let Err(e) = result {
                problems.push(format!("registry value {name} not restored: {e}"));
            }
        }
        if self.created_key {
            if let Err(e) = sys.delete_parameters() {
                problems.push(format!("the Parameters key the A/B created is left: {e}"));
            }
        }
        let service = if self.was_running {
            restart(sys, wait).and_then(|outcome| {
                outcome.loaded_or(|why| {
                    format!(
                        "the service was running before the A/B but does not start again: {why}"
                    )
                })
            })
        } else {
            stop(sys, wait)
        };
        if let Err(e) = service {
            problems.push(e);
        }
        problems
    }
}
