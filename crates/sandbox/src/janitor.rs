//! Removing the API socket when the VMM is gone, without letting the confined VMM delete
//! files.
//!
//! Unlinking a socket needs the right to remove files from its directory, which the
//! confined VMM must not have (it would let a compromised VMM delete anything beside the
//! socket). So at start-up, before any thread exists, Palisade forks a tiny janitor process
//! that confines itself to exactly that right on exactly that directory, then waits for the
//! VMM to end (the end of a pipe only the VMM holds). It then removes the socket — if the path
//! still names the socket Palisade bound — and exits. This also cleans up after a VMM that
//! was killed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use landlock::{
    AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr,
};

use crate::rights;

/// The VMM's end of the janitor's pipe: the janitor acts when it closes (at exit).
pub struct SocketJanitor {
    _keepalive: OwnedFd,
    pid: libc::pid_t,
}

impl SocketJanitor {
    /// The janitor's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

fn confine_to_removing_in(dir: &Path) -> Result<(), landlock::RulesetError> {
    let abi = match crate::enforce::kernel_abi() {
        Ok(v) => landlock::ABI::from(v),
        // Without Landlock the janitor runs as it is: it only ever unlinks one path.
        Err(_) => return Ok(()),
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(rights::handled_fs(abi))?;
    let net = rights::handled_net(abi);
    if !net.is_empty() {
        ruleset = ruleset.handle_access(net)?;
    }
    let scopes = rights::handled_scopes(abi);
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes)?;
    }
    let mut created = ruleset.create()?;
    if let Ok(fd) = PathFd::new(dir) {
        created = created.add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))?;
    }
    created.restrict_self()?;
    Ok(())
}

/// Forks the janitor for the socket at `path`. Call while the process has a single thread.
pub fn spawn(path: &Path) -> std::io::Result<SocketJanitor> {
    let meta = std::fs::symlink_metadata(path)?;
    // Device and inode alone are not enough: a file system may give the next socket bound at
    // this path (by another Palisade) the same inode number; its change time differs.
    let identity = (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees a single-threaded process, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // The janitor. Keep only the read end of the pipe: holding the terminal, the API
        // socket or the write end would keep them alive after the VMM is gone.
        let keep = read_end.as_raw_fd();
        for fd in 0..keep {
            // SAFETY: closing descriptors this process owns and will not use.
            unsafe { libc::close(fd) };
        }
        // SAFETY: as above, every descriptor above the pipe's read end.
        unsafe { libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0) };
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        // Defence in depth: even this process should not be able to do anything else.
        let _ = confine_to_removing_in(&dir);
        let mut byte = 0u8;
        loop {
            // SAFETY: reading one byte into a local.
            let n = unsafe { libc::read(keep, (&mut byte as *mut u8).cast(), 1) };
            if n == 0
                || (n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
            {
                break;
            }
        }
        // SAFETY: stat into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `c_path` is NUL-terminated and `st` writable.
        let same = unsafe { libc::lstat(c_path.as_ptr(), &mut st) } == 0
            && (st.st_dev, st.st_ino, st.st_ctime, st.st_ctime_nsec) == identity;
        if same {
            // SAFETY: `c_path` is NUL-terminated.
            unsafe { libc::unlink(c_path.as_ptr()) };
        }
        // SAFETY: ending the janitor without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    drop(read_end);
    Ok(SocketJanitor {
        _keepalive: write_end,
        pid,
    })
}
