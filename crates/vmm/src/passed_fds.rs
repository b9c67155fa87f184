//! Descriptors handed to Palisade for its devices — tap file descriptors given on the
//! command line (`--net fd=N`, claimed when Palisade starts) or sent with an API request as
//! `SCM_RIGHTS` ancillary data. A device configuration names them by number, and only a
//! number held here is ever adopted: a number that merely appears in a request body (the
//! VMM's own epoll descriptor, say) is refused, never touched.
//!
//! The registry is process-wide because descriptors are: the API thread that receives them
//! and the VMM thread that adopts them share it.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, OnceLock};

fn registry() -> MutexGuard<'static, HashMap<RawFd, OwnedFd>> {
    static REGISTRY: OnceLock<Mutex<HashMap<RawFd, OwnedFd>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Keeps `fd` for a device to adopt; returns its number, by which a configuration names it.
pub fn give(fd: OwnedFd) -> RawFd {
    let n = fd.as_raw_fd();
    registry().insert(n, fd);
    n
}

/// Takes the descriptor numbered `n`, if it was given.
pub fn take(n: RawFd) -> Option<OwnedFd> {
    registry().remove(&n)
}

/// Whether the descriptor numbered `n` was given and not taken yet.
pub fn holds(n: RawFd) -> bool {
    registry().contains_key(&n)
}

/// Closes those of `numbers` that were given and not taken (a request that failed).
pub fn discard(numbers: &[RawFd]) {
    let mut r = registry();
    for n in numbers {
        r.remove(n);
    }
}

/// Claims descriptor `n`, inherited from the process that started Palisade and named on
/// its command line, and keeps it for a device. Fails if `n` is not open or is a standard
/// stream.
pub fn claim_inherited(n: RawFd) -> std::io::Result<RawFd> {
    if n <= 2 {
        return Err(std::io::Error::other(format!(
            "fd {n} is a standard stream, not a tap"
        )));
    }
    if holds(n) {
        return Ok(n);
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::other(format!(
            "fd {n} is not open: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: called at start-up, before Palisade opens anything of its own: an open
    // descriptor with this number was inherited, and the command line hands it to Palisade.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) };
    Ok(give(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_given_descriptors_are_taken() {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let n = give(fd);
        assert!(holds(n));
        assert!(take(n).is_some());
        assert!(take(n).is_none(), "taken once");
        // A descriptor of this process that was never given is not handed out.
        let own = std::fs::File::open("/dev/null").unwrap();
        assert!(take(own.as_raw_fd()).is_none());
        let again = give(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        discard(&[again]);
        assert!(!holds(again));
        assert!(claim_inherited(1).is_err());
        assert!(claim_inherited(100_000).is_err());
    }
}
