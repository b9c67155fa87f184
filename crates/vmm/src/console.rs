//! The host side of a guest console: where its output goes and where its input comes from,
//! per `off|null|tty|file=PATH|pty`.
//!
//! Everything is opened when the VM is created, before any Landlock confinement, and kept
//! open for the life of the VM: a reboot reuses the same descriptors instead of re-opening
//! paths the sandbox may no longer allow.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use config::{ConsoleConfig, ConsoleOutputMode};

/// Errors opening a console's host side.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The process is confined and the file is outside its ruleset.
    #[error("console file {0}")]
    Denied(String),
    /// The output file could not be opened.
    #[error("cannot open console file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `file` mode without a file.
    #[error("console mode File needs a file path")]
    MissingFile,
    /// A pseudo-terminal could not be created.
    #[error("cannot create a pseudo-terminal: {0}")]
    Pty(io::Error),
    /// A serial socket that was not bound when Palisade started.
    #[error(
        "serial socket {0}: give it on the command line (--serial socket=PATH), where Palisade \
         binds it when it starts: none of its threads may create a socket once running"
    )]
    SocketNotBound(PathBuf),
}

/// Where a console's input comes from.
pub enum ConsoleInput {
    /// Palisade's standard input.
    Stdin,
    /// The master side of a pseudo-terminal.
    Pty(File),
    /// The client of the serial socket (or its listener, while none is connected).
    Socket(std::sync::Arc<crate::serial_socket::SerialSocket>),
}

impl ConsoleInput {
    /// The descriptor to poll and read.
    pub fn fd(&self) -> RawFd {
        match self {
            ConsoleInput::Stdin => libc::STDIN_FILENO,
            ConsoleInput::Pty(f) => f.as_raw_fd(),
            ConsoleInput::Socket(s) => s.fd(),
        }
    }

    /// Reads what is available (the descriptor is polled first, so this does not block long).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if let ConsoleInput::Socket(s) = self {
            return s.read(buf);
        }
        // SAFETY: `buf` is valid for `buf.len()` bytes and the descriptor is open for the
        // lifetime of `self`.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// A console's opened host side.
pub struct ConsoleEndpoint {
    /// Where guest output goes.
    pub output: Box<dyn Write + Send>,
    /// Where guest input comes from, if anywhere.
    pub input: Option<ConsoleInput>,
    /// The pseudo-terminal's path in `pty` mode.
    pub pty_path: Option<PathBuf>,
    /// The pseudo-terminal's slave side, held open so the master never reports a hang-up
    /// while no client is attached.
    pub pty_slave: Option<File>,
}

/// Writes straight to standard output without Rust's line buffering, so a guest's prompt
/// appears before its newline.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes; fd 1 outlives the process's
        // use of it.
        let n = unsafe { libc::write(libc::STDOUT_FILENO, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the host side of a console; `None` for `off`.
pub fn open(cfg: &ConsoleConfig) -> Result<Option<ConsoleEndpoint>, ConsoleError> {
    let endpoint = match cfg.mode {
        ConsoleOutputMode::Off => return Ok(None),
        ConsoleOutputMode::Null => ConsoleEndpoint {
            output: Box::new(io::sink()),
            input: None,
            pty_path: None,
            pty_slave: None,
        },
        ConsoleOutputMode::Tty => ConsoleEndpoint {
            output: Box::new(Stdout),
            input: Some(ConsoleInput::Stdin),
            pty_path: None,
            pty_slave: None,
        },
        ConsoleOutputMode::File => {
            let path = cfg.file.clone().ok_or(ConsoleError::MissingFile)?;
            let file = crate::files::open(
                &path,
                OpenOptions::new().write(true).create(true).truncate(true),
                0,
                crate::files::Kind::Regular,
            )
            .map_err(|source| {
                let denied = source.kind() == io::ErrorKind::PermissionDenied;
                match sandbox::explain_denial(&path, sandbox::Access::Write).filter(|_| denied) {
                    Some(why) => ConsoleError::Denied(why),
                    None => ConsoleError::File {
                        path: path.clone(),
                        source,
                    },
                }
            })?;
            ConsoleEndpoint {
                output: Box::new(file),
                input: None,
                pty_path: None,
                pty_slave: None,
            }
        }
        ConsoleOutputMode::Pty => {
            let (master, path) = open_pty().map_err(ConsoleError::Pty)?;
            let reader = master.try_clone().map_err(ConsoleError::Pty)?;
            let slave = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&path)
                .map_err(ConsoleError::Pty)?;
            ConsoleEndpoint {
                output: Box::new(master),
                input: Some(ConsoleInput::Pty(reader)),
                pty_path: Some(path),
                pty_slave: Some(slave),
            }
        }
        ConsoleOutputMode::Socket => {
            let path = cfg.socket.clone().unwrap_or_default();
            let listener = crate::serial_socket::take(&path)
                .ok_or_else(|| ConsoleError::SocketNotBound(path.clone()))?;
            let socket =
                std::sync::Arc::new(crate::serial_socket::SerialSocket::new(listener, path));
            ConsoleEndpoint {
                output: Box::new(socket.output()),
                input: Some(ConsoleInput::Socket(socket)),
                pty_path: None,
                pty_slave: None,
            }
        }
    };
    Ok(Some(endpoint))
}

/// Creates a pseudo-terminal in raw mode; returns its master and the slave's path.
fn open_pty() -> io::Result<(File, PathBuf)> {
    // SAFETY: posix_openpt has no memory-safety preconditions; the result is checked.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
    let master = unsafe { File::from_raw_fd(fd) };
    // SAFETY: `fd` is a valid pty master.
    if unsafe { libc::grantpt(fd) } < 0 || unsafe { libc::unlockpt(fd) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `name` is writable for its full length, which is passed.
    let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    let path = PathBuf::from(path.to_string_lossy().into_owned());
    // Raw mode on the pty itself, so bytes pass through untouched in both directions.
    set_raw(fd)?;
    // Never let a console nobody reads stall the vCPU writing to it: when the pty's buffer is
    // full, output is dropped instead.
    // SAFETY: F_GETFL/F_SETFL on a valid descriptor; results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((master, path))
}

fn get_termios(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it and its result is checked.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios to write to.
    if unsafe { libc::tcgetattr(fd, &mut t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

fn set_termios(fd: RawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: `t` is a valid termios read earlier from a terminal.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_raw(fd: RawFd) -> io::Result<()> {
    let mut t = get_termios(fd)?;
    // SAFETY: `t` is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    set_termios(fd, &t)
}

// The terminal settings to restore at exit, when Palisade switched stdin to raw mode.
static SAVED_STDIN: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts standard input in raw mode if it is a terminal, so every key reaches the guest;
/// [`restore_terminal`] undoes it.
pub fn stdin_raw_mode() -> io::Result<()> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return Ok(());
    }
    let mut saved = SAVED_STDIN.lock().unwrap_or_else(|e| e.into_inner());
    if saved.is_none() {
        *saved = Some(get_termios(libc::STDIN_FILENO)?);
    }
    set_raw(libc::STDIN_FILENO)
}

/// Restores standard input's terminal settings if Palisade changed them.
pub fn restore_terminal() {
    let saved = SAVED_STDIN.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = saved {
        if let Err(e) = set_termios(libc::STDIN_FILENO, &t) {
            log::warn!("cannot restore the terminal: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn off_opens_nothing_and_an_unbound_socket_is_refused() {
        assert!(open(&ConsoleConfig::with_mode(ConsoleOutputMode::Off))
            .unwrap()
            .is_none());
        let socket = ConsoleConfig {
            socket: Some("/nonexistent/serial.sock".into()),
            ..ConsoleConfig::with_mode(ConsoleOutputMode::Socket)
        };
        assert!(matches!(
            open(&socket),
            Err(ConsoleError::SocketNotBound(_))
        ));
    }

    #[test]
    fn file_mode_truncates_and_writes() {
        let dir = std::env::temp_dir().join(format!("palisade-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.log");
        std::fs::write(&path, "old content").unwrap();
        let mut cfg = ConsoleConfig::with_mode(ConsoleOutputMode::File);
        cfg.file = Some(path.clone());
        let mut ep = open(&cfg).unwrap().unwrap();
        ep.output.write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        cfg.file = Some(dir.join("missing-dir/out.log"));
        let err = open(&cfg).err().unwrap().to_string();
        assert!(err.contains("missing-dir/out.log"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pty_mode_passes_bytes_both_ways() {
        let mut cfg = ConsoleConfig::with_mode(ConsoleOutputMode::Pty);
        cfg.file = None;
        let mut ep = open(&cfg).unwrap().unwrap();
        let path = ep.pty_path.clone().unwrap();
        let mut slave = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        ep.output.write_all(b"to-guest-reader\n").unwrap();
        let mut buf = [0u8; 16];
        slave.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"to-guest-reader\n");
        slave.write_all(b"key").unwrap();
        let input = ep.input.unwrap();
        let mut got = [0u8; 3];
        let n = input.read(&mut got).unwrap();
        assert_eq!(&got[..n], &b"key"[..n]);
        assert!(n > 0);
    }
}
