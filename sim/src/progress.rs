//! Progress of long commands: a bar on a terminal, and when stderr is not a terminal (CI logs, a
//! redirect) one line on stderr at the start and then every [`LINE_PERIOD`], so that a long soak shows
//! it is alive.

use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time between two progress lines when stderr is not a terminal.
pub const LINE_PERIOD: Duration = Duration::from_secs(5);

/// How progress is shown.
pub enum Progress {
    /// Nothing (`--quiet`).
    Quiet,
    /// A bar on the terminal.
    Bar(ProgressBar),
    /// Lines on stderr, at most one per [`LINE_PERIOD`]; holds when the last one was printed.
    Lines(Mutex<Instant>),
}

impl Progress {
    /// A bar of `length` steps with `template` on a terminal, lines otherwise; nothing if `quiet`.
    /// `first` is the line printed at once when progress goes to lines.
    pub fn new(quiet: bool, length: Option<u64>, template: &str, first: &str) -> Progress {
        if quiet {
            return Progress::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            eprintln!("{first}");
            return Progress::Lines(Mutex::new(Instant::now()));
        }
        let bar = match length {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar)
    }

    /// Reports progress: the bar moves to `position` with `message`; in line mode `line()` is printed
    /// if the last line is [`LINE_PERIOD`] old.
    pub fn update(
        &self,
        position: u64,
        message: impl FnOnce() -> String,
        line: impl FnOnce() -> String,
    ) {
        match self {
            Progress::Quiet => {}
            Progress::Bar(bar) => {
                bar.set_position(position);
                bar.set_message(message());
            }
            Progress::Lines(last) => {
                let mut last = last.lock();
                if last.elapsed() >= LINE_PERIOD {
                    *last = Instant::now();
                    eprintln!("{}", line());
                }
            }
        }
    }

    /// Removes the bar (lines stay as they are).
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// A thread that calls `line` every [`LINE_PERIOD`] and prints what it returns on stderr, until the
/// heartbeat is dropped: progress for work that reports none while it runs (one long torture run).
pub struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts the thread.
    pub fn start(line: impl Fn() -> String + Send + 'static) -> Heartbeat {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(LINE_PERIOD) {
                eprintln!("{}", line());
            }
        });
        Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
