//! `--balloon`: the guest's driver finds the virtio balloon, gives up the pages it asks for
//! (which the host takes back: they read as zeros), and takes them back when
//! `vm.resize desired_balloon` drops the target — under Landlock and the filters, with the
//! device's counters saying what happened. Without a balloon, `desired_balloon` is refused.

mod common;

use common::*;
use serde_json::json;

#[test]
fn the_guest_inflates_and_deflates_the_balloon() {
    let dir = TempDir::new("balloon");
    let vmm = booted_guest(
        &dir,
        "virtio_balloon",
        &["--balloon", "size=32K,deflate_on_oom=on", "--landlock"],
    );
    let text = vmm.wait_serial("balloon: inflated 8 pages, which read as zeros", 1);
    assert!(text.contains("balloon: target 8 pages"), "{text}");
    let info = vmm.info();
    assert_eq!(
        info["config"]["balloon"],
        json!({"size": 32768, "deflate_on_oom": true, "free_page_reporting": false}),
        "{info}"
    );
    assert_eq!(
        info["device_tree"]["_balloon0"]["pci_bdf"]
            .as_str()
            .map(|b| b.len()),
        Some(12)
    );
    // Counted, and given back to the host.
    let wait_counter = |name: &str, want: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let c = vmm.get("vm.counters");
            if c["_balloon0"][name] == want {
                return c;
            }
            assert!(std::time::Instant::now() < deadline, "{name}: {c}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let c = wait_counter("actual_pages", 8);
    assert_eq!(c["_balloon0"]["inflated_pages"], 8, "{c}");
    assert_eq!(c["_balloon0"]["released_bytes"], 32768, "{c}");
    assert_eq!(c["_balloon0"]["errors"], 0, "{c}");

    // More than the guest has is refused; 0 lets the pages go back.
    let (code, text) = vmm.put("vm.resize", &json!({"desired_balloon": 1u64 << 40}));
    assert_eq!(code, 400, "{text}");
    let out = vmm.remote(&["resize", "--balloon", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    vmm.wait_serial("PASS virtio_balloon", 1);
    let c = wait_counter("actual_pages", 0);
    assert_eq!(c["_balloon0"]["deflated_pages"], 8, "{c}");
    assert_eq!(c["_balloon0"]["target_pages"], 0, "{c}");
    assert_eq!(vmm.info()["config"]["balloon"]["size"], 0);
}

#[test]
fn without_a_balloon_desired_balloon_is_refused() {
    let dir = TempDir::new("no-balloon");
    let vmm = created_vm(&dir, "echo", json!({}));
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    let (code, text) = vmm.put("vm.resize", &json!({"desired_balloon": 4096}));
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("the VM has no balloon device (add one with --balloon)"),
        "{text}"
    );
}
