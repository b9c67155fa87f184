//! The serial port on a Unix socket (`--serial socket=PATH`): one client at a time gets the
//! guest's output and sends it input; with none connected, output is dropped.
//!
//! No thread of a running Palisade may create a socket (every filter forbids `socket`,
//! `bind` and `listen`), so the socket is bound when Palisade starts, from the command line,
//! and handed to the VM when it is created; a VM asking for one through the API is refused
//! with the reason. The listener and the client are non-blocking: a client that does not
//! read loses output rather than stalling the vCPU that writes it.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

static BOUND: Mutex<Option<HashMap<PathBuf, UnixListener>>> = Mutex::new(None);

/// Binds the socket at `path` now (before the VMM's threads are filtered), for the VM to
/// take; a path that exists is refused, never replaced.
pub fn bind_early(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists: remove it, or give another path", path.display()),
        ));
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    BOUND
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(path.to_owned(), listener);
    Ok(())
}

/// The socket bound at `path` by [`bind_early`], if it was.
pub fn take(path: &Path) -> Option<UnixListener> {
    BOUND
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()?
        .remove(path)
}

/// The serial port's socket: the listener and the client of the moment.
pub struct SerialSocket {
    listener: UnixListener,
    path: PathBuf,
    client: Arc<Mutex<Option<UnixStream>>>,
}

impl SerialSocket {
    /// Serves `listener`, bound at `path`.
    pub fn new(listener: UnixListener, path: PathBuf) -> Self {
        SerialSocket {
            listener,
            path,
            client: Arc::default(),
        }
    }

    /// Where the guest's output goes: to the client, if one is connected.
    pub fn output(&self) -> SocketOutput {
        SocketOutput(self.client.clone())
    }

    /// The descriptor to watch: the client's, or the listener's while there is none.
    pub fn fd(&self) -> RawFd {
        match &*self.client.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(c) => c.as_raw_fd(),
            None => self.listener.as_raw_fd(),
        }
    }

    /// Whether a client is connected.
    pub fn connected(&self) -> bool {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Takes a waiting client (the listener was readable); true if one came.
    pub fn accept(&self) -> bool {
        match self.listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    log::warn!("serial socket: {e}");
                    return false;
                }
                log::info!("serial socket {}: a client connected", self.path.display());
                *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
                true
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    log::warn!("serial socket: {e}");
                }
                false
            }
        }
    }

    /// Reads what the client sent; `Ok(0)` when it has gone (and is forgotten).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut guard = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let Some(client) = guard.as_mut() else {
            return Ok(0);
        };
        match raw_read(client.as_raw_fd(), buf) {
            Ok(0) => {
                log::info!("serial socket {}: the client left", self.path.display());
                *guard = None;
                Ok(0)
            }
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                *guard = None;
                Err(e)
            }
            other => other,
        }
    }
}

impl Drop for SerialSocket {
    fn drop(&mut self) {
        // Best effort: under Landlock the directory may not let it go.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::debug!("serial socket {}: not removed: {e}", self.path.display());
        }
    }
}

/// The guest's output, written to the connected client (or dropped).
pub struct SocketOutput(Arc<Mutex<Option<UnixStream>>>);

impl Write for SocketOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = guard.as_mut() {
            match raw_write(client.as_raw_fd(), buf) {
                Ok(n) => return Ok(n),
                // A client that does not read loses what it did not take.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => *guard = None,
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// Plain read(2) and write(2): the socket's own calls (recv, send) are not in the filters of
// the threads that use it (the VMM thread reads, a vCPU writes).
fn raw_read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; `fd` is the client's open socket.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn raw_write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length; `fd` is the client's open socket.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
