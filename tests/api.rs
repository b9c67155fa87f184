//! The REST API end to end: a `palisade` started with only an API socket, driven with curl
//! (as a Cloud Hypervisor user would) and with `palisade-remote`, against real guests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Vmm {
    child: Child,
    socket: PathBuf,
}

impl Vmm {
    fn start(dir: &TempDir, extra: &[&str]) -> Vmm {
        let socket = dir.path("api.sock");
        let child = palisade()
            .args(["--api-socket", path_str(&socket)])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while api::client::request(&socket, "GET", "/api/v1/vmm.ping", None).is_err() {
            assert!(Instant::now() < deadline, "the API socket never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
        Vmm { child, socket }
    }

    /// `curl --unix-socket S -X METHOD [-d BODY] http://localhost/api/v1/ENDPOINT`.
    fn curl(&self, method: &str, endpoint: &str, body: Option<&Value>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            path_str(&self.socket),
        ])
        .args(["-X", method]);
        if let Some(body) = body {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "-d",
                &body.to_string(),
            ]);
        }
        cmd.arg(format!("http://localhost/api/v1/{endpoint}"));
        let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    fn remote(&self, args: &[&str]) -> std::process::Output {
        run_with_timeout(
            remote()
                .args(["--api-socket", path_str(&self.socket)])
                .args(args),
            Duration::from_secs(30),
        )
    }

    fn state(&self) -> String {
        let (code, body) = self.curl("GET", "vm.info", None);
        assert_eq!(code, 200, "{body}");
        let info: Value = serde_json::from_str(&body).unwrap();
        info["state"].as_str().unwrap().to_string()
    }

    fn wait_exit(mut self) -> (std::process::ExitStatus, PathBuf) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.socket.clone());
            }
            assert!(Instant::now() < deadline, "palisade did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vm_config(kernel: &Path, serial_file: &Path) -> Value {
    json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": kernel, "cmdline": "console=ttyS0"},
        "serial": {"mode": "File", "file": serial_file},
        "console": {"mode": "Off"},
    })
}

fn wait_for_file(path: &Path, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} x{count} never appeared in {text:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn error_messages(body: &str) -> Vec<String> {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("error body is not a JSON array: {body}"))
}

#[test]
fn full_lifecycle_through_curl() {
    let dir = TempDir::new("api-life");
    let vmm = Vmm::start(&dir, &["--no-shutdown"]);
    let serial = dir.path("serial.log");

    let (code, body) = vmm.curl("GET", "vmm.ping", None);
    assert_eq!(code, 200);
    let ping: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ping["pid"], json!(vmm.child.id()));
    assert!(ping["version"].is_string());

    // Nothing exists yet: info and boot say so.
    let (code, body) = vmm.curl("GET", "vm.info", None);
    assert_eq!(code, 404);
    assert!(error_messages(&body)[0].contains("vm.create"), "{body}");
    let (code, _) = vmm.curl("PUT", "vm.boot", None);
    assert_eq!(code, 404);

    let config = vm_config(&guest("echo"), &serial);
    let (code, body) = vmm.curl("PUT", "vm.create", Some(&config));
    assert_eq!(code, 204, "{body}");
    assert_eq!(vmm.state(), "Created");
    // A second create changes nothing.
    let (code, body) = vmm.curl("PUT", "vm.create", Some(&config));
    assert_eq!(code, 405);
    assert!(
        error_messages(&body)[0].contains("already exists"),
        "{body}"
    );
    // Pausing a VM that is not running is refused, naming the state.
    let (code, body) = vmm.curl("PUT", "vm.pause", None);
    assert_eq!(code, 405);
    assert!(error_messages(&body)[0].contains("Created"), "{body}");

    let (code, body) = vmm.curl("PUT", "vm.boot", None);
    assert_eq!(code, 204, "{body}");
    assert_eq!(vmm.state(), "Running");
    wait_for_file(&serial, "echo: ready", 1);
    let (code, _) = vmm.curl("PUT", "vm.boot", None);
    assert_eq!(code, 405, "booting twice is refused");

    let (code, _) = vmm.curl("PUT", "vm.pause", None);
    assert_eq!(code, 204);
    assert_eq!(vmm.state(), "Paused");
    let (code, _) = vmm.curl("PUT", "vm.pause", None);
    assert_eq!(code, 405);
    let (code, _) = vmm.curl("PUT", "vm.resume", None);
    assert_eq!(code, 204);
    assert_eq!(vmm.state(), "Running");

    // Reboot reloads the kernel: the guest starts over.
    let (code, _) = vmm.curl("PUT", "vm.reboot", None);
    assert_eq!(code, 204);
    wait_for_file(&serial, "echo: ready", 2);
    assert_eq!(vmm.state(), "Running");

    let (code, _) = vmm.curl("PUT", "vm.shutdown", None);
    assert_eq!(code, 204);
    assert_eq!(vmm.state(), "Shutdown");
    // A shut-down VM boots again.
    let (code, _) = vmm.curl("PUT", "vm.boot", None);
    assert_eq!(code, 204);
    wait_for_file(&serial, "echo: ready", 1);

    let (code, body) = vmm.curl("GET", "vm.info", None);
    assert_eq!(code, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], json!(2));
    assert_eq!(info["memory_actual_size"], json!(64u64 << 20));
    assert_eq!(info["landlock"]["requested"], json!(false));
    let (code, body) = vmm.curl("GET", "vm.counters", None);
    assert_eq!(code, 200, "{body}");
    let counters: Value = serde_json::from_str(&body).unwrap();
    // "echo: ready\n" at least, printed by three boots.
    assert!(
        counters["serial"]["tx_bytes"].as_u64().unwrap() >= 36,
        "{body}"
    );

    let (code, _) = vmm.curl("PUT", "vm.delete", None);
    assert_eq!(code, 204);
    let (code, _) = vmm.curl("GET", "vm.info", None);
    assert_eq!(code, 404);

    let (code, _) = vmm.curl("PUT", "vmm.shutdown", None);
    assert_eq!(code, 204);
    let (status, socket) = vmm.wait_exit();
    assert!(status.success());
    wait_until_gone(&socket);
}

fn wait_until_gone(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not removed",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn invalid_configs_are_refused_and_change_nothing() {
    let dir = TempDir::new("api-bad");
    let vmm = Vmm::start(&dir, &[]);
    let serial = dir.path("serial.log");
    let good = vm_config(&guest("hello"), &serial);

    let mut unknown = good.clone();
    unknown["colour"] = json!("blue");
    let (code, body) = vmm.curl("PUT", "vm.create", Some(&unknown));
    assert_eq!(code, 400);
    assert!(body.contains("colour"), "{body}");

    let mut bad_cpus = good.clone();
    bad_cpus["cpus"] = json!({"boot_vcpus": 4, "max_vcpus": 2});
    let (code, body) = vmm.curl("PUT", "vm.create", Some(&bad_cpus));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("max_vcpus"), "{body}");

    let mut missing = good.clone();
    missing["payload"]["kernel"] = json!("/nonexistent/kernel");
    let (code, body) = vmm.curl("PUT", "vm.create", Some(&missing));
    assert_eq!(code, 400);
    assert!(body.contains("/nonexistent/kernel"), "{body}");

    // None of that created a VM.
    let (code, _) = vmm.curl("GET", "vm.info", None);
    assert_eq!(code, 404);
    let (code, body) = vmm.curl("PUT", "vm.create", Some(&good));
    assert_eq!(code, 204, "{body}");
}

#[test]
fn guest_poweroff_ends_the_vmm_and_removes_the_socket() {
    let dir = TempDir::new("api-poweroff");
    let vmm = Vmm::start(&dir, &[]);
    let serial = dir.path("serial.log");
    let (code, _) = vmm.curl(
        "PUT",
        "vm.create",
        Some(&vm_config(&guest("hello"), &serial)),
    );
    assert_eq!(code, 204);
    let (code, _) = vmm.curl("PUT", "vm.boot", None);
    assert_eq!(code, 204);
    let (status, socket) = vmm.wait_exit();
    assert!(status.success());
    wait_until_gone(&socket);
    assert!(std::fs::read_to_string(&serial)
        .unwrap()
        .contains("Hello from the Palisade"));
}

#[test]
fn no_shutdown_leaves_the_vm_in_shutdown_state_after_poweroff() {
    let dir = TempDir::new("api-noshut");
    let vmm = Vmm::start(&dir, &["--no-shutdown"]);
    let serial = dir.path("serial.log");
    vmm.curl(
        "PUT",
        "vm.create",
        Some(&vm_config(&guest("hello"), &serial)),
    );
    vmm.curl("PUT", "vm.boot", None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while vmm.state() != "Shutdown" {
        assert!(Instant::now() < deadline, "the VM never reached Shutdown");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Booted again, it runs the guest again.
    let (code, _) = vmm.curl("PUT", "vm.boot", None);
    assert_eq!(code, 204);
    wait_for_file(&serial, "Hello from the Palisade", 1);
}

#[test]
fn palisade_remote_drives_the_same_lifecycle() {
    let dir = TempDir::new("api-remote");
    let vmm = Vmm::start(&dir, &["--no-shutdown"]);
    let serial = dir.path("serial.log");
    let config_file = dir.path("vm.json");
    std::fs::write(&config_file, vm_config(&guest("echo"), &serial).to_string()).unwrap();

    let out = vmm.remote(&["ping"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("\"version\""));
    let out = vmm.remote(&["info"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("palisade-remote: "),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);

    for step in [
        vec!["create", path_str(&config_file)],
        vec!["boot"],
        vec!["pause"],
        vec!["resume"],
        vec!["reboot"],
    ] {
        let out = vmm.remote(&step);
        assert!(out.status.success(), "{step:?}: {}", stderr(&out));
    }
    wait_for_file(&serial, "echo: ready", 2);
    let out = vmm.remote(&["info"]);
    let info: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["state"], json!("Running"));
    let out = vmm.remote(&["boot"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Running"), "{}", stderr(&out));
    for step in [vec!["shutdown"], vec!["delete"], vec!["shutdown-vmm"]] {
        let out = vmm.remote(&step);
        assert!(out.status.success(), "{step:?}: {}", stderr(&out));
    }
    let (status, socket) = vmm.wait_exit();
    assert!(status.success());
    wait_until_gone(&socket);
    let out = run_with_timeout(
        remote().args(["--api-socket", path_str(&socket), "ping"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(path_str(&socket)), "{}", stderr(&out));
}

#[test]
fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
    let dir = TempDir::new("api-sock");
    let first = Vmm::start(&dir, &[]);
    let out = run_palisade(&["--api-socket", path_str(&first.socket)]);
    assert_one_line_error(&out, "in use");
    drop(first);
    // The killed VMM left its socket behind (or its janitor removed it): either way a new
    // one starts on the same path.
    let second = Vmm::start(&dir, &[]);
    let (code, _) = second.curl("GET", "vmm.ping", None);
    assert_eq!(code, 200);
}

#[test]
fn the_cli_vm_and_the_api_coexist() {
    let dir = TempDir::new("api-cli");
    let serial = dir.path("serial.log");
    let serial_arg = format!("file={}", serial.display());
    let kernel = guest("echo");
    let vmm = Vmm::start(
        &dir,
        &[
            "--kernel",
            path_str(&kernel),
            "--serial",
            &serial_arg,
            "--no-shutdown",
        ],
    );
    wait_for_file(&serial, "echo: ready", 1);
    assert_eq!(vmm.state(), "Running");
    let (code, body) = vmm.curl("GET", "vm.info", None);
    assert_eq!(code, 200);
    assert!(body.contains(path_str(&kernel)));
}

#[test]
fn an_api_socket_passed_as_a_descriptor_is_served_and_left_in_place() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("api-fd");
    let path = dir.path("supervisor.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = palisade();
    // A high number, clear of the descriptors the spawning machinery itself uses.
    cmd.args(["--api-socket", "fd=100"]);
    // SAFETY: between fork and exec, dup2 only duplicates the listener onto descriptor 100
    // (without close-on-exec) for the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 100) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(10);
    let ping = loop {
        if let Ok(r) = api::client::request(&path, "GET", "/api/v1/vmm.ping", None) {
            break r;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the passed socket was never served: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(ping.status, 200);
    let r = api::client::request(&path, "PUT", "/api/v1/vmm.shutdown", None).unwrap();
    assert_eq!(r.status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    // A socket handed in by a supervisor is the supervisor's: Palisade leaves it.
    std::thread::sleep(Duration::from_millis(100));
    assert!(path.exists());
}
