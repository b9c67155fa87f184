//! Issue targets for booting: process start to the guest's first serial byte, peak RSS with
//! a 512 MiB guest, and guest power-off to process exit.
//!
//! Each run starts `palisade --kernel hello --cpus boot=1 --memory size=128M` (512M for the
//! RSS run) with the serial port on a pipe. The hello guest prints one line, then writes the
//! ACPI power-off register; the last byte of its line is the moment of power-off as seen
//! from outside.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench::{release_binary, report, summarize, wait_with_rusage};

const RUNS: usize = 200;

struct Run {
    first_byte: Duration,
    exit_after_last_byte: Duration,
    peak_rss_kib: u64,
}

// The child is reaped by `wait_with_rusage` (wait4), which also reports its peak RSS.
#[allow(clippy::zombie_processes)]
fn one_run(memory: &str) -> Run {
    let kernel = test_guests::path("hello");
    let start = Instant::now();
    let mut child = Command::new(release_binary("palisade"))
        .args(["--kernel"])
        .arg(&kernel)
        .args([
            "--cpus",
            "boot=1",
            "--memory",
            memory,
            "--serial",
            "tty",
            "--console",
            "off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn palisade");
    let mut out = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 256];
    let mut first = None;
    let mut last = start;
    let mut text = Vec::new();
    loop {
        let n = out.read(&mut buf).expect("read guest output");
        if n == 0 {
            break;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        text.extend_from_slice(&buf[..n]);
        if text.ends_with(b"\n") {
            last = now;
            break;
        }
    }
    let (status, rss) = wait_with_rusage(child.id()).expect("wait");
    let exited = Instant::now();
    let status = std::process::ExitStatus::from_raw(status);
    assert!(status.success(), "palisade failed: {status}");
    assert!(
        text.starts_with(b"Hello from the Palisade test guest"),
        "unexpected output {:?}",
        String::from_utf8_lossy(&text)
    );
    // Each run's janitor process tears the KVM VM down after the VMM has exited; let it
    // finish so that it does not compete with the next run for this machine's two CPUs.
    std::thread::sleep(std::time::Duration::from_millis(30));
    Run {
        first_byte: first.expect("no output") - start,
        exit_after_last_byte: exited - last,
        peak_rss_kib: rss,
    }
}

fn main() {
    // Warm the page cache and the binary.
    for _ in 0..5 {
        one_run("size=128M");
    }
    let runs: Vec<Run> = (0..RUNS).map(|_| one_run("size=128M")).collect();
    let mut first: Vec<Duration> = runs.iter().map(|r| r.first_byte).collect();
    let mut exit: Vec<Duration> = runs.iter().map(|r| r.exit_after_last_byte).collect();
    report(
        "process start -> first serial byte (128M)",
        &summarize(&mut first),
        "< 4 ms median",
    );
    report(
        "guest power-off -> process exit",
        &summarize(&mut exit),
        "< 3 ms median",
    );
    let mut rss: Vec<u64> = (0..20).map(|_| one_run("size=512M").peak_rss_kib).collect();
    rss.sort();
    println!(
        "{:<44} max {:>6.2} MiB  median {:>6.2} MiB  (n={}, target: < 5 MiB)",
        "peak RSS, 512M guest",
        *rss.last().unwrap_or(&0) as f64 / 1024.0,
        rss[rss.len() / 2] as f64 / 1024.0,
        rss.len()
    );
}
