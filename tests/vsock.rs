//! `--vsock` and `vm.add-vsock`: the socket is bound by the connector under the sandbox,
//! named in the Landlock report, served by a worker with the vsock filter; a stale socket is
//! replaced, a live one or a file is refused on one line; hot-plug is confined to the rules
//! and a VM has one vsock device at most.

mod common;

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::*;
use serde_json::json;

fn is_socket(path: &std::path::Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn the_socket_is_bound_under_the_sandbox_and_named_in_the_report() {
    let dir = TempDir::new("vsock");
    let socket = dir.path("v.sock");
    // A stale socket from a VMM that is gone: replaced.
    drop(UnixListener::bind(&socket).unwrap());
    let arg = format!("cid=3,socket={},id=vs0", socket.display());
    let vmm = booted_guest(
        &dir,
        "echo",
        &["--vsock", &arg, "--landlock", "--no-shutdown"],
    );
    vmm.wait_state("Running");
    assert!(is_socket(&socket));
    // The guest has no vsock driver: a host client is turned away, the VMM carries on.
    let mut c = UnixStream::connect(&socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // (The VMM may close it before the line is even written.)
    let _ = std::io::Write::write_all(&mut c, b"CONNECT 1234\n");
    // Closed with the line unread: end of file or a reset, never an answer or a hang.
    match c.read(&mut [0u8; 8]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the client was answered: {other:?}"),
    }
    assert_eq!(vmm.state(), "Running");
    let info = vmm.info();
    assert_eq!(info["config"]["vsock"]["cid"], 3, "{info}");
    assert_eq!(info["config"]["vsock"]["socket"], json!(socket), "{info}");
    assert!(info["device_tree"]["vs0"].is_object(), "{info}");
    let held = info["landlock"]["held"].as_array().unwrap();
    assert!(
        held.iter()
            .any(|h| h["origin"] == json!({"kind": "vsock", "id": "vs0"})
                && h["path"] == json!(socket)
                && h["how"].as_str().unwrap().contains("_P")),
        "{held:?}"
    );
    // Its worker runs with the vsock filter; the connector that bound the socket may make
    // socket files and nothing else on the file system.
    let threads = info["sandbox"]["threads"].as_array().unwrap();
    let worker = threads.iter().find(|t| t["thread"] == "dev-vs0").unwrap();
    assert_eq!(worker["role"], "vsock", "{worker}");
    let connector = threads.iter().find(|t| t["thread"] == "connector").unwrap();
    assert!(
        connector["landlock"]
            .as_str()
            .unwrap()
            .contains("socket files only"),
        "{connector}"
    );
    let counters = vmm.get("vm.counters");
    assert_eq!(counters["vs0"]["open_connections"], 0, "{counters}");
}

#[test]
fn a_guest_accepts_a_host_client_exchanges_data_and_connects_out() {
    let dir = TempDir::new("vsock-guest");
    let socket = dir.path("v.sock");
    // The host program the guest connects to, on port 5000.
    let mut out_path = socket.clone().into_os_string();
    out_path.push("_5000");
    let host_service = UnixListener::bind(&out_path).unwrap();
    let arg = format!("cid=7,socket={},id=vs0", socket.display());
    let vmm = booted_guest(
        &dir,
        "virtio_vsock",
        &["--vsock", &arg, "--landlock", "--no-shutdown"],
    );
    let text = vmm.wait_serial("vsock: cid 7, listening", 1);
    assert!(text.contains("virtio-vsock: "), "{text}");
    // CONNECT: the guest accepts; OK names the host port the connection has.
    let mut c = UnixStream::connect(&socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    std::io::Write::write_all(&mut c, b"CONNECT 1234\n").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        c.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let port: u32 = line
        .strip_prefix("OK ")
        .unwrap()
        .trim_end()
        .parse()
        .unwrap();
    std::io::Write::write_all(&mut c, b"ping").unwrap();
    let mut pong = [0u8; 4];
    c.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong");
    // Out: the guest's connection to host port 5000 reaches PATH_5000.
    let (mut s, _) = host_service.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(
        got, b"hello host",
        "then end of file when the guest shut it down"
    );
    let text = vmm.wait_serial("PASS virtio_vsock", 1);
    assert!(
        text.contains(&format!("vsock: accepted host port {port}")),
        "{port}: {text}"
    );
    assert!(text.contains("vsock: got \"ping\""), "{text}");
    let counters = vmm.get("vm.counters");
    assert_eq!(counters["vs0"]["host_connections"], 1, "{counters}");
    assert_eq!(counters["vs0"]["guest_connections"], 1, "{counters}");
    assert_eq!(counters["vs0"]["bad_packets"], 0, "{counters}");
}

#[test]
fn a_live_socket_or_a_file_at_the_path_is_refused_on_one_line() {
    let dir = TempDir::new("vsock-busy");
    let kernel = guest("echo");
    let socket = dir.path("live.sock");
    let _live = UnixListener::bind(&socket).unwrap();
    let arg = format!("cid=3,socket={}", socket.display());
    let out = run_palisade(&["--kernel", path_str(&kernel), "--vsock", &arg]);
    assert_one_line_error(&out, "another program listens on it");
    let file = dir.path("plain");
    std::fs::write(&file, b"keep me").unwrap();
    let arg = format!("cid=3,socket={}", file.display());
    let out = run_palisade(&["--kernel", path_str(&kernel), "--vsock", &arg]);
    assert_one_line_error(&out, "something other than a socket");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    for (bad, needle) in [("cid=2,socket=/tmp/x", "vsock.cid"), ("cid=3", "socket")] {
        let out = run_palisade(&["--kernel", path_str(&kernel), "--vsock", bad]);
        assert_one_line_error(&out, needle);
    }
}

#[test]
fn hot_plug_is_confined_to_the_rules_and_one_device_at_most() {
    let dir = TempDir::new("vsock-hotplug");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let inside = allowed.join("v.sock");
    let outside = dir.path("outside.sock");
    let rule = format!("path={},access=rw", allowed.display());
    let vmm = booted_guest(
        &dir,
        "echo",
        &["--landlock", "--landlock-rules", &rule, "--no-shutdown"],
    );
    vmm.wait_state("Running");
    // Outside the rules: refused with the rule that would allow it; nothing is made.
    let out = vmm.remote(&["add-vsock", &format!("cid=3,socket={}", outside.display())]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&outside.display().to_string()), "{err}");
    assert!(err.contains("--landlock-rules path="), "{err}");
    assert!(!outside.exists());
    assert_eq!(vmm.state(), "Running");
    assert!(vmm.info()["config"]["vsock"].is_null());
    // Inside: bound and plugged.
    let out = vmm.remote(&[
        "add-vsock",
        &format!("cid=5,socket={},id=hv", inside.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(reply["id"], "hv", "{reply}");
    assert!(is_socket(&inside));
    let info = vmm.info();
    assert_eq!(info["config"]["vsock"]["cid"], 5, "{info}");
    // A second one is refused; the first stays.
    let other = allowed.join("w.sock");
    let out = vmm.remote(&["add-vsock", &format!("cid=6,socket={}", other.display())]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has a vsock device already"),
        "{}",
        stderr(&out)
    );
    assert!(!other.exists());
    assert_eq!(vmm.info()["config"]["vsock"]["id"], "hv");
    // Removed: out of the config; a client is no longer served.
    let out = vmm.remote(&["remove-device", "hv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !vmm.info()["config"]["vsock"].is_null() {
        assert!(std::time::Instant::now() < deadline, "still configured");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(vmm.state(), "Running");
    // Cloud Hypervisor's own ch-remote adds one again, at another path the rules allow.
    if let Some(ch) = reference_tool("CH_REMOTE", "ch-remote") {
        let spec = format!("cid=8,socket={},id=again", other.display());
        let out = run_with_timeout(
            std::process::Command::new(ch)
                .args(["--api-socket", path_str(&vmm.socket)])
                .args(["add-vsock", &spec]),
            PATIENCE,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(is_socket(&other));
        let info = vmm.info();
        assert_eq!(info["config"]["vsock"]["cid"], 8, "{info}");
        assert!(info["device_tree"]["again"].is_object(), "{info}");
    }
}
