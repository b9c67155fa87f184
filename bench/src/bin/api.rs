//! Issue targets for the REST API server: process start to the API socket accepting
//! connections, `vmm.ping` round trips (over one kept-alive connection, and over a fresh
//! connection each), peak RSS of an API-only VMM, and `vm.create` + `vm.boot` of the hello
//! guest through the API to its first serial byte.
//!
//! Each run starts the release `palisade --api-socket <path>` with nothing else, so the VMM
//! waits for API calls. The boot runs put the serial port in `Tty` mode with the VMM's
//! standard output on a pipe; the hello guest prints one line, then powers off, which ends the
//! VMM.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::keepalive::KeepAlive;
use bench::{release_binary, report, summarize};

/// Process starts measured.
const STARTS: usize = 200;
/// Pings measured over each kind of connection.
const PINGS: usize = 5000;
/// Pings before the peak RSS is read.
const RSS_PINGS: usize = 100;
/// Boots through the API measured.
const BOOTS: usize = 100;

/// A `palisade --api-socket` process, killed if still running when dropped.
struct Vmm {
    child: Child,
    socket: PathBuf,
    /// When the process was started.
    started: Instant,
}

impl Vmm {
    fn start(socket: &Path, stdout: Stdio) -> Vmm {
        let _ = std::fs::remove_file(socket);
        let started = Instant::now();
        let child = Command::new(release_binary("palisade"))
            .arg("--api-socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn palisade");
        Vmm {
            child,
            socket: socket.to_path_buf(),
            started,
        }
    }

    /// Connects as soon as the socket accepts; returns the connection and when that was.
    fn connect_when_accepting(&self) -> (UnixStream, Instant) {
        let deadline = self.started + Duration::from_secs(10);
        loop {
            if let Ok(stream) = UnixStream::connect(&self.socket) {
                return (stream, Instant::now());
            }
            assert!(Instant::now() < deadline, "the API socket never accepted");
            std::thread::yield_now();
        }
    }

    fn call(&self, method: &str, endpoint: &str, body: Option<&str>) -> api::ClientResponse {
        api::client::request_with_timeout(
            &self.socket,
            method,
            &format!("/api/v1/{endpoint}"),
            body,
            Some(Duration::from_secs(10)),
        )
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"))
    }

    /// Asks the VMM to exit and waits for it.
    fn shut_down(mut self) {
        assert_eq!(self.call("PUT", "vmm.shutdown", None).status, 204);
        let status = self.child.wait().expect("wait for palisade");
        assert!(status.success(), "palisade failed: {status}");
    }

    /// Peak and current resident set size, in KiB, from /proc.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() {
    let dir = std::env::temp_dir().join(format!("palisade-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    // A new path for each process: the socket janitor of one that has exited may still be about
    // to remove its own socket, and tells it by device and inode, which a new socket at the
    // same path can be given again.
    let mut sockets = (0..).map(|n| dir.join(format!("api-{n}.sock")));
    let mut socket = || sockets.next().expect("endless");

    // Process start -> socket accepting, and -> first ping answered.
    let mut accepting = Vec::new();
    let mut first_ping = Vec::new();
    for run in 0..STARTS + 5 {
        let vmm = Vmm::start(&socket(), Stdio::null());
        let (stream, at) = vmm.connect_when_accepting();
        let mut client = KeepAlive::new(stream);
        assert_eq!(client.ping(), 200);
        let answered = Instant::now();
        // The first few warm the page cache and the binary.
        if run >= 5 {
            accepting.push(at - vmm.started);
            first_ping.push(answered - vmm.started);
        }
        drop(client);
        vmm.shut_down();
    }
    report(
        "process start -> API socket accepting",
        &summarize(&mut accepting),
        "< 3 ms median",
    );
    report(
        "process start -> first vmm.ping answered",
        &summarize(&mut first_ping),
        "none; for reference",
    );

    // Ping round trips; then the peak RSS.
    let vmm = Vmm::start(&socket(), Stdio::null());
    let (stream, _) = vmm.connect_when_accepting();
    let mut client = KeepAlive::new(stream);
    for _ in 0..200 {
        assert_eq!(client.ping(), 200);
    }
    let mut kept: Vec<Duration> = (0..PINGS)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(client.ping(), 200);
            t.elapsed()
        })
        .collect();
    drop(client);
    let mut fresh: Vec<Duration> = (0..PINGS)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(vmm.call("GET", "vmm.ping", None).status, 200);
            t.elapsed()
        })
        .collect();
    report(
        "vmm.ping, one kept-alive connection",
        &summarize(&mut kept),
        "< 0.1 ms median, p99 < 1 ms",
    );
    report(
        "vmm.ping, a fresh connection each",
        &summarize(&mut fresh),
        "< 0.1 ms median, p99 < 1 ms",
    );
    vmm.shut_down();

    let vmm = Vmm::start(&socket(), Stdio::null());
    vmm.connect_when_accepting();
    for _ in 0..RSS_PINGS {
        assert_eq!(vmm.call("GET", "vmm.ping", None).status, 200);
    }
    let (hwm, rss) = vmm.rss_kib();
    println!(
        "{:<44} VmHWM {:>6.2} MiB  VmRSS {:>6.2} MiB  (after {RSS_PINGS} pings; no target, for reference)",
        "peak RSS, palisade --api-socket",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
    );
    vmm.shut_down();

    // vm.create + vm.boot through the API -> the guest's first serial byte.
    let kernel = test_guests::path("hello");
    let config = format!(
        r#"{{"payload": {{"kernel": {}}}, "cpus": {{"boot_vcpus": 1, "max_vcpus": 1}}, "memory": {{"size": {}}}, "serial": {{"mode": "Tty"}}, "console": {{"mode": "Off"}}}}"#,
        json_string(kernel.to_str().expect("a UTF-8 path")),
        128u64 << 20
    );
    let mut boots = Vec::new();
    for run in 0..BOOTS + 5 {
        let mut vmm = Vmm::start(&socket(), Stdio::piped());
        let mut out = vmm.child.stdout.take().expect("stdout");
        let (stream, _) = vmm.connect_when_accepting();
        assert_eq!(KeepAlive::new(stream).ping(), 200);
        let t = Instant::now();
        let created = vmm.call("PUT", "vm.create", Some(&config));
        assert_eq!(created.status, 204, "vm.create: {}", created.error_line());
        let booted = vmm.call("PUT", "vm.boot", None);
        assert_eq!(booted.status, 204, "vm.boot: {}", booted.error_line());
        let mut text = Vec::new();
        let mut buf = [0u8; 256];
        let mut first = None;
        while !text.ends_with(b"\n") {
            let n = out.read(&mut buf).expect("read guest output");
            assert!(n > 0, "the guest's output ended early");
            first.get_or_insert_with(Instant::now);
            text.extend_from_slice(&buf[..n]);
        }
        assert!(
            text.starts_with(b"Hello from the Palisade test guest"),
            "unexpected output {:?}",
            String::from_utf8_lossy(&text)
        );
        if run >= 5 {
            boots.push(first.expect("no output") - t);
        }
        // The guest powers off, which ends the VMM.
        let status = vmm.child.wait().expect("wait for palisade");
        assert!(status.success(), "palisade failed: {status}");
    }
    report(
        "vm.create + vm.boot -> first serial byte",
        &summarize(&mut boots),
        "< 5 ms median",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
