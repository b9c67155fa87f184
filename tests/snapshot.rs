//! `vm.snapshot` and `vm.restore` (and `--restore`): a guest counting in RAM, driving the
//! entropy device under MSI-X and the local APIC timer, and keeping a value in the serial
//! port's scratch register, is snapshotted while paused and restored into a fresh VMM, with
//! and without Landlock, through the API, the command line and Cloud Hypervisor's own
//! ch-remote; it carries on counting where it was. Bad snapshot directories and damaged
//! files are refused on one line, leaving the VMM as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

/// The `tick N` numbers in `text`, in order.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The interrupt counts of the `tick N irqs M` lines in `text`.
fn irqs(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split(" irqs ").nth(1)?.trim().parse().ok())
        .collect()
}

/// The counting guest on 32 MiB with `extra` flags, counted to 3 and paused; the last tick
/// it printed.
fn paused_counter(dir: &TempDir, extra: &[&str]) -> (ApiVmm, u64) {
    let mut args = vec!["--memory", "size=32M", "--no-shutdown"];
    args.extend_from_slice(extra);
    let vmm = booted_guest(dir, "snapshot", &args);
    vmm.wait_serial("tick 3 ", 1);
    let (code, body) = vmm.call("PUT", "vm.pause", None);
    assert_eq!(code, 204, "{body}");
    let last = *ticks(&vmm.serial_text()).last().unwrap();
    (vmm, last)
}

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

fn snapshot(vmm: &ApiVmm, dir: &Path) -> (u16, String) {
    vmm.put("vm.snapshot", &json!({"destination_url": url(dir)}))
}

fn restore(vmm: &ApiVmm, dir: &Path) -> (u16, String) {
    vmm.put(
        "vm.restore",
        &json!({"source_url": url(dir), "prefault": true}),
    )
}

/// Resumes the restored VM and checks that it goes on from `last`, its interrupts too,
/// writing to the serial file `serial` (the one its configuration names).
fn resumes_from(vmm: &ApiVmm, serial: &Path, last: u64, last_irqs: u64) {
    assert_eq!(vmm.state(), "Paused", "a restored VM waits for vm.resume");
    let (code, body) = vmm.call("PUT", "vm.resume", None);
    assert_eq!(code, 204, "{body}");
    let wanted = format!("tick {} ", last + 3);
    let deadline = std::time::Instant::now() + PATIENCE;
    let text = loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        assert!(!text.contains("FAIL"), "{text}\nlog: {}", vmm.log_text());
        if text.contains(&wanted) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restored guest did not count on from {last}:\n{text}\nlog: {}",
            vmm.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let counted = ticks(&text);
    assert_eq!(
        counted.first(),
        Some(&(last + 1)),
        "the count carries on from the snapshot: {text}"
    );
    assert!(counted.windows(2).all(|w| w[1] == w[0] + 1), "{counted:?}");
    assert!(
        irqs(&text).first().is_some_and(|&n| n > last_irqs),
        "MSI-X interrupts keep arriving after the restore: {text}"
    );
}

#[test]
fn a_counting_guest_carries_on_after_a_restore_through_the_api() {
    let dir = TempDir::new("snap-api");
    let snap = dir.path("snap");
    std::fs::create_dir(&snap).unwrap();
    let (source, last) = paused_counter(&dir, &[]);
    let last_irqs = *irqs(&source.serial_text()).last().unwrap();
    let (code, body) = snapshot(&source, &snap);
    assert_eq!(code, 204, "{body}\nlog: {}", source.log_text());
    for file in ["config.json", "state.json", "memory-ranges"] {
        assert!(snap.join(file).is_file(), "{file}");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snap.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["format"], "palisade-snapshot");
    assert_eq!(state["version"], 1);
    assert_eq!(state["vcpus"].as_array().unwrap().len(), 1);
    assert_eq!(
        std::fs::metadata(snap.join("memory-ranges")).unwrap().len(),
        32 << 20
    );
    // The source is still paused, and may go on.
    assert_eq!(source.state(), "Paused");
    let (code, body) = source.call("PUT", "vm.resume", None);
    assert_eq!(code, 204, "{body}");
    source.wait_serial(&format!("tick {} ", last + 1), 1);
    drop(source);

    let target_dir = TempDir::new("snap-api-target");
    let target = ApiVmm::spawn(palisade(), &target_dir, &[]);
    let (code, body) = restore(&target, &snap);
    assert_eq!(code, 204, "{body}\nlog: {}", target.log_text());
    let info = target.info();
    assert_eq!(info["config"]["memory"]["size"], 32 << 20);
    // Restoring twice is refused: the VMM has a VM.
    let (code, body) = restore(&target, &snap);
    assert_eq!(code, 405, "{body}");
    resumes_from(&target, &dir.path("serial.log"), last, last_irqs);
}

#[test]
fn under_landlock_a_snapshot_is_written_inside_the_rules_and_restored_from_the_command_line() {
    let dir = TempDir::new("snap-landlock");
    let snap = dir.path("snap");
    let outside = dir.path("outside");
    std::fs::create_dir(&snap).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let rule = format!("path={},access=rw", snap.display());
    let (source, last) = paused_counter(&dir, &["--landlock", "--landlock-rules", &rule]);
    let last_irqs = *irqs(&source.serial_text()).last().unwrap();
    // Outside the rules: refused by the sandbox, with the rule that would allow it.
    let (code, body) = snapshot(&source, &outside);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--landlock-rules"), "{body}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written"
    );
    let (code, body) = snapshot(&source, &snap);
    assert_eq!(code, 204, "{body}\nlog: {}", source.log_text());
    drop(source);

    let target_dir = TempDir::new("snap-landlock-target");
    let restore = format!("source_url={},prefault=on", url(&snap));
    let target = ApiVmm::spawn(palisade(), &target_dir, &["--restore", &restore]);
    let info = target.info();
    assert_eq!(info["config"]["landlock_enable"], true);
    let held = info["landlock"]["held"].as_array().unwrap();
    assert!(
        held.iter()
            .any(|h| h["origin"] == json!({"kind": "snapshot"})
                && h["path"] == json!(snap.join("memory-ranges"))),
        "the snapshot is named in the report: {held:?}"
    );
    let threads = info["sandbox"]["threads"].as_array().unwrap();
    let vcpu = threads.iter().find(|t| t["thread"] == "vcpu0").unwrap();
    assert_eq!(vcpu["role"], "vcpu", "{vcpu}");
    resumes_from(&target, &dir.path("serial.log"), last, last_irqs);
    // The restored VMM is confined by the restored configuration: outside its rules there is
    // nothing to write.
    let (code, _) = target.call("PUT", "vm.pause", None);
    assert_eq!(code, 204);
    let (code, body) = snapshot(&target, &outside);
    assert_eq!(code, 403, "{body}");
}

/// A copy of the snapshot in `from` at `to`, with `change` applied to it.
fn damaged(from: &Path, to: PathBuf, change: impl FnOnce(&Path)) -> PathBuf {
    std::fs::create_dir(&to).unwrap();
    for file in ["config.json", "state.json", "memory-ranges"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    change(&to);
    to
}

#[test]
fn bad_snapshot_directories_and_damaged_files_are_refused_on_one_line() {
    let dir = TempDir::new("snap-bad");
    let snap = dir.path("snap");
    std::fs::create_dir(&snap).unwrap();
    let vmm = booted_guest(&dir, "snapshot", &["--memory", "size=32M", "--no-shutdown"]);
    vmm.wait_serial("tick 1 ", 1);
    // Only a paused VM.
    let (code, body) = snapshot(&vmm, &snap);
    assert_eq!(code, 405, "{body}");
    let (code, _) = vmm.call("PUT", "vm.pause", None);
    assert_eq!(code, 204);
    let file = dir.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    for (target, needle) in [
        (url(&dir.path("missing")), "No such file"),
        (url(&file), "not a directory"),
        ("http://example.com/snap".to_string(), "file:///DIR"),
        ("file://relative".to_string(), "file:///DIR"),
    ] {
        let (code, body) = vmm.put("vm.snapshot", &json!({"destination_url": target}));
        assert_eq!(code, 400, "{target}: {body}");
        assert!(
            body.contains(needle) && !body.contains('\n'),
            "{target}: {body}"
        );
    }
    let (code, body) = snapshot(&vmm, &snap);
    assert_eq!(code, 204, "{body}");
    assert_eq!(vmm.state(), "Paused", "refusals changed nothing");
    drop(vmm);

    let fifo = |d: &Path| {
        std::fs::remove_file(d.join("memory-ranges")).unwrap();
        let c = std::ffi::CString::new(d.join("memory-ranges").to_str().unwrap()).unwrap();
        // SAFETY: creating a FIFO at a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    let bad: Vec<(PathBuf, &str)> = vec![
        (dir.path("empty-dir"), "state.json"),
        (
            damaged(&snap, dir.path("truncated"), |d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("memory-ranges"))
                    .unwrap();
                f.set_len((32 << 20) - 4096).unwrap();
            }),
            "truncated",
        ),
        (
            damaged(&snap, dir.path("garbage"), |d| {
                std::fs::write(
                    d.join("state.json"),
                    b"{\"format\": \"palisade-snapshot\", \"version\": 1, \"memory\": 7}",
                )
                .unwrap()
            }),
            "damaged",
        ),
        (
            damaged(&snap, dir.path("newer"), |d| {
                let p = d.join("state.json");
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                v["version"] = json!(99);
                std::fs::write(&p, v.to_string()).unwrap();
            }),
            "format version 99",
        ),
        (
            damaged(&snap, dir.path("unfinished"), |d| {
                std::fs::write(d.join("state.json"), b"").unwrap()
            }),
            "not finished",
        ),
        (damaged(&snap, dir.path("fifo"), fifo), "FIFO"),
    ];
    std::fs::create_dir(dir.path("empty-dir")).unwrap();
    let target_dir = TempDir::new("snap-bad-target");
    let target = ApiVmm::spawn(palisade(), &target_dir, &["--no-shutdown"]);
    for (path, needle) in &bad {
        let (code, body) = restore(&target, path);
        assert_eq!(code, 400, "{}: {body}", path.display());
        assert!(
            body.contains(needle) && !body.contains('\n'),
            "{}: {body}",
            path.display()
        );
        let (code, _) = target.call("GET", "vm.info", None);
        assert_eq!(code, 404, "{}: nothing was half-restored", path.display());
    }
    // Not a restore body: one line, and the good snapshot is restored afterwards.
    let (code, body) = target.put("vm.restore", &json!({"source_url": url(&snap), "bogus": 1}));
    assert_eq!(code, 400, "{body}");
    let (code, body) = target.put(
        "vm.restore",
        &json!({"source_url": url(&snap), "memory_restore_mode": "OnDemand"}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Copy"), "{body}");
    let (code, body) = restore(&target, &snap);
    assert_eq!(code, 204, "{body}\nlog: {}", target.log_text());
    assert_eq!(target.state(), "Paused");
}

#[test]
fn ch_remote_snapshots_and_restores_a_vm_with_disks_one_of_them_hot_plugged() {
    let Some(ch) = reference_tool("CH_REMOTE", "ch-remote") else {
        return;
    };
    let dir = TempDir::new("snap-ch");
    let snap = dir.path("snap");
    std::fs::create_dir(&snap).unwrap();
    let (first, second) = (dir.path("d0.img"), dir.path("d1.img"));
    for image in [&first, &second] {
        std::fs::write(image, vec![0u8; 1 << 20]).unwrap();
    }
    let disk = format!("path={},id=d0", first.display());
    let (source, last) = paused_counter(&dir, &["--disk", &disk]);
    let last_irqs = *irqs(&source.serial_text()).last().unwrap();
    let ch_remote = |socket: &Path, args: &[&str]| {
        let out = run_with_timeout(
            Command::new(&ch).arg("--api-socket").arg(socket).args(args),
            PATIENCE,
        );
        assert!(out.status.success(), "ch-remote {args:?}: {}", stderr(&out));
    };
    ch_remote(
        &source.socket,
        &["add-disk", &format!("path={},id=d1", second.display())],
    );
    let before = source.info();
    ch_remote(&source.socket, &["snapshot", &url(&snap)]);
    drop(source);

    let target_dir = TempDir::new("snap-ch-target");
    let target = ApiVmm::spawn(palisade(), &target_dir, &[]);
    ch_remote(
        &target.socket,
        &["restore", &format!("source_url={}", url(&snap))],
    );
    let after = target.info();
    for id in ["d0", "d1", "_rng0"] {
        assert_eq!(
            after["device_tree"][id]["pci_bdf"], before["device_tree"][id]["pci_bdf"],
            "{id} is where it was: {after}"
        );
    }
    assert_eq!(after["config"]["disks"].as_array().unwrap().len(), 2);
    resumes_from(&target, &dir.path("serial.log"), last, last_irqs);
}
