//! `--pvpanic`: a guest reports a panic through the pvpanic PCI device, as Linux's
//! pvpanic-pci does; Palisade logs it and reports the event Cloud Hypervisor reports — the
//! same `guest` `panic` event with the same properties, from Cloud Hypervisor itself run
//! here on the same guest — under Landlock and the filters. Without the flag there is no
//! such device.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The events of `file` that come from the guest.
fn guest_events(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .filter(|v| v["source"] == "guest")
        .map(|v| serde_json::json!({"event": v["event"], "properties": v["properties"]}))
        .collect()
}

fn run(mut cmd: Command, events: &Path, extra: &[&str]) -> std::process::Output {
    let kernel = guest("pvpanic");
    cmd.args([
        "--kernel",
        path_str(&kernel),
        "--memory",
        "size=64M",
        "--pvpanic",
    ])
    .args(SERIAL_ON_STDOUT)
    .args(["--event-monitor", &format!("path={}", events.display())])
    .args(extra);
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

#[test]
fn a_guest_panic_is_logged_and_reported_as_cloud_hypervisor_reports_it() {
    let dir = TempDir::new("pvpanic");
    let ours = dir.path("palisade.events");
    let out = run(palisade(), &ours, &["--landlock"]);
    let text = assert_pass(&out, "PASS pvpanic");
    assert!(text.contains("pvpanic: events 0x3"), "{text}");
    let log = stderr(&out);
    assert!(log.contains("pvpanic: the guest panicked"), "{log}");
    let seen = guest_events(&ours);
    assert_eq!(
        seen,
        vec![serde_json::json!({"event": "panic", "properties": {"event": "panic"}})]
    );
    let Some(ch) = reference_tool("CLOUD_HYPERVISOR", "cloud-hypervisor") else {
        return;
    };
    let theirs = dir.path("ch.events");
    let out = run(Command::new(ch), &theirs, &[]);
    assert!(stdout(&out).contains("PASS pvpanic"), "{}", stdout(&out));
    assert_eq!(guest_events(&theirs), seen, "Cloud Hypervisor's own events");
}

#[test]
fn without_the_flag_there_is_no_pvpanic_device() {
    let kernel = guest("pvpanic");
    let out = run_palisade(&["--kernel", path_str(&kernel)]);
    assert!(
        stdout(&out).contains("FAIL pvpanic: no pvpanic device (1b36:0011) on bus 0"),
        "{}",
        stdout(&out)
    );
}
