//! The connector: the one thread of Palisade that may connect to a Unix socket, or bind
//! one (a vsock device's).
//!
//! Devices with an outside backend (virtio-fs through vhost-user) reach it on a named Unix
//! socket, which Landlock does not mediate on the kernels Palisade runs on. So no thread
//! connects but this one, started on first use and confined at once: no file rights, no
//! capability, a filter that allows Unix stream sockets, `connect`, their timeouts and
//! their messages, and nothing that opens, binds, listens, starts threads or executes.
//! Before a job is handed to it, the path is checked against the VM's Landlock policy
//! ([`sandbox::may_connect`]): once confined, only sockets under the rules are reached.
//!
//! The thread is started at start-up ([`start_early`]), before the VMM thread filters itself.
//! A job connects, then runs the caller's first exchange on the new socket (a vhost-user
//! handshake) on this thread, and hands back the result; later exchanges on that socket
//! come back here too ([`carry`]), since every other thread inherits the VMM thread's
//! filter, which messages no socket but the janitor's. Connecting never blocks (a backend
//! whose backlog is full is an error at once), every read and write on the socket has a
//! timeout, and the caller waits a bounded time for the job: a backend that never answers
//! is an error on one line, never a hung VMM.

use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long a backend may take to answer one message.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the caller waits for a whole job (connection and first exchange).
const JOB_TIMEOUT: Duration = Duration::from_secs(20);

type Job = Box<dyn FnOnce() + Send>;

/// Why a connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket is outside the Landlock rules of the confined VMM.
    #[error("{0}")]
    Denied(String),
    /// Connecting or the first exchange failed.
    #[error("{0}")]
    Failed(String),
}

struct Connector {
    jobs: Mutex<mpsc::Sender<Job>>,
}

static CONNECTOR: OnceLock<Result<Connector, String>> = OnceLock::new();

/// Starts the connector thread now, before the thread calling it installs its own filter
/// (filters are inherited, so a thread started by a filtered VMM thread could never make a
/// socket). Called at start by a VMM that may need it: one with an API, or a VM with a
/// vhost-user device.
pub fn start_early() -> Result<(), String> {
    CONNECTOR
        .get_or_init(start)
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

fn start() -> Result<Connector, String> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("connector".into())
        .spawn(move || {
            // Its record lives as long as the thread: the VMM's confinement skips it (it has
            // no file rights to lose) and the report lists it.
            let _registration = match crate::thread_policy::lock_down_connector() {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for job in rx {
                job();
            }
        })
        .map_err(|e| format!("cannot start the connector thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the connector thread died before it was confined".to_string())??;
    Ok(Connector {
        jobs: Mutex::new(tx),
    })
}

/// Connects to the Unix socket at `path` on the connector thread and runs `then` there on
/// the new socket (whose reads and writes time out after [`REPLY_TIMEOUT`]); `what` names
/// the item in errors (`fs _fs0`).
pub fn connect_and<R: Send + 'static>(
    path: &Path,
    what: &str,
    then: impl FnOnce(UnixStream) -> Result<R, String> + Send + 'static,
) -> Result<R, ConnectError> {
    let connector = CONNECTOR
        .get_or_init(start)
        .as_ref()
        .map_err(|e| ConnectError::Failed(e.clone()))?;
    // Checked here, on the caller's thread, which may resolve paths (this one may not).
    sandbox::may_connect(path).map_err(|e| ConnectError::Denied(format!("{what}: {e}")))?;
    let (tx, rx) = mpsc::channel();
    let owned: PathBuf = path.to_owned();
    let label = what.to_string();
    let job: Job = Box::new(move || {
        let result = connect(&owned)
            .map_err(|e| ConnectError::Failed(format!("{label}: {}: {e}", owned.display())))
            .and_then(|stream| {
                then(stream)
                    .map_err(|e| ConnectError::Failed(format!("{label}: {}: {e}", owned.display())))
            });
        let _ = tx.send(result);
    });
    connector
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| ConnectError::Failed("the connector thread is gone".to_string()))?;
    match rx.recv_timeout(JOB_TIMEOUT) {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Failed(format!(
            "{what}: {}: the backend did not answer within {} s",
            path.display(),
            JOB_TIMEOUT.as_secs()
        ))),
    }
}

/// Runs `job` on the connector thread (a device's exchange with its backend, whose socket
/// only this thread may message); an error if the thread is gone.
pub fn carry(job: Box<dyn FnOnce() + Send>) -> Result<(), String> {
    let connector = CONNECTOR
        .get_or_init(start)
        .as_ref()
        .map_err(Clone::clone)?;
    connector
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| "the connector thread is gone".to_string())
}

/// Binds a listening Unix stream socket at `path` on the connector thread (a vsock
/// device's; `what` names it in errors). The path is checked against the VM's policy first
/// ([`sandbox::may_bind`]). A stale socket at `path` (one nobody listens on any more, left
/// by a VMM that is gone) is replaced; a live one, or anything else there, is an error.
pub fn bind(path: &Path, what: &str) -> Result<UnixListener, ConnectError> {
    sandbox::may_bind(path).map_err(|e| ConnectError::Denied(format!("{what}: {e}")))?;
    let failed = |e: String| ConnectError::Failed(format!("{what}: {}: {e}", path.display()));
    for attempt in 0..2 {
        let owned = path.to_owned();
        match run(move || bind_listening(&owned))? {
            Ok(listener) => return Ok(listener),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && attempt == 0 => {
                // Checked and removed on the caller's thread, which may (this one may not).
                use std::os::unix::fs::FileTypeExt;
                let meta = std::fs::symlink_metadata(path).map_err(|e| failed(e.to_string()))?;
                if !meta.file_type().is_socket() {
                    return Err(failed("something other than a socket is there".into()));
                }
                let owned = path.to_owned();
                let live = run(move || connect(&owned).is_ok())?;
                if live {
                    return Err(failed(
                        "another program listens on it (a VM running with this socket?)".into(),
                    ));
                }
                std::fs::remove_file(path).map_err(|e| {
                    failed(format!(
                        "a stale socket is there and cannot be removed: {e}"
                    ))
                })?;
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    Err(failed("the socket keeps coming back".into()))
}

/// Runs `job` on the connector thread and waits (a bounded time) for its result.
fn run<R: Send + 'static>(job: impl FnOnce() -> R + Send + 'static) -> Result<R, ConnectError> {
    let (tx, rx) = mpsc::channel();
    carry(Box::new(move || {
        let _ = tx.send(job());
    }))
    .map_err(ConnectError::Failed)?;
    rx.recv_timeout(JOB_TIMEOUT)
        .map_err(|_| ConnectError::Failed("the connector thread did not answer".into()))
}

/// The address of the Unix socket at `path`.
fn socket_address(path: &Path) -> std::io::Result<libc::sockaddr_un> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::other(format!(
            "the path is longer than a Unix socket address holds ({} bytes)",
            addr.sun_path.len() - 1
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(addr)
}

/// A new Unix stream socket (close-on-exec, non-blocking).
fn stream_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::OwnedFd;
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket() takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking socket bound at `path` and listening.
fn bind_listening(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::fd::AsRawFd;
    let addr = socket_address(path)?;
    let fd = stream_socket()?;
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen() takes no pointers; `fd` is a bound stream socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixListener::from(fd))
}

/// Connects to the Unix socket at `path` on the connector thread, then hands the result to
/// `done` there (a vsock device's guest connection to a host socket; nothing is exchanged
/// on it here). The path is built by the device from its own socket's, which the policy
/// already names, so it is not checked again.
pub fn dial(path: PathBuf, done: Box<dyn FnOnce(std::io::Result<UnixStream>) + Send>) {
    let job_done = std::sync::Arc::new(Mutex::new(Some(done)));
    let fallback = job_done.clone();
    let sent = carry(Box::new(move || {
        let result = connect(&path);
        if let Some(done) = job_done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            done(result);
        }
    }));
    if let Err(e) = sent {
        if let Some(done) = fallback.lock().unwrap_or_else(|e| e.into_inner()).take() {
            done(Err(std::io::Error::other(e)));
        }
    }
}

/// A connected stream socket to `path`, blocking, with read and write timeouts.
fn connect(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    let addr = socket_address(path)?;
    let stream = UnixStream::from(stream_socket()?);
    let fd = stream.as_raw_fd();
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
    let r = unsafe { libc::connect(fd, (&raw const addr).cast(), len) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) => std::io::Error::other(
                "the backend is not accepting connections (its backlog is full)",
            ),
            Some(libc::ENOENT) => std::io::Error::other(
                "no socket there: is the backend (virtiofsd --socket-path) running?",
            ),
            Some(libc::ECONNREFUSED) => std::io::Error::other(
                "connection refused: nothing listens on it (the backend exited?)",
            ),
            _ => e,
        });
    }
    // Blocking from now on (FIONBIO is an ioctl every filter allows), with timeouts.
    let mut off: libc::c_int = 0;
    // SAFETY: FIONBIO reads an int that outlives the call.
    if unsafe { libc::ioctl(fd, libc::FIONBIO, &mut off) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_runs_the_first_exchange_and_reports_failures_on_one_line() {
        let dir = std::env::temp_dir().join(format!("connector-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            std::io::Write::write_all(&mut s, b"hi").unwrap();
        });
        let got = connect_and(&path, "test", |mut s| {
            let mut buf = [0u8; 2];
            std::io::Read::read_exact(&mut s, &mut buf).map_err(|e| e.to_string())?;
            Ok(buf)
        })
        .unwrap();
        assert_eq!(&got, b"hi");
        server.join().unwrap();
        let e = connect_and(&dir.join("none.sock"), "fs f0", |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("fs f0: ") && e.contains("no socket there"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
