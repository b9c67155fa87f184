//! Creating and adopting the API socket.

mod common;

use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use api::socket::{bind, SocketError};
use common::*;
use config::ApiSocketConfig;

fn path_config(path: &Path) -> ApiSocketConfig {
    ApiSocketConfig::Path(path.to_path_buf())
}

/// Serves `bound` with a fake VMM and checks a ping through `socket`.
fn ping_through(bound: &api::BoundSocket, socket: &Path) {
    let (sender, _vmm) = FakeVmm::start(Duration::ZERO);
    let mut server = api::server::start(bound.try_clone_listener().unwrap(), sender).unwrap();
    let r = api::client::request(socket, "GET", "/api/v1/vmm.ping", None).unwrap();
    assert_eq!(r.status, 200);
    server.stop();
}

#[test]
fn a_new_path_is_bound_and_removed_at_exit() {
    let dir = TempDir::new("new");
    let path = dir.join("api.sock");
    let bound = bind(&path_config(&path)).unwrap();
    assert_eq!(bound.path(), Some(path.as_path()));
    assert_eq!(bound.describe(), path.display().to_string());
    ping_through(&bound, &path);
    bound.remove_file().unwrap();
    assert!(!path.exists());
    // Removing again is harmless.
    bound.remove_file().unwrap();
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.join("api.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(UnixStream::connect(&path).is_err());
    let bound = bind(&path_config(&path)).unwrap();
    ping_through(&bound, &path);
    bound.remove_file().unwrap();
}

#[test]
fn a_socket_in_use_is_refused_and_left_alone() {
    let dir = TempDir::new("live");
    let path = dir.join("api.sock");
    let live = UnixListener::bind(&path).unwrap();
    let e = bind(&path_config(&path)).unwrap_err();
    assert!(matches!(e, SocketError::InUse(_)));
    let message = e.to_string();
    assert!(
        message.starts_with(&format!(
            "API socket {} is in use by a running process",
            path.display()
        )),
        "{message}"
    );
    assert!(!message.contains('\n'));
    // The live socket still works.
    let _client = UnixStream::connect(&path).unwrap();
    live.accept().unwrap();

    // A socket served by another Palisade server, likewise.
    let other = dir.join("served.sock");
    let bound = bind(&path_config(&other)).unwrap();
    let (sender, _vmm) = FakeVmm::start(Duration::ZERO);
    let _server = api::server::start(bound.try_clone_listener().unwrap(), sender).unwrap();
    assert!(matches!(
        bind(&path_config(&other)),
        Err(SocketError::InUse(_))
    ));
    assert_eq!(
        api::client::request(&other, "GET", "/api/v1/vmm.ping", None)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn a_file_that_is_not_a_socket_is_never_deleted() {
    let dir = TempDir::new("regular");
    let file = dir.join("api.sock");
    std::fs::write(&file, "precious").unwrap();
    let e = bind(&path_config(&file)).unwrap_err();
    assert!(matches!(e, SocketError::NotASocket(_)), "{e}");
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    let subdir = dir.join("a-directory");
    std::fs::create_dir(&subdir).unwrap();
    assert!(matches!(
        bind(&path_config(&subdir)),
        Err(SocketError::NotASocket(_))
    ));
    assert!(subdir.is_dir());

    // A symbolic link, even to a stale socket, is not followed or removed.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&stale, &link).unwrap();
    assert!(matches!(
        bind(&path_config(&link)),
        Err(SocketError::NotASocket(_))
    ));
    assert!(link.symlink_metadata().is_ok());
    assert!(stale.exists());
}

#[test]
fn a_missing_directory_is_reported_with_the_path() {
    let dir = TempDir::new("missing");
    let path = dir.join("no/such/dir/api.sock");
    let e = bind(&path_config(&path)).unwrap_err();
    assert!(matches!(e, SocketError::Bind { .. }), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn remove_file_leaves_a_file_that_replaced_the_socket() {
    let dir = TempDir::new("replaced");
    let path = dir.join("api.sock");
    let bound = bind(&path_config(&path)).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "someone else's").unwrap();
    bound.remove_file().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
}

#[test]
fn a_listening_descriptor_is_adopted_and_its_path_kept() {
    let dir = TempDir::new("fd");
    let path = dir.join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let fd = listener.into_raw_fd();
    let bound = bind(&ApiSocketConfig::Fd(fd)).unwrap();
    assert_eq!(bound.path(), None);
    assert_eq!(bound.listener().as_raw_fd(), fd);
    assert_eq!(bound.describe(), format!("fd={fd} ({})", path.display()));
    // Served even though it was handed over non-blocking.
    ping_through(&bound, &path);
    bound.remove_file().unwrap();
    drop(bound);
    assert!(
        path.exists(),
        "an adopted socket's path must never be removed"
    );
}

/// A Unix stream socket bound to `path` but not listening.
fn bound_not_listening(path: &Path) -> RawFd {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `addr` is a valid sockaddr_un whose size is passed along.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    fd
}

#[test]
fn a_bound_descriptor_that_is_not_listening_is_made_to_listen() {
    let dir = TempDir::new("fd-listen");
    let path = dir.join("bound.sock");
    let fd = bound_not_listening(&path);
    assert!(UnixStream::connect(&path).is_err());
    let bound = bind(&ApiSocketConfig::Fd(fd)).unwrap();
    ping_through(&bound, &path);
    drop(bound);
    assert!(path.exists());
}

#[test]
fn descriptors_that_cannot_serve_are_refused_and_kept_open() {
    let dir = TempDir::new("fd-bad");
    let expect = |fd: RawFd, reason: &str| {
        let e = bind(&ApiSocketConfig::Fd(fd)).unwrap_err();
        assert!(matches!(e, SocketError::BadFd { .. }), "{e}");
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("API socket fd={fd}: {reason}")),
            "{message}"
        );
    };

    let file = std::fs::File::create(dir.join("plain")).unwrap();
    expect(file.as_raw_fd(), "not a socket");

    let datagram = UnixDatagram::unbound().unwrap();
    expect(datagram.as_raw_fd(), "not a stream socket");

    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    expect(tcp.as_raw_fd(), "not a Unix socket");

    let (connected, _peer) = UnixStream::pair().unwrap();
    expect(connected.as_raw_fd(), "cannot listen on it");

    expect(1 << 30, "not an open file descriptor");
    expect(-1, "not a file descriptor number");

    // None of them was closed by the refusal.
    for fd in [
        file.as_raw_fd(),
        datagram.as_raw_fd(),
        tcp.as_raw_fd(),
        connected.as_raw_fd(),
    ] {
        // SAFETY: F_GETFD only queries the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0, "fd {fd} was closed");
    }
}
