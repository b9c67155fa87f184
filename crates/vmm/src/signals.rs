//! Termination signals (SIGTERM, SIGINT, SIGHUP, SIGQUIT) and the signals Palisade ignores
//! (SIGUSR1, SIGUSR2) as events of the VMM's loop.
//!
//! They are blocked in every thread and read from a signalfd, so that the loop shuts the VMM
//! down in order (terminal restored, API socket handed to the janitor) instead of a handler
//! interrupting whatever a thread was doing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// SIGTERM and SIGINT, delivered through a signalfd instead of a handler so they reach the
/// loop like any other event. They must be blocked in every thread: call
/// [`block_termination_signals`] before starting any.
pub struct SignalFd {
    fd: OwnedFd,
}

/// Signals that shut the VMM down in order: SIGTERM and SIGINT, as in Cloud Hypervisor, and
/// SIGHUP (the terminal went away) and SIGQUIT, which would otherwise end it at once.
pub const TERMINATION: [libc::c_int; 4] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Signals Palisade gives no meaning, which by default would kill it without a word: they
/// are logged and ignored.
pub const IGNORED: [libc::c_int; 2] = [libc::SIGUSR1, libc::SIGUSR2];

/// Whether `signo` asks the VMM to shut down (else it is one of [`IGNORED`]).
pub fn terminates(signo: i32) -> bool {
    TERMINATION.contains(&signo)
}

/// A signal's name, for the log.
pub fn name(signo: i32) -> &'static str {
    match signo {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "a signal",
    }
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for signo in TERMINATION.iter().chain(&IGNORED) {
            libc::sigaddset(&mut set, *signo);
        }
    }
    set
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts afterwards,
/// so that they are delivered to the VMM's signalfd.
pub fn block_termination_signals() -> std::io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

impl SignalFd {
    /// A signalfd for SIGTERM and SIGINT.
    pub fn termination() -> std::io::Result<Self> {
        let set = termination_set();
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The number of a pending signal, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is writable for `size` bytes; the descriptor is ours.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n as usize == size).then_some(info.ssi_signo as i32)
    }
}
