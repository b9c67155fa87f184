//! Opt-in: boots a real Linux kernel to a marker on the serial console.
//!
//! This machine's KVM cannot run Linux (see ENVIRONMENT.md), so the test runs only when
//! `PALISADE_TEST_KERNEL` names a kernel (a vmlinux with a PVH note, any vmlinux, or a
//! bzImage); `PALISADE_TEST_INITRAMFS` adds an initramfs, `PALISADE_TEST_MARKER` changes the
//! line awaited (default: the kernel's `Linux version` banner). Without the variable it
//! prints why it skipped and passes.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn boots_a_real_linux_kernel_to_its_console() {
    let Some(kernel) = std::env::var_os("PALISADE_TEST_KERNEL") else {
        println!("skipped: set PALISADE_TEST_KERNEL=/path/to/vmlinux to boot a real kernel");
        return;
    };
    let marker = std::env::var("PALISADE_TEST_MARKER").unwrap_or_else(|_| "Linux version".into());
    let mut cmd = palisade();
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--cpus", "boot=2", "--memory", "size=512M"])
        .args(SERIAL_ON_STDOUT)
        .args([
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 earlyprintk=ttyS0",
        ])
        .arg("--landlock");
    if let Some(initramfs) = std::env::var_os("PALISADE_TEST_INITRAMFS") {
        cmd.arg("--initramfs").arg(initramfs);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map(ChildGuard::new)
        .expect("spawn palisade");
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut console = Vec::new();
    let found = loop {
        if String::from_utf8_lossy(&console).contains(&marker) {
            break true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => console.extend_from_slice(&bytes),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found,
        "{marker:?} never appeared on the console:\n{}",
        String::from_utf8_lossy(&console)
    );
}
