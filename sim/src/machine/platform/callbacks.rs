//! Processor-change registrations of the simulated machine: the replay at registration and removal.

use std::ptr::NonNull;

use kepoch::platform::{ProcessorChange, ProcessorChangeFn, Status};

use super::super::report::ViolationKind;
use super::super::state::{Reg, SimPlatform, STATUS_UNSUCCESSFUL};

impl SimPlatform {
    /// `processor_change_register`: replays AddStart (and AddComplete) for the processors that run,
    /// and for one being added now, then registers the callback.
    ///
    /// # Safety
    /// As for the trait method: `context` stays valid until the registration is removed.
    pub(super) unsafe fn register_processor_change(
        &self,
        callback: ProcessorChangeFn,
        context: *const (),
    ) -> Result<Option<NonNull<()>>, Status> {
        let sh = &*self.shared;
        if !sh.config.callback_api_present {
            return Ok(None);
        }
        self.require_passive("processor_change_register");
        let Some(_guard) = self.lock_callbacks("processor_change_register") else {
            return Err(STATUS_UNSUCCESSFUL);
        };
        let (running, starting) = {
            let st = sh.st.lock();
            let mut running = st.running_cpus();
            running.sort_by_key(|&c| sh.slots[c].index);
            (running, st.hot_cur.as_ref().map(|h| h.slot))
        };
        let mut replay = running.clone();
        replay.extend(starting);
        let mut started = Vec::new();
        for &slot in &replay {
            let status = self.deliver((callback, context), ProcessorChange::AddStart, slot);
            if !status.is_success() {
                for &done in &started {
                    self.deliver(
                        (callback, context),
                        ProcessorChange::AddFailure(status),
                        done,
                    );
                }
                return Err(status);
            }
            started.push(slot);
        }
        let id = {
            let mut st = sh.st.lock();
            let id = st.new_id();
            st.regs.insert(id, Reg { callback, context });
            if let Some(h) = st.hot_cur.as_mut() {
                h.notified.push(id);
            }
            id
        };
        for &slot in &running {
            self.deliver((callback, context), ProcessorChange::AddComplete, slot);
        }
        Ok(NonNull::new(id as usize as *mut ()))
    }

    /// `processor_change_deregister`: removes the registration (also from a hot-add in progress).
    ///
    /// # Safety
    /// As for the trait method: `handle` came from a registration on this machine.
    pub(super) unsafe fn deregister_processor_change(&self, handle: NonNull<()>) {
        let sh = &*self.shared;
        self.require_passive("processor_change_deregister");
        let id = handle.as_ptr() as usize as u64;
        let _guard = self.lock_callbacks("processor_change_deregister");
        let mut st = sh.st.lock();
        if st.regs.remove(&id).is_none() {
            drop(st);
            sh.violation(
                ViolationKind::Callback,
                format!("deregistration of unknown handle {id}"),
            );
            return;
        }
        if let Some(h) = st.hot_cur.as_mut() {
            h.notified.retain(|&r| r != id);
        }
    }
}
