//! Helpers shared by the API's integration tests: temporary directories, a thread playing the
//! VMM side of the request channel, a server on a real socket, and raw HTTP exchanges.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use api::server::{ApiServer, ServerOptions};
use api::socket::BoundSocket;
use config::{ApiSocketConfig, VmConfig};
use serde_json::json;
use vmm::control::{request_channel, ErrorKind, Reply, Request, RequestError, RequestSender};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("palisade-api-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lifecycle states the fake VMM goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Paused,
    Shutdown,
}

/// A thread answering requests the way the real VMM does, without a VM.
pub struct FakeVmm {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every request received, by name, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl FakeVmm {
    /// Starts the fake VMM; each answer is delayed by `delay`.
    pub fn start(delay: Duration) -> (RequestSender, FakeVmm) {
        let (sender, receiver) = request_channel().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread_stop = stop.clone();
        let thread_seen = seen.clone();
        let thread = std::thread::spawn(move || {
            let mut vm: Option<(VmConfig, State)> = None;
            while !thread_stop.load(Ordering::SeqCst) {
                let batch = receiver.drain();
                if batch.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                for (request, reply) in batch {
                    thread_seen
                        .lock()
                        .unwrap()
                        .push(name_of(&request).to_string());
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    reply.send(handle(&mut vm, request));
                }
            }
        });
        (
            sender,
            FakeVmm {
                stop,
                thread: Some(thread),
                seen,
            },
        )
    }

    /// Stops the thread; the receiver goes away with it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn name_of(request: &Request) -> &'static str {
    match request {
        Request::Ping => "ping",
        Request::ShutdownVmm => "shutdown-vmm",
        Request::Create(_) => "create",
        Request::Boot => "boot",
        Request::Shutdown => "shutdown",
        Request::Reboot => "reboot",
        Request::Pause => "pause",
        Request::Resume => "resume",
        Request::Delete => "delete",
        Request::Info => "info",
        Request::Counters => "counters",
        Request::AddDisk(_) => "add-disk",
        Request::AddNet(_) => "add-net",
        Request::AddPmem(_) => "add-pmem",
        Request::AddFs(_) => "add-fs",
        Request::AddVsock(_) => "add-vsock",
        Request::RemoveDevice(_) => "remove-device",
        Request::PowerButton => "power-button",
        Request::Nmi => "nmi",
        Request::ResizeDisk(..) => "resize-disk",
        Request::Coredump(_) => "coredump",
        Request::Resize(_) => "resize",
        Request::ResizeZone(..) => "resize-zone",
        Request::Snapshot(_) => "snapshot",
        Request::Restore(_) => "restore",
        Request::SendMigration(_) => "send-migration",
        Request::ReceiveMigration(_) => "receive-migration",
    }
}

fn handle(vm: &mut Option<(VmConfig, State)>, request: Request) -> Result<Reply, RequestError> {
    let action = match &request {
        Request::Ping => return Ok(Reply::Json(json!({"version": "test", "pid": 1}))),
        Request::ShutdownVmm => return Ok(Reply::Done),
        Request::Delete => {
            *vm = None;
            return Ok(Reply::Done);
        }
        Request::Create(config) => {
            if let Some((_, state)) = vm {
                return Err(RequestError::new(
                    ErrorKind::WrongState,
                    format!("vm.create: a VM already exists (state {state:?})"),
                ));
            }
            if config.payload.kernel.is_none() {
                return Err(RequestError {
                    kind: ErrorKind::BadRequest,
                    messages: vec![
                        "vm.create: invalid VM configuration".into(),
                        "payload.kernel: required".into(),
                    ],
                });
            }
            *vm = Some(((**config).clone(), State::Created));
            return Ok(Reply::Done);
        }
        Request::Boot => "vm.boot",
        Request::Shutdown => "vm.shutdown",
        Request::Reboot => "vm.reboot",
        Request::Pause => "vm.pause",
        Request::Resume => "vm.resume",
        Request::Info => "vm.info",
        Request::Counters => "vm.counters",
        Request::AddDisk(_) => "vm.add-disk",
        Request::AddNet(_) => "vm.add-net",
        Request::AddPmem(_) => "vm.add-pmem",
        Request::AddFs(_) => "vm.add-fs",
        Request::AddVsock(_) => "vm.add-vsock",
        Request::RemoveDevice(_) => "vm.remove-device",
        Request::PowerButton => "vm.power-button",
        Request::Nmi => "vm.nmi",
        Request::ResizeDisk(..) => "vm.resize-disk",
        Request::Coredump(_) => "vm.coredump",
        Request::Resize(_) => "vm.resize",
        Request::ResizeZone(..) => "vm.resize-zone",
        Request::Snapshot(_) => "vm.snapshot",
        Request::Restore(_) | Request::ReceiveMigration(_) => return Ok(Reply::Done),
        Request::SendMigration(_) => "vm.send-migration",
    };
    let Some((config, state)) = vm else {
        return Err(RequestError::new(
            ErrorKind::NotFound,
            format!("{action}: no VM has been created; create one with vm.create first"),
        ));
    };
    let (allowed, next): (&[State], State) = match request {
        Request::Boot => (&[State::Created, State::Shutdown], State::Running),
        Request::Shutdown => (&[State::Running, State::Paused], State::Shutdown),
        Request::Reboot => (&[State::Running, State::Paused], State::Running),
        Request::Pause => (&[State::Running], State::Paused),
        Request::Resume => (&[State::Paused], State::Running),
        Request::Info => {
            return Ok(Reply::Json(
                json!({"config": config, "state": format!("{state:?}")}),
            ))
        }
        Request::AddDisk(disk) => {
            let id = disk.id.clone().unwrap_or_else(|| "_disk0".into());
            return Ok(Reply::Json(json!({"id": id, "bdf": "0000:00:01.0"})));
        }
        Request::AddNet(net) => {
            let id = net.id.clone().unwrap_or_else(|| "_net0".into());
            return Ok(Reply::Json(json!({"id": id, "bdf": "0000:00:01.0"})));
        }
        Request::AddFs(fs) => {
            let id = fs.id.clone().unwrap_or_else(|| "_fs0".into());
            return Ok(Reply::Json(json!({"id": id, "bdf": "0000:00:01.0"})));
        }
        Request::AddVsock(vsock) => {
            let id = vsock.id.clone().unwrap_or_else(|| "_vsock0".into());
            return Ok(Reply::Json(json!({"id": id, "bdf": "0000:00:01.0"})));
        }
        Request::AddPmem(pmem) => {
            let id = pmem.id.clone().unwrap_or_else(|| "_pmem0".into());
            return Ok(Reply::Json(json!({"id": id, "bdf": "0000:00:01.0"})));
        }
        Request::RemoveDevice(_) => return Ok(Reply::Done),
        _ => return Ok(Reply::Json(json!({}))),
    };
    if !allowed.contains(state) {
        return Err(RequestError::new(
            ErrorKind::WrongState,
            format!("{action}: the VM is {state:?}"),
        ));
    }
    *state = next;
    Ok(Reply::Done)
}

/// A server on a socket in a temporary directory, with a fake VMM behind it.
pub struct Harness {
    pub server: ApiServer,
    pub vmm: FakeVmm,
    pub bound: BoundSocket,
    pub socket: PathBuf,
    pub dir: TempDir,
}

impl Harness {
    pub fn start() -> Harness {
        Harness::start_with(ServerOptions::default(), Duration::ZERO)
    }

    pub fn start_with(options: ServerOptions, vmm_delay: Duration) -> Harness {
        let dir = TempDir::new("server");
        let socket = dir.join("api.sock");
        let bound = api::socket::bind(&ApiSocketConfig::Path(socket.clone())).unwrap();
        let (sender, vmm) = FakeVmm::start(vmm_delay);
        let server =
            api::server::start_with(bound.try_clone_listener().unwrap(), sender, options).unwrap();
        Harness {
            server,
            vmm,
            bound,
            socket,
            dir,
        }
    }

    /// `method /api/v1/<endpoint>` with the client.
    pub fn call(&self, method: &str, endpoint: &str, body: Option<&str>) -> api::ClientResponse {
        api::client::request_with_timeout(
            &self.socket,
            method,
            &format!("/api/v1/{endpoint}"),
            body,
            Some(Duration::from_secs(20)),
        )
        .unwrap()
    }

    /// Sends raw bytes on a new connection, closes the sending side, and returns everything
    /// the server answered.
    pub fn raw(&self, bytes: &[u8]) -> String {
        raw_exchange(&self.socket, bytes)
    }

    pub fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    }
}

/// Sends `bytes`, shuts down writing, and reads the answer until the server closes.
pub fn raw_exchange(socket: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may close before taking everything (an early answer): keep going.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    read_all(&mut stream)
}

/// Everything readable until end of stream, as text.
pub fn read_all(stream: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response (head and Content-Length body) from a kept-alive connection.
pub fn read_one_response(stream: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed early"
        );
        out.push(byte[0]);
    }
    let head = String::from_utf8(out.clone()).unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    out.extend_from_slice(&body);
    String::from_utf8(out).unwrap()
}

/// The status code of a raw response.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// The body of a raw response.
pub fn body_of(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}

/// The value of header `name` in a raw response.
pub fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split_once("\r\n\r\n").map(|(h, _)| h)?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The error messages of an error body.
pub fn messages(body: &str) -> Vec<String> {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a message list ({e}): {body:?}"))
}

pub const VM_JSON: &str =
    r#"{"payload": {"kernel": "/boot/vmlinux"}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1}}"#;
