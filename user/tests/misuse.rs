//! Misuse gives a clear error, never a hang: a panic naming it where the caller can unwind, a
//! diagnosis and an abort (a bug check) where the caller is inside the core at DISPATCH. The tests
//! of aborts run an ignored test of this binary in a child process and read its standard error.

mod common;

use common::{join, LIMIT};
use kepoch::platform::Platform;
use kepoch::{Atomic, Config, Domain, DomainBox, Owned};
use kepoch_user::{BuildError, UserPlatform};
use std::any::Any;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The message of a panic payload.
fn message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast::<&str>()
            .map(|text| text.to_string())
            .unwrap_or_default(),
    }
}

/// A third thread on a two-processor platform, while two live threads hold both, panics naming
/// the maximum and the remedy; once one of them exits, a new thread gets its processor.
#[test]
fn more_threads_than_processors_is_a_panic_naming_the_limit() {
    let platform = UserPlatform::builder()
        .max_processors(2)
        .build()
        .expect("platform");
    let domain = Domain::create(platform, Config::default()).expect("load"); // processor 0
    let domain = &domain;
    thread::scope(|s| {
        let (entered, entered_rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let holder = s.spawn(move || {
            drop(domain.enter()); // processor 1
            entered.send(()).unwrap();
            released.recv_timeout(LIMIT).expect("released by the test");
        });
        entered_rx.recv_timeout(LIMIT).expect("entered");
        let third = join(s.spawn(move || drop(domain.enter())));
        let text = message(third.expect_err("a third thread found a processor"));
        assert!(
            text.contains("all 2 are taken") && text.contains("max_processors"),
            "{text}"
        );
        release.send(()).unwrap();
        join(holder).expect("holder");
    });
    thread::scope(|s| join(s.spawn(move || drop(domain.enter())))).expect("a freed processor");
}

/// `synchronize` inside an epoch the same thread entered panics at once (it would wait for
/// itself), and the panic leaves nothing behind: after the guard drops, it returns. Inside an
/// epoch of another domain it is fine.
#[test]
fn synchronize_inside_an_epoch_of_the_same_thread_is_a_panic_not_a_hang() {
    let platform = UserPlatform::new();
    let domain = Domain::create(platform.clone(), Config::default()).expect("load");
    let other = Domain::create(platform, Config::default()).expect("load");
    // On a thread of its own, joined within the limit: without the check, synchronize never returns.
    let text = thread::scope(|s| {
        join(s.spawn(|| {
            let guard = domain.enter();
            other.synchronize();
            let outcome = catch_unwind(AssertUnwindSafe(|| domain.synchronize()));
            drop(guard);
            domain.synchronize();
            message(outcome.expect_err("synchronize returned inside an epoch"))
        }))
    })
    .expect("the thread panicked outside the checked call");
    assert!(
        text.contains("Domain::synchronize was called inside an epoch")
            && text.contains("1 reader(s)"),
        "{text}"
    );
}

/// Bad settings are refused with an error naming the setting.
#[test]
fn bad_settings_are_refused_naming_the_setting() {
    let error = UserPlatform::builder()
        .max_processors(0)
        .build()
        .unwrap_err();
    assert!(matches!(error, BuildError::MaxProcessors(0)));
    assert!(error.to_string().contains("max_processors(0)"), "{error}");
    let error = UserPlatform::builder()
        .max_processors(5000)
        .build()
        .unwrap_err();
    assert!(
        error.to_string().contains("max_processors(5000)"),
        "{error}"
    );
    let error = UserPlatform::builder()
        .wait_limit(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(error.to_string().starts_with("wait_limit(0ns)"), "{error}");
}

/// Runs the ignored test `name` of this binary in a child process; returns how it ended and its
/// standard error. A child that does not end within the limit is killed and fails the test.
fn run_child(name: &str) -> (ExitStatus, String) {
    let binary = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(binary)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child {name} hung: it did not end within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    (status, reader.join().expect("stderr reader"))
}

/// A destructor of a retired value runs at DISPATCH; one that calls `synchronize` (PASSIVE only)
/// ends the process with a diagnosis naming the routine and the IRQL, as a kernel would bug-check.
#[test]
fn a_passive_only_call_at_dispatch_aborts_with_a_diagnosis() {
    let (status, stderr) = run_child("child_synchronize_in_a_destructor");
    assert!(!status.success(), "the child ended normally:\n{stderr}");
    assert!(
        stderr.contains("Domain::synchronize was called at DISPATCH_LEVEL")
            && stderr.contains("aborting"),
        "{stderr}"
    );
}

static DESTRUCTOR_DOMAIN: OnceLock<DomainBox<UserPlatform>> = OnceLock::new();

/// Calls `synchronize` when dropped.
#[derive(Debug)]
struct SynchronizesWhenDropped;

impl Drop for SynchronizesWhenDropped {
    fn drop(&mut self) {
        DESTRUCTOR_DOMAIN.get().expect("domain").synchronize();
    }
}

#[test]
#[ignore = "aborts its process: run in a child by a_passive_only_call_at_dispatch_aborts_with_a_diagnosis"]
fn child_synchronize_in_a_destructor() {
    let domain = DESTRUCTOR_DOMAIN
        .get_or_init(|| Domain::create(UserPlatform::new(), Config::default()).expect("load"));
    let slot = Atomic::new(Owned::new(domain, SynchronizesWhenDropped).expect("memory"));
    slot.take().expect("set").retire();
    domain.synchronize();
    unreachable!("the destructor's synchronize at DISPATCH was not reported");
}

/// A thread that stays at DISPATCH: the platform's waits for its processor end after the wait
/// limit (1 s here) with a diagnosis, instead of hanging.
#[test]
fn a_thread_that_stays_at_dispatch_ends_the_wait_with_a_diagnosis() {
    let (status, stderr) = run_child("child_a_thread_stays_at_dispatch");
    assert!(!status.success(), "the child ended normally:\n{stderr}");
    assert!(
        stderr.contains("more than 1s") && stderr.contains("DISPATCH_LEVEL"),
        "{stderr}"
    );
}

#[test]
#[ignore = "fails or aborts its process: run in a child by a_thread_that_stays_at_dispatch_ends_the_wait_with_a_diagnosis"]
fn child_a_thread_stays_at_dispatch() {
    let platform = UserPlatform::builder()
        .wait_limit(Duration::from_secs(1))
        .build()
        .expect("platform");
    let domain = Arc::new(Domain::create(platform.clone(), Config::default()).expect("load"));
    let (raised, raised_rx) = mpsc::channel();
    // Not scoped: the process must be able to end while this thread still sleeps.
    let stays = Arc::clone(&domain);
    thread::spawn(move || {
        let _guard = stays.enter();
        let _previous = stays.platform().raise_to_dispatch();
        raised.send(()).unwrap();
        thread::sleep(LIMIT);
    });
    raised_rx.recv_timeout(LIMIT).expect("raised");
    domain.synchronize();
    unreachable!("synchronize returned while a processor it needs stayed at DISPATCH");
}
