//! The caller-provided epoch state: 32 bytes of C memory (`kepoch_epoch_state_t`, and eBPF's
//! `ebpf_epoch_state_t`, whose layout it keeps: a `LIST_ENTRY`, a `uint64_t`, a `uint32_t` and a
//! `KIRQL`) that hold kepoch's token between enter and exit, a check word that catches a state
//! entered twice or exited without an enter, and the IRQL and processor of the enter.

use core::ptr::{self, addr_of, addr_of_mut};

use kepoch::platform::Platform;
use kepoch::{Domain, RawGuard};
use kepoch_nt::sys::irql;
use kepoch_nt::NtPlatform;

use crate::fail::{fail_fast, Function, Misuse};

/// The mutation `c-enter-protects-nothing` (feature `mutations`): an enter exits at once and the exit
/// does nothing, so readers are not protected. `c/sample-test/tests/sample_mutation.rs` proves the
/// sample's readers then see freed memory.
#[cfg(feature = "mutations")]
pub static ENTER_PROTECTS_NOTHING: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Whether the `c-enter-protects-nothing` mutation is on.
fn enter_protects_nothing() -> bool {
    #[cfg(feature = "mutations")]
    {
        ENTER_PROTECTS_NOTHING.load(core::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(feature = "mutations"))]
    {
        false
    }
}

/// XORed with the state's and the domain's addresses in [`EpochState::check`] between enter and
/// exit: a state entered in one domain is not accepted by another's exit.
const ENTERED: usize = 0x6B65_706F_6368_454E;

/// The check word of `state` entered in `domain`.
fn entered(state: *const EpochState, domain: &Domain<NtPlatform>) -> usize {
    state as usize ^ ENTERED ^ (domain as *const Domain<NtPlatform> as usize)
}

/// The C epoch state (layout of `ebpf_epoch_state_t`: `epoch_list_entry.Flink`,
/// `epoch_list_entry.Blink`, `epoch`, `cpu_id`, `irql_at_enter`).
#[repr(C)]
pub struct EpochState {
    /// The token's first word (the list entry's `Flink`).
    token_participant: usize,
    /// `address ^ ENTERED ^ domain` while entered, 0 after the exit (the list entry's `Blink`).
    check: usize,
    /// The token's second word (`epoch`).
    token_tag: u64,
    /// The processor index at the enter (`cpu_id`).
    cpu_id: u32,
    /// The IRQL at the enter (`irql_at_enter`).
    irql_at_enter: u8,
}

const _: () = assert!(core::mem::size_of::<EpochState>() == 32);

/// Enters an epoch of `domain` and fills in `state`. Any IRQL up to DISPATCH_LEVEL.
///
/// # Safety
/// `state` is NULL or points to 32 writable bytes that stay in place until the exit.
pub unsafe fn enter(domain: &Domain<NtPlatform>, state: *mut EpochState, name: &str) {
    if state.is_null() {
        fail_fast(name, Function::Enter, Misuse::Null, 0, format_args!(""));
    }
    let level = irql::current();
    if level > irql::DISPATCH_LEVEL {
        fail_fast(
            name,
            Function::Enter,
            Misuse::IrqlTooHigh,
            state as usize,
            format_args!("(IRQL {level}; at most DISPATCH_LEVEL) "),
        );
    }
    // SAFETY: writable per the caller; read as plain bytes (the caller may pass uninitialised
    // memory: whatever it holds is only compared).
    let check = unsafe { ptr::read_volatile(addr_of!((*state).check)) };
    if check == entered(state, domain) {
        fail_fast(
            name,
            Function::Enter,
            Misuse::StateInUse,
            state as usize,
            format_args!(""),
        );
    }
    let cpu_id = domain.platform().current_processor().index;
    // SAFETY: exited exactly once by `exit`, which only accepts a state this function filled in.
    let [participant, tag] = unsafe { domain.enter_raw() }.into_words();
    if enter_protects_nothing() {
        // SAFETY: the token just entered, exited once (the exit below skips it under the mutation).
        unsafe { domain.exit_raw(RawGuard::from_words([participant, tag])) };
    }
    // SAFETY: writable per the caller.
    unsafe {
        state.write(EpochState {
            token_participant: participant,
            check: entered(state, domain),
            token_tag: tag as u64,
            cpu_id,
            irql_at_enter: level,
        })
    };
}

/// Exits the epoch `state` holds. At the IRQL of the enter; on another processor only when the enter
/// was below DISPATCH_LEVEL.
///
/// # Safety
/// `state` is NULL or points to 32 readable and writable bytes.
pub unsafe fn exit(domain: &Domain<NtPlatform>, state: *mut EpochState, name: &str) {
    if state.is_null() {
        fail_fast(name, Function::Exit, Misuse::Null, 0, format_args!(""));
    }
    // SAFETY: readable per the caller.
    let entered_check = unsafe { ptr::read_volatile(addr_of!((*state).check)) };
    if entered_check != entered(state, domain) {
        fail_fast(
            name,
            Function::Exit,
            Misuse::StateNotEntered,
            state as usize,
            format_args!(""),
        );
    }
    // SAFETY: an entered state: `enter` wrote every field.
    let saved = unsafe { state.read() };
    let level = irql::current();
    if level != saved.irql_at_enter {
        fail_fast(
            name,
            Function::Exit,
            Misuse::IrqlChanged,
            state as usize,
            format_args!(
                "(entered at IRQL {}, exits at {level}) ",
                saved.irql_at_enter
            ),
        );
    }
    if level == irql::DISPATCH_LEVEL {
        let here = domain.platform().current_processor().index;
        if here != saved.cpu_id {
            fail_fast(
                name,
                Function::Exit,
                Misuse::MigratedAtDispatch,
                state as usize,
                format_args!("(entered on processor {}, exits on {here}) ", saved.cpu_id),
            );
        }
    }
    // SAFETY: writable per the caller; cleared before the exit so that a second exit is caught.
    unsafe { ptr::write_volatile(addr_of_mut!((*state).check), 0) };
    if enter_protects_nothing() {
        return;
    }
    // SAFETY: the words `enter` stored from a token that is exited here, once (the check word).
    unsafe {
        domain.exit_raw(RawGuard::from_words([
            saved.token_participant,
            saved.token_tag as usize,
        ]))
    };
}
