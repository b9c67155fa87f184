//! Files a user names that are not what they should be — a FIFO, a directory, a device —
//! are refused at once with one line naming the path, at `vm.create` (a 400) or on the
//! command line, and never block the VMM.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn fifo(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path(name);
    let c = std::ffi::CString::new(path_str(&path)).unwrap();
    // SAFETY: creating a FIFO at a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    path
}

/// A `vm.create` body with `kernel`, changed by `edit`.
fn body(kernel: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut b = json!({
        "payload": {"kernel": kernel},
        "serial": {"mode": "Null"},
        "console": {"mode": "Off"},
    });
    edit(&mut b);
    b
}

#[test]
fn vm_create_refuses_fifos_directories_and_devices_at_once() {
    let dir = TempDir::new("files-api");
    let vmm = ApiVmm::spawn(palisade(), &dir, &[]);
    let hello = guest("hello");
    let pipe = fifo(&dir, "pipe");
    let cases: Vec<(&str, serde_json::Value, String)> = vec![
        (
            "FIFO kernel",
            body(&pipe, |_| {}),
            format!("kernel {}: is a FIFO", pipe.display()),
        ),
        (
            "directory kernel",
            body(&dir.path(""), |_| {}),
            "is a directory, but a regular file is needed".into(),
        ),
        (
            "/dev/zero kernel",
            body(Path::new("/dev/zero"), |_| {}),
            "/dev/zero: is a character device, but a regular file is needed".into(),
        ),
        (
            "FIFO initramfs",
            body(&hello, |b| b["payload"]["initramfs"] = json!(pipe)),
            "is a FIFO".into(),
        ),
        (
            "FIFO disk",
            body(&hello, |b| b["disks"] = json!([{"path": pipe}])),
            "is a FIFO, but a regular file or a block device is needed".into(),
        ),
        (
            "FIFO entropy source",
            body(&hello, |b| b["rng"] = json!({"src": pipe})),
            "is a FIFO, but a regular file or a character device is needed".into(),
        ),
        (
            "FIFO serial file",
            body(&hello, |b| {
                b["serial"] = json!({"mode": "File", "file": pipe})
            }),
            path_str(&pipe).to_string(),
        ),
    ];
    for (what, b, wanted) in cases {
        let started = Instant::now();
        let (status, text) = vmm.put("vm.create", &b);
        assert_eq!(status, 400, "{what}: {text}");
        assert!(text.contains(&wanted), "{what}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} took long"
        );
        // Nothing was created, and the VMM answers.
        assert_eq!(vmm.call("GET", "vmm.ping", None).0, 200, "{what}");
        assert_eq!(vmm.call("GET", "vm.info", None).0, 404, "{what}");
    }
    // A good configuration still works afterwards.
    let (status, text) = vmm.put("vm.create", &body(&hello, |_| {}));
    assert_eq!(status, 204, "{text}");
}

#[test]
fn the_command_line_refuses_a_fifo_kernel_in_one_line() {
    let dir = TempDir::new("files-cli");
    let pipe = fifo(&dir, "kernel");
    let started = Instant::now();
    let out = run_palisade(&["--kernel", path_str(&pipe)]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, &format!("--kernel {}: is a FIFO", pipe.display()));
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = run_palisade(&[
        "--kernel",
        path_str(&guest("hello")),
        "--log-file",
        path_str(&pipe),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--log-file"), "{}", stderr(&out));
}
