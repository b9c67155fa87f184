//! Cloud Hypervisor's own client, ch-remote, drives Palisade: it parses the status line and
//! headers the way Cloud Hypervisor writes them (`HTTP/1.1 200 `, `Content-Length:`).
//!
//! ch-remote is found through `CH_REMOTE` or at `../shared/tools/ch-remote` beside the
//! repository; under `CI=true` its absence is a failure.

mod common;

use std::process::Command;

use common::*;

#[test]
fn ch_remote_pings_creates_inspects_boots_and_deletes() {
    let Some(ch) = reference_tool("CH_REMOTE", "ch-remote") else {
        return;
    };
    let dir = TempDir::new("ch-remote");
    let vmm = ApiVmm::spawn(palisade(), &dir, &["--no-shutdown"]);
    let run = |args: &[&str]| {
        let out = Command::new(&ch)
            .arg("--api-socket")
            .arg(&vmm.socket)
            .args(args)
            .output()
            .expect("run ch-remote");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["ping"]);
    assert_eq!(code, Some(0), "{err}");
    let ping: serde_json::Value = serde_json::from_str(&out).expect("ping is JSON");
    assert_eq!(ping["pid"], serde_json::json!(vmm.pid()));

    let config = dir.path("vm.json");
    let body = serde_json::json!({
        "payload": {"kernel": guest("echo")},
        "serial": {"mode": "File", "file": dir.path("serial.log")},
        "console": {"mode": "Off"},
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let (code, _, err) = run(&["create", path_str(&config)]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&["info"]);
    assert_eq!(code, Some(0), "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("info is JSON");
    assert_eq!(info["state"], "Created");
    let (code, _, err) = run(&["boot"]);
    assert_eq!(code, Some(0), "{err}");
    vmm.wait_serial("echo: ready", 1);
    assert_eq!(vmm.state(), "Running");
    let (code, _, err) = run(&["delete"]);
    assert_eq!(code, Some(0), "{err}");
    // An error is reported as Cloud Hypervisor's are: the status, then Palisade's message.
    let (code, _, err) = run(&["info"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("NotFound") && err.contains("no VM has been created"),
        "{err}"
    );
}

/// ch-remote's `resize` (vCPUs and memory) against a running Palisade VM: the vCPU is
/// added, the guest finds and uses both memory blocks.
#[test]
fn ch_remote_resizes_a_running_vm() {
    let Some(ch) = reference_tool("CH_REMOTE", "ch-remote") else {
        return;
    };
    let dir = TempDir::new("ch-remote-resize");
    let extra = serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 2},
        "memory": {"size": 64 << 20, "hotplug_size": 256 << 20},
    });
    let vmm = created_vm(&dir, "memory_hotplug", extra);
    assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
    vmm.wait_serial("memory_hotplug: ready", 1);
    let run = |args: &[&str]| {
        let out = Command::new(&ch)
            .arg("--api-socket")
            .arg(&vmm.socket)
            .args(args)
            .output()
            .expect("run ch-remote");
        assert!(
            out.status.success(),
            "ch-remote {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["resize", "--cpus", "2"]);
    assert_eq!(vmm.info()["config"]["cpus"]["boot_vcpus"], 2);
    run(&["resize", "--memory", "192M"]);
    run(&["resize", "--memory", "320M"]);
    vmm.wait_serial("PASS memory_hotplug", 1);
    assert_eq!(vmm.info()["memory_actual_size"], 320u64 << 20);
}
