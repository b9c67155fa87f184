//! Snapshot and restore times for 128 MiB and 1 GiB guests, and the downtime of a live
//! migration (issue target: figures in the note), each next to its baseline measured in the
//! same run: writing the same number of bytes from memory to a file and syncing it (what a
//! snapshot cannot beat), reading them back into fresh memory (what a restore cannot beat),
//! and pushing them through a Unix socket pair (what a migration's copy cannot beat).
//!
//! A release `palisade --api-socket` runs the `snapshot` test guest (it counts in RAM and
//! drives the entropy device); once it has counted, it is paused and `vm.snapshot` is timed
//! from the client; a second VMM then times `vm.restore`, and the restored guest must count
//! on. Three rounds per size; the medians are printed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::release_binary;

const ROUNDS: usize = 3;

fn call(socket: &Path, endpoint: &str, body: Option<&str>) -> (u16, String) {
    let r = api::client::request_with_timeout(
        socket,
        "PUT",
        &format!("/api/v1/{endpoint}"),
        body,
        Some(Duration::from_secs(300)),
    )
    .expect("API call");
    (r.status, r.body)
}

fn spawn(dir: &Path, name: &str, args: &[&str]) -> (Child, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let child = Command::new(release_binary("palisade"))
        .arg("--api-socket")
        .arg(&socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn palisade");
    let deadline = Instant::now() + Duration::from_secs(30);
    while api::client::request(&socket, "GET", "/api/v1/vmm.ping", None).is_err() {
        assert!(Instant::now() < deadline, "palisade never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, socket)
}

fn wait_for(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        assert!(!text.contains("FAIL"), "the guest failed: {text}");
        if text.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{needle:?} never came: {text}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A VMM `name` (logging verbosely) running the counting guest on `bytes` of RAM, once it
/// has counted: the process, its API socket and the guest's serial file.
fn counting_guest(dir: &Path, name: &str, bytes: u64) -> (Child, PathBuf, PathBuf) {
    let serial = dir.join("serial.log");
    let _ = std::fs::remove_file(&serial);
    let guest = test_guests::path("snapshot");
    let memory = format!("size={bytes}");
    let serial_arg = format!("file={}", serial.display());
    let (child, socket) = spawn(
        dir,
        name,
        &[
            "-v",
            "--kernel",
            guest.to_str().unwrap(),
            "--memory",
            &memory,
            "--serial",
            &serial_arg,
            "--console",
            "off",
        ],
    );
    wait_for(&serial, "tick 1 ");
    (child, socket, serial)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One snapshot and one restore of a guest of `bytes`; their durations.
fn round(dir: &Path, bytes: u64) -> (Duration, Duration) {
    let snap = dir.join("snap");
    let _ = std::fs::remove_dir_all(&snap);
    std::fs::create_dir_all(&snap).unwrap();
    let (source, socket, serial) = counting_guest(dir, "source", bytes);
    assert_eq!(call(&socket, "vm.pause", None).0, 204);
    let body = format!(r#"{{"destination_url": "file://{}"}}"#, snap.display());
    let started = Instant::now();
    let (code, answer) = call(&socket, "vm.snapshot", Some(&body));
    let snapshot = started.elapsed();
    assert_eq!(code, 204, "{answer}");
    stop(source);

    let (target, socket) = spawn(dir, "target", &[]);
    let body = format!(r#"{{"source_url": "file://{}"}}"#, snap.display());
    let started = Instant::now();
    let (code, answer) = call(&socket, "vm.restore", Some(&body));
    let restore = started.elapsed();
    assert_eq!(code, 204, "{answer}");
    assert_eq!(call(&socket, "vm.resume", None).0, 204);
    wait_for(&serial, "tick 3 ");
    stop(target);
    (snapshot, restore)
}

/// One live migration of a guest of `bytes` between two VMMs: its whole time (from the
/// client) and the downtime the source measured (pause to the destination's answer).
fn migrate(dir: &Path, bytes: u64) -> (Duration, Duration) {
    let (source, source_socket, serial) = counting_guest(dir, "msource", bytes);
    let (target, target_socket) = spawn(dir, "mtarget", &[]);
    let socket = dir.join("m.sock");
    let _ = std::fs::remove_file(&socket);
    let receive = {
        let target_socket = target_socket.clone();
        let body = format!(r#"{{"receiver_url": "unix:{}"}}"#, socket.display());
        std::thread::spawn(move || call(&target_socket, "vm.receive-migration", Some(&body)))
    };
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let body = format!(r#"{{"destination_url": "unix:{}"}}"#, socket.display());
    let started = Instant::now();
    let (code, answer) = call(&source_socket, "vm.send-migration", Some(&body));
    let total = started.elapsed();
    assert_eq!(code, 204, "{answer}");
    assert_eq!(receive.join().unwrap().0, 204);
    let log = std::fs::read_to_string(dir.join("msource.log")).unwrap_or_default();
    let downtime: f64 = log
        .split("downtime ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("the source logs the downtime");
    let count = std::fs::read_to_string(&serial).unwrap_or_default();
    let after = count.matches("tick ").count();
    wait_for(&serial, &format!("tick {} ", after + 2));
    stop(source);
    stop(target);
    (total, Duration::from_secs_f64(downtime / 1e3))
}

/// Pushing `bytes` through a Unix socket pair from one thread to another.
fn socket_baseline(bytes: u64) -> Duration {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = b.read(&mut buf).unwrap();
            assert!(n > 0);
            left -= n as u64;
        }
    });
    let chunk = vec![1u8; 1 << 20];
    let started = Instant::now();
    for _ in 0..bytes / chunk.len() as u64 {
        a.write_all(&chunk).unwrap();
    }
    reader.join().unwrap();
    started.elapsed()
}

/// Writing `bytes` from memory to a file and syncing it; then reading them back.
fn baseline(dir: &Path, bytes: u64) -> (Duration, Duration) {
    let path = dir.join("baseline");
    let buffer = vec![1u8; bytes as usize];
    let started = Instant::now();
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in buffer.chunks(64 << 20) {
        file.write_all(chunk).unwrap();
    }
    file.sync_all().unwrap();
    let write = started.elapsed();
    drop(file);
    let mut back = vec![0u8; bytes as usize];
    let started = Instant::now();
    let mut file = std::fs::File::open(&path).unwrap();
    for chunk in back.chunks_mut(64 << 20) {
        file.read_exact(chunk).unwrap();
    }
    let read = started.elapsed();
    std::fs::remove_file(&path).unwrap();
    (write, read)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let dir = std::env::temp_dir().join(format!("palisade-bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!("snapshot and restore (medians of {ROUNDS} rounds; baselines: write+fsync, read of the same bytes)");
    for (label, bytes) in [("128 MiB", 128u64 << 20), ("1 GiB", 1 << 30)] {
        let mut snaps = Vec::new();
        let mut restores = Vec::new();
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for _ in 0..ROUNDS {
            let (s, r) = round(&dir, bytes);
            snaps.push(s);
            restores.push(r);
            let (w, rd) = baseline(&dir, bytes);
            writes.push(w);
            reads.push(rd);
        }
        let (s, r, w, rd) = (
            median(snaps),
            median(restores),
            median(writes),
            median(reads),
        );
        println!(
            "  {label}: vm.snapshot {:>8.1} ms   write+fsync {:>8.1} ms   {:.2}x of the baseline",
            ms(s),
            ms(w),
            ms(s) / ms(w)
        );
        println!(
            "  {label}: vm.restore  {:>8.1} ms   read        {:>8.1} ms   {:.2}x of the baseline",
            ms(r),
            ms(rd),
            ms(r) / ms(rd)
        );
    }
    println!("live migration over a Unix socket (medians of {ROUNDS} rounds; baseline: the same bytes through a socket pair)");
    for (label, bytes) in [("128 MiB", 128u64 << 20), ("1 GiB", 1 << 30)] {
        let mut totals = Vec::new();
        let mut downtimes = Vec::new();
        let mut pushes = Vec::new();
        for _ in 0..ROUNDS {
            let (t, d) = migrate(&dir, bytes);
            totals.push(t);
            downtimes.push(d);
            pushes.push(socket_baseline(bytes));
        }
        println!(
            "  {label}: migration {:>8.1} ms, downtime {:>6.1} ms   socket push of all memory {:>8.1} ms",
            ms(median(totals)),
            ms(median(downtimes)),
            ms(median(pushes))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
