//! A device removed through the API is gone from the configuration at once, as with Cloud
//! Hypervisor: a guest that never ejects it keeps it only until the VM next boots.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_disk_the_guest_never_ejects_is_gone_after_a_reboot() {
    let dir = TempDir::new("unplug-reboot");
    let img = dir.path("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("path={},id=d0", img.display());
    let serial = ApiVmm::serial_arg(&dir);
    let kernel = guest("echo");
    let mut cmd = palisade();
    cmd.args([
        "--kernel",
        path_str(&kernel),
        "--serial",
        &serial,
        "--console",
        "off",
    ])
    .args(["--disk", &disk, "--no-shutdown"]);
    let vmm = ApiVmm::spawn(cmd, &dir, &[]);
    vmm.wait_serial("echo: ready", 1);

    // The echo guest has no hot-plug driver: it never ejects anything.
    let (code, body) = vmm.put("vm.remove-device", &json!({"id": "d0"}));
    assert_eq!(code, 204, "{body}");
    let info = vmm.info();
    assert_eq!(info["config"]["disks"], json!([]), "{info}");
    assert!(
        info["device_tree"].get("d0").is_some(),
        "still on the bus: {info}"
    );

    let (code, body) = vmm.put("vm.reboot", &json!({}));
    assert_eq!(code, 204, "{body}");
    vmm.wait_serial("echo: ready", 2);
    let info = vmm.info();
    assert!(info["device_tree"].get("d0").is_none(), "{info}");
    assert_eq!(info["config"]["disks"], json!([]), "{info}");

    // It is let go of for good: another VMM may take the image.
    let other = TempDir::new("unplug-other");
    let b = ApiVmm::spawn(palisade(), &other, &[]);
    let config = json!({
        "payload": {"kernel": guest("hello")},
        "serial": {"mode": "Null"}, "console": {"mode": "Off"},
        "disks": [{"path": img}],
    });
    let (code, body) = b.put("vm.create", &config);
    assert_eq!(code, 204, "{body}");
}
