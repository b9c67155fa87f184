//! Rate limiters of disks: a disk's own (`rate_limiter_config`, `bw_*`/`ops_*` keys) and one
//! a group of disks shares (`--rate-limit-group`, `rate_limit_group`). The guest's disk test
//! passes under them, with the filters on; the disk's counters say requests were made to
//! wait; what names no group is refused.

mod common;

use common::*;
use serde_json::json;

fn image(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path(name);
    let mut bytes = vec![0u8; 4 << 20];
    bytes[..16].copy_from_slice(b"palisade sector0");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_limited_disk_makes_requests_wait_and_the_guest_still_passes() {
    let dir = TempDir::new("rate-limit-own");
    let disk = image(&dir, "disk.img");
    let extra = json!({
        "disks": [{"path": disk, "id": "slow",
                   "rate_limiter_config": {"ops": {"size": 1, "refill_time": 50}}}],
    });
    let vmm = created_vm(&dir, "virtio_blk", extra);
    let info = vmm.info();
    assert_eq!(
        info["config"]["disks"][0]["rate_limiter_config"]["ops"],
        json!({"size": 1, "refill_time": 50}),
        "{info}"
    );
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    vmm.wait_serial("PASS virtio_blk", 1);
    let counters = vmm.get("vm.counters");
    let slow = &counters["slow"];
    assert_eq!(slow["errors"], 0, "{counters}");
    assert!(
        slow["rate_limited"].as_u64().unwrap() >= 1,
        "one operation per 50 ms: some requests waited: {counters}"
    );
}

#[test]
fn disks_share_a_group_from_the_command_line_and_hot_plug_names_it() {
    let dir = TempDir::new("rate-limit-group");
    let first = image(&dir, "first.img");
    let second = image(&dir, "second.img");
    let serial = ApiVmm::serial_arg(&dir);
    let kernel = guest("virtio_blk");
    let disk_arg = format!("path={},id=d0,rate_limit_group=group0", first.display());
    let vmm = ApiVmm::spawn(
        palisade(),
        &dir,
        &[
            "--kernel",
            path_str(&kernel),
            "--memory",
            "size=128M",
            "--serial",
            &serial,
            "--console",
            "off",
            "--disk",
            &disk_arg,
            "--rate-limit-group",
            "ops_size=1,ops_refill_time=50,bw_size=1048576,bw_refill_time=100,id=group0",
            "--landlock",
            "--landlock-rules",
            &format!("path={},access=rw", dir.0.display()),
            "--no-shutdown",
        ],
    );
    let text = vmm.wait_serial("PASS virtio_blk", 1);
    assert!(text.contains("PASS virtio_blk"));
    let counters = vmm.get("vm.counters");
    assert!(
        counters["d0"]["rate_limited"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    let info = vmm.info();
    assert_eq!(
        info["config"]["rate_limit_groups"][0]["id"], "group0",
        "{info}"
    );
    assert_eq!(info["config"]["disks"][0]["rate_limit_group"], "group0");

    // A hot-plugged disk joins the group; one naming no group is refused, nothing added.
    let body = json!({"path": second, "id": "d1", "rate_limit_group": "group0"});
    let (code, text) = vmm.put("vm.add-disk", &body);
    assert!(code == 200 || code == 204, "{code} {text}");
    let body = json!({"path": second, "id": "d2", "rate_limit_group": "nope"});
    let (code, text) = vmm.put("vm.add-disk", &body);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("no rate limit group \\\"nope\\\""), "{text}");
    let ids: Vec<String> = vmm.info()["config"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["d0", "d1"]);
}

#[test]
fn bad_limits_are_refused_on_one_line() {
    for (args, message) in [
        (
            vec!["--disk", "path=/dev/null,bw_size=10"],
            "bw_size and bw_refill_time must be given together",
        ),
        (
            vec!["--disk", "path=/dev/null,rate_limit_group=g"],
            "no rate limit group \"g\"",
        ),
        (
            vec!["--rate-limit-group", "ops_size=1,ops_refill_time=1"],
            "--rate-limit-group: id: required",
        ),
        (
            vec!["--net", "tap=,ops_size=1"],
            "ops_size and ops_refill_time must be given together",
        ),
    ] {
        let kernel = guest("hello");
        let mut all = vec!["--kernel", path_str(&kernel)];
        all.extend(args.iter().copied());
        let out = run_palisade(&all);
        assert_one_line_error(&out, message);
    }
}
