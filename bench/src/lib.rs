//! Shared helpers for Palisade's benchmark programs (`bench/src/bin/*`): locating the
//! release binaries, running them, summarising samples, and for the in-process device
//! benchmarks a lean guest driver ([`virtq`]) and paired rounds against system calls
//! ([`paired`]).
//!
//! Run them with `scripts/bench` (which builds everything in release mode first).

pub mod keepalive;
pub mod paired;
pub mod virtq;

use std::path::PathBuf;
use std::time::Duration;

/// The release build of a workspace binary (`palisade`, `palisade-remote`), or the path in
/// `PALISADE_BIN_DIR` if set.
pub fn release_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("PALISADE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build with `cargo build --release` (or run scripts/bench)",
        path.display()
    );
    path
}

/// Summary of a set of samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub median: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Smallest.
    pub min: Duration,
}

/// Summarises `samples` (which must not be empty).
pub fn summarize(samples: &mut [Duration]) -> Summary {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        count: samples.len(),
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        min: samples[0],
    }
}

/// Prints one result line: name, summary in milliseconds, and the target it is judged by.
pub fn report(name: &str, s: &Summary, target: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<44} median {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms  min {:>8.3} ms  (n={}, target: {target})",
        ms(s.median),
        ms(s.p90),
        ms(s.p99),
        ms(s.min),
        s.count
    );
}

/// Waits for `pid` and returns its exit status and peak resident set size in KiB.
pub fn wait_with_rusage(pid: u32) -> std::io::Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for writes; `pid` is our own child.
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((status, usage.ru_maxrss as u64))
}
