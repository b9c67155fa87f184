//! Work that must happen after the VMM, or away from it: removing the API socket, and
//! releasing descriptors whose last close is slow.
//!
//! - Unlinking the API socket needs the right to remove files from its directory, which the
//!   confined VMM must not have (a compromised VMM could delete anything beside the socket).
//! - Closing the last reference to a KVM VM tears the VM down in the kernel, which waits for
//!   KVM's SRCU grace periods: on slow hosts, tens of milliseconds spent on the VMM's exit
//!   and on every reboot.
//!
//! So at start-up, before any thread exists, Palisade forks a tiny janitor process. It
//! confines itself (Landlock: nothing but removing files in the socket's directory), then
//! waits on a socket pair only the VMM holds. The VMM hands it a duplicate of each KVM VM it
//! creates ([`Janitor::hold`]); the janitor keeps the latest and closes the one before, so the
//! VMM's own close is never the last. When the VMM is gone (exit, crash or kill) the pair
//! reaches end of file: the janitor releases what it holds, removes the socket if the path
//! still names the socket Palisade bound, and exits. Deleting a VM releases it at once
//! ([`Janitor::release`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use landlock::{AccessFs, PathBeneath, PathFd, RulesetCreatedAttr};

use crate::rights;

/// The VMM's end of the janitor's socket pair.
pub struct Janitor {
    channel: OwnedFd,
    pid: libc::pid_t,
}

impl Janitor {
    /// The janitor's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The VMM's end of the channel (the only socket the VMM thread sends messages on).
    pub fn channel_fd(&self) -> RawFd {
        self.channel.as_raw_fd()
    }

    /// Has the janitor close what it holds, and waits until it has: a deleted VM must be
    /// gone, with its kernel threads, before another VM is created and confined.
    pub fn release(&self) -> io::Result<()> {
        let byte = 0u8;
        // SAFETY: sending one byte from a local; the descriptor is ours.
        let n = unsafe {
            libc::send(
                self.channel.as_raw_fd(),
                (&byte as *const u8).cast(),
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ack = 0u8;
        loop {
            // SAFETY: reading one byte into a local.
            let n =
                unsafe { libc::recv(self.channel.as_raw_fd(), (&mut ack as *mut u8).cast(), 1, 0) };
            if n == 1 {
                return Ok(());
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the janitor is gone",
                ));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Gives the janitor a duplicate of `fd` to keep until the next one, or until the VMM
    /// is gone; the one it kept before is closed in the janitor.
    pub fn hold(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut byte = 0u8;
        let mut iov = libc::iovec {
            iov_base: (&mut byte as *mut u8).cast(),
            iov_len: 1,
        };
        // SAFETY: CMSG_SPACE is a pure computation on its argument.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; the fields set below point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` has a control buffer of CMSG_SPACE(one fd) bytes, so the first
        // header exists and has room for one descriptor.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
        // SAFETY: `msg` describes valid buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(self.channel.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn confine_to_removing_in(dir: Option<&Path>) -> Result<(), landlock::RulesetError> {
    let abi = match crate::enforce::kernel_abi() {
        Ok(v) => landlock::ABI::from(v),
        // Without Landlock the janitor runs as it is: it only ever unlinks one path.
        Err(_) => return Ok(()),
    };
    let mut created = rights::ruleset_handling_all(abi)?.create()?;
    if let Some(fd) = dir.and_then(|d| PathFd::new(d).ok()) {
        created = created.add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))?;
    }
    created.restrict_self()?;
    Ok(())
}

/// Receives one message; returns the descriptor it carried, if any, or `None` at end of
/// file (the VMM is gone).
fn receive(channel: RawFd) -> Option<Option<RawFd>> {
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation on its argument.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = [0u8; 64];
    // SAFETY: msghdr is plain data; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space.min(control.len());
    loop {
        // SAFETY: `msg` describes valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(channel, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n > 0 {
            break;
        }
        if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR checks the control length.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Some(None);
    }
    // SAFETY: `cmsg` is a header recvmsg wrote inside `control`.
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return Some(None);
    }
    // SAFETY: an SCM_RIGHTS header carries at least one descriptor after its data pointer.
    Some(Some(unsafe {
        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())
    }))
}

/// Forks the janitor, which removes the socket at `socket` (if any) once the VMM is gone.
/// Call while the process has a single thread.
pub fn spawn(socket: Option<&Path>) -> io::Result<Janitor> {
    // Device and inode alone are not enough to recognise the socket later: a file system may
    // give the next socket bound at this path (by another Palisade) the same inode number;
    // its change time differs.
    let target = match socket {
        Some(path) => {
            let meta = std::fs::symlink_metadata(path)?;
            let identity = (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec());
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            Some((CString::new(path.as_os_str().as_bytes())?, identity, dir))
        }
        None => None,
    };
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair returns.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair just returned these descriptors; nothing else owns them.
    let (vmm_end, janitor_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Built here, where allocating is ordinary: the janitor may receive and send on its
    // end of the pair, look at and remove the socket's path, and nothing else.
    let filters = crate::seccomp::build(
        crate::seccomp::Role::Janitor,
        crate::lockdown::seccomp_mode(),
        &crate::seccomp::FilterContext {
            ioctls: Vec::new(),
            message_fd: Some(janitor_end.as_raw_fd()),
        },
    )
    .map_err(io::Error::other)?;
    // SAFETY: the caller guarantees a single-threaded process, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The janitor. Keep only its end of the pair: holding the terminal, the API socket or
        // the VMM's end would keep them alive after the VMM is gone.
        let keep = janitor_end.as_raw_fd();
        for fd in 0..keep {
            // SAFETY: closing descriptors this process owns and will not use.
            unsafe { libc::close(fd) };
        }
        // SAFETY: as above, every descriptor above the pair's end.
        unsafe { libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0) };
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        // Defence in depth: even this process should not be able to do anything else.
        let _ = confine_to_removing_in(target.as_ref().map(|t| t.2.as_path()));
        // No capability at all, then the filter. A janitor that cannot lock itself down
        // ends: the VMM then sees its channel closed and runs without it.
        if crate::capabilities::keep_only(&[]).is_err() || filters.install().is_err() {
            // SAFETY: ending the child without running the parent's exit handlers.
            unsafe { libc::_exit(1) };
        }
        let mut held: RawFd = -1;
        while let Some(received) = receive(keep) {
            if held >= 0 {
                // SAFETY: `held` came from a previous message and is ours to close.
                unsafe { libc::close(held) };
                held = -1;
            }
            match received {
                Some(fd) => held = fd,
                None => {
                    // A release: say it is done.
                    let ack = 1u8;
                    // SAFETY: sending one byte from a local on our end of the pair.
                    unsafe { libc::send(keep, (&ack as *const u8).cast(), 1, libc::MSG_NOSIGNAL) };
                }
            }
        }
        if held >= 0 {
            // SAFETY: as above; the last reference goes here, after the VMM has exited.
            unsafe { libc::close(held) };
        }
        if let Some((c_path, identity, _)) = &target {
            // SAFETY: stat into a zeroed struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `c_path` is NUL-terminated and `st` writable.
            let same = unsafe { libc::lstat(c_path.as_ptr(), &mut st) } == 0
                && (st.st_dev, st.st_ino, st.st_ctime, st.st_ctime_nsec) == *identity;
            if same {
                // SAFETY: `c_path` is NUL-terminated.
                unsafe { libc::unlink(c_path.as_ptr()) };
            }
        }
        // SAFETY: ending the janitor without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    drop(janitor_end);
    Ok(Janitor {
        channel: vmm_end,
        pid,
    })
}
