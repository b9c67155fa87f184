//! Helpers shared by the integration tests: run the real `palisade` binary on a test guest
//! and look at what it printed.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `palisade` binary under test.
pub fn palisade() -> Command {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
}

/// The `palisade-remote` binary under test.
pub fn remote() -> Command {
    Command::new(env!("CARGO_BIN_EXE_palisade-remote"))
}

/// A built test guest.
pub fn guest(name: &str) -> PathBuf {
    test_guests::path(name)
}

/// A fresh directory for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("palisade-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command to completion with a deadline; kills it and panics if it overruns.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child, timeout)
}

/// How the test guests talk: on the serial port, which these flags put on stdout (by
/// default, as in Cloud Hypervisor, the serial port is `null` and the virtio console `tty`).
pub const SERIAL_ON_STDOUT: [&str; 4] = ["--serial", "tty", "--console", "off"];

/// Runs palisade with `args`, expecting it to finish within 60 s. A VM given without
/// console flags gets [`SERIAL_ON_STDOUT`].
pub fn run_palisade(args: &[&str]) -> Output {
    let mut cmd = palisade();
    cmd.args(args);
    let has = |flag: &str| args.contains(&flag);
    if has("--kernel") && !has("--serial") && !has("--console") {
        cmd.args(SERIAL_ON_STDOUT);
    }
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a run failed with status 1 and exactly one line on stderr containing `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "status; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected, got: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert!(err.starts_with("palisade: "), "{err}");
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Checks that the guest in `out` printed the line `line`, reported no failure and that
/// palisade exited 0; returns what the guest printed.
pub fn assert_pass(out: &Output, line: &str) -> String {
    let text = stdout(out);
    assert!(
        !text.contains("FAIL"),
        "the guest reported a failure:\n{text}\nstderr: {}",
        stderr(out)
    );
    assert!(
        text.lines().any(|l| l == line),
        "missing {line:?} in:\n{text}\nstderr: {}",
        stderr(out)
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
    text
}

/// Opens a pseudo-terminal pair: (master, slave).
pub fn open_pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut master = 0;
    let mut slave = 0;
    // SAFETY: openpty writes two descriptors into the given integers; the name, termios and
    // window size arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both descriptors were just returned by openpty and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

/// A running palisade that is killed if the test ends early (a failed assertion), so that
/// no VMM outlives its test.
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> Self {
        ChildGuard(Some(child))
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("child taken")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("child taken")
    }
}

impl From<ChildGuard> for std::process::Child {
    fn from(mut guard: ChildGuard) -> Self {
        guard.0.take().expect("child taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a spawned child with a deadline and collects its output.
pub fn wait_output(child: impl Into<std::process::Child>, timeout: Duration) -> Output {
    let mut child: std::process::Child = child.into();
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "timed out after {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads the child's stderr (its log) line by line until a line contains `marker`; returns
/// the rest of that line after the marker. The child's stderr is then left to a thread that
/// keeps draining it.
pub fn read_log_until(child: &mut std::process::Child, marker: &str) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut reader = std::io::BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read log");
        assert!(n > 0, "log ended before {marker:?}");
        if let Some(pos) = line.find(marker) {
            let rest = line[pos + marker.len()..].to_string();
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            return rest;
        }
    }
}

/// How long any one thing may take before a test gives up (the guests take milliseconds).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A `palisade` with an API socket, its log in a file and room for its serial port in
/// another (`dir/serial.log`, for the caller's `--serial file=`); killed when dropped.
pub struct ApiVmm {
    child: ChildGuard,
    /// The API socket.
    pub socket: PathBuf,
    /// Where the caller may send the serial port.
    pub serial: PathBuf,
    log: PathBuf,
}

impl ApiVmm {
    /// Spawns `cmd` (a [`palisade`] the caller may have set up further, to start in a
    /// namespace say) with `--api-socket` in `dir` and `extra`; waits until the API answers.
    pub fn spawn(mut cmd: Command, dir: &TempDir, extra: &[&str]) -> ApiVmm {
        let socket = dir.path("api.sock");
        let log = dir.path("palisade.log");
        let child = cmd
            .args(["--api-socket", path_str(&socket)])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut vmm = ApiVmm {
            child: ChildGuard::new(child),
            socket,
            serial: dir.path("serial.log"),
            log,
        };
        let deadline = Instant::now() + PATIENCE;
        while api::client::request_with_timeout(
            &vmm.socket,
            "GET",
            "/api/v1/vmm.ping",
            None,
            Some(PATIENCE),
        )
        .is_err()
        {
            if let Ok(Some(status)) = vmm.child.try_wait() {
                panic!("palisade exited ({status}):\n{}", vmm.log_text());
            }
            assert!(Instant::now() < deadline, "the API socket never answered");
            std::thread::sleep(Duration::from_millis(10));
        }
        vmm
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `--serial file=…` for [`ApiVmm::serial`] in `dir`.
    pub fn serial_arg(dir: &TempDir) -> String {
        format!("file={}", dir.path("serial.log").display())
    }

    /// `METHOD /api/v1/ENDPOINT` with an optional body; the status and the body. A VMM that
    /// does not answer within [`PATIENCE`] fails the test.
    pub fn call(&self, method: &str, endpoint: &str, body: Option<&str>) -> (u16, String) {
        let path = format!("/api/v1/{endpoint}");
        match api::client::request_with_timeout(&self.socket, method, &path, body, Some(PATIENCE)) {
            Ok(r) => (r.status, r.body),
            Err(e) => panic!(
                "{method} {endpoint}: {e}\nserial: {}\nlog: {}",
                self.serial_text(),
                self.log_text()
            ),
        }
    }

    /// `PUT /api/v1/ENDPOINT` with a JSON body.
    pub fn put(&self, endpoint: &str, body: &serde_json::Value) -> (u16, String) {
        self.call("PUT", endpoint, Some(&body.to_string()))
    }

    /// `GET /api/v1/ENDPOINT`, which must answer 200 with JSON.
    pub fn get(&self, endpoint: &str) -> serde_json::Value {
        let (code, body) = self.call("GET", endpoint, None);
        assert_eq!(code, 200, "{endpoint}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `vm.info`.
    pub fn info(&self) -> serde_json::Value {
        self.get("vm.info")
    }

    /// The VM's state as `vm.info` gives it.
    pub fn state(&self) -> String {
        self.info()["state"].as_str().unwrap().to_string()
    }

    /// `palisade-remote --api-socket S args…`.
    pub fn remote(&self, args: &[&str]) -> Output {
        run_with_timeout(
            remote()
                .args(["--api-socket", path_str(&self.socket)])
                .args(args),
            PATIENCE,
        )
    }

    /// What the serial port wrote so far.
    pub fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// What palisade logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the serial output holds `needle` `count` times; returns it. Fails at once
    /// if the guest reports a failure.
    pub fn wait_serial(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.serial_text();
            assert!(
                !text.contains("FAIL"),
                "the guest reported a failure:\n{text}\nlog: {}",
                self.log_text()
            );
            if text.matches(needle).count() >= count {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} x{count} never appeared on the serial port:\n{text}\nlog: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for palisade to exit; its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "palisade did not exit\nlog: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the VM to reach `state`.
    pub fn wait_state(&self, state: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.state();
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the VM stayed {now}, not {state}\nserial: {}\nlog: {}",
                self.serial_text(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Compiles the test probe `tests/probe/<name>.c` into a shared library for LD_PRELOAD;
/// returns its path.
pub fn compile_probe(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join(format!("{name}.so"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/probe/{name}.c"));
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "building the probe {name} failed");
    lib
}

/// One of Cloud Hypervisor's own binaries (`ch-remote`, `cloud-hypervisor`), from the
/// environment variable `var` or `../shared/tools/` beside the repository; `None` (said on
/// one line) when missing, which under `CI=true` is a failure instead.
pub fn reference_tool(var: &str, name: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/tools")
            .join(name)
    });
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name} is missing at {} (set {var})",
        path.display()
    );
    println!("skipping: {name} is missing at {}", path.display());
    None
}

/// Runs `cmd --api-socket socket` (any other arguments already given) and waits until the
/// socket exists.
pub fn spawn_listening(mut cmd: Command, socket: &Path) -> ChildGuard {
    let child = cmd
        .arg("--api-socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard::new(child);
    wait_for_socket(socket, &format!("{cmd:?}"));
    guard
}

/// Waits (20 s at most) until the socket `socket` that `what` makes exists.
pub fn wait_for_socket(socket: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "{what} never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A VMM with an API (`--no-shutdown`) and a VM created from guest `name`, 64 MiB, the
/// serial port in `dir`'s `serial.log`, no virtio console, and the fields of `extra` (an
/// object, merged one level deep); not booted.
pub fn created_vm(dir: &TempDir, name: &str, extra: serde_json::Value) -> ApiVmm {
    let vmm = ApiVmm::spawn(palisade(), dir, &["--no-shutdown"]);
    let mut config = serde_json::json!({
        "payload": {"kernel": guest(name)},
        "memory": {"size": 64 << 20},
        "serial": {"mode": "File", "file": dir.path("serial.log")},
        "console": {"mode": "Off"},
    });
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        match (config.get_mut(&key), value) {
            (Some(serde_json::Value::Object(base)), serde_json::Value::Object(more)) => {
                base.extend(more);
            }
            (_, value) => {
                config[key.as_str()] = value;
            }
        }
    }
    let (code, body) = vmm.put("vm.create", &config);
    assert_eq!(code, 204, "{body}");
    vmm
}

/// A VMM with an API booting guest `name` from the command line, its serial port in `dir`'s
/// `serial.log`, no virtio console, and the flags `extra`.
pub fn booted_guest(dir: &TempDir, name: &str, extra: &[&str]) -> ApiVmm {
    let kernel = guest(name);
    let serial = ApiVmm::serial_arg(dir);
    let mut args = vec![
        "--kernel",
        path_str(&kernel),
        "--serial",
        &serial,
        "--console",
        "off",
    ];
    args.extend_from_slice(extra);
    ApiVmm::spawn(palisade(), dir, &args)
}
