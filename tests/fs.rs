//! `--fs` and `vm.add-fs` against the real virtiofsd: a guest FUSE driver (INIT, LOOKUP,
//! OPEN, READ, WRITE) reads a file the host wrote and writes one the host reads, under
//! Landlock and the filters; a backend that is missing, never answers or dies is an error
//! on one line or a counter, never a hung VMM; hot-plug is confined to the rules.
//!
//! virtiofsd is found through `VIRTIOFSD`, `PATH` or cargo's bin directory (scripts/test
//! installs it); under `CI=true` its absence is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const GUEST_LINE: &str = "written by the virtio_fs guest\n";

fn virtiofsd() -> Option<PathBuf> {
    let found = std::env::var_os("VIRTIOFSD")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("virtiofsd"))
                    .find(|f| f.exists())
            })
        })
        .or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
            Some(home.join("bin/virtiofsd")).filter(|f| f.exists())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "virtiofsd is missing (cargo install virtiofsd, or set VIRTIOFSD)"
        );
        println!("skipping: virtiofsd is missing");
    }
    found
}

/// A directory with `hello.txt` (the host's line) and an empty `guest.txt`.
fn shared_dir(dir: &TempDir) -> PathBuf {
    let shared = dir.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(shared.join("guest.txt"), "").unwrap();
    shared
}

/// virtiofsd serving `shared` on `socket`, once it listens.
fn start_virtiofsd(bin: &Path, socket: &Path, shared: &Path) -> ChildGuard {
    let child = Command::new(bin)
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .args(["--cache=never", "--sandbox=none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard::new(child);
    wait_for_socket(socket, "virtiofsd");
    guard
}

#[test]
fn the_guest_reads_and_writes_the_shared_directory_under_landlock() {
    let Some(bin) = virtiofsd() else {
        return;
    };
    let dir = TempDir::new("fs");
    let shared = shared_dir(&dir);
    let socket = dir.path("vfs.sock");
    let mut backend = start_virtiofsd(&bin, &socket, &shared);
    let fs = format!("tag=myfs,socket={},id=fs0", socket.display());
    let vmm = booted_guest(
        &dir,
        "virtio_fs",
        &[
            "--memory",
            "size=64M,shared=on",
            "--fs",
            &fs,
            "--landlock",
            "--no-shutdown",
        ],
    );
    let text = vmm.wait_serial("PASS virtio_fs", 1);
    assert!(text.contains("fs: tag myfs, request queues 1"), "{text}");
    assert!(
        text.contains("fuse: read \"hello from the host\""),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("guest.txt")).unwrap(),
        GUEST_LINE
    );
    let counters = vmm.get("vm.counters");
    assert!(
        counters["fs0"]["backend_interrupts"].as_u64().unwrap() >= 5,
        "{counters}"
    );
    assert_eq!(counters["fs0"]["backend_errors"], 0, "{counters}");
    let info = vmm.info();
    assert_eq!(info["config"]["fs"][0]["tag"], "myfs", "{info}");
    let held = info["landlock"]["held"].as_array().unwrap();
    assert!(
        held.iter().any(
            |h| h["origin"] == json!({"kind": "fs", "id": "fs0"}) && h["path"] == json!(socket)
        ),
        "{held:?}"
    );
    // Only the connector may make sockets; it is confined like every thread.
    let threads = info["sandbox"]["threads"].as_array().unwrap();
    let connector = threads.iter().find(|t| t["thread"] == "connector").unwrap();
    assert_eq!(connector["role"], "connector", "{connector}");

    // A second boot: the reset stopped the backend's rings, the new driver sets them up
    // again on the same connection.
    vmm.wait_state("Shutdown");
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    let text = vmm.wait_serial("PASS virtio_fs", 2);
    assert_eq!(
        text.matches("fuse: read \"hello from the host\"").count(),
        2,
        "{text}"
    );
    assert_eq!(vmm.get("vm.counters")["fs0"]["backend_errors"], 0);

    // The backend goes away: noticed, counted and logged; the VMM carries on.
    backend.kill().unwrap();
    backend.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = vmm.get("vm.counters");
        if c["fs0"]["backend_gone"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{c}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(vmm.log_text().contains("the backend closed its socket"));
    // The guest powered off after its verdict; the VMM answers as before.
    assert_eq!(vmm.state(), "Shutdown");
    assert_eq!(vmm.call("GET", "vmm.ping", None).0, 200);
}

#[test]
fn a_missing_or_silent_backend_is_one_line_and_the_api_stays_up() {
    let dir = TempDir::new("fs-bad");
    // No socket at all.
    let kernel = guest("echo");
    let out = run_palisade(&[
        "--kernel",
        path_str(&kernel),
        "--memory",
        "size=64M,shared=on",
        "--fs",
        &format!("tag=t,socket={}", dir.path("none.sock").display()),
    ]);
    assert_one_line_error(&out, "is the backend (virtiofsd --socket-path) running?");
    // Memory the backend cannot map.
    let out = run_palisade(&[
        "--kernel",
        path_str(&kernel),
        "--fs",
        &format!("tag=t,socket={}", dir.path("none.sock").display()),
    ]);
    assert_one_line_error(&out, "--memory shared=on");
    // A backend that accepts and never answers: vm.create fails within the reply timeout,
    // and the API answers meanwhile and after.
    let silent = dir.path("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let holder = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(8));
        drop(conn);
    });
    let vmm = ApiVmm::spawn(palisade(), &dir, &[]);
    let config = json!({
        "payload": {"kernel": kernel},
        "memory": {"size": 64 << 20, "shared": true},
        "serial": {"mode": "Null"}, "console": {"mode": "Off"},
        "fs": [{"tag": "t", "socket": silent, "num_queues": 1, "queue_size": 1024}],
    });
    let started = Instant::now();
    let (code, body) = vmm.put("vm.create", &config);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("SET_OWNER") || body.contains("GET_FEATURES"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(vmm.call("GET", "vmm.ping", None).0, 200);
    assert_eq!(
        vmm.call("GET", "vm.info", None).0,
        404,
        "nothing was half-created"
    );
    holder.join().unwrap();
    // Hot-plug into a VM whose memory is private: refused before any connection.
    let mut config = config.clone();
    config.as_object_mut().unwrap().remove("fs");
    config["memory"]["shared"] = json!(false);
    assert_eq!(vmm.put("vm.create", &config).0, 204);
    let (code, body) = vmm.put("vm.add-fs", &json!({"tag": "t", "socket": silent}));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("--memory shared=on"), "{body}");
    assert!(vmm.info()["config"]["fs"].is_null());
}

#[test]
fn hot_plug_is_confined_to_the_rules() {
    let Some(bin) = virtiofsd() else {
        return;
    };
    let dir = TempDir::new("fs-hotplug");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let shared = shared_dir(&dir);
    let inside = allowed.join("in.sock");
    let outside = dir.path("out.sock");
    let _backend = start_virtiofsd(&bin, &inside, &shared);
    let _other = start_virtiofsd(&bin, &outside, &shared);
    let rule = format!("path={},access=rw", allowed.display());
    let vmm = booted_guest(
        &dir,
        "echo",
        &[
            "--memory",
            "size=64M,shared=on",
            "--landlock",
            "--landlock-rules",
            &rule,
            "--no-shutdown",
        ],
    );
    vmm.wait_state("Running");
    let out = vmm.remote(&["add-fs", &format!("tag=t,socket={}", outside.display())]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("outside the Landlock ruleset"), "{err}");
    assert!(
        err.contains(&format!("--landlock-rules path={}", outside.display())),
        "{err}"
    );
    assert_eq!(vmm.state(), "Running");
    let out = vmm.remote(&[
        "add-fs",
        &format!(
            "tag=t,socket={},num_queues=1,queue_size=512,id=hot",
            inside.display()
        ),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(reply["id"], "hot");
    assert_eq!(vmm.info()["config"]["fs"][0]["queue_size"], 512);
    assert_eq!(vmm.state(), "Running");
}
