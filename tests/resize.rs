//! `vm.resize`: vCPUs added to and taken from a running guest through ACPI hot-plug (the
//! guest brings each new one up with INIT-SIPI-SIPI and ejects the ones asked back), each new
//! vCPU thread confined and filtered like the others; bad requests refused and nothing changed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The threads of `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}

/// A field of `/proc/PID/task/TID/status`.
fn status_field(pid: u32, tid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn vcpus_are_added_removed_and_added_again_under_the_sandbox() {
    let dir = TempDir::new("resize-vcpus");
    let extra = json!({"cpus": {"boot_vcpus": 1, "max_vcpus": 2}, "landlock_enable": true});
    let vmm = created_vm(&dir, "cpu_hotplug", extra);
    let boot_vcpus = || vmm.info()["config"]["cpus"]["boot_vcpus"].clone();

    // Out of range: refused on one line, nothing changed.
    for (body, message) in [
        (
            json!({"desired_vcpus": 3}),
            "desired_vcpus 3: must be between 1 and max_vcpus (2)",
        ),
        (
            json!({"desired_vcpus": 0}),
            "desired_vcpus 0: must be between 1 and max_vcpus (2)",
        ),
        (json!({}), "nothing to resize"),
        (json!({"desired_cpus": 2}), "unknown field"),
    ] {
        let (code, text) = vmm.put("vm.resize", &body);
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(message), "{body}: {text}");
    }
    assert_eq!(boot_vcpus(), 1);

    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    vmm.wait_serial("cpu_hotplug: ready", 1);
    assert!(threads_named(vmm.pid(), "vcpu1").is_empty());

    let (code, text) = vmm.put("vm.resize", &json!({"desired_vcpus": 2}));
    assert_eq!(code, 204, "{text}");
    vmm.wait_serial("cpu 1 up", 1);
    assert_eq!(boot_vcpus(), 2);
    let added = threads_named(vmm.pid(), "vcpu1");
    assert_eq!(added.len(), 1, "one thread for vCPU 1");
    // Confined before it ran: the vCPU filter, no new privileges, no capabilities.
    assert_eq!(status_field(vmm.pid(), added[0], "Seccomp"), "2");
    assert_eq!(status_field(vmm.pid(), added[0], "NoNewPrivs"), "1");
    assert_eq!(
        status_field(vmm.pid(), added[0], "CapEff"),
        "0000000000000000"
    );

    // ch-remote's syntax, through palisade-remote: the guest is asked, ejects, the thread ends.
    let out = vmm.remote(&["resize", "--cpus", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    vmm.wait_serial("cpu 1 ejected", 1);
    wait_until("vCPU 1's thread has ended", || {
        threads_named(vmm.pid(), "vcpu1").is_empty()
    });
    assert_eq!(boot_vcpus(), 1);

    // The same vCPU again, on a new thread.
    assert_eq!(vmm.put("vm.resize", &json!({"desired_vcpus": 2})).0, 204);
    let text = vmm.wait_serial("PASS cpu_hotplug", 1);
    assert_eq!(text.matches("cpu 1 up").count(), 2, "{text}");
}

/// Resizing a VM that is not running changes what its next boot starts.
#[test]
fn resizing_before_boot_sets_the_vcpus_the_guest_starts_with() {
    let dir = TempDir::new("resize-cold");
    let vmm = created_vm(
        &dir,
        "smp",
        json!({"cpus": {"boot_vcpus": 1, "max_vcpus": 4}}),
    );
    assert_eq!(vmm.put("vm.resize", &json!({"desired_vcpus": 3})).0, 204);
    assert_eq!(vmm.info()["config"]["cpus"]["boot_vcpus"], 3);
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    vmm.wait_serial("PASS smp: 3 cpus", 1);
}

/// `desired_ram`: memory added to a running guest in the room `hotplug_size` keeps, under
/// the sandbox and with shared (memfd) RAM; the guest finds each block through the ACPI
/// memory hot-plug controller and reads back what it writes at both ends. What cannot be
/// done is refused on one line and changes nothing.
#[test]
fn memory_is_added_to_a_running_guest() {
    let dir = TempDir::new("resize-memory");
    let extra = json!({
        "memory": {"size": 64 << 20, "hotplug_size": 512 << 20, "shared": true},
        "landlock_enable": true,
    });
    let vmm = created_vm(&dir, "memory_hotplug", extra);
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    vmm.wait_serial("memory_hotplug: ready", 1);
    let size = || vmm.info()["config"]["memory"]["size"].as_u64().unwrap();
    let mib = |n: u64| n << 20;
    for (desired, message) in [
        (mib(32), "below the 67108864 bytes it has"),
        (mib(64) + mib(100), "blocks of 128 MiB"),
        (
            mib(64) + mib(640),
            "exceed the 536870912 left of memory.hotplug_size",
        ),
    ] {
        let (code, text) = vmm.put("vm.resize", &json!({"desired_ram": desired}));
        assert_eq!(code, 400, "{desired}: {text}");
        assert!(text.contains(message), "{desired}: {text}");
    }
    assert_eq!(size(), mib(64));

    let (code, text) = vmm.put("vm.resize", &json!({"desired_ram": mib(64 + 128)}));
    assert_eq!(code, 204, "{text}");
    let text = vmm.wait_serial("memory_hotplug: block usable", 1);
    assert!(
        text.contains("memory slot 0: base 0x1 00000000, 128 MiB"),
        "{text}"
    );
    assert_eq!(size(), mib(64 + 128));
    // The memfd holds the added memory after the boot RAM, for a vhost-user backend.
    let memfd = memfd_size(vmm.pid());
    assert_eq!(memfd, Some(mib(64 + 128)));

    // ch-remote's syntax through palisade-remote: 256 MiB more, right after the first block.
    let out = vmm.remote(&["resize", "--memory", "448M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = vmm.wait_serial("PASS memory_hotplug", 1);
    assert!(
        text.contains("memory slot 1: base 0x1 08000000, 256 MiB"),
        "{text}"
    );
    assert_eq!(size(), mib(448));
    // The room is used up: 128 MiB more would not fit.
    let (code, text) = vmm.put("vm.resize", &json!({"desired_ram": mib(448 + 256)}));
    assert_eq!(code, 400, "{text}");
}

/// The size of the VMM's shared guest-RAM memfd, if it has one open.
fn memfd_size(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().contains("memfd:palisade-guest-ram"))
        })
        .map(|e| std::fs::metadata(e.path()).unwrap().len())
}

/// The same from the command line, with private (anonymous) memory: `--memory
/// hotplug_size=` keeps the room, two resizes fill it.
#[test]
fn memory_is_added_from_the_command_line_room() {
    let dir = TempDir::new("resize-memory-cli");
    let vmm = booted_guest(
        &dir,
        "memory_hotplug",
        &[
            "--memory",
            "size=64M,hotplug_size=256M",
            "--landlock",
            "--no-shutdown",
        ],
    );
    vmm.wait_serial("memory_hotplug: ready", 1);
    assert_eq!(vmm.info()["config"]["memory"]["hotplug_size"], 256u64 << 20);
    for total in [192u64, 320] {
        let (code, text) = vmm.put("vm.resize", &json!({"desired_ram": total << 20}));
        assert_eq!(code, 204, "{text}");
    }
    let text = vmm.wait_serial("PASS memory_hotplug", 1);
    assert!(
        text.contains("memory slot 1: base 0x1 08000000, 128 MiB"),
        "{text}"
    );
}

/// `memory.zones`: RAM made of zones with their own backing — here private pages and a
/// shared file — and memory added to a zone with `vm.resize-zone` (and `palisade-remote
/// resize-zone`) in its own room. What the guest writes into the memory added to the file's
/// zone is in the file, where the zone's boot memory ends; a request naming no zone, or
/// asking for the whole VM's RAM, is refused and changes nothing.
#[test]
fn memory_zones_make_up_ram_and_grow_one_by_one() {
    let dir = TempDir::new("resize-zones");
    let backing = dir.path("zone1.mem");
    std::fs::write(&backing, b"").unwrap();
    let extra = json!({
        "memory": {"size": 0, "zones": [
            {"id": "z0", "size": 32 << 20},
            {"id": "z1", "size": 32 << 20, "file": backing, "shared": true,
             "hotplug_size": 256 << 20},
        ]},
        "landlock_enable": true,
    });
    let vmm = created_vm(&dir, "memory_hotplug", extra);
    // The file was made long enough for the zone and its room.
    assert_eq!(std::fs::metadata(&backing).unwrap().len(), 288 << 20);
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    vmm.wait_serial("memory_hotplug: ready", 1);
    assert_eq!(vmm.info()["memory_actual_size"], 64u64 << 20);
    // The sandbox report names the zone's file, held open from creation.
    let info = vmm.info();
    let held = info["landlock"]["held"].as_array().unwrap().clone();
    assert!(
        held.iter().any(
            |h| h["origin"] == json!({"kind": "memory_zone", "id": "z1"})
                && h["path"] == json!(backing)
        ),
        "{held:?}"
    );

    for (endpoint, body, message) in [
        (
            "vm.resize-zone",
            json!({"id": "nope", "desired_ram": 1 << 30}),
            "no memory zone",
        ),
        (
            "vm.resize-zone",
            json!({"id": "z0", "desired_ram": 160 << 20}),
            "zone z0 has no room",
        ),
        (
            "vm.resize",
            json!({"desired_ram": 192 << 20}),
            "resize one with vm.resize-zone",
        ),
    ] {
        let (code, text) = vmm.put(endpoint, &body);
        assert!(code == 400 || code == 404, "{body}: {code} {text}");
        assert!(text.contains(message), "{body}: {text}");
    }
    let (code, text) = vmm.put(
        "vm.resize-zone",
        &json!({"id": "z1", "desired_ram": 160 << 20}),
    );
    assert_eq!(code, 204, "{text}");
    let out = vmm.remote(&["resize-zone", "--id", "z1", "--size", "288M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = vmm.wait_serial("PASS memory_hotplug", 1);
    // The rooms start at 4 GiB, z1's first (z0 has none).
    assert!(
        text.contains("memory slot 0: base 0x1 00000000, 128 MiB"),
        "{text}"
    );
    assert!(
        text.contains("memory slot 1: base 0x1 08000000, 128 MiB"),
        "{text}"
    );
    let info = vmm.info();
    assert_eq!(
        info["config"]["memory"]["zones"][1]["hotplugged_size"],
        256u64 << 20,
        "{info}"
    );
    assert_eq!(info["memory_actual_size"], 320u64 << 20);
    let word = |offset: u64| {
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&backing).unwrap(),
            &mut b,
            offset,
        )
        .unwrap();
        u32::from_le_bytes(b)
    };
    assert_eq!(
        word(32 << 20),
        0x5a5a_0000,
        "slot 0's first word, in the file"
    );
    assert_eq!(
        word(160 << 20),
        0x5a5a_0001,
        "slot 1's first word, in the file"
    );
}

/// The zones' RAM is what the guest's memory map holds: 32 MiB + 16 MiB of huge pages.
#[test]
fn the_guest_sees_the_zones_as_its_ram() {
    let dir = TempDir::new("zones-boot");
    let vmm = booted_guest(
        &dir,
        "pvh_info",
        &[
            "--memory",
            "size=0",
            "--memory-zone",
            "id=a,size=32M",
            "--memory-zone",
            "id=b,size=16M,shared=on",
            "--no-shutdown",
        ],
    );
    // 48 MiB less the BIOS area between the EBDA and 1 MiB.
    vmm.wait_serial("memmap: 3 entries, 48767 KiB RAM", 1);
    let zones = vmm.info()["config"]["memory"]["zones"].clone();
    assert_eq!(zones[1]["id"], "b", "{zones}");
    assert_eq!(
        memfd_size(vmm.pid()),
        Some(16 << 20),
        "zone b is the shared memfd"
    );
}
