//! What the system-call filters cost on the hot paths, against `--seccomp false`.
//!
//! 1. Per call, in process: the calls each hot path makes — a vCPU's `KVM_RUN` per exit, the
//!    VMM thread's `pread64`/`pwrite64` per disk request, `writev`/`readv` per frame and
//!    `KVM_SIGNAL_MSI` per interrupt, the API thread's `recv` per request — timed in a thread
//!    holding its role's filters (a vCPU holds the VMM thread's too) and in one holding
//!    none, in paired rounds. Then what installing each role's filters costs a new thread.
//!    The ioctls go to a descriptor that refuses them at once (`/dev/null`), so the figure is
//!    the call's entry and exit, where a filter adds its cost.
//! 2. End to end, the release binary: `vmm.ping` round trips on a kept-alive connection, and
//!    process start to exit of the hello guest (every thread's lock-down included), with
//!    `--seccomp true` and `--seccomp false` in turns.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bench::keepalive::KeepAlive;
use bench::release_binary;
use sandbox::seccomp::{Filters, Role};

/// `KVM_RUN` and `KVM_SIGNAL_MSI`, as the kernel numbers them.
const KVM_RUN: u64 = 0xae80;
const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;

const CALLS: usize = 20_000;
const ROUNDS: usize = 21;

/// One hot call, made `CALLS` times.
type Call = fn(&Fds);

/// Descriptors the calls are made on, opened before any filter.
struct Fds {
    null: File,
    zero: File,
    disk: File,
    sock: UnixStream,
}

fn kvm_run(f: &Fds) {
    // SAFETY: an ioctl /dev/null refuses; the argument is not read.
    unsafe { libc::ioctl(f.null.as_raw_fd(), KVM_RUN, 0) };
}

fn signal_msi(f: &Fds) {
    // SAFETY: as above.
    unsafe { libc::ioctl(f.null.as_raw_fd(), KVM_SIGNAL_MSI, 0) };
}

fn pread(f: &Fds) {
    let mut buf = [0u8; 4096];
    // SAFETY: reading into a local buffer of that size.
    unsafe { libc::pread64(f.disk.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
}

fn pwrite(f: &Fds) {
    let buf = [0u8; 4096];
    // SAFETY: writing a local buffer of that size.
    unsafe { libc::pwrite64(f.disk.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 4096) };
}

fn writev(f: &Fds) {
    let frame = [0u8; 1514];
    let iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut _,
        iov_len: frame.len(),
    };
    // SAFETY: one iovec over a local buffer.
    unsafe { libc::writev(f.null.as_raw_fd(), &iov, 1) };
}

fn readv(f: &Fds) {
    let mut frame = [0u8; 1514];
    let iov = libc::iovec {
        iov_base: frame.as_mut_ptr().cast(),
        iov_len: frame.len(),
    };
    // SAFETY: one iovec over a local buffer.
    unsafe { libc::readv(f.zero.as_raw_fd(), &iov, 1) };
}

fn recv(f: &Fds) {
    let mut buf = [0u8; 64];
    // SAFETY: a non-blocking receive into a local buffer (nothing is waiting: EAGAIN).
    unsafe {
        libc::recv(
            f.sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
}

/// A thread that runs rounds of `call` on request, with `filters` installed in order.
fn worker(filters: Vec<Filters>, call: Call) -> (mpsc::Sender<()>, mpsc::Receiver<Duration>) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (a, _b) = UnixStream::pair().expect("socket pair");
        let dir = std::env::temp_dir();
        let path = dir.join(format!("palisade-seccomp-bench-{}", std::process::id()));
        let fds = Fds {
            null: File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .unwrap(),
            zero: File::open("/dev/zero").unwrap(),
            disk: File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap(),
            sock: a,
        };
        fds.disk.set_len(1 << 20).unwrap();
        for f in &filters {
            f.install().expect("install the filter");
        }
        while go_rx.recv().is_ok() {
            let t = Instant::now();
            for _ in 0..CALLS {
                call(&fds);
            }
            if done_tx.send(t.elapsed()).is_err() {
                break;
            }
        }
    });
    (go_tx, done_rx)
}

/// Best ns per call without and with the filters of `roles` (stacked in that order, as a
/// vCPU thread holds the VMM thread's that started it and its own), over paired rounds.
fn per_call(roles: &[Role], call: Call) -> (f64, f64) {
    let filters = roles
        .iter()
        .map(|r| vmm::thread_policy::filters(*r, None).expect("build the filter"))
        .collect();
    let plain = worker(Vec::new(), call);
    let filtered = worker(filters, call);
    let mut best = (Duration::MAX, Duration::MAX);
    for round in 0..ROUNDS + 1 {
        let order = if round % 2 == 0 {
            [&plain, &filtered]
        } else {
            [&filtered, &plain]
        };
        let mut times = [Duration::ZERO; 2];
        for (i, w) in order.iter().enumerate() {
            w.0.send(()).unwrap();
            times[i] = w.1.recv().unwrap();
        }
        if round % 2 == 1 {
            times.swap(0, 1);
        }
        if round > 0 {
            best.0 = best.0.min(times[0]);
            best.1 = best.1.min(times[1]);
        }
    }
    let ns = |d: Duration| d.as_nanos() as f64 / CALLS as f64;
    (ns(best.0), ns(best.1))
}

fn start_vmm(socket: &Path, seccomp: &str) -> std::process::Child {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(release_binary("palisade"))
        .args([
            "--api-socket",
            socket.to_str().unwrap(),
            "--seccomp",
            seccomp,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn palisade");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "the API never answered");
        std::thread::sleep(Duration::from_millis(1));
    }
    child
}

/// Median µs of `vmm.ping` round trips for each mode, measured in alternating batches.
fn pings() -> (f64, f64) {
    let dir = std::env::temp_dir();
    let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let modes = ["false", "true"];
    let mut vmms = Vec::new();
    let mut clients = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let socket = dir.join(format!(
            "palisade-seccomp-bench-{}-{i}.sock",
            std::process::id()
        ));
        vmms.push(start_vmm(&socket, mode));
        clients.push(KeepAlive::new(UnixStream::connect(&socket).unwrap()));
    }
    for batch in 0..40 {
        for k in 0..2 {
            let i = if batch % 2 == 0 { k } else { 1 - k };
            for _ in 0..100 {
                let t = Instant::now();
                assert_eq!(clients[i].ping(), 200);
                if batch > 0 {
                    samples[i].push(t.elapsed());
                }
            }
        }
    }
    for mut v in vmms {
        let _ = v.kill();
        let _ = v.wait();
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e6
    };
    (median(&mut samples[0]), median(&mut samples[1]))
}

/// Median ms from process start to exit of the hello guest, for each mode, in turns.
fn boots() -> (f64, f64) {
    let kernel = test_guests::path("hello");
    let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..60 {
        for k in 0..2 {
            let i = if round % 2 == 0 { k } else { 1 - k };
            let mode = ["false", "true"][i];
            let t = Instant::now();
            let status = Command::new(release_binary("palisade"))
                .args(["--kernel", kernel.to_str().unwrap(), "--serial", "null"])
                .args(["--console", "off", "--landlock", "--seccomp", mode])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .expect("run palisade");
            assert!(status.success());
            samples[i].push(t.elapsed());
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    (median(&mut samples[0]), median(&mut samples[1]))
}

fn main() {
    let mut out = std::io::stdout().lock();
    let vcpu: &[Role] = &[Role::Vmm, Role::Vcpu];
    let vmm: &[Role] = &[Role::Vmm];
    let calls: [(&str, &[Role], Call); 8] = [
        ("vCPU exit: KVM_RUN", vcpu, kvm_run),
        ("vCPU interrupt: KVM_SIGNAL_MSI", vcpu, signal_msi),
        ("block request: pread64 4 KiB", vmm, pread),
        ("block request: pwrite64 4 KiB", vmm, pwrite),
        ("net transmit: writev 1514 B", vmm, writev),
        ("net receive: readv 1514 B", vmm, readv),
        ("interrupt: KVM_SIGNAL_MSI", vmm, signal_msi),
        ("API request: recv", &[Role::Api], recv),
    ];
    writeln!(
        out,
        "per call, best of {ROUNDS} paired rounds of {CALLS} calls:"
    )
    .unwrap();
    for (name, roles, call) in calls {
        let (plain, filtered) = per_call(roles, call);
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        writeln!(
            out,
            "  {name:<34} --seccomp false {plain:>7.1} ns   {:<8} filters {filtered:>7.1} ns   cost {:>+6.1} ns ({:+.1}%)",
            names.join("+"),
            filtered - plain,
            (filtered / plain - 1.0) * 100.0
        )
        .unwrap();
    }
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("palisade-seccomp-bench-{}", std::process::id())),
    );
    writeln!(
        out,
        "installing a role's filters in a new thread, best of 20:"
    )
    .unwrap();
    for role in [Role::Vmm, Role::Api, Role::Vcpu] {
        let best = (0..20)
            .map(|_| {
                let filters = vmm::thread_policy::filters(role, None).expect("build the filter");
                std::thread::spawn(move || {
                    let t = Instant::now();
                    filters.install().expect("install the filter");
                    t.elapsed()
                })
                .join()
                .unwrap()
            })
            .min()
            .unwrap();
        writeln!(
            out,
            "  {:<34} {:>7.1} µs",
            role.name(),
            best.as_secs_f64() * 1e6
        )
        .unwrap();
    }
    let (plain, filtered) = pings();
    writeln!(
        out,
        "vmm.ping, kept-alive, median:          --seccomp false {plain:>7.1} µs   true {filtered:>7.1} µs   ({:+.1}%)",
        (filtered / plain - 1.0) * 100.0
    )
    .unwrap();
    let (plain, filtered) = boots();
    writeln!(
        out,
        "start to exit, hello guest, median:    --seccomp false {plain:>7.2} ms   true {filtered:>7.2} ms   ({:+.1}%)",
        (filtered / plain - 1.0) * 100.0
    )
    .unwrap();
}
