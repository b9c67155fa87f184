//! The sandbox's other two layers, attacked from inside: every thread of a running, confined
//! palisade makes each escape a compromised device model would try, and the test checks it
//! was stopped, by which layer, and that nothing happened.
//!
//! The attack is made by the thread itself: `tests/probe/escape_probe.c`, loaded with
//! LD_PRELOAD, makes it on SIGRTMIN+6 with that thread's own Landlock domain, capabilities and
//! system-call filter. A call the filter forbids never returns — palisade names the thread
//! and the call on one line and exits — so each attack gets a fresh VMM.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

const EPERM: i64 = 1;
const EACCES: i64 = 13;

fn escape_library() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| compile_probe("escape_probe")).clone()
}

/// What became of an attack.
#[derive(Debug)]
enum Result {
    /// The call returned: its result (0 or -1) and errno; the VMM runs on.
    Returned(i64, i64),
    /// The VMM stopped, with this on its standard error, and this exit status.
    Stopped(String, Option<i32>),
}

/// How the attacked palisade runs.
#[derive(Clone, Copy)]
enum Mode {
    /// `--landlock`, filters on (the default).
    Confined,
    /// No `--landlock`, `--seccomp false`.
    Unfiltered,
    /// `--landlock`, `--seccomp log`.
    LogOnly,
}

/// The files an attack works on.
struct Scene {
    dir: TempDir,
    disk: PathBuf,
    rw: PathBuf,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let dir = TempDir::new(tag);
        let rw = dir.path("rw");
        std::fs::create_dir(&rw).unwrap();
        let disk = dir.path("ro.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o640)).unwrap();
        Scene { dir, disk, rw }
    }

    /// Where palisade's standard error (its log) goes.
    fn log(&self) -> PathBuf {
        self.dir.path("stderr.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

/// A confined palisade (Landlock with an `rw` rule, a read-only disk, an API socket, the
/// echo guest running) with `op|arg` loaded, in a UTS namespace of its own.
fn start(scene: &Scene, attack: &str, mode: Mode) -> (ChildGuard, PathBuf) {
    let out = scene.dir.path("attack.out");
    let _ = std::fs::remove_file(&out);
    let sock = scene.dir.path("api.sock");
    let _ = std::fs::remove_file(&sock);
    let disk = format!("path={},readonly=on", scene.disk.display());
    let rule = format!("path={},access=rw", scene.rw.display());
    let kernel = guest("echo");
    let mut cmd = palisade();
    cmd.args([
        "--kernel",
        path_str(&kernel),
        "--serial",
        "pty",
        "--console",
        "off",
    ])
    .args(["--disk", &disk, "--api-socket", path_str(&sock), "-v"]);
    match mode {
        Mode::Confined => cmd.args(["--landlock", "--landlock-rules", &rule]),
        Mode::Unfiltered => cmd.args(["--seccomp", "false"]),
        Mode::LogOnly => cmd.args(["--landlock", "--landlock-rules", &rule, "--seccomp", "log"]),
    };
    // SAFETY: unshare in the child before exec; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUTS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .env("LD_PRELOAD", escape_library())
        .env("PALISADE_ESCAPE", attack)
        .env("PALISADE_ESCAPE_OUT", &out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scene.log()).unwrap())
        .spawn()
        .map(ChildGuard::new)
        .expect("spawn palisade");
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(scene.log())
        .unwrap_or_default()
        .contains("thread vcpu0 (")
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "palisade ended: {}",
            scene.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "vcpu0 never locked down: {}",
            scene.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, out)
}

/// The id of `pid`'s thread named `name`.
fn thread_id(pid: u32, name: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for e in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                return e.file_name().to_string_lossy().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no thread {name} in {pid}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Has thread `name` of a fresh VMM make `attack`; returns what became of it.
fn attack(scene: &Scene, attack: &str, name: &str, mode: Mode) -> Result {
    let (mut child, out) = start(scene, attack, mode);
    if let Some(id) = name.strip_prefix("dio-") {
        plug_pooled_disk(scene, id);
    }
    let pid = child.id();
    let tid = thread_id(pid, name);
    // SAFETY: signalling a thread of our own child.
    unsafe { libc::syscall(libc::SYS_tgkill, pid as i32, tid, libc::SIGRTMIN() + 6) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Result::Stopped(scene.log_text(), status.code());
        }
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            let f: Vec<i64> = line.split(' ').map(|v| v.parse().unwrap()).collect();
            return Result::Returned(f[0], f[1]);
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {attack}: no answer and no exit"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Hot-plugs a disk `id` under the `rw` rule whose I/O runs on a thread pool
/// (`disable_io_uring`), so that its I/O threads exist.
fn plug_pooled_disk(scene: &Scene, id: &str) {
    let disk = scene.rw.join(format!("{id}.img"));
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let body = serde_json::json!({"path": disk, "id": id, "disable_io_uring": true});
    let sock = scene.dir.path("api.sock");
    let answer =
        api::client::request(&sock, "PUT", "/api/v1/vm.add-disk", Some(&body.to_string())).unwrap();
    assert_eq!(answer.status, 200, "add-disk: {}", answer.body);
}

/// Each escape, and the system call that must stop it.
fn doors(scene: &Scene, port: u16, unix: &Path) -> Vec<(String, &'static str)> {
    let disk = path_str(&scene.disk);
    let rw = path_str(&scene.rw);
    vec![
        ("memfd".into(), "memfd_create"),
        ("execveat".into(), "execveat"),
        ("mptcp".into(), "socket"),
        (format!("tfo|{port}"), "sendto"),
        ("listen".into(), "listen"),
        ("raw".into(), "socket"),
        ("packet".into(), "socket"),
        ("netlink".into(), "socket"),
        ("alg".into(), "socket"),
        ("sethostname".into(), "sethostname"),
        ("chroot".into(), "chroot"),
        (format!("fchmod|{disk}"), "fchmod"),
        (format!("fchown|{disk}"), "fchown"),
        (format!("fsetxattr|{disk}"), "fsetxattr"),
        (format!("tmpfile|{rw}"), "openat"),
        (format!("unix|{}", unix.display()), "connect"),
        ("mmap_exec".into(), "mmap"),
        ("fork".into(), "clone"),
        ("setuid".into(), "setuid"),
    ]
}

fn every_door_is_shut_in(thread: &str, role: &str) {
    let scene = Scene::new(&format!("escape-{thread}"));
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    // Stands for a neighbour's API socket (an unconfined Palisade, say).
    let unix = scene.dir.path("neighbour.sock");
    let neighbour = std::os::unix::net::UnixListener::bind(&unix).unwrap();
    neighbour.set_nonblocking(true).unwrap();
    let before = std::fs::metadata(&scene.disk).unwrap();

    for (door, call) in doors(&scene, port, &unix) {
        match attack(&scene, &door, thread, Mode::Confined) {
            Result::Stopped(err, code) => {
                let wanted = format!("({role} allow-list) made the forbidden system call {call} (");
                let line = err
                    .lines()
                    .find(|l| l.contains("palisade: seccomp: thread"))
                    .unwrap_or_else(|| panic!("{thread}: {door}: no violation line in:\n{err}"));
                assert!(line.contains(&wanted), "{thread}: {door}: {line}");
                assert_eq!(code, Some(1), "{thread}: {door}");
            }
            other => panic!("{thread}: {door} was not stopped: {other:?}"),
        }
    }
    // Nothing happened: no connection reached either listener, the disk is as it was.
    assert!(tcp.accept().is_err(), "{thread}: a TCP connection got out");
    assert!(
        neighbour.accept().is_err(),
        "{thread}: the neighbour was reached"
    );
    let after = std::fs::metadata(&scene.disk).unwrap();
    assert_eq!(after.mode(), before.mode());
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    let mut value = [0u8; 8];
    let name = std::ffi::CString::new(path_str(&scene.disk)).unwrap();
    // SAFETY: reading an attribute into a local buffer.
    let n = unsafe {
        libc::getxattr(
            name.as_ptr(),
            c"user.escaped".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert!(n < 0, "{thread}: the disk got an attribute");
}

#[test]
fn the_vmm_thread_cannot_escape() {
    every_door_is_shut_in("palisade", "vmm");
}

#[test]
fn the_api_thread_cannot_escape() {
    every_door_is_shut_in("api", "api");
}

#[test]
fn a_vcpu_thread_cannot_escape() {
    every_door_is_shut_in("vcpu0", "vcpu");
}

#[test]
fn a_device_thread_cannot_escape() {
    // The entropy device's worker: every VM has one.
    every_door_is_shut_in("dev-_rng0", "device");
}

#[test]
fn a_disk_io_thread_cannot_escape() {
    // One of the I/O threads of a disk without io_uring.
    every_door_is_shut_in("dio-pooled", "device");
}

/// The control: with the filter off, the same calls return (the probe is not blind), and
/// the ones that need privilege are still refused, by the capabilities the thread dropped.
#[test]
fn without_the_filter_the_calls_return_and_dropped_capabilities_still_refuse() {
    let scene = Scene::new("escape-control");
    let unix = scene.dir.path("neighbour.sock");
    let neighbour = std::os::unix::net::UnixListener::bind(&unix).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let privileged = ["raw", "packet", "sethostname", "chroot", "fchown", "setuid"];
    // The API thread's own Landlock domain allows no file and no TCP port, even without
    // --landlock.
    let no_rights = ["tfo", "tmpfile"];
    for (door, _) in doors(&scene, port, &unix) {
        let op = door.split('|').next().unwrap();
        if op == "fork" || op == "execveat" {
            // A child of palisade, and an exec of /dev/null: nothing to learn here.
            continue;
        }
        match attack(&scene, &door, "api", Mode::Unfiltered) {
            Result::Returned(ret, errno) if privileged.contains(&op) => {
                assert_eq!((ret, errno), (-1, EPERM), "{op} without CAP_*");
            }
            Result::Returned(ret, errno) if no_rights.contains(&op) => {
                assert_eq!(
                    (ret, errno),
                    (-1, EACCES),
                    "{op} under the thread's own domain"
                );
            }
            Result::Returned(ret, errno) => {
                // MPTCP and AF_ALG may be missing from a kernel; the rest works unfiltered.
                let unsupported = (op == "mptcp" && errno == libc::EPROTONOSUPPORT as i64)
                    || (op == "alg" && errno == libc::EAFNOSUPPORT as i64);
                assert!(ret == 0 || unsupported, "{op}: {ret} {errno}");
            }
            other => panic!("{op}: {other:?}"),
        }
    }
    // Landlock kept TCP in; the unfiltered Unix connect got through: the filter is what
    // keeps a thread from a neighbour's socket.
    tcp.set_nonblocking(true).unwrap();
    assert!(tcp.accept().is_err());
    assert!(neighbour.accept().is_ok());
}

/// Every thread holds its role's filter (`Seccomp: 2`) and no capability it does not need.
#[test]
fn every_thread_is_filtered_and_holds_no_capability() {
    let scene = Scene::new("escape-status");
    let (child, _) = start(&scene, "none|", Mode::Confined);
    let pid = child.id();
    thread_id(pid, "vcpu0");
    let mut seen = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let name = field("Name:");
        if field("Kthread:") == "1" || name.starts_with("kvm") {
            continue;
        }
        assert_eq!(field("Seccomp:"), "2", "{name}");
        assert_eq!(field("NoNewPrivs:"), "1", "{name}");
        assert_eq!(field("CapEff:"), "0000000000000000", "{name}");
        assert_eq!(field("CapPrm:"), "0000000000000000", "{name}");
        assert_eq!(field("CapInh:"), "0000000000000000", "{name}");
        assert_eq!(field("CapAmb:"), "0000000000000000", "{name}");
        assert_eq!(field("CapBnd:"), "0000000000000000", "{name}");
        seen.push(name);
    }
    for wanted in ["palisade", "api", "vcpu0", "dev-_rng0"] {
        assert!(seen.iter().any(|n| n == wanted), "{seen:?}");
    }
    // vm.info tells the same, thread by thread.
    let sock = scene.dir.path("api.sock");
    let info = api::client::request(&sock, "GET", "/api/v1/vm.info", None).unwrap();
    let info: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    let threads = info["sandbox"]["threads"].as_array().unwrap();
    for (name, role, landlock) in [
        ("main", "vmm", "the VM's ruleset"),
        ("api", "api", "no file rights"),
        ("vcpu0", "vcpu", "no file rights"),
        ("dev-_rng0", "device", "no file rights"),
    ] {
        let t = threads
            .iter()
            .find(|t| t["thread"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {threads:?}"));
        assert_eq!(t["role"], role);
        assert!(t["landlock"].as_str().unwrap().starts_with(landlock), "{t}");
        assert!(t["seccomp"].as_str().unwrap().contains("enforcing"), "{t}");
        assert_eq!(t["capabilities"], serde_json::json!([]), "{t}");
    }
    assert_eq!(info["sandbox"]["seccomp"], "enforce");
}

/// A read-only disk whose image lies under a writable rule is confined only as far as that
/// rule: palisade says so when the VM is created.
#[test]
fn a_read_only_disk_under_a_writable_rule_is_warned_about() {
    let scene = Scene::new("escape-warn");
    let disk = scene.rw.join("inside.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let kernel = guest("hello");
    let out = run_palisade(&[
        "--kernel",
        path_str(&kernel),
        "--disk",
        &format!("path={},readonly=on", disk.display()),
        "--landlock",
        "--landlock-rules",
        &format!("path={},access=rw", scene.rw.display()),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("readonly=on, but its image lies under the Landlock rule")
            && err.contains(&format!("path={},access=rw", scene.rw.display())),
        "{err}"
    );
}

const NOBODY: u32 = 65534;

/// Makes `cmd` run as an unprivileged user (nobody) who may open /dev/kvm and /dev/net/tun:
/// device nodes of its own are mounted over them in a mount namespace only palisade sees
/// (this machine's own nodes are root's alone).
fn as_unprivileged(cmd: &mut Command, scene: &Scene) {
    std::fs::set_permissions(scene.dir.path(""), std::fs::Permissions::from_mode(0o777)).unwrap();
    let node = |name: &str, minor: u32| {
        let path = std::ffi::CString::new(path_str(&scene.dir.path(name))).unwrap();
        // SAFETY: creating a device node and changing its owner; the path is NUL-terminated.
        unsafe {
            assert_eq!(
                libc::mknod(
                    path.as_ptr(),
                    libc::S_IFCHR | 0o600,
                    libc::makedev(10, minor)
                ),
                0
            );
            assert_eq!(libc::chown(path.as_ptr(), NOBODY, NOBODY), 0);
        }
        path
    };
    let kvm = node("kvm", 232);
    let tun = node("tun", 200);
    // SAFETY: only system calls between fork and exec; the strings were made before.
    unsafe {
        cmd.pre_exec(move || {
            let none: *const libc::c_char = std::ptr::null();
            let no_data: *const libc::c_void = std::ptr::null();
            let bind = |from: &std::ffi::CStr, to: &std::ffi::CStr| {
                libc::mount(from.as_ptr(), to.as_ptr(), none, libc::MS_BIND, no_data) == 0
            };
            let private = libc::MS_REC | libc::MS_PRIVATE;
            let ok = libc::unshare(libc::CLONE_NEWNS) == 0
                && libc::mount(none, c"/".as_ptr(), none, private, no_data) == 0
                && bind(&kvm, c"/dev/kvm")
                && bind(&tun, c"/dev/net/tun")
                && libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(NOBODY) == 0
                && libc::setuid(NOBODY) == 0;
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Checks the lock-down lines of an unprivileged run: every thread filtered, none holding a
/// capability.
fn assert_unprivileged_lockdown(err: &str) {
    assert!(err.contains("Landlock ABI"), "{err}");
    for thread in ["main", "api", "vcpu0"] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("thread {thread} (")))
            .unwrap_or_else(|| panic!("no lock-down line for {thread}: {err}"));
        assert!(line.contains("enforcing; capabilities none"), "{line}");
    }
}

/// Palisade runs as a user without privilege who may open /dev/kvm: every layer still
/// applies, and the guest runs with its disk.
#[test]
fn palisade_runs_confined_as_an_unprivileged_user() {
    let scene = Scene::new("escape-nobody");
    let disk = scene.dir.path("user.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::chown(&disk, Some(NOBODY), Some(NOBODY)).unwrap();
    let kernel = guest("hello");
    let sock = scene.dir.path("api.sock");
    let mut cmd = palisade();
    cmd.args(["--kernel", path_str(&kernel)])
        .args(SERIAL_ON_STDOUT)
        .args(["--disk", &format!("path={}", disk.display())])
        .args(["--api-socket", path_str(&sock), "--landlock", "-v"]);
    as_unprivileged(&mut cmd, &scene);
    let out = run_with_timeout(&mut cmd, PATIENCE);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        stdout(&out).contains("Hello from the Palisade test guest"),
        "{err}"
    );
    assert_unprivileged_lockdown(&err);
}

/// The same user, with a tap made for it beforehand: the guest's network device reaches the
/// host through it.
#[test]
fn an_unprivileged_palisade_uses_a_tap_made_for_it() {
    let scene = Scene::new("escape-nobody-net");
    let ns = devices::netns::NetNs::new();
    ns.ip(&[
        "tuntap", "add", "dev", "tapu0", "mode", "tap", "user", "65534", "vnet_hdr",
    ]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "tapu0"]);
    ns.ip(&["link", "set", "tapu0", "up"]);
    let kernel = guest("virtio_net");
    let mut cmd = palisade();
    cmd.args(["--kernel", path_str(&kernel)])
        .args(SERIAL_ON_STDOUT)
        .args([
            "--net",
            "tap=tapu0",
            "--cmdline",
            "host=10.77.0.1 me=10.77.0.2",
        ])
        .args(["--landlock", "-v"]);
    ns.enter(&mut cmd);
    as_unprivileged(&mut cmd, &scene);
    let out = run_with_timeout(&mut cmd, PATIENCE);
    let err = stderr(&out);
    assert!(
        stdout(&out).contains("PASS virtio_net"),
        "{}\n{err}",
        stdout(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("thread vcpu0 (") && err.contains("enforcing; capabilities none"));
    ns.remove();
}

/// With `--seccomp log` a forbidden call goes through (the kernel's audit log records it):
/// the VMM keeps running.
#[test]
fn in_log_mode_a_forbidden_call_goes_through() {
    let scene = Scene::new("escape-log");
    match attack(&scene, "memfd", "vcpu0", Mode::LogOnly) {
        Result::Returned(0, 0) => {}
        other => panic!("memfd_create in log mode: {other:?}"),
    }
    assert!(
        scene
            .log_text()
            .contains("vcpu allow-list (29 system calls), logging only")
            || scene.log_text().contains("logging only")
    );
}
