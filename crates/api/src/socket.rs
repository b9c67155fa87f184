//! The API's listening socket: created at a path, or adopted from an inherited descriptor.
//!
//! At a path, a socket file left behind by a process that died is replaced, but a socket that a
//! live process still answers on is left alone (the bind fails), and a path holding anything
//! other than a socket is never deleted. An inherited descriptor (`fd=N`) is checked to be a Unix
//! stream socket and put in the listening state if it is not yet; nothing is ever unlinked for
//! it, since whoever created it owns its path.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use config::ApiSocketConfig;
use thiserror::Error;

/// Queue length given to `listen(2)` for an adopted socket that was not yet listening.
const ADOPTED_BACKLOG: libc::c_int = 128;

/// Why the API socket could not be set up. Each message names the socket and says what to do.
#[derive(Debug, Error)]
pub enum SocketError {
    /// A live process answers on the socket at the path.
    #[error(
        "API socket {} is in use by a running process; stop it or choose another path",
        .0.display()
    )]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error(
        "API socket {}: the path exists and is not a socket; move that file away or choose \
         another path",
        .0.display()
    )]
    NotASocket(PathBuf),
    /// The path could not be examined.
    #[error("API socket {}: cannot examine the path: {source}", path.display())]
    Inspect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Connecting to an existing socket failed in a way that does not show it is stale.
    #[error(
        "API socket {}: cannot tell whether the existing socket is in use: {source}; remove it \
         if no process serves it",
        path.display()
    )]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A stale socket could not be removed.
    #[error("API socket {}: cannot remove the stale socket: {source}", path.display())]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Creating the socket failed.
    #[error("API socket {}: cannot create the socket: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The inherited descriptor cannot serve as the API socket.
    #[error("API socket fd={fd}: {reason}")]
    BadFd {
        /// The descriptor number.
        fd: RawFd,
        /// What is wrong with it, and what is expected.
        reason: String,
    },
}

/// The listening API socket, with the path Palisade created it at (none for an adopted
/// descriptor).
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    path: Option<PathBuf>,
    /// Device and inode of the socket file created, so that [`BoundSocket::remove_file`] only
    /// ever removes that very file.
    file_id: Option<(u64, u64)>,
}

impl BoundSocket {
    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// A second handle on the listening socket, for [`crate::server::start`].
    pub fn try_clone_listener(&self) -> io::Result<UnixListener> {
        self.listener.try_clone()
    }

    /// The path of the socket file Palisade created; `None` for an adopted descriptor.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A short description for logs: the path, or the descriptor and its address.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => {
                use std::os::fd::AsRawFd;
                let fd = self.listener.as_raw_fd();
                match self.listener.local_addr() {
                    Ok(addr) => match addr.as_pathname() {
                        Some(p) => format!("fd={fd} ({})", p.display()),
                        None => format!("fd={fd}"),
                    },
                    Err(_) => format!("fd={fd}"),
                }
            }
        }
    }

    /// Removes the socket file Palisade created, at exit. Does nothing for an adopted
    /// descriptor, when the file is already gone, or when the path now holds another file
    /// (another process may have taken it over).
    pub fn remove_file(&self) -> io::Result<()> {
        let (Some(path), Some(id)) = (&self.path, self.file_id) else {
            return Ok(());
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() && (meta.dev(), meta.ino()) == id => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Creates or adopts the API socket described by `config`.
///
/// For [`ApiSocketConfig::Fd`], the descriptor's ownership passes to the returned
/// [`BoundSocket`] (it is closed when that is dropped); adopt each descriptor once.
pub fn bind(config: &ApiSocketConfig) -> Result<BoundSocket, SocketError> {
    match config {
        ApiSocketConfig::Path(path) => bind_path(path),
        ApiSocketConfig::Fd(fd) => adopt_fd(*fd),
    }
}

fn bind_path(path: &Path) -> Result<BoundSocket, SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // Nobody listens: a socket file left by a process that is gone.
                log::info!("removing stale API socket {}", path.display());
                std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(SocketError::Probe {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| match source.kind() {
        // Another process bound the path between our check and our bind.
        io::ErrorKind::AddrInUse => SocketError::InUse(path.to_path_buf()),
        _ => SocketError::Bind {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let file_id = std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()));
    Ok(BoundSocket {
        listener,
        path: Some(path.to_path_buf()),
        file_id,
    })
}

/// Reads an integer socket option of `fd`.
fn socket_option(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds the size of `value`; the
    // kernel writes at most that many bytes. An invalid `fd` only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn adopt_fd(fd: RawFd) -> Result<BoundSocket, SocketError> {
    let bad = |reason: String| SocketError::BadFd { fd, reason };
    if fd < 0 {
        return Err(bad("not a file descriptor number".into()));
    }
    // SAFETY: `stat` is plain data that fstat fills in; an invalid `fd` only makes it fail.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid, writable `struct stat`.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        let e = io::Error::last_os_error();
        return Err(bad(if e.raw_os_error() == Some(libc::EBADF) {
            "not an open file descriptor; pass the socket to palisade as that descriptor".into()
        } else {
            format!("cannot examine it: {e}")
        }));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad(
            "not a socket; pass a listening Unix stream socket".into()
        ));
    }
    let option = |name, what: &str| {
        socket_option(fd, name).map_err(|e| bad(format!("cannot read its {what}: {e}")))
    };
    if option(libc::SO_DOMAIN, "address family")? != libc::AF_UNIX {
        return Err(bad(
            "not a Unix socket; pass a listening Unix stream socket".into(),
        ));
    }
    if option(libc::SO_TYPE, "socket type")? != libc::SOCK_STREAM {
        return Err(bad(
            "not a stream socket; pass a listening Unix stream socket".into(),
        ));
    }
    if option(libc::SO_ACCEPTCONN, "listening state")? == 0 {
        // SAFETY: listen(2) on a descriptor checked to be a Unix stream socket; it touches no
        // memory of ours.
        if unsafe { libc::listen(fd, ADOPTED_BACKLOG) } != 0 {
            let e = io::Error::last_os_error();
            return Err(bad(format!(
                "cannot listen on it: {e}; pass a bound Unix stream socket"
            )));
        }
    }
    // SAFETY: `fd` is an open Unix stream socket in the listening state (checked above), and
    // the caller hands its ownership over (documented on `bind`): nothing else closes it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // Keep the descriptor from leaking into any program Palisade might start. (Whether it is
    // blocking does not matter: the server makes it non-blocking itself.)
    set_cloexec(&listener).map_err(|e| bad(format!("cannot set close-on-exec: {e}")))?;
    Ok(BoundSocket {
        listener,
        path: None,
        file_id: None,
    })
}

fn set_cloexec(listener: &UnixListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    // SAFETY: fcntl(F_GETFD/F_SETFD) on a descriptor we own; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
