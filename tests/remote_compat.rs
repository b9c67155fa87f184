//! palisade-remote speaks ch-remote's language: for every subcommand, given the same
//! arguments, it makes the call ch-remote makes — same method, endpoint and JSON body — as
//! recorded by a small server standing in for the VMM. And it works against Cloud Hypervisor
//! itself, which keeps connections open after answering.
//!
//! ch-remote and cloud-hypervisor are found through `CH_REMOTE` / `CLOUD_HYPERVISOR` or in
//! `../shared/tools/` beside the repository; under `CI=true` their absence is a failure.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// One recorded call: request line and body.
type Recorded = (String, String);

/// Serves `socket`, answering every request with 204 and sending what it got to `tx`.
fn recorder(socket: &Path) -> mpsc::Receiver<Recorded> {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let (line, body) = loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= length || n == 0 {
                        let line = head.lines().next().unwrap_or_default().to_string();
                        break (line, body.to_string());
                    }
                } else if n == 0 {
                    break (String::new(), String::new());
                }
            };
            let _ = stream.write_all(b"HTTP/1.1 204 \r\nContent-Length: 0\r\n\r\n");
            if tx.send((line, body)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Runs `client --api-socket socket args…` and returns the call it made.
fn call_made(
    client: &mut Command,
    socket: &Path,
    rx: &mpsc::Receiver<Recorded>,
    args: &[&str],
) -> Recorded {
    let out = client
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{args:?}: no call recorded"))
}

/// The body as compared: JSON with the fields left out that mean their default either way
/// (null, false, empty lists), or the text itself.
fn normal(body: &str) -> Value {
    fn strip(v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, v)| {
                        !(v.is_null() || *v == Value::Bool(false) || *v == serde_json::json!([]))
                    })
                    .map(|(k, v)| (k, strip(v)))
                    .collect(),
            ),
            other => other,
        }
    }
    if body.trim().is_empty() {
        return Value::Null;
    }
    strip(serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}")))
}

#[test]
fn every_subcommand_makes_the_call_ch_remote_makes() {
    let Some(ch) = reference_tool("CH_REMOTE", "ch-remote") else {
        return;
    };
    let dir = TempDir::new("remote-compat");
    let socket = dir.path("recorder.sock");
    let rx = recorder(&socket);
    let config = dir.path("vm.json");
    std::fs::write(&config, r#"{"payload": {"kernel": "/k"}}"#).unwrap();
    let config = path_str(&config);
    let cases: Vec<Vec<&str>> = vec![
        vec!["ping"],
        vec!["info"],
        vec!["counters"],
        vec!["create", config],
        vec!["boot"],
        vec!["shutdown"],
        vec!["reboot"],
        vec!["pause"],
        vec!["resume"],
        vec!["delete"],
        vec!["shutdown-vmm"],
        vec!["nmi"],
        vec!["power-button"],
        vec!["remove-device", "d0"],
        vec!["add-vsock", "cid=3,socket=/tmp/v.sock,id=vs0"],
        vec!["add-pmem", "file=/tmp/p,size=1M,discard_writes=on"],
        vec![
            "add-fs",
            "tag=t,socket=/tmp/f.sock,num_queues=1,queue_size=512",
        ],
        vec!["add-user-device", "socket=/tmp/u.sock,id=u0"],
        vec!["add-vdpa", "path=/dev/vhost-vdpa-0,num_queues=2"],
        vec![
            "add-device",
            "path=/sys/bus/pci/devices/0000:01:00.0,iommu=on",
        ],
        vec![
            "add-generic-vhost-user",
            "socket=/tmp/g.sock,device_type=1,queue_sizes=[256,256]",
        ],
        vec![
            "resize",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--balloon",
            "128M",
        ],
        vec!["resize", "--cpus", "3"],
        vec!["resize-disk", "--disk", "d0", "--size", "2G"],
        vec!["resize-zone", "--id", "z0", "--size", "1G"],
        vec!["snapshot", "file:///tmp/snap"],
        vec!["coredump", "file:///tmp/core"],
        vec!["restore", "source_url=file:///tmp/snap,prefault=on"],
        vec![
            "send-migration",
            "destination_url=unix:/tmp/m.sock,local=on",
        ],
        vec!["receive-migration", "receiver_url=unix:/tmp/m.sock"],
    ];
    for args in &cases {
        let theirs = call_made(&mut Command::new(&ch), &socket, &rx, args);
        let ours = call_made(&mut remote(), &socket, &rx, args);
        assert_eq!(ours.0, theirs.0, "{args:?}: request line");
        assert_eq!(normal(&ours.1), normal(&theirs.1), "{args:?}: body");
    }
    // add-disk and add-net go through Palisade's parsers: the same device either way.
    for (args, keys) in [
        (
            vec!["add-disk", "path=/tmp/d.img,readonly=on,id=d1"],
            &["path", "readonly", "id"][..],
        ),
        (
            vec!["add-net", "tap=tap7,mac=52:54:00:00:00:07"],
            &["tap", "mac", "num_queues"][..],
        ),
    ] {
        let theirs = call_made(&mut Command::new(&ch), &socket, &rx, &args);
        let ours = call_made(&mut remote(), &socket, &rx, &args);
        assert_eq!(ours.0, theirs.0, "{args:?}");
        let (ours, theirs) = (normal(&ours.1), normal(&theirs.1));
        for key in keys {
            assert_eq!(ours[key], theirs[key], "{args:?}: {key}");
        }
    }
}

#[test]
fn palisade_remote_drives_cloud_hypervisor_without_waiting_for_it_to_close() {
    let Some(ch) = reference_tool("CLOUD_HYPERVISOR", "cloud-hypervisor") else {
        return;
    };
    let dir = TempDir::new("remote-ch");
    let socket = dir.path("ch.sock");
    let _guard = spawn_listening(Command::new(&ch), &socket);
    let run = |args: &[&str]| {
        let out = run_with_timeout(
            remote().arg("--api-socket").arg(&socket).args(args),
            Duration::from_secs(20),
        );
        (
            out.status.code(),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&["ping"]);
    assert_eq!(code, Some(0), "{err}");
    let ping: Value = serde_json::from_str(&out).unwrap();
    assert!(ping["version"].is_string(), "{ping}");
    // An error answer is reported, not waited on.
    let (code, _, err) = run(&["info"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("palisade-remote: "), "{err}");
    let config = dir.path("vm.json");
    let body = serde_json::json!({
        "payload": {"kernel": guest("hello")},
        "memory": {"size": 64 << 20},
        "serial": {"mode": "Null"},
        "console": {"mode": "Off"},
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let (code, _, err) = run(&["create", path_str(&config)]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&["info"]);
    assert_eq!(code, Some(0), "{err}");
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["state"], "Created", "{info}");
    let (code, _, err) = run(&["delete"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["shutdown-vmm"]);
    assert_eq!(code, Some(0), "{err}");
}

/// What Cloud Hypervisor itself reports as a VM's configuration (`vm.info`'s `config`, with
/// every default it fills in: `cpus.profile`, the disks' `disable_io_uring`, …) creates the
/// same VM in Palisade, which boots it.
#[test]
fn cloud_hypervisor_s_own_configuration_creates_a_palisade_vm() {
    let Some(ch) = reference_tool("CLOUD_HYPERVISOR", "cloud-hypervisor") else {
        return;
    };
    let dir = TempDir::new("ch-config");
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let socket = dir.path("ch.sock");
    let _ch = spawn_listening(Command::new(&ch), &socket);
    let body = serde_json::json!({
        "payload": {"kernel": guest("echo")},
        "memory": {"size": 64 << 20},
        "serial": {"mode": "File", "file": dir.path("serial.log")},
        "console": {"mode": "Off"},
        "disks": [{"path": disk, "id": "d0"}],
    });
    let created =
        api::client::request(&socket, "PUT", "/api/v1/vm.create", Some(&body.to_string())).unwrap();
    assert!(created.is_success(), "{}", created.body);
    let info = api::client::request(&socket, "GET", "/api/v1/vm.info", None).unwrap();
    let info: Value = serde_json::from_str(&info.body).unwrap();
    let config = info["config"].clone();
    assert_eq!(config["cpus"]["profile"], "Host", "{config}");
    assert_eq!(config["disks"][0]["disable_io_uring"], false, "{config}");
    drop(_ch);

    let vmm = ApiVmm::spawn(palisade(), &dir, &["--no-shutdown"]);
    let (code, answer) = vmm.put("vm.create", &config);
    assert_eq!(code, 204, "{answer}\n{config}");
    assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
    vmm.wait_serial("echo: ready", 1);
}
