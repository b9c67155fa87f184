//! `platform.num_pci_segments` (`--platform num_pci_segments=N`): each segment a host
//! bridge with an ECAM region of its own in the MCFG; devices placed with `pci_segment` are
//! found there by the guest, hot-plugged ones answer with their segment in `bdf`; a segment
//! the VM lacks is refused on one line.

mod common;

use common::*;
use serde_json::json;

fn image(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    path
}

#[test]
fn devices_are_found_on_the_segment_they_are_placed_on() {
    let dir = TempDir::new("pci-segments");
    let on_two = image(&dir, "two.img");
    let on_zero = image(&dir, "zero.img");
    let hot = image(&dir, "hot.img");
    let serial = ApiVmm::serial_arg(&dir);
    let kernel = guest("pci_segments");
    let two = format!("path={},pci_segment=2,id=d2", on_two.display());
    let zero = format!("path={},id=d0", on_zero.display());
    let vmm = ApiVmm::spawn(
        palisade(),
        &dir,
        &[
            "--kernel",
            path_str(&kernel),
            "--platform",
            "num_pci_segments=3",
            "--pci-segment",
            "pci_segment=2,mmio64_aperture_weight=2",
            "--disk",
            &two,
            "--disk",
            &zero,
            "--serial",
            &serial,
            "--console",
            "off",
            "--landlock",
            "--landlock-rules",
            &format!("path={},access=rw", dir.0.display()),
            "--no-shutdown",
        ],
    );
    let text = vmm.wait_serial("PASS pci_segments: 3 segments", 1);
    // A host bridge on each segment; the disk where it was put, the rest on segment 0.
    for line in [
        "pci 0000:00:00.0 8086:29c0",
        "pci 0001:00:00.0 8086:29c0",
        "pci 0002:00:00.0 8086:29c0",
        "pci 0002:00:01.0 1af4:1042",
        "pci 0000:00:01.0 1af4:1042",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(!text.contains("pci 0001:00:01.0"), "{text}");
    let info = vmm.info();
    assert_eq!(
        info["device_tree"]["d2"]["pci_bdf"], "0002:00:01.0",
        "{info}"
    );
    assert_eq!(info["config"]["platform"]["num_pci_segments"], 3);
    assert_eq!(
        info["config"]["pci_segments"][0]["mmio64_aperture_weight"],
        2
    );
    // Segment 2 weighs 2 of 4 in the 64-bit window: its BARs start half way in.
    let bar = |id: &str| {
        info["device_tree"][id]["resources"][0]["MmioAddressRange"]["base"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(bar("d2") - bar("d0"), 32 << 30, "{info}");

    // Hot plug onto segment 1 (the VM is shut down after the guest's PASS, so it is cold
    // plugged), and onto a segment the VM does not have.
    let (code, text) = vmm.put(
        "vm.add-disk",
        &json!({"path": hot, "id": "h1", "pci_segment": 1}),
    );
    assert!(code == 200 || code == 204, "{code} {text}");
    assert_eq!(vmm.info()["device_tree"]["h1"]["pci_bdf"], "0001:00:01.0");
    let (code, text) = vmm.put(
        "vm.add-disk",
        &json!({"path": hot, "id": "h9", "pci_segment": 3}),
    );
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("disk.pci_segment=3: the VM has 3 PCI segment(s)"),
        "{text}"
    );
}

#[test]
fn segments_beyond_what_palisade_builds_are_refused() {
    let kernel = guest("hello");
    for (args, message) in [
        (
            vec!["--platform", "num_pci_segments=17"],
            "platform.num_pci_segments=17: must be between 1 and 16",
        ),
        (
            vec!["--disk", "path=/dev/null,pci_segment=1"],
            "disks[0].pci_segment: is 1, but the VM has 1 PCI segment(s)",
        ),
        // More than the firmware tables' area can describe: refused at creation.
        (
            vec![
                "--platform",
                "num_pci_segments=16",
                "--cpus",
                "boot=1,max=254",
                "--memory",
                "size=64M,hotplug_size=1G",
            ],
            "use fewer vCPUs or PCI segments",
        ),
    ] {
        let mut all = vec!["--kernel", path_str(&kernel)];
        all.extend(args.iter().copied());
        assert_one_line_error(&run_palisade(&all), message);
    }
}
