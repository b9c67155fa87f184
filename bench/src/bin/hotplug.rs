//! Issue target for disk hot-plug: `vm.add-disk` on a running VM answered in under 5 ms
//! (median), measured from the client: request sent to response read.
//!
//! A release `palisade --api-socket` runs the `echo` test guest (it keeps running, waiting
//! for input); the benchmark adds 29 disks (bus 0 has 31 slots, and the VM has an entropy
//! device), then deletes and recreates
//! the VM and starts again, until it has its samples. Each disk is a 1 MiB file in a
//! temporary directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench::{release_binary, report, summarize};

const SAMPLES: usize = 150;
/// Bus 0 has 31 slots; every VM also has an entropy device.
const DISKS_PER_VM: usize = 29;

fn call(
    socket: &std::path::Path,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
) -> (u16, String) {
    let r = api::client::request(socket, method, &format!("/api/v1/{endpoint}"), body)
        .expect("API call");
    (r.status, r.body)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("palisade-bench-hotplug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let images: Vec<PathBuf> = (0..DISKS_PER_VM)
        .map(|i| {
            let p = dir.join(format!("d{i}.img"));
            std::fs::write(&p, vec![0u8; 1 << 20]).expect("image");
            p
        })
        .collect();
    let socket = dir.join("api.sock");
    let mut child = Command::new(release_binary("palisade"))
        .arg("--api-socket")
        .arg(&socket)
        .arg("--no-shutdown")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn palisade");
    let deadline = Instant::now() + Duration::from_secs(10);
    while api::client::request(&socket, "GET", "/api/v1/vmm.ping", None).is_err() {
        assert!(Instant::now() < deadline, "the API never answered");
        std::thread::sleep(Duration::from_millis(2));
    }
    let config = format!(
        r#"{{"payload": {{"kernel": "{}"}}, "memory": {{"size": 67108864}}, "serial": {{"mode": "Null"}}, "console": {{"mode": "Off"}}}}"#,
        test_guests::path("echo").display()
    );
    let mut samples = Vec::with_capacity(SAMPLES);
    while samples.len() < SAMPLES {
        assert_eq!(call(&socket, "PUT", "vm.create", Some(&config)).0, 204);
        assert_eq!(call(&socket, "PUT", "vm.boot", None).0, 204);
        for (i, image) in images.iter().enumerate() {
            if samples.len() == SAMPLES {
                break;
            }
            let body = format!(r#"{{"path": "{}", "id": "d{i}"}}"#, image.display());
            let start = Instant::now();
            let (status, answer) = call(&socket, "PUT", "vm.add-disk", Some(&body));
            samples.push(start.elapsed());
            assert_eq!(status, 200, "{answer}");
        }
        assert_eq!(call(&socket, "PUT", "vm.delete", None).0, 204);
    }
    let _ = call(&socket, "PUT", "vmm.shutdown", None);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    report(
        "vm.add-disk on a running VM (client side)",
        &summarize(&mut samples),
        "< 5 ms median",
    );
}
