//! A small `log` backend: one line per record, to standard error or a file, with the time
//! since start, the thread and the level.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

struct Logger {
    start: Instant,
    out: Mutex<Box<dyn Write + Send>>,
    level: LevelFilter,
    // A terminal in raw mode (the guest's console) needs an explicit carriage return.
    line_end: &'static str,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let thread = std::thread::current();
        let line = format!(
            "palisade: {elapsed:.6}s: <{}> {}: {}{}",
            thread.name().unwrap_or("?"),
            record.level(),
            record.args(),
            self.line_end,
        );
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A log line that cannot be written has nowhere else to go.
        let _ = out.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

/// The level for `-v` given `verbosity` times: warnings by default, then info, debug, trace.
pub fn level(verbosity: u8) -> LevelFilter {
    match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the logger, writing to `file` if given.
pub fn init(verbosity: u8, file: Option<File>, start: Instant) {
    // SAFETY: isatty only inspects the descriptor.
    let stderr_is_tty = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
    let (out, line_end): (Box<dyn Write + Send>, &'static str) = match file {
        Some(f) => (Box::new(f), "\n"),
        None if stderr_is_tty => (Box::new(std::io::stderr()), "\r\n"),
        None => (Box::new(std::io::stderr()), "\n"),
    };
    let level = level(verbosity);
    let logger = Logger {
        start,
        out: Mutex::new(out),
        level,
        line_end,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}
