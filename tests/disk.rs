//! Disks from the guest's side: the `virtio_blk` guest drives a virtio-blk PCI device (found
//! through ACPI's MCFG, moved below 4 GiB, MSI-X) against image files the tests make and then
//! inspect, and the `hotplug` guest follows ACPI PCI hot-plug while disks are added and removed
//! through the REST API and `palisade-remote`.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;
use serde_json::{json, Value};

/// Size of the test images.
const DISK_SIZE: usize = 8 << 20;
const SECTOR: usize = 512;
/// The line sector 0 of a test image starts with (the guest prints it back).
const SECTOR0_LINE: &str = "palisade disk test image, sector 0";
/// What the guest writes at the start of sector 1.
const GUEST_TEXT: &[u8] = b"written by the palisade test guest\n";
/// An 8 MiB image: sector 0 starts with [`SECTOR0_LINE`], every other byte is a pattern that
/// a stray write would disturb.
fn make_disk(dir: &TempDir, name: &str) -> PathBuf {
    let mut image: Vec<u8> = (0..DISK_SIZE).map(|i| (i % 251) as u8).collect();
    let first = format!("{SECTOR0_LINE}\nsecond line\n");
    image[..first.len()].copy_from_slice(first.as_bytes());
    let path = dir.path(name);
    std::fs::write(&path, &image).unwrap();
    path
}

/// Sector 1 as the guest leaves it: its text, then zeros.
fn written_sector() -> Vec<u8> {
    let mut sector = vec![0u8; SECTOR];
    sector[..GUEST_TEXT.len()].copy_from_slice(GUEST_TEXT);
    sector
}

/// Boots the `virtio_blk` guest with `extra` arguments (disks, command line).
fn run_virtio_blk(extra: &[&str]) -> Output {
    let kernel = guest("virtio_blk");
    let mut args = vec!["--kernel", path_str(&kernel), "--memory", "size=128M"];
    args.extend_from_slice(&SERIAL_ON_STDOUT);
    args.extend_from_slice(extra);
    run_palisade(&args)
}

/// The number after `prefix` on the guest's line starting with it.
fn number_after(text: &str, prefix: &str) -> u64 {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"));
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?} in {line:?}"))
}

#[test]
fn the_guest_reads_writes_and_flushes_a_disk_image() {
    let dir = TempDir::new("disk-rw");
    let disk = make_disk(&dir, "disk.img");
    let before = std::fs::read(&disk).unwrap();
    let spec = format!("path={},id=disk-one", disk.display());
    let out = run_virtio_blk(&["--disk", &spec]);
    let text = assert_pass(&out, "PASS virtio_blk");

    assert!(
        text.contains("pci 00:00.0 8086:"),
        "the host bridge:\n{text}"
    );
    assert!(text.contains(" 1af4:1042 class 01\n"), "{text}");
    assert!(text.contains("ecam: 0xe0000000 (MCFG)\n"), "{text}");
    assert!(
        text.contains("moved to 0xc0000000, size 0x8000\n"),
        "the BAR move:\n{text}"
    );
    assert_eq!(
        number_after(&text, "capacity: "),
        (DISK_SIZE / SECTOR) as u64,
        "{text}"
    );
    assert!(
        text.contains(&format!("sector0: {SECTOR0_LINE}\n")),
        "{text}"
    );
    assert!(text.contains("id: disk-one\n"), "{text}");
    for line in ["write: OK", "read back: OK", "flush: OK"] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
    }
    assert!(number_after(&text, "interrupts: ") >= 1, "{text}");

    // Sector 1 holds the guest's text on the host; nothing else changed.
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after.len(), DISK_SIZE, "the image changed size");
    assert_eq!(&after[SECTOR..2 * SECTOR], &written_sector()[..]);
    assert!(after[..SECTOR] == before[..SECTOR], "sector 0 changed");
    assert!(
        after[2 * SECTOR..] == before[2 * SECTOR..],
        "sectors after 1 changed"
    );
}

#[test]
fn a_readonly_disk_refuses_the_write_and_stays_unchanged() {
    let dir = TempDir::new("disk-ro");
    let disk = make_disk(&dir, "disk.img");
    let before = std::fs::read(&disk).unwrap();
    let spec = format!("path={},readonly=on", disk.display());
    let out = run_virtio_blk(&["--disk", &spec, "--cmdline", "expect=readonly"]);
    let text = assert_pass(&out, "PASS virtio_blk");
    assert!(text.contains("write refused: IOERR\n"), "{text}");
    assert!(
        text.contains(&format!("sector0: {SECTOR0_LINE}\n")),
        "{text}"
    );
    assert!(std::fs::read(&disk).unwrap() == before, "the image changed");
}

#[test]
fn a_writable_disk_does_not_claim_to_be_readonly() {
    // The guest told to expect a read-only disk notices the device does not offer RO.
    let dir = TempDir::new("disk-notro");
    let disk = make_disk(&dir, "disk.img");
    let spec = format!("path={}", disk.display());
    let out = run_virtio_blk(&["--disk", &spec, "--cmdline", "expect=readonly"]);
    let text = stdout(&out);
    assert!(
        text.contains("FAIL virtio_blk: expect=readonly, but the device does not offer"),
        "{text}"
    );
}

#[test]
fn two_disks_are_two_devices_and_only_the_first_is_written() {
    let dir = TempDir::new("disk-two");
    let first = make_disk(&dir, "first.img");
    let second = make_disk(&dir, "second.img");
    let second_before = std::fs::read(&second).unwrap();
    let a = format!("path={},id=first", first.display());
    let b = format!("path={},id=second", second.display());
    let out = run_virtio_blk(&["--disk", &a, "--disk", &b]);
    let text = assert_pass(&out, "PASS virtio_blk");
    let blk: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pci ") && l.ends_with(" 1af4:1042 class 01"))
        .collect();
    assert_eq!(blk.len(), 2, "two virtio-blk devices expected:\n{text}");
    assert_ne!(blk[0], blk[1]);
    assert!(text.contains("virtio-blk devices: 2, using "), "{text}");
    assert!(text.contains("id: first\n"), "{text}");
    let written = std::fs::read(&first).unwrap();
    assert_eq!(&written[SECTOR..2 * SECTOR], &written_sector()[..]);
    assert!(
        std::fs::read(&second).unwrap() == second_before,
        "the second disk changed"
    );
}

#[test]
fn the_serial_option_is_what_get_id_answers() {
    let dir = TempDir::new("disk-serial");
    let disk = make_disk(&dir, "disk.img");
    let spec = format!("path={},id=d0,serial=SN-0123456789", disk.display());
    let out = run_virtio_blk(&["--disk", &spec]);
    let text = assert_pass(&out, "PASS virtio_blk");
    assert!(text.contains("id: SN-0123456789\n"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Through the API.

/// Starts palisade running the `hotplug` guest and waits for it to be ready.
fn hotplug_guest(dir: &TempDir) -> ApiVmm {
    let kernel = guest("hotplug");
    let serial_arg = ApiVmm::serial_arg(dir);
    let vmm = ApiVmm::spawn(
        palisade(),
        dir,
        &[
            "--kernel",
            path_str(&kernel),
            "--memory",
            "size=128M",
            "--serial",
            &serial_arg,
            "--console",
            "off",
            "--no-shutdown",
        ],
    );
    vmm.wait_serial("hotplug: ready\n", 1);
    vmm
}

/// The slot of a `0000:00:SS.0` address.
fn slot_of(bdf: &str) -> u8 {
    let rest = bdf
        .strip_prefix("0000:00:")
        .and_then(|r| r.strip_suffix(".0"))
        .unwrap_or_else(|| panic!("not a bus 0 function 0 address: {bdf:?}"));
    u8::from_str_radix(rest, 16).unwrap_or_else(|_| panic!("bad slot in {bdf:?}"))
}

/// The device `id` in vm.info's device tree, if any.
fn device_node(info: &Value, id: &str) -> Option<Value> {
    info["device_tree"].get(id).cloned()
}

/// Whether vm.info's configuration still lists a disk with `id`.
fn config_has_disk(info: &Value, id: &str) -> bool {
    info["config"]["disks"]
        .as_array()
        .is_some_and(|disks| disks.iter().any(|d| d["id"] == json!(id)))
}

/// The guest's lines for a hot-added disk of [`DISK_SIZE`] in `slot`.
fn expect_added(vmm: &ApiVmm, slot: u8) {
    vmm.wait_serial(&format!("hotplug: slot {slot} added: 1af4:1042\n"), 1);
    vmm.wait_serial(
        &format!(
            "hotplug: slot {slot} capacity: {} sectors\n",
            DISK_SIZE / SECTOR
        ),
        1,
    );
}

/// The guest's lines once `slot` has been ejected, and its verdict.
fn expect_removed(vmm: &ApiVmm, slot: u8) {
    vmm.wait_serial(&format!("hotplug: slot {slot} eject requested\n"), 1);
    vmm.wait_serial(&format!("hotplug: slot {slot} removed\n"), 1);
    vmm.wait_serial("PASS hotplug\n", 1);
}

/// Adds the disk at `path` as `id` through the API while the hotplug guest runs; checks the
/// answer and that the guest found the disk. Returns its address and slot.
fn hot_add(vmm: &ApiVmm, path: &std::path::Path, id: &str) -> (String, u8) {
    let (code, body) = vmm.put("vm.add-disk", &json!({"path": path, "id": id}));
    assert_eq!(code, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["id"], json!(id), "{body}");
    let bdf = reply["bdf"].as_str().expect("bdf").to_string();
    let slot = slot_of(&bdf);
    assert_ne!(slot, 0, "slot 0 is the host bridge's");
    expect_added(vmm, slot);
    let info = vmm.info();
    let node = device_node(&info, id).unwrap_or_else(|| panic!("{id} not in {info}"));
    assert_eq!(node["pci_bdf"], json!(bdf), "{info}");
    (bdf, slot)
}

/// The ids in vm.info's device tree.
fn device_ids(info: &Value) -> Vec<String> {
    let mut ids: Vec<String> = info["device_tree"]
        .as_object()
        .map(|tree| tree.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn disks_are_hot_added_and_removed_through_the_api() {
    let dir = TempDir::new("disk-hot-api");
    let disk = make_disk(&dir, "hot.img");
    let vmm = hotplug_guest(&dir);
    let (_, slot) = hot_add(&vmm, &disk, "hot1");

    let (code, body) = vmm.put("vm.remove-device", &json!({"id": "hot1"}));
    assert_eq!(code, 204, "{body}");
    expect_removed(&vmm, slot);
    // The guest powered off (--no-shutdown keeps the VMM); hot1 is gone.
    vmm.wait_state("Shutdown");
    let info = vmm.info();
    assert!(device_node(&info, "hot1").is_none(), "{info}");
    assert!(!config_has_disk(&info, "hot1"), "{info}");
}

#[test]
fn refused_hot_plug_requests_change_nothing() {
    let dir = TempDir::new("disk-hot-refused");
    let disk = make_disk(&dir, "hot.img");
    let vmm = hotplug_guest(&dir);
    hot_add(&vmm, &disk, "hot1");
    let ids_before = device_ids(&vmm.info());

    // Every refusal is checked before the verdict, so one wrong answer does not hide another.
    let mut wrong = Vec::new();
    let mut expect = |what: &str, (code, body): (u16, String), ok: bool, needle: &str| {
        if !ok || !body.contains(needle) {
            wrong.push(format!("{what}: {code} {body}"));
        }
    };
    let r = vmm.put("vm.add-disk", &json!({"path": disk, "id": "hot1"}));
    expect(
        "duplicate id (want 409 naming hot1)",
        r.clone(),
        r.0 == 409,
        "hot1",
    );
    let r = vmm.put("vm.remove-device", &json!({"id": "no-such-device"}));
    expect(
        "unknown id (want 404 naming it)",
        r.clone(),
        r.0 == 404,
        "no-such-device",
    );
    let missing = dir.path("missing.img");
    let r = vmm.put("vm.add-disk", &json!({"path": missing, "id": "hot2"}));
    expect(
        "missing file (want 4xx naming the path)",
        r.clone(),
        (400..500).contains(&r.0),
        path_str(&missing),
    );
    let r = vmm.call("PUT", "vm.add-disk", Some("{\"path\": "));
    expect("malformed JSON (want 400)", r.clone(), r.0 == 400, "JSON");
    let r = vmm.put("vm.add-disk", &json!({"path": 7}));
    expect(
        "a path that is not a string (want 400)",
        r.clone(),
        r.0 == 400,
        "",
    );
    let r = vmm.put("vm.remove-device", &json!({}));
    expect(
        "remove-device without an id (want 400)",
        r.clone(),
        r.0 == 400,
        "",
    );
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));

    // The VM runs on with the same devices, and the guest saw no hot-plug event: a disk
    // added now is the second thing the guest hears of (it handles events in order).
    assert_eq!(vmm.state(), "Running");
    assert_eq!(device_ids(&vmm.info()), ids_before);
    let second = make_disk(&dir, "second.img");
    hot_add(&vmm, &second, "hot2");
    let text = vmm.serial_text();
    assert_eq!(
        text.matches(" added: ").count(),
        2,
        "the refused requests plugged something:\n{text}"
    );
    assert!(!text.contains("eject requested"), "{text}");
}

#[test]
fn disks_are_hot_added_and_removed_with_palisade_remote() {
    let dir = TempDir::new("disk-hot-remote");
    let disk = make_disk(&dir, "hot.img");
    let vmm = hotplug_guest(&dir);

    let spec = format!("path={},id=hot2", disk.display());
    let out = vmm.remote(&["add-disk", &spec]);
    assert!(out.status.success(), "add-disk: {}", stderr(&out));
    let reply: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(reply["id"], json!("hot2"), "{}", stdout(&out));
    let bdf = reply["bdf"].as_str().expect("bdf").to_string();
    let slot = slot_of(&bdf);
    expect_added(&vmm, slot);
    let info = vmm.info();
    assert_eq!(
        device_node(&info, "hot2").map(|n| n["pci_bdf"].clone()),
        Some(json!(bdf)),
        "{info}"
    );

    // Errors are one line on stderr and status 1.
    let out = vmm.remote(&["add-disk", &spec]);
    assert_eq!(out.status.code(), Some(1), "duplicate id");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("hot2"), "{}", stderr(&out));
    let out = vmm.remote(&["remove-device", "no-such-device"]);
    assert_eq!(out.status.code(), Some(1), "unknown id");
    assert!(stderr(&out).contains("no-such-device"), "{}", stderr(&out));
    assert_eq!(vmm.state(), "Running");

    let out = vmm.remote(&["remove-device", "hot2"]);
    assert!(out.status.success(), "remove-device: {}", stderr(&out));
    expect_removed(&vmm, slot);
    vmm.wait_state("Shutdown");
    let info = vmm.info();
    assert!(device_node(&info, "hot2").is_none(), "{info}");
    assert!(!config_has_disk(&info, "hot2"), "{info}");
}

#[test]
fn disks_added_before_boot_are_found_by_the_guest() {
    let dir = TempDir::new("disk-cold");
    let kept = make_disk(&dir, "kept.img");
    let dropped = make_disk(&dir, "dropped.img");
    let dropped_before = std::fs::read(&dropped).unwrap();
    let vmm = ApiVmm::spawn(palisade(), &dir, &["--no-shutdown"]);
    let config = json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 128u64 << 20},
        "payload": {"kernel": guest("virtio_blk")},
        "serial": {"mode": "File", "file": vmm.serial},
        "console": {"mode": "Off"},
    });
    let (code, body) = vmm.put("vm.create", &config);
    assert_eq!(code, 204, "{body}");

    // Not booted: the disks are cold-plugged (204, no address yet to announce).
    let (code, body) = vmm.put("vm.add-disk", &json!({"path": kept, "id": "cold1"}));
    assert_eq!(code, 204, "{body}");
    let (code, body) = vmm.put("vm.add-disk", &json!({"path": dropped, "id": "cold2"}));
    assert_eq!(code, 204, "{body}");
    let info = vmm.info();
    assert_eq!(info["state"], json!("Created"), "{info}");
    for id in ["cold1", "cold2"] {
        let node = device_node(&info, id).unwrap_or_else(|| panic!("{id} not in {info}"));
        assert!(node["pci_bdf"].is_string(), "{info}");
        assert!(config_has_disk(&info, id), "{info}");
    }
    // Removing one before boot takes it away at once.
    let (code, body) = vmm.put("vm.remove-device", &json!({"id": "cold2"}));
    assert_eq!(code, 204, "{body}");
    let info = vmm.info();
    assert!(device_node(&info, "cold2").is_none(), "{info}");
    assert!(!config_has_disk(&info, "cold2"), "{info}");

    let (code, body) = vmm.call("PUT", "vm.boot", None);
    assert_eq!(code, 204, "{body}");
    let text = vmm.wait_serial("PASS virtio_blk\n", 1);
    assert!(text.contains("virtio-blk devices: 1, "), "{text}");
    assert!(text.contains("id: cold1\n"), "{text}");
    let written = std::fs::read(&kept).unwrap();
    assert_eq!(&written[SECTOR..2 * SECTOR], &written_sector()[..]);
    assert!(std::fs::read(&dropped).unwrap() == dropped_before);
}

// ---------------------------------------------------------------------------------------------
// Hot-plugged disks under Landlock, driven by the `virtio_blk` guest in hot-plug mode.

/// The line the `virtio_blk` guest prints in hot-plug mode before it sleeps.
const WAITING_LINE: &str = "virtio_blk: waiting for a hot-plugged disk\n";

/// Starts palisade confined by Landlock with `rules` (each `path=…,access=…`), running the
/// `virtio_blk` guest with `cmdline` (which holds `wait=hotplug`); waits for the guest to say
/// it is waiting and checks the confinement took.
fn landlock_waiting_guest(dir: &TempDir, cmdline: &str, rules: &[String]) -> ApiVmm {
    let kernel = guest("virtio_blk");
    let serial_arg = format!("file={}", dir.path("serial.log").display());
    let mut args = vec![
        "--kernel",
        path_str(&kernel),
        "--cmdline",
        cmdline,
        "--memory",
        "size=128M",
        "--serial",
        &serial_arg,
        "--console",
        "off",
        "--no-shutdown",
        "--landlock",
        "--landlock-rules",
    ];
    args.extend(rules.iter().map(String::as_str));
    let vmm = ApiVmm::spawn(palisade(), dir, &args);
    vmm.wait_serial(WAITING_LINE, 1);
    let info = vmm.info();
    assert_eq!(info["landlock"]["confined"], json!(true), "{info}");
    let text = vmm.serial_text();
    assert!(
        !text.contains("hot-plugged:") && !text.contains("pci "),
        "the guest went on before a disk was added:\n{text}"
    );
    vmm
}

/// `--landlock-rules` item for `path` with `access`.
fn rule(path: &std::path::Path, access: &str) -> String {
    format!("path={},access={access}", path.display())
}

/// Adds `body` (a disk object) through the API, expecting 200 with its id and an address on
/// bus 0; returns the address as the guest prints it (`00:SS.0`).
fn add_disk_ok(vmm: &ApiVmm, body: &Value) -> String {
    let (code, reply) = vmm.put("vm.add-disk", body);
    assert_eq!(
        code,
        200,
        "{reply}\nserial: {}\nlog: {}",
        vmm.serial_text(),
        vmm.log_text()
    );
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["id"], body["id"], "{reply}");
    let bdf = reply["bdf"].as_str().expect("bdf").to_string();
    let slot = slot_of(&bdf);
    assert_ne!(slot, 0, "slot 0 is the host bridge's");
    format!("00:{slot:02x}.0")
}

/// Waits for the guest's verdict on the disk hot-added at `bdf` (as `id`) and checks the
/// lines every run prints: the slot it was told about, the device it used, the capacity, sector
/// 0 and the id, at least one interrupt. The guest then powers off (the VMM stays).
fn expect_hotplug_pass(vmm: &ApiVmm, bdf: &str, id: &str) -> String {
    let text = vmm.wait_serial("PASS virtio_blk\n", 1);
    for line in [
        format!("hot-plugged: {bdf}"),
        format!("pci {bdf} 1af4:1042 class 01"),
        format!("virtio-blk devices: 1, using {bdf}"),
        format!("sector0: {SECTOR0_LINE}"),
        format!("id: {id}"),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
    }
    // The hot-plug announcement comes after the waiting line, and the test after it.
    let waiting = text.find(WAITING_LINE).unwrap();
    assert!(
        text.find("hot-plugged: ").unwrap() > waiting,
        "the guest found the disk before it waited:\n{text}"
    );
    assert!(
        text.contains(" moved to 0xc0000000, size 0x8000\n"),
        "{text}"
    );
    assert_eq!(
        number_after(&text, "capacity: "),
        (DISK_SIZE / SECTOR) as u64,
        "{text}"
    );
    assert!(number_after(&text, "interrupts: ") >= 1, "{text}");
    vmm.wait_state("Shutdown");
    text
}

/// The checks for a guest that wrote and flushed the read-write disk `disk`, whose content was
/// `before`: its lines, then sector 1 on the host holding its text and nothing else changed.
fn expect_written(text: &str, disk: &std::path::Path, before: &[u8]) {
    for line in ["write: OK", "read back: OK", "flush: OK"] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
    }
    let after = std::fs::read(disk).unwrap();
    assert_eq!(after.len(), DISK_SIZE, "the image changed size");
    assert_eq!(&after[SECTOR..2 * SECTOR], &written_sector()[..]);
    assert!(after[..SECTOR] == before[..SECTOR], "sector 0 changed");
    assert!(
        after[2 * SECTOR..] == before[2 * SECTOR..],
        "sectors after 1 changed"
    );
}

#[test]
fn under_landlock_a_disk_in_an_rw_directory_is_hot_added_read_written_and_flushed() {
    let dir = TempDir::new("disk-ll-dir");
    let allowed = dir.path("hotplug");
    std::fs::create_dir(&allowed).unwrap();
    let disk = make_disk(&dir, "hotplug/data.img");
    let before = std::fs::read(&disk).unwrap();
    let vmm = landlock_waiting_guest(&dir, "wait=hotplug", &[rule(&allowed, "rw")]);

    let bdf = add_disk_ok(&vmm, &json!({"path": disk, "id": "data"}));
    let text = expect_hotplug_pass(&vmm, &bdf, "data");
    expect_written(&text, &disk, &before);
    assert!(device_node(&vmm.info(), "data").is_some(), "{}", vmm.info());
}

#[test]
fn under_landlock_a_disk_with_a_rule_on_the_file_itself_is_hot_added_and_written() {
    let dir = TempDir::new("disk-ll-file");
    let disk = make_disk(&dir, "single.img");
    let before = std::fs::read(&disk).unwrap();
    let vmm = landlock_waiting_guest(&dir, "wait=hotplug", &[rule(&disk, "rw")]);

    let bdf = add_disk_ok(&vmm, &json!({"path": disk, "id": "single"}));
    let text = expect_hotplug_pass(&vmm, &bdf, "single");
    expect_written(&text, &disk, &before);
}

#[test]
fn under_landlock_a_readonly_disk_in_a_read_only_directory_refuses_the_guests_write() {
    let dir = TempDir::new("disk-ll-ro");
    let iso = dir.path("iso");
    std::fs::create_dir(&iso).unwrap();
    let disk = make_disk(&dir, "iso/tools.img");
    let before = std::fs::read(&disk).unwrap();
    let vmm = landlock_waiting_guest(&dir, "wait=hotplug expect=readonly", &[rule(&iso, "r")]);

    let bdf = add_disk_ok(
        &vmm,
        &json!({"path": disk, "id": "tools", "readonly": true}),
    );
    let text = expect_hotplug_pass(&vmm, &bdf, "tools");
    assert!(text.lines().any(|l| l == "write refused: IOERR"), "{text}");
    assert!(!text.contains("write: OK"), "{text}");
    assert!(std::fs::read(&disk).unwrap() == before, "the image changed");
}

#[test]
fn under_landlock_a_disk_outside_the_rules_is_refused_and_the_vm_runs_on() {
    let dir = TempDir::new("disk-ll-outside");
    let allowed = dir.path("hotplug");
    std::fs::create_dir(&allowed).unwrap();
    let elsewhere = dir.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let outside = make_disk(&dir, "elsewhere/other.img");
    let outside_before = std::fs::read(&outside).unwrap();
    let disk = make_disk(&dir, "hotplug/data.img");
    let before = std::fs::read(&disk).unwrap();
    let vmm = landlock_waiting_guest(&dir, "wait=hotplug", &[rule(&allowed, "rw")]);
    let ids_before = device_ids(&vmm.info());

    let (code, body) = vmm.put("vm.add-disk", &json!({"path": outside, "id": "other"}));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(path_str(&outside)), "{body}");
    assert!(body.contains("outside the Landlock ruleset"), "{body}");
    assert!(
        body.contains(&format!("--landlock-rules {}", rule(&outside, "rw"))),
        "{body}"
    );
    // Nothing was added, the guest was told of nothing, the VM runs on.
    let info = vmm.info();
    assert!(device_node(&info, "other").is_none(), "{info}");
    assert!(!config_has_disk(&info, "other"), "{info}");
    assert_eq!(device_ids(&info), ids_before, "{info}");
    assert_eq!(info["state"], json!("Running"), "{info}");

    // A disk the rules allow is then added, and the guest drives it: the first and only
    // disk the guest heard of (it takes hot-plug events in order).
    let bdf = add_disk_ok(&vmm, &json!({"path": disk, "id": "data"}));
    let text = expect_hotplug_pass(&vmm, &bdf, "data");
    assert_eq!(
        text.matches("hot-plugged: ").count(),
        1,
        "the refused disk reached the guest:\n{text}"
    );
    expect_written(&text, &disk, &before);
    assert!(
        std::fs::read(&outside).unwrap() == outside_before,
        "the refused image changed"
    );
}

#[test]
fn a_direct_disk_bypasses_the_page_cache_and_still_works() {
    let dir = TempDir::new("disk-direct");
    let disk = make_disk(&dir, "direct.img");
    let spec = format!("path={},direct=on,id=direct", disk.display());
    let out = run_virtio_blk(&["--disk", &spec]);
    let text = assert_pass(&out, "PASS virtio_blk");
    for line in ["write: OK", "read back: OK", "flush: OK"] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
    }
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(&after[SECTOR..2 * SECTOR], &written_sector()[..]);
}

/// The guest's disk test through io_uring with one I/O thread for writes (the default) and,
/// with Cloud Hypervisor's `disable_io_uring`, through the disk's pool of I/O threads
/// alone: both pass, the disk's counters say which way its requests went, and the I/O
/// threads are confined as device threads.
#[test]
fn requests_go_through_io_uring_unless_it_is_disabled() {
    for disabled in [false, true] {
        let dir = TempDir::new("disk-engine");
        let disk = make_disk(&dir, "disk.img");
        // The guest powers off when done; the VMM stays to be asked.
        let vmm = ApiVmm::spawn(palisade(), &dir, &["--no-shutdown"]);
        let config = json!({
            "payload": {"kernel": guest("virtio_blk")},
            "memory": {"size": 128 << 20},
            "serial": {"mode": "File", "file": dir.path("serial.log")},
            "console": {"mode": "Off"},
            "disks": [{"path": disk, "id": "d0", "disable_io_uring": disabled,
                       "disable_aio": true}],
        });
        let (code, body) = vmm.put("vm.create", &config);
        assert_eq!(code, 204, "{body}");
        assert_eq!(
            vmm.info()["config"]["disks"][0]["disable_io_uring"],
            disabled
        );
        assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
        vmm.wait_serial("PASS virtio_blk", 1);
        let counters = vmm.get("vm.counters");
        let d0 = &counters["d0"];
        assert_eq!(d0["errors"], 0, "{counters}");
        assert!(d0["write_ops"].as_u64().unwrap() >= 1, "{counters}");
        assert!(d0["interrupts"].as_u64().unwrap() >= 1, "{counters}");
        let ring = d0["io_uring_ops"].as_u64().unwrap();
        let pool = d0["thread_pool_ops"].as_u64().unwrap();
        // The flush at least (reads of cached data, and writes where the file system can,
        // complete at once; other writes go to the pool).
        if disabled {
            assert!(ring == 0 && pool >= 1, "{counters}");
        } else {
            assert!(ring >= 1, "{counters}");
        }
        let threads = vmm.info()["sandbox"]["threads"].clone();
        let io: Vec<&serde_json::Value> = threads
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["thread"] == "dio-d0")
            .collect();
        assert_eq!(io.len(), if disabled { 2 } else { 1 }, "{threads}");
        for t in io {
            assert_eq!(t["role"], "device", "{t}");
            assert!(t["seccomp"].as_str().unwrap().contains("enforcing"), "{t}");
            assert_eq!(t["capabilities"], json!([]), "{t}");
        }
    }
}

/// `vm.resize-disk` (and `palisade-remote resize-disk`): the image takes the new size; a
/// read-only disk, a size that is not whole sectors and an unknown id are refused, and
/// nothing changes.
#[test]
fn a_disk_is_resized_through_the_api() {
    let dir = TempDir::new("disk-resize");
    let disk = make_disk(&dir, "disk.img");
    let ro = make_disk(&dir, "ro.img");
    let before = std::fs::metadata(&disk).unwrap().len();
    let vmm = ApiVmm::spawn(palisade(), &dir, &["--no-shutdown"]);
    let config = json!({
        "payload": {"kernel": guest("echo")},
        "memory": {"size": 64 << 20},
        "serial": {"mode": "File", "file": dir.path("serial.log")},
        "console": {"mode": "Off"},
        "disks": [{"path": disk, "id": "d0"}, {"path": ro, "id": "ro", "readonly": true}],
    });
    assert_eq!(vmm.put("vm.create", &config).0, 204);
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    vmm.wait_serial("echo: ready", 1);
    let (code, body) = vmm.put(
        "vm.resize-disk",
        &json!({"id": "d0", "desired_size": 4 << 20}),
    );
    assert_eq!(code, 204, "{body}");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
    let out = vmm.remote(&["resize-disk", "--disk", "d0", "--size", "3M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 3 << 20);
    for (body, code, needle) in [
        (
            json!({"id": "d0", "desired_size": 1000}),
            400,
            "512-byte sectors",
        ),
        (
            json!({"id": "ro", "desired_size": 4 << 20}),
            400,
            "read-only",
        ),
        (
            json!({"id": "nope", "desired_size": 4 << 20}),
            404,
            "no device with id nope",
        ),
        (
            json!({"id": "_rng0", "desired_size": 4 << 20}),
            400,
            "only disks",
        ),
    ] {
        let (got, text) = vmm.put("vm.resize-disk", &body);
        assert_eq!(got, code, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 3 << 20);
    assert_eq!(std::fs::metadata(&ro).unwrap().len(), before);
    assert_eq!(vmm.state(), "Running");
}
