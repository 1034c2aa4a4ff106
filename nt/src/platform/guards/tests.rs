//! The table's rules without a kernel: counts never above the guards a thread holds (no false
//! report), whatever DPC exits, DISPATCH enters, a full table and releases in between do.

extern crate std;

use std::collections::HashMap;
use std::vec::Vec;

use super::*;

#[test]
fn enters_below_dispatch_count_and_the_last_exit_frees_the_entry() {
    let table = GuardTable::default();
    table.entered(7, true);
    table.entered(7, true);
    assert_eq!(table.held(7), 2);
    assert_eq!(table.holders().collect::<Vec<_>>(), [(7, 2)]);
    table.exited(7);
    assert_eq!(table.held(7), 1);
    table.exited(7);
    assert_eq!(table.held(7), 0);
    assert_eq!(table.find(7), None, "released at 0");
    assert_eq!(table.holders().count(), 0);
}

#[test]
fn a_zeroed_table_is_an_empty_one_with_reports_on() {
    // What `Guards::new` relies on when it zeroes the pool block.
    // SAFETY: atomics of integers and a bool: all zeros is a valid value of each.
    let table: GuardTable = unsafe { core::mem::zeroed() };
    assert!(table.reporting());
    assert_eq!(table.holders().count(), 0);
    table.entered(7, true);
    assert_eq!(table.held(7), 1);
    table.disable_reports();
    assert!(!table.reporting());
}

#[test]
fn enters_at_dispatch_and_thread_id_0_are_not_counted() {
    let table = GuardTable::default();
    table.entered(7, false);
    assert_eq!(table.held(7), 0);
    assert_eq!(table.find(7), None, "no entry claimed at DISPATCH");
    table.entered(0, true);
    table.exited(0);
    assert_eq!(table.held(0), 0);
    assert_eq!(table.holders().count(), 0);
}

#[test]
fn a_guard_entered_at_passive_and_dropped_at_dispatch_is_uncounted() {
    // The exit hook does not know the IRQL: an exit at DISPATCH is the current thread's.
    let table = GuardTable::default();
    table.entered(7, true);
    table.exited(7);
    assert_eq!(table.held(7), 0);
    assert_eq!(table.find(7), None);
}

#[test]
fn a_dpc_exit_charged_to_the_interrupted_thread_only_undercounts_it() {
    let table = GuardTable::default();
    // Thread 7 holds one guard; a DPC interrupting it enters (at DISPATCH: not counted) and exits
    // (charged to thread 7): 7's count drops to 0 and its entry goes, though it still holds its guard.
    table.entered(7, true);
    table.entered(7, false);
    table.exited(7);
    assert_eq!(table.held(7), 0, "a missed report, never a false one");
    // Its own exit later finds nothing to decrement; a new guard counts from 0 again.
    table.exited(7);
    assert_eq!(table.held(7), 0);
    table.entered(7, true);
    assert_eq!(table.held(7), 1);
}

#[test]
fn a_full_table_counts_nothing_more_and_later_exits_cannot_raise_a_count() {
    let table = GuardTable::default();
    for thread in 1..=ENTRIES {
        table.entered(thread, true);
    }
    let late = ENTRIES + 1;
    table.entered(late, true); // Guard A, not counted: full.
    assert_eq!(table.held(late), 0);
    table.exited(1); // Thread 1's entry frees.
    table.entered(late, true); // Guard B: claims it.
    assert_eq!(table.held(late), 1);
    table.exited(late); // A exits: charged to B's count (an undercount).
    assert_eq!(table.held(late), 0);
    table.exited(late); // B exits: no entry any more.
    assert_eq!(table.held(late), 0);
    for thread in 2..=ENTRIES {
        assert_eq!(table.held(thread), 1);
    }
}

#[test]
fn an_update_after_a_release_in_between_is_lost_not_applied_to_the_new_owner() {
    let table = GuardTable::default();
    table.entered(7, true);
    let index = table.find(7).expect("an entry");
    // Thread 7 found its entry; before it updates it, an interrupter (a DPC charged to 7) exits and
    // releases it, and thread 9 on another processor claims it and enters.
    table.exited(7);
    table.entered(9, true);
    assert_eq!(table.find(9), Some(index));
    assert!(matches!(
        table.update(index, 7, |count| count.checked_add(1)),
        Update::Lost
    ));
    assert_eq!(table.held(9), 1, "9's count untouched");
    // Thread 9 releases and claims again (same generation step twice): a word read before is stale.
    let stale = table.entries[index].word.load(Ordering::SeqCst);
    table.exited(9);
    table.entered(9, true);
    assert_ne!(table.entries[index].word.load(Ordering::SeqCst), stale);
}

/// xorshift64*.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn random_enters_and_exits_at_any_irql_never_count_more_than_a_thread_holds() {
    // 100 threads over 64 entries. Each thread's guards are a stack of (entered below DISPATCH)
    // flags; a DPC enters at DISPATCH and exits charged to a random "interrupted" thread.
    let table = GuardTable::default();
    let mut held: HashMap<usize, u32> = HashMap::new();
    let mut state = 0x1234_5678_9ABC_DEF1u64;
    for _ in 0..200_000 {
        let thread = (next(&mut state) % 100 + 1) as usize;
        let holds = held.entry(thread).or_default();
        match next(&mut state) % 5 {
            0 | 1 => {
                table.entered(thread, true);
                *holds += 1;
            }
            2 if *holds > 0 => {
                table.exited(thread);
                *holds -= 1;
            }
            3 => {
                // Its own guard entered after raising to DISPATCH, then dropped.
                table.entered(thread, false);
                table.exited(thread);
            }
            _ => {
                // A DPC interrupting `thread`: a guard of its own, exited there.
                table.entered(thread, false);
                table.exited(thread);
            }
        }
        let holds = held[&thread];
        assert!(table.held(thread) <= holds, "thread {thread}");
    }
    for (thread, count) in table.holders() {
        assert!(count <= held[&thread], "thread {thread}");
    }
}

#[test]
fn threads_at_once_never_see_more_than_they_hold() {
    // Each host thread acts as one kernel thread (distinct id); entries are claimed and released by
    // many of them at once, so claims race with releases of the same entries.
    let table = GuardTable::default();
    std::thread::scope(|scope| {
        for thread in 1..=96usize {
            let table = &table;
            scope.spawn(move || {
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ thread as u64;
                let mut holds = 0u32;
                for _ in 0..20_000 {
                    if next(&mut state).is_multiple_of(2) {
                        table.entered(thread, true);
                        holds += 1;
                    } else if holds > 0 {
                        table.exited(thread);
                        holds -= 1;
                    }
                    assert!(table.held(thread) <= holds);
                }
                while holds > 0 {
                    table.exited(thread);
                    holds -= 1;
                }
                assert_eq!(table.held(thread), 0);
            });
        }
    });
    assert_eq!(table.holders().count(), 0);
}
