//! `--pmem` and `vm.add-pmem`: a guest driver finds the virtio-pmem device, reads what the
//! host put in the file through the region the configuration space names, writes it, and
//! flushes — under Landlock and the filters. Shared, the guest's writes are in the file;
//! with `discard_writes=on` they never reach it. Hot-plug is confined to the rules, and
//! files that cannot back a region are refused on one line.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

const HOST_TEXT: &[u8] = b"PMEM-FROM-HOST!!";
const GUEST_TEXT: &[u8] = b"written by the virtio_pmem guest\n";
const GUEST_END: &[u8] = b"the last bytes of the region\n";

/// A 4 MiB backing file beginning with [`HOST_TEXT`].
fn backing(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path(name);
    let mut data = vec![0u8; 4 << 20];
    data[..HOST_TEXT.len()].copy_from_slice(HOST_TEXT);
    std::fs::write(&path, data).unwrap();
    path
}

fn contains(file: &Path, at: usize, text: &[u8]) -> bool {
    let data = std::fs::read(file).unwrap();
    data.get(at..at + text.len()) == Some(text)
}

#[test]
fn the_guest_writes_through_the_region_into_the_file_and_flushes() {
    let dir = TempDir::new("pmem");
    let file = backing(&dir, "pmem.img");
    let arg = format!("file={},id=pm0", file.display());
    let vmm = booted_guest(
        &dir,
        "virtio_pmem",
        &["--pmem", &arg, "--landlock", "--no-shutdown"],
    );
    let text = vmm.wait_serial("PASS virtio_pmem", 1);
    assert!(
        text.contains("pmem: host wrote \"PMEM-FROM-HOST!!\""),
        "{text}"
    );
    assert!(text.contains(", 4 MiB"), "{text}");
    // Shared: the guest's writes are the file's.
    assert!(contains(&file, 0x100, GUEST_TEXT), "{text}");
    assert!(contains(&file, (4 << 20) - 64, GUEST_END));
    let counters = vmm.get("vm.counters");
    assert_eq!(counters["pm0"]["flushes"], 1, "{counters}");
    assert_eq!(counters["pm0"]["malformed"], 0, "{counters}");
    let info = vmm.info();
    assert_eq!(info["config"]["pmem"][0]["file"], json!(file), "{info}");
    // Its region is the second resource, at the address the guest printed.
    let region = &info["device_tree"]["pm0"]["resources"][1]["MmioAddressRange"];
    assert_eq!(region["size"], 4 << 20, "{info}");
    let base = region["base"].as_u64().unwrap();
    let printed = format!("{:#x} {:08x}", base >> 32, base as u32);
    assert!(
        text.contains(&format!("region at {printed}")),
        "{printed}: {text}"
    );
    // Held from creation, named by the device, read-write.
    let held = info["landlock"]["held"].as_array().unwrap();
    assert!(
        held.iter()
            .any(|h| h["origin"] == json!({"kind": "pmem", "id": "pm0"})
                && h["path"] == json!(file)
                && h["how"].as_str().unwrap().contains("read-write")),
        "{held:?}"
    );
}

#[test]
fn discarded_writes_never_reach_the_file() {
    let dir = TempDir::new("pmem-discard");
    let file = backing(&dir, "golden.img");
    let before = std::fs::read(&file).unwrap();
    let arg = format!("file={},discard_writes=on", file.display());
    let vmm = booted_guest(
        &dir,
        "virtio_pmem",
        &["--pmem", &arg, "--landlock", "--no-shutdown"],
    );
    let text = vmm.wait_serial("PASS virtio_pmem", 1);
    // The guest read its own writes back (checked in the guest), but the file is as it was.
    assert!(text.contains("pmem: wrote the region"), "{text}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
    assert_eq!(vmm.get("vm.counters")["_pmem0"]["flushes"], 1);
    // The file was opened read-only: the sandbox report says so.
    let info = vmm.info();
    let held = info["landlock"]["held"].as_array().unwrap();
    assert!(
        held.iter()
            .any(|h| h["origin"] == json!({"kind": "pmem", "id": "_pmem0"})
                && h["how"].as_str().unwrap().contains("read-only")),
        "{held:?}"
    );
}

#[test]
fn hot_plug_is_confined_to_the_rules_and_the_vm_keeps_running() {
    let dir = TempDir::new("pmem-hotplug");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let inside = allowed.join("inside.img");
    std::fs::write(&inside, vec![0u8; 2 << 20]).unwrap();
    let outside = backing(&dir, "outside.img");
    let rule = format!("path={},access=rw", allowed.display());
    let vmm = booted_guest(
        &dir,
        "echo",
        &["--landlock", "--landlock-rules", &rule, "--no-shutdown"],
    );
    vmm.wait_state("Running");
    // Outside the rules: refused, with the rule that would allow it.
    let out = vmm.remote(&["add-pmem", &format!("file={}", outside.display())]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&outside.display().to_string()), "{err}");
    assert!(err.contains("--landlock-rules path="), "{err}");
    assert_eq!(vmm.state(), "Running");
    assert!(vmm.info()["config"]["pmem"].is_null());
    // Inside: plugged, extended to the size asked for, in the config and the device tree.
    let out = vmm.remote(&[
        "add-pmem",
        &format!("file={},size=8M,id=hot", inside.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(reply["id"], "hot", "{reply}");
    assert_eq!(std::fs::metadata(&inside).unwrap().len(), 8 << 20);
    let info = vmm.info();
    assert_eq!(info["config"]["pmem"][0]["id"], "hot", "{info}");
    assert_eq!(
        info["device_tree"]["hot"]["resources"][1]["MmioAddressRange"]["size"],
        8 << 20
    );
    // Its id is taken now.
    let out = vmm.remote(&["add-pmem", &format!("file={},id=hot", inside.display())]);
    assert!(!out.status.success());
    assert_eq!(vmm.state(), "Running");
}

#[test]
fn files_that_cannot_back_a_region_are_refused_on_one_line() {
    let dir = TempDir::new("pmem-bad");
    let kernel = guest("echo");
    let empty = dir.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let odd = dir.path("odd.img");
    std::fs::write(&odd, vec![0u8; 3 << 20]).unwrap();
    let fifo = dir.path("fifo");
    let c = std::ffi::CString::new(path_str(&fifo)).unwrap();
    // SAFETY: mkfifo reads the path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let short = dir.path("short.img");
    std::fs::write(&short, vec![0u8; 2 << 20]).unwrap();
    let cases = [
        (format!("file={}", empty.display()), "the file is empty"),
        (format!("file={}", odd.display()), "not a multiple of 2 MiB"),
        (format!("file={},size=2M", fifo.display()), "is a FIFO"),
        (
            format!("file={},size=2M", dir.path("").display()),
            "Is a directory",
        ),
        (
            format!("file={},size=3M", short.display()),
            "multiple of 2 MiB",
        ),
        (
            format!("file={},size=4M,discard_writes=on", short.display()),
            "extend the file or give a smaller size",
        ),
        (format!("file={},iommu=on", short.display()), "iommu"),
    ];
    for (arg, needle) in cases {
        let out = run_palisade(&["--kernel", path_str(&kernel), "--pmem", &arg]);
        assert!(!out.status.success(), "{arg}");
        assert_one_line_error(&out, needle);
    }
    // A read-only region never grows its file.
    assert_eq!(std::fs::metadata(&short).unwrap().len(), 2 << 20);
}

#[test]
fn the_region_follows_the_vm_across_boots_and_leaves_with_the_device() {
    let dir = TempDir::new("pmem-boots");
    let file = backing(&dir, "pmem.img");
    let rules = [json!({"path": dir.path(""), "access": "rw"})];
    let extra = json!({"pmem": [{"file": file, "id": "pm"}], "landlock_enable": true,
                       "landlock_rules": rules});
    let vmm = created_vm(&dir, "virtio_pmem", extra);
    // Before boot, removing frees the region and the id; adding again takes them back.
    let region =
        |vmm: &ApiVmm| vmm.info()["device_tree"]["pm"]["resources"][1]["MmioAddressRange"].clone();
    let first = region(&vmm);
    assert_eq!(first["size"], 4 << 20);
    assert_eq!(vmm.put("vm.remove-device", &json!({"id": "pm"})).0, 204);
    assert!(vmm.info()["device_tree"]["pm"].is_null());
    assert!(vmm.info()["config"]["pmem"].as_array().unwrap().is_empty());
    let (code, body) = vmm.put("vm.add-pmem", &json!({"file": file, "id": "pm"}));
    assert_eq!(code, 204, "{body}");
    assert_eq!(region(&vmm), first, "the freed range is used again");
    // Each boot is a new KVM VM: the region is mapped into it again.
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    vmm.wait_serial("PASS virtio_pmem", 1);
    vmm.wait_state("Shutdown");
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    let text = vmm.wait_serial("PASS virtio_pmem", 2);
    assert_eq!(
        text.matches("pmem: host wrote \"PMEM-FROM-HOST!!\"")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        vmm.get("vm.counters")["pm"]["flushes"],
        2,
        "one flush per boot"
    );
}
