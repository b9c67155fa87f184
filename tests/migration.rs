//! Live migration over a Unix socket (`vm.send-migration`, `vm.receive-migration`): a
//! counting guest moves from one VMM to another while it runs and keeps counting there,
//! with and without Landlock at both ends, through the API and Cloud Hypervisor's own
//! ch-remote. A migration that fails at any point — no destination, a destination that
//! hangs up or refuses, bad data — leaves the source VM running as before, with one line.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The consecutive `tick N` numbers at the end of the serial file (its start may be
/// overwritten: both VMMs write the same file).
fn last_ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim_matches('\0').strip_prefix("tick "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn counter(dir: &TempDir, extra: &[&str]) -> ApiVmm {
    let mut args = vec!["--memory", "size=32M", "--no-shutdown"];
    args.extend_from_slice(extra);
    let vmm = booted_guest(dir, "snapshot", &args);
    vmm.wait_serial("tick 2 ", 1);
    vmm
}

/// Waits until the serial file shows the guest counting `more` ticks past `from`, and
/// that the guest never started over.
fn counts_on(serial: &Path, from: u64, more: u64) -> Vec<u64> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        assert!(!text.contains("FAIL"), "{text}");
        let ticks = last_ticks(&text);
        if ticks.last().is_some_and(|&t| t >= from + more) {
            assert!(!text.contains("counting"), "the guest started over: {text}");
            let tail = &ticks[ticks.len().saturating_sub(3)..];
            assert!(tail.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
            return ticks;
        }
        assert!(
            Instant::now() < deadline,
            "the guest stopped counting: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `vm.receive-migration` on `target` in a thread; returns once the socket exists.
fn receiving(target: &ApiVmm, socket: &Path) -> std::thread::JoinHandle<(u16, String)> {
    let api = target.socket.clone();
    let body = json!({"receiver_url": format!("unix:{}", socket.display())}).to_string();
    let handle = std::thread::spawn(move || {
        // A VMM killed while it waits (a test done with it) answers nothing: status 0.
        match api::client::request_with_timeout(
            &api,
            "PUT",
            "/api/v1/vm.receive-migration",
            Some(&body),
            Some(Duration::from_secs(120)),
        ) {
            Ok(r) => (r.status, r.body),
            Err(e) => (0, e.to_string()),
        }
    });
    wait_for_socket(socket, "vm.receive-migration");
    handle
}

fn send(source: &ApiVmm, socket: &Path) -> (u16, String) {
    source.put(
        "vm.send-migration",
        &json!({"destination_url": format!("unix:{}", socket.display())}),
    )
}

#[test]
fn a_running_guest_moves_to_another_vmm_and_keeps_counting() {
    let dir = TempDir::new("migrate");
    let source = counter(&dir, &["-v"]);
    let target_dir = TempDir::new("migrate-target");
    let target = ApiVmm::spawn(palisade(), &target_dir, &["--no-shutdown"]);
    let socket = target_dir.path("m.sock");
    let receiver = receiving(&target, &socket);
    let before = *last_ticks(&source.serial_text()).last().unwrap();
    let (code, body) = send(&source, &socket);
    assert_eq!(code, 204, "{body}\nsource: {}", source.log_text());
    let (code, body) = receiver.join().unwrap();
    assert_eq!(code, 204, "{body}\ntarget: {}", target.log_text());
    // The destination runs it; the source released it.
    assert_eq!(target.state(), "Running");
    let (code, _) = source.call("GET", "vm.info", None);
    assert_eq!(code, 404, "the source no longer has the VM");
    assert!(
        source.log_text().contains("downtime"),
        "{}",
        source.log_text()
    );
    let ticks = counts_on(&dir.path("serial.log"), before, 3);
    assert!(ticks.last().unwrap() > &before);
    let info = target.info();
    assert_eq!(info["config"]["memory"]["size"], 32 << 20);
    assert!(!socket.exists(), "the receiving socket is gone");
}

#[test]
fn under_landlock_at_both_ends_the_socket_is_in_the_rules_and_the_report() {
    let dir = TempDir::new("migrate-ll");
    let sockets = dir.path("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let rule = format!("path={},access=rw", sockets.display());
    let source = counter(&dir, &["--landlock", "--landlock-rules", &rule]);
    let target_dir = TempDir::new("migrate-ll-target");
    let target = ApiVmm::spawn(palisade(), &target_dir, &["--no-shutdown"]);
    // A socket outside the source's rules is refused by its sandbox; the VM runs on.
    let outside = target_dir.path("outside.sock");
    let receiver = receiving(&target, &outside);
    let (code, body) = send(&source, &outside);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--landlock-rules"), "{body}");
    assert_eq!(source.state(), "Running");
    // The destination saw nobody and gives up on one line (after its wait): not awaited
    // here; it is dropped with its VMM.
    drop(receiver);
    drop(target);

    let target = ApiVmm::spawn(palisade(), &target_dir, &["--no-shutdown"]);
    let socket = sockets.join("m.sock");
    let receiver = receiving(&target, &socket);
    let before = *last_ticks(&source.serial_text()).last().unwrap();
    let (code, body) = send(&source, &socket);
    assert_eq!(code, 204, "{body}\nsource: {}", source.log_text());
    assert_eq!(receiver.join().unwrap().0, 204);
    let info = target.info();
    assert_eq!(info["landlock"]["confined"], true, "{info}");
    let held = info["landlock"]["held"].as_array().unwrap();
    assert!(
        held.iter()
            .any(|h| h["origin"] == json!({"kind": "migration"}) && h["path"] == json!(socket)),
        "{held:?}"
    );
    counts_on(&dir.path("serial.log"), before, 3);
}

/// A fake destination on `socket` that reads the source's first bytes, then does `then`.
fn fake_destination(
    socket: &Path,
    then: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut header = [0u8; 16];
        c.read_exact(&mut header).unwrap();
        assert_eq!(&header[..4], b"PLMG");
        then(c);
    })
}

#[test]
fn a_failed_migration_leaves_the_source_running() {
    let dir = TempDir::new("migrate-fail");
    let source = counter(&dir, &[]);
    // Nobody there.
    let (code, body) = send(&source, &dir.path("nobody.sock"));
    assert_eq!(code, 400, "{body}");
    assert!(!body.contains('\n'), "{body}");
    assert_eq!(source.state(), "Running");
    // A destination that hangs up after the first message.
    let hangup = dir.path("hangup.sock");
    let fake = fake_destination(&hangup, drop);
    let (code, body) = send(&source, &hangup);
    assert!(code >= 400, "{body}");
    fake.join().unwrap();
    assert_eq!(source.state(), "Running");
    // A destination that refuses the VM.
    let refuse = dir.path("refuse.sock");
    let fake = fake_destination(&refuse, |mut c| {
        // Skip the rest of the hello and the whole config, then say no.
        let mut rest = vec![0u8; 1 << 16];
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while c.read(&mut rest).is_ok_and(|n| n > 0) {}
        let ack = br#"{"ok": false, "error": "no room here"}"#;
        let mut header = b"PLMG".to_vec();
        header.extend_from_slice(&5u32.to_le_bytes());
        header.extend_from_slice(&(ack.len() as u64).to_le_bytes());
        c.write_all(&header).unwrap();
        c.write_all(ack).unwrap();
    });
    let (code, body) = send(&source, &refuse);
    assert!(
        code >= 400 && body.contains("no room here"),
        "{code} {body}"
    );
    fake.join().unwrap();
    assert_eq!(source.state(), "Running");
    // Bad requests.
    for bad in [
        json!({"destination_url": "tcp:127.0.0.1:6000"}),
        json!({"destination_url": "unix:/x", "connections": 4}),
        json!({"destination_url": "unix:/x", "bogus": 1}),
    ] {
        let (code, body) = source.put("vm.send-migration", &bad);
        assert_eq!(code, 400, "{bad}: {body}");
    }
    // Still counting, never restarted.
    let now = *last_ticks(&source.serial_text()).last().unwrap();
    source.wait_serial(&format!("tick {} ", now + 2), 1);
    assert_eq!(source.serial_text().matches("counting").count(), 1);
}

#[test]
fn a_destination_fed_bad_data_keeps_no_vm_and_answers_on_one_line() {
    let dir = TempDir::new("migrate-bad");
    let target = ApiVmm::spawn(palisade(), &dir, &["--no-shutdown"]);
    let socket = dir.path("m.sock");
    let receiver = receiving(&target, &socket);
    let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (code, body) = receiver.join().unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("migration protocol") && !body.contains('\n'),
        "{body}"
    );
    let (code, _) = target.call("GET", "vm.info", None);
    assert_eq!(code, 404);
    // A source that promises a VM and sends pages outside it.
    let receiver = receiving(&target, &socket);
    let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let message = |kind: u32, payload: &[u8]| {
        let mut m = b"PLMG".to_vec();
        m.extend_from_slice(&kind.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        m.extend_from_slice(payload);
        m
    };
    let hello = json!({"format": "palisade-migration", "version": 1, "palisade_version": "x"});
    c.write_all(&message(1, hello.to_string().as_bytes()))
        .unwrap();
    let config = json!({
        "config": {
            "payload": {"kernel": guest("snapshot")},
            "memory": {"size": 32 << 20},
            "serial": {"mode": "Null"},
            "console": {"mode": "Off"},
        },
        "slots": {},
    });
    c.write_all(&message(2, config.to_string().as_bytes()))
        .unwrap();
    let mut pages = (1u64 << 40).to_le_bytes().to_vec();
    pages.extend_from_slice(&[0u8; 4096]);
    c.write_all(&message(3, &pages)).unwrap();
    let (code, body) = receiver.join().unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("do not fit guest memory"), "{body}");
    let (code, _) = target.call("GET", "vm.info", None);
    assert_eq!(code, 404, "nothing half-received is left");
    assert_eq!(target.call("GET", "vmm.ping", None).0, 200);
}

#[test]
fn ch_remote_migrates_a_vm_between_two_palisades() {
    let Some(ch) = reference_tool("CH_REMOTE", "ch-remote") else {
        return;
    };
    let dir = TempDir::new("migrate-ch");
    let source = counter(&dir, &[]);
    let target_dir = TempDir::new("migrate-ch-target");
    let target = ApiVmm::spawn(palisade(), &target_dir, &["--no-shutdown"]);
    let socket = target_dir.path("m.sock");
    let url = format!("unix:{}", socket.display());
    let mut receiver = Command::new(&ch)
        .arg("--api-socket")
        .arg(&target.socket)
        .args(["receive-migration", &format!("receiver_url={url}")])
        .spawn()
        .unwrap();
    wait_for_socket(&socket, "ch-remote receive-migration");
    let before = *last_ticks(&source.serial_text()).last().unwrap();
    let out = run_with_timeout(
        Command::new(&ch)
            .arg("--api-socket")
            .arg(&source.socket)
            .args(["send-migration", &format!("destination_url={url}")]),
        PATIENCE,
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        source.log_text()
    );
    assert!(receiver.wait().unwrap().success());
    assert_eq!(target.state(), "Running");
    counts_on(&dir.path("serial.log"), before, 3);
}

/// Root, `/dev/net/tun` and `ip`, which network namespaces and taps need; a missing one is
/// a skip, except on CI where it is a failure.
fn net_ready(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip && Path::new("/dev/net/tun").exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root, /dev/net/tun and ip"
    );
    println!("skipping {test}: needs root, /dev/net/tun and ip");
    false
}

/// Each device's PCI address, by id.
fn addresses(info: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<_> = info["device_tree"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, d)| (id.clone(), d["pci_bdf"].clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_vm_with_disks_a_net_and_a_console_migrates_and_every_acknowledged_write_is_on_disk() {
    let test = "a_vm_with_disks_a_net_and_a_console_migrates";
    if !net_ready(test) {
        return;
    }
    let ns = devices::netns::NetNs::new();
    let dir = TempDir::new("migrate-devices");
    let (d0, d1) = (dir.path("d0.img"), dir.path("d1.img"));
    for image in [&d0, &d1] {
        std::fs::write(image, vec![0u8; 1 << 20]).unwrap();
    }
    let kernel = guest("snapshot");
    let serial = format!("file={}", dir.path("serial.log").display());
    let console = format!("file={}", dir.path("console.log").display());
    let disk = format!("path={},id=d0", d0.display());
    let tap = format!("mig{}", ns.index());
    // Two queue pairs: a multi-queue tap, which the destination attaches to while the
    // source still holds its queues.
    let net = format!("tap={tap},num_queues=4,id=n0");
    let mut cmd = palisade();
    ns.enter(&mut cmd);
    let source = ApiVmm::spawn(
        cmd,
        &dir,
        &[
            "--kernel",
            path_str(&kernel),
            "--cmdline",
            "disk",
            "--memory",
            "size=32M",
            "--serial",
            &serial,
            "--console",
            &console,
            "--disk",
            &disk,
            "--net",
            &net,
            "--no-shutdown",
        ],
    );
    source.wait_serial("tick 2 ", 1);
    let (code, body) = source.put("vm.add-disk", &json!({"path": d1, "id": "d1"}));
    assert_eq!(code, 200, "{body}");
    let before = addresses(&source.info());
    assert_eq!(before.len(), 5, "{before:?}");

    let target_dir = TempDir::new("migrate-devices-target");
    let mut cmd = palisade();
    ns.enter(&mut cmd);
    let target = ApiVmm::spawn(cmd, &target_dir, &["--no-shutdown"]);
    let socket = target_dir.path("m.sock");
    let receiver = receiving(&target, &socket);
    let last = *last_ticks(&source.serial_text()).last().unwrap();
    let (code, body) = send(&source, &socket);
    assert_eq!(code, 204, "{body}\nsource: {}", source.log_text());
    let (code, body) = receiver.join().unwrap();
    assert_eq!(code, 204, "{body}\ntarget: {}", target.log_text());
    assert_eq!(
        addresses(&target.info()),
        before,
        "every device where it was"
    );
    counts_on(&dir.path("serial.log"), last, 3);
    // Every tick printed (before and after the move) is a write the guest saw done: its
    // sector holds its count.
    assert_eq!(target.call("PUT", "vm.pause", None).0, 204);
    let image = std::fs::read(&d0).unwrap();
    let text = std::fs::read_to_string(dir.path("serial.log")).unwrap();
    let ticks = last_ticks(&text);
    assert!(ticks.len() >= 3, "{text}");
    for k in ticks {
        let sector = &image[k as usize * 512..(k as usize + 1) * 512];
        let words: Vec<u32> = sector
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        assert!(
            words.iter().all(|&w| w == k as u32),
            "sector {k}: {:?}",
            &words[..4]
        );
    }
    drop(source);
    drop(target);
    ns.remove();
}
