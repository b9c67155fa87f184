//! `--event-monitor`: the same life of a VM — create, boot, pause, resume, reboot, shut
//! down, delete, end the VMM — gives the same events from Palisade as from Cloud Hypervisor
//! itself, run side by side here, in the same JSON shape.
//!
//! cloud-hypervisor is found through `CLOUD_HYPERVISOR` or in `../shared/tools/`; under
//! `CI=true` its absence is a failure.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Drives the VMM listening at `socket` through a VM's life with palisade-remote.
fn life(socket: &Path, dir: &TempDir) {
    let config = dir.path("vm.json");
    let body = serde_json::json!({
        "payload": {"kernel": guest("echo")},
        "memory": {"size": 64 << 20},
        "serial": {"mode": "Null"},
        "console": {"mode": "Off"},
    });
    std::fs::write(&config, body.to_string()).unwrap();
    for args in [
        vec!["create", path_str(&config)],
        vec!["boot"],
        vec!["pause"],
        vec!["resume"],
        vec!["reboot"],
        vec!["shutdown"],
        vec!["delete"],
        vec!["shutdown-vmm"],
    ] {
        let out = run_with_timeout(
            remote().arg("--api-socket").arg(socket).args(&args),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The (source, event) pairs of an event file, checking each event's shape.
fn events(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(|v| {
            let v = v.unwrap();
            assert!(v["timestamp"]["secs"].is_u64(), "{v}");
            assert!(v["timestamp"]["nanos"].is_u64(), "{v}");
            assert!(v["properties"].is_null(), "{v}");
            (
                v["source"].as_str().unwrap().to_string(),
                v["event"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Starts `cmd --event-monitor path=events --api-socket socket` and waits for its socket.
fn start(mut cmd: Command, socket: &Path, events: &Path) -> ChildGuard {
    cmd.arg("--event-monitor")
        .arg(format!("path={}", events.display()));
    spawn_listening(cmd, socket)
}

#[test]
fn palisade_reports_the_events_cloud_hypervisor_reports() {
    let Some(ch) = reference_tool("CLOUD_HYPERVISOR", "cloud-hypervisor") else {
        return;
    };
    let dir = TempDir::new("events");
    let mut seen = Vec::new();
    for (name, cmd) in [("ch", Command::new(&ch)), ("palisade", palisade())] {
        let socket = dir.path(&format!("{name}.sock"));
        let file = dir.path(&format!("{name}.events"));
        let mut vmm = start(cmd, &socket, &file);
        life(&socket, &dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        while vmm.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{name} did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        seen.push(events(&file));
    }
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(s, e)| (s.to_string(), e.to_string()))
            .collect()
    };
    let expected = pairs(&[
        ("vmm", "starting"),
        ("vm", "booting"),
        ("vm", "booted"),
        ("vm", "pausing"),
        ("vm", "paused"),
        ("vm", "resuming"),
        ("vm", "resumed"),
        ("vm", "rebooting"),
        ("vm", "rebooted"),
        ("vm", "shutdown"),
        ("vm", "deleted"),
        ("vmm", "shutdown"),
    ]);
    assert_eq!(seen[0], expected, "Cloud Hypervisor's own events");
    assert_eq!(seen[1], seen[0], "Palisade's events");
}

#[test]
fn a_bad_event_monitor_is_refused_on_one_line() {
    for (spec, needle) in [
        ("fd=1", "standard stream"),
        ("fd=987", "not open"),
        ("nothing=1", "nothing"),
        ("path=/nonexistent/dir/events", "/nonexistent/dir/events"),
    ] {
        let out = run_palisade(&[
            "--kernel",
            path_str(&guest("hello")),
            "--event-monitor",
            spec,
        ]);
        assert_one_line_error(&out, needle);
    }
}
