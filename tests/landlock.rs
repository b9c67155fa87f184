//! Landlock confinement, end to end, with the real kernel's Landlock.
//!
//! Whether each thread of a running `palisade` is confined is observed from inside the
//! process: the tests load `tests/probe/landlock_probe.c` with LD_PRELOAD; on SIGRTMIN+6 the
//! receiving thread tries a list of file, network and signal operations itself and writes the
//! results to a file. Every test that expects a denial also runs a control where the same
//! probe succeeds, so a probe that cannot fail would be noticed.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

const EACCES: i64 = 13;
const EPERM: i64 = 1;
const EXDEV: i64 = 18;

/// Builds the probe library once per test binary.
fn probe_library() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| compile_probe("landlock_probe")).clone()
}

/// One probe result: the call's return value and errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outcome {
    ret: i64,
    errno: i64,
}

impl Outcome {
    fn ok(self) -> bool {
        self.ret >= 0 && self.errno == 0
    }
}

/// A palisade process with the probe loaded.
struct Probed {
    child: ChildGuard,
    list: PathBuf,
    out: PathBuf,
}

impl Probed {
    fn spawn(cmd: &mut Command, dir: &TempDir) -> Probed {
        let list = dir.path("probes.list");
        let out = dir.path("probes.out");
        std::fs::write(&list, "").unwrap();
        // These tests look at the Landlock layer alone: the probe makes calls (open, link,
        // fork, connect…) that the system-call filters would stop before Landlock is asked
        // (tests/sandbox.rs attacks with the filters on).
        let child = cmd
            .args(["--seccomp", "false"])
            .env("LD_PRELOAD", probe_library())
            .env("PALISADE_PROBE_LIST", &list)
            .env("PALISADE_PROBE_OUT", &out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(ChildGuard::new)
            .expect("spawn palisade");
        Probed { child, list, out }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The user threads of the process (KVM's kernel workers run no user code).
    fn threads(&self) -> Vec<(i32, String)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return out;
        };
        for e in entries.flatten() {
            let tid: i32 = e.file_name().to_string_lossy().parse().unwrap();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let flags: u64 = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(6))
                .and_then(|f| f.parse().ok())
                .unwrap_or(0);
            if flags & (0x20_0000 | 0x4000) != 0 {
                continue;
            }
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            out.push((tid, comm.trim().to_string()));
        }
        out
    }

    /// Waits until a thread named `name` runs (vCPU threads start when the VM boots).
    fn wait_for_thread(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.threads().iter().any(|(_, n)| n == name) {
            assert!(Instant::now() < deadline, "no thread {name} appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `probes` (`name|op|arg|arg` entries) in every user thread; returns, per thread
    /// name, the outcome of each probe.
    fn run(&self, probes: &[String]) -> HashMap<String, HashMap<String, Outcome>> {
        std::fs::write(&self.list, probes.join("\n")).unwrap();
        // Truncate, not remove: the probe appends through a descriptor opened at start-up.
        std::fs::write(&self.out, "").unwrap();
        let threads = self.threads();
        assert!(!threads.is_empty(), "palisade is not running");
        for (tid, _) in &threads {
            // SAFETY: signalling a thread of our own child.
            unsafe { libc::syscall(libc::SYS_tgkill, self.pid(), *tid, libc::SIGRTMIN() + 6) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            let mut per_tid: HashMap<i32, HashMap<String, Outcome>> = HashMap::new();
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() == 4 {
                    per_tid.entry(f[0].parse().unwrap()).or_default().insert(
                        f[1].to_string(),
                        Outcome {
                            ret: f[2].parse().unwrap(),
                            errno: f[3].parse().unwrap(),
                        },
                    );
                }
            }
            let complete = threads
                .iter()
                .all(|(t, _)| per_tid.get(t).is_some_and(|m| m.len() == probes.len()));
            if complete {
                return threads
                    .iter()
                    .map(|(t, name)| (format!("{name}/{t}"), per_tid.remove(t).unwrap()))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "threads {threads:?} did not all answer the probe: {text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(mut self) -> std::process::Output {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "palisade did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Child::from(self.child).wait_with_output().unwrap()
    }
}

/// Whether a probed thread (`name/tid`) is the VMM thread, which holds the VM's ruleset.
fn is_vmm(thread: &str) -> bool {
    thread.starts_with("palisade/")
}

fn probe(name: &str, op: &str, a: &str, b: &str) -> String {
    format!("{name}|{op}|{a}|{b}")
}

/// Waits until a log line containing `marker` appears; keeps draining the log afterwards.
fn wait_for_log(p: &mut Probed, marker: &str) -> String {
    read_log_until(&mut p.child, marker)
}

fn echo_round_trip(pty: &str, text: &str) -> String {
    let mut term = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pty)
        .unwrap();
    term.write_all(text.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let want = text.trim_end_matches('q').to_string();
    while !String::from_utf8_lossy(&seen).contains("PASS echo") {
        let n = term.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(seen.contains(&want), "{seen}");
    seen
}

fn start_echo_vm(dir: &TempDir, landlock: bool, extra: &[&str]) -> (Probed, String) {
    let kernel = guest("echo");
    let sock = dir.path("api.sock");
    let mut cmd = palisade();
    cmd.args([
        "--kernel",
        path_str(&kernel),
        "--serial",
        "pty",
        "--no-shutdown",
        "-v",
    ])
    .args(["--api-socket", path_str(&sock)]);
    if landlock {
        cmd.arg("--landlock");
    }
    cmd.args(extra);
    let mut p = Probed::spawn(&mut cmd, dir);
    let pty = wait_for_log(&mut p, "serial port on ").trim().to_string();
    p.wait_for_thread("vcpu0");
    // The API is up and answering (its thread is among those probed).
    let ping = api::client::request(&sock, "GET", "/api/v1/vmm.ping", None).unwrap();
    assert_eq!(ping.status, 200);
    (p, pty)
}

#[test]
fn every_thread_is_refused_outside_the_ruleset_while_the_guest_works() {
    let dir = TempDir::new("ll-threads");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::write(allowed.join("file"), "ok").unwrap();
    let outside = dir.path("outside.txt");
    std::fs::write(&outside, "secret").unwrap();
    let rule = format!("path={},access=r", allowed.display());
    let probes = vec![
        probe("outside", "read", path_str(&outside), ""),
        probe("etc", "read", "/etc/hostname", ""),
        probe("inside", "read", path_str(&allowed.join("file")), ""),
    ];

    // Control: without --landlock the VMM thread can read everything; the threads that never
    // open files (API, vCPUs) hold a domain without file rights of their own regardless.
    let (p, _) = start_echo_vm(&dir, false, &[]);
    let results = p.run(&probes);
    for (thread, r) in &results {
        if is_vmm(thread) {
            assert!(r["outside"].ok() && r["etc"].ok(), "{thread}: {r:?}");
        } else {
            assert!(!r["outside"].ok() && !r["inside"].ok(), "{thread}: {r:?}");
        }
    }
    p.stop();

    let (p, pty) = start_echo_vm(&dir, true, &["--landlock-rules", &rule]);
    let results = p.run(&probes);
    let names: Vec<&String> = results.keys().collect();
    for wanted in ["palisade", "api", "vcpu0"] {
        assert!(
            names.iter().any(|n| n.starts_with(&format!("{wanted}/"))),
            "no {wanted} thread in {names:?}"
        );
    }
    for (thread, r) in &results {
        assert_eq!(
            r["outside"],
            Outcome {
                ret: -1,
                errno: EACCES
            },
            "{thread}"
        );
        assert_eq!(
            r["etc"],
            Outcome {
                ret: -1,
                errno: EACCES
            },
            "{thread}"
        );
        // Only the thread that opens hot-plugged files holds the rules.
        assert_eq!(
            r["inside"].ok(),
            is_vmm(thread),
            "{thread}: the rule's file must stay readable by the VMM thread alone: {r:?}"
        );
    }
    // The guest still runs, and answers through its console.
    echo_round_trip(&pty, "still here q");
    let out = p.stop();
    assert_eq!(out.status.code(), Some(0));
}

/// A vCPU added to the running VM (`vm.resize`) gets a thread confined as the boot vCPUs':
/// refused every file, even those the rules grant the VMM thread.
#[test]
fn a_hot_added_vcpu_thread_is_confined_like_the_others() {
    let dir = TempDir::new("ll-vcpu-add");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::write(allowed.join("file"), "ok").unwrap();
    let rule = format!("path={},access=r", allowed.display());
    let inside = allowed.join("file");
    let probes = vec![
        probe("etc", "read", "/etc/hostname", ""),
        probe("inside", "read", path_str(&inside), ""),
    ];
    let extra = ["--landlock-rules", &rule, "--cpus", "boot=1,max=2"];
    let (p, _) = start_echo_vm(&dir, true, &extra);
    let sock = dir.path("api.sock");
    let body = r#"{"desired_vcpus": 2}"#;
    let reply = api::client::request(&sock, "PUT", "/api/v1/vm.resize", Some(body)).unwrap();
    assert_eq!(reply.status, 204, "{reply:?}");
    p.wait_for_thread("vcpu1");
    let results = p.run(&probes);
    let added: Vec<_> = results
        .iter()
        .filter(|(t, _)| t.starts_with("vcpu1/"))
        .collect();
    assert_eq!(added.len(), 1, "{:?}", results.keys());
    for (thread, r) in results {
        let expected = is_vmm(&thread);
        assert_eq!(r["inside"].ok(), expected, "{thread}: {r:?}");
        assert!(!r["etc"].ok(), "{thread}: {r:?}");
    }
    p.stop();
}

#[test]
fn escape_attempts_all_fail() {
    let dir = TempDir::new("ll-escape");
    let rw = dir.path("rw");
    let ro = dir.path("ro");
    let outside = dir.path("outside");
    for d in [&rw, &ro, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(rw.join("file"), "rw file").unwrap();
    std::fs::write(ro.join("disk.img"), vec![7u8; 4096]).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), rw.join("link")).unwrap();
    std::fs::copy("/bin/true", rw.join("prog")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let abstract_name = format!("palisade-test-{}", std::process::id());
    let abstract_listener = abstract_unix_listener(&abstract_name);
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let bystander_pid = bystander.id().to_string();

    let p = |name: &str, op: &str, a: &Path, b: &Path| probe(name, op, path_str(a), path_str(b));
    let none = Path::new("");
    let probes = vec![
        p("dotdot", "read", &rw.join("../outside/secret"), none),
        p("symlink", "read", &rw.join("link"), none),
        p(
            "hardlink_in",
            "link",
            &outside.join("secret"),
            &rw.join("stolen"),
        ),
        p(
            "hardlink_out",
            "link",
            &rw.join("file"),
            &outside.join("leaked"),
        ),
        p(
            "rename_out",
            "rename",
            &rw.join("file"),
            &outside.join("moved"),
        ),
        p(
            "rename_in",
            "rename",
            &outside.join("secret"),
            &rw.join("moved"),
        ),
        p(
            "new_symlink",
            "symlink",
            &outside.join("secret"),
            &rw.join("link2"),
        ),
        p(
            "proc_root",
            "read",
            &Path::new("/proc/self/root").join(outside.join("secret").strip_prefix("/").unwrap()),
            none,
        ),
        p("proc_fd", "read", Path::new("/proc/self/fd/0"), none),
        p("truncate_ro", "truncate", &ro.join("disk.img"), none),
        p("write_ro", "write", &ro.join("disk.img"), none),
        p("truncate_rw", "truncate", &rw.join("file"), none),
        p("create_in_ro", "create", &ro.join("new"), none),
        p("create_in_rw", "create_own", &rw.join("new"), none),
        p("mkdir", "mkdir", &rw.join("sub"), none),
        p("unlink", "unlink", &rw.join("file"), none),
        p("exec", "exec", &rw.join("prog"), none),
        probe("tcp", "tcp", &port, ""),
        probe("abstract", "abstract", &abstract_name, ""),
        probe("kill", "kill", &bystander_pid, ""),
        // What the rules do allow, to show the probes can succeed.
        p("read_ro", "read", &ro.join("disk.img"), none),
        p("write_rw", "write", &rw.join("file"), none),
    ];
    let rules = [
        format!("path={},access=rw", rw.display()),
        format!("path={},access=r", ro.display()),
    ];

    // Control run: without Landlock the escapes "work" (the probe is not blind). The
    // destructive ones are left out so the second run starts from the same files.
    let control: Vec<String> = probes
        .iter()
        .filter(|s| {
            [
                "dotdot|",
                "symlink|",
                "proc_root|",
                "exec|",
                "tcp|",
                "abstract|",
                "kill|",
            ]
            .iter()
            .any(|k| s.starts_with(k))
        })
        .cloned()
        .collect();
    let (pr, _) = start_echo_vm(&dir, false, &[]);
    for (thread, r) in pr.run(&control).into_iter().filter(|(t, _)| is_vmm(t)) {
        for (name, o) in &r {
            assert!(
                o.ok(),
                "control {thread}: {name} failed without Landlock: {o:?}"
            );
        }
    }
    pr.stop();

    let (pr, pty) = start_echo_vm(&dir, true, &["--landlock-rules", &rules[0], &rules[1]]);
    let results = pr.run(&probes);
    for (thread, r) in &results {
        let denied = |name: &str, errnos: &[i64]| {
            let o = r[name];
            assert!(
                o.ret != 0
                    && (errnos.contains(&o.errno) || (name == "exec" && o.ret == 100 + EACCES)),
                "{thread}: {name} was not refused: {o:?}"
            );
        };
        denied("dotdot", &[EACCES]);
        denied("symlink", &[EACCES]);
        denied("hardlink_in", &[EACCES, EXDEV]);
        denied("hardlink_out", &[EACCES, EXDEV]);
        denied("rename_out", &[EACCES, EXDEV]);
        denied("rename_in", &[EACCES, EXDEV]);
        denied("new_symlink", &[EACCES]);
        denied("proc_root", &[EACCES]);
        denied("proc_fd", &[EACCES]);
        denied("truncate_ro", &[EACCES]);
        denied("write_ro", &[EACCES]);
        denied("create_in_ro", &[EACCES]);
        denied("mkdir", &[EACCES]);
        denied("unlink", &[EACCES]);
        denied("exec", &[]);
        denied("tcp", &[EACCES]);
        denied("abstract", &[EPERM]);
        denied("kill", &[EPERM]);
        // What the rules allow, the VMM thread alone may do: also create a regular file in
        // a directory with write access (a snapshot's), and nothing else anywhere.
        let vmm = is_vmm(thread);
        if vmm {
            assert!(r["create_in_rw"].ok(), "{thread}: {:?}", r["create_in_rw"]);
        } else {
            denied("create_in_rw", &[EACCES]);
        }
        assert_eq!(r["read_ro"].ok(), vmm, "{thread}: {:?}", r["read_ro"]);
        assert_eq!(r["write_rw"].ok(), vmm, "{thread}: {:?}", r["write_rw"]);
        assert_eq!(
            r["truncate_rw"].ok(),
            vmm,
            "{thread}: writing includes truncating"
        );
    }
    // Nothing moved, appeared or vanished.
    assert!(rw.join("file").exists() && outside.join("secret").exists());
    for gone in ["stolen", "moved", "link2", "new", "sub"] {
        assert!(!rw.join(gone).exists(), "{gone} was created");
    }
    let created: Vec<_> = std::fs::read_dir(&rw)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("new."))
        .collect();
    assert_eq!(
        created.len(),
        1,
        "only the VMM thread created a file: {created:?}"
    );
    assert!(!outside.join("leaked").exists() && !outside.join("moved").exists());
    assert_eq!(std::fs::metadata(ro.join("disk.img")).unwrap().len(), 4096);
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    echo_round_trip(&pty, "escaped? no q");
    pr.stop();
    let _ = bystander.kill();
    let _ = bystander.wait();
    drop(listener);
    drop(abstract_listener);
}

fn abstract_unix_listener(name: &str) -> std::os::unix::net::UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
}

#[test]
fn reboot_smp_and_console_file_work_under_landlock() {
    let dir = TempDir::new("ll-cli");
    let log = dir.path("serial.log");
    let serial = format!("file={}", log.display());
    for (name, extra, pass) in [
        ("reboot", vec!["--cpus", "boot=2"], "PASS reboot"),
        ("reboot", vec!["--cmdline", "method=acpi"], "PASS reboot"),
        ("triple", vec![], "PASS triple"),
        ("smp", vec!["--cpus", "boot=4"], "PASS smp: 4 cpus"),
    ] {
        let kernel = guest(name);
        let mut args = vec![
            "--kernel",
            path_str(&kernel),
            "--landlock",
            "--serial",
            &serial,
        ];
        args.extend(extra);
        let out = run_palisade(&args);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(pass) && !text.contains("FAIL"),
            "{name}: {text}"
        );
    }
}
