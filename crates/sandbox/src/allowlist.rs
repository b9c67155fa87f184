//! The system calls each thread role may make, with argument checks where an argument is
//! what separates harmless from dangerous.
//!
//! Nothing here creates a socket, connects, binds, listens, executes, maps executable memory,
//! changes file metadata, mounts, or changes credentials other than lowering them. What the
//! lists leave out is the point: it is what a compromised thread would reach for.

use seccompiler::SeccompCmpOp::{Eq, MaskedEq};
use syscalls::Sysno;

use crate::seccomp::{Arg, FilterContext, Role, Rules};

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// `arch_prctl` code asking for an extended state component (AMX tiles) in guests.
const ARCH_REQ_XCOMP_GUEST_PERM: u64 = 0x1025;

/// The bit that turns `O_DIRECTORY` into `O_TMPFILE` (an unnamed file a later `linkat` could
/// give a name without the make-file right being checked at open time).
const O_TMPFILE_BIT: u64 = 0o20_000_000;
const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;

/// The ioctl requests every role may make on its own descriptors (close-on-exec and
/// non-blocking flags).
pub const FD_IOCTLS: [u64; 2] = [libc::FIOCLEX, libc::FIONBIO];

/// What every thread of a Rust program needs once running: memory (never executable),
/// futexes, signals returning, time, and reading and writing descriptors it already holds.
fn common(r: &mut Rules) {
    r.allow(&[
        Sysno::read,
        Sysno::readv,
        Sysno::write,
        Sysno::writev,
        Sysno::close,
        Sysno::futex,
        Sysno::rt_sigreturn,
        Sysno::rt_sigprocmask,
        Sysno::sigaltstack,
        Sysno::munmap,
        Sysno::madvise,
        Sysno::mremap,
        Sysno::brk,
        Sysno::exit,
        Sysno::exit_group,
        Sysno::sched_yield,
        Sysno::sched_getaffinity,
        Sysno::gettid,
        Sysno::getpid,
        Sysno::clock_gettime,
        Sysno::clock_nanosleep,
        Sysno::nanosleep,
        Sysno::getrandom,
        Sysno::restart_syscall,
    ]);
    for call in [Sysno::mmap, Sysno::mprotect] {
        r.allow_if(call, &[(Arg::Int(2), MaskedEq(PROT_EXEC), 0)]);
    }
    // Signals only within the process (vCPU kicks, abort()).
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    r.allow_if(Sysno::tgkill, &[(Arg::Int(0), Eq, pid)]);
    r.allow_values(
        Sysno::fcntl,
        1,
        &[
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ],
    );
}

/// What a thread needs to start another thread (whose own start-up runs under the
/// starter's filter until it installs its own) and to confine it: lower its capabilities,
/// take a Landlock domain and a filter.
fn starts_threads(r: &mut Rules) {
    r.allow_if(
        Sysno::clone,
        &[(Arg::Int(0), MaskedEq(CLONE_THREAD), CLONE_THREAD)],
    );
    // Answered ENOSYS by a second filter (see `seccomp::build`).
    r.allow(&[Sysno::clone3, Sysno::set_robust_list, Sysno::rseq]);
    // The C library installs its own handlers for its two internal signals (thread
    // cancellation, credential broadcast) when the process starts its first thread.
    r.allow_values(Sysno::rt_sigaction, 0, &[32, 33]);
    r.allow(&[
        Sysno::capget,
        Sysno::capset,
        Sysno::seccomp,
        Sysno::landlock_create_ruleset,
        Sysno::landlock_add_rule,
        Sysno::landlock_restrict_self,
    ]);
    r.allow_values(
        Sysno::prctl,
        0,
        &[
            libc::PR_SET_NAME as u64,
            libc::PR_SET_NO_NEW_PRIVS as u64,
            libc::PR_CAPBSET_READ as u64,
            libc::PR_CAPBSET_DROP as u64,
            libc::PR_CAP_AMBIENT as u64,
            libc::PR_GET_SECUREBITS as u64,
            // Core-scheduling cookies for the VMM and its vCPU threads
            // (`cpus.core_scheduling`).
            libc::PR_SCHED_CORE as u64,
        ],
    );
}

/// A disk's I/O on an image already open: positional and vectored reads and writes,
/// flushes, discards and write-zeroes, measuring its size again, and entering its ring.
fn disk_io(r: &mut Rules) {
    r.allow(&[
        Sysno::lseek,
        Sysno::pread64,
        Sysno::pwrite64,
        Sysno::preadv,
        Sysno::pwritev,
        Sysno::preadv2,
        Sysno::pwritev2,
        Sysno::fsync,
        Sysno::fdatasync,
        Sysno::fallocate,
        Sysno::io_uring_enter,
    ]);
}

/// The filter checks requests in the order given: the caller lists the hot ones (a vCPU's
/// `KVM_RUN`, an interrupt) first.
fn ioctls(r: &mut Rules, ctx: &FilterContext) {
    let mut requests: Vec<u64> = Vec::with_capacity(ctx.ioctls.len() + FD_IOCTLS.len());
    for request in ctx.ioctls.iter().chain(&FD_IOCTLS) {
        if !requests.contains(request) {
            requests.push(*request);
        }
    }
    r.allow_values(Sysno::ioctl, 1, &requests);
}

/// Socket messages on one descriptor only (the janitor's channel): no datagram can be sent
/// to an address of the caller's choosing.
fn messages_on(r: &mut Rules, fd: Option<i32>) {
    if let Some(fd) = fd {
        let fd = fd as u64;
        r.allow_if(Sysno::sendmsg, &[(Arg::Int(0), Eq, fd)]);
        r.allow_if(Sysno::recvmsg, &[(Arg::Int(0), Eq, fd)]);
        r.allow_if(
            Sysno::sendto,
            &[(Arg::Int(0), Eq, fd), (Arg::Pointer(4), Eq, 0)],
        );
        r.allow_if(Sysno::recvfrom, &[(Arg::Int(0), Eq, fd)]);
    }
}

/// The allow-list of `role`.
pub fn rules(role: Role, ctx: &FilterContext) -> Rules {
    let mut r = Rules::default();
    match role {
        Role::Vmm => {
            common(&mut r);
            starts_threads(&mut r);
            ioctls(&mut r, ctx);
            messages_on(&mut r, ctx.message_fd);
            // Taking the client of the serial socket bound at start (never making one);
            // `shutdown` as well, which vsock workers (whose filter stacks on this one) need.
            r.allow(&[Sysno::accept4, Sysno::shutdown]);
            // Pinning vCPU threads to host CPUs (`cpus.affinity`).
            r.allow(&[Sysno::sched_setaffinity]);
            // Asking for AMX tile state in guests (`cpus.features.amx`), and nothing else
            // arch_prctl does.
            r.allow_values(Sysno::arch_prctl, 0, &[ARCH_REQ_XCOMP_GUEST_PERM]);
            // Sizing shared guest RAM (its memfd) and disk images (`vm.resize-disk`): only
            // descriptors it holds, of files it may write anyway.
            r.allow(&[Sysno::ftruncate]);
            // Disk image locks.
            r.allow_values(
                Sysno::fcntl,
                1,
                &[libc::F_OFD_SETLK as u64, libc::F_OFD_GETLK as u64],
            );
            // Opening the VM's files and hot-plugged ones (what may be opened is Landlock's
            // business); never an O_TMPFILE.
            r.allow_if(Sysno::openat, &[(Arg::Int(2), MaskedEq(O_TMPFILE_BIT), 0)]);
            r.allow(&[
                Sysno::fstat,
                Sysno::newfstatat,
                Sysno::statx,
                Sysno::getdents64,
                Sysno::getcwd,
                Sysno::readlink,
                Sysno::readlinkat,
                Sysno::epoll_create1,
                Sysno::epoll_ctl,
                Sysno::epoll_wait,
                Sysno::epoll_pwait,
                Sysno::eventfd2,
                Sysno::poll,
                Sysno::ppoll,
                Sysno::dup,
                Sysno::unlink,
                // Building a disk's io_uring, which is restricted to reads, writes and
                // flushes of that disk before it is enabled (devices/virtio/block/uring.rs);
                // requests a ring runs are checked by Landlock with this thread's domain.
                Sysno::io_uring_setup,
                Sysno::io_uring_register,
                // The timer of a disk's or network device's rate limiter, made as the
                // device is; its device threads (which carry this filter too) arm it.
                Sysno::timerfd_create,
                Sysno::timerfd_settime,
            ]);
            disk_io(&mut r);
        }
        Role::Api => {
            common(&mut r);
            ioctls(&mut r, ctx);
            // Accepting on the listening socket it was given; reading and answering.
            r.allow(&[
                Sysno::accept4,
                Sysno::shutdown,
                Sysno::epoll_wait,
                Sysno::epoll_pwait,
                Sysno::epoll_ctl,
                Sysno::getsockopt,
            ]);
            // recv() on its connections: no source address is asked for; and recvmsg(),
            // which also takes the tap descriptors a client sends with a request.
            r.allow_if(Sysno::recvfrom, &[(Arg::Pointer(4), Eq, 0)]);
            r.allow(&[Sysno::recvmsg]);
        }
        Role::Vcpu => {
            common(&mut r);
            ioctls(&mut r, ctx);
            // A driver's reset, handled on its vCPU, waits for a disk's ring to drain
            // (a ring only runs its own disk's reads, writes and flushes).
            r.allow(&[Sysno::io_uring_enter]);
        }
        Role::Device | Role::Vsock => {
            common(&mut r);
            ioctls(&mut r, ctx);
            disk_io(&mut r);
            if role == Role::Vsock {
                // Host clients of the socket the connector bound; the connections' epoll
                // set; shutting a connection's host end when the guest has sent its last.
                // The connections are read and written with read(2) and write(2), which
                // every filter allows, rather than recv/send, which the VMM thread's filter
                // (stacked on this one) keeps to the janitor's channel.
                r.allow(&[Sysno::accept4, Sysno::epoll_ctl, Sysno::shutdown]);
            }
            // Its event loop, and I/O on the other descriptors it was handed (a tap, a
            // console's ends, eventfds); a console's input is polled with no timeout before
            // it is read.
            r.allow(&[Sysno::epoll_wait, Sysno::epoll_pwait, Sysno::poll]);
            // Arming and disarming its rate limiter's timer.
            r.allow(&[Sysno::timerfd_settime]);
            // A worker started just before `vm.create` may be asked (by signal) to take the
            // VM's ruleset as well: confining itself further is all these allow.
            r.allow(&[Sysno::landlock_restrict_self]);
            r.allow_values(Sysno::prctl, 0, &[libc::PR_SET_NO_NEW_PRIVS as u64]);
        }
        Role::Connector => {
            common(&mut r);
            ioctls(&mut r, ctx);
            // Stream sockets of the Unix family only, connected to the path it is given
            // (which it checks against the VM's policy first), with timeouts set, and the
            // first messages on them; bound and listening for a vsock device (its Landlock
            // domain lets it make socket files and nothing else); never accepting, no
            // other family.
            r.allow_if(
                Sysno::socket,
                &[
                    (Arg::Int(0), Eq, libc::AF_UNIX as u64),
                    (Arg::Int(1), MaskedEq(0xf), libc::SOCK_STREAM as u64),
                ],
            );
            r.allow(&[Sysno::connect, Sysno::sendmsg, Sysno::recvmsg]);
            r.allow(&[Sysno::bind, Sysno::listen]);
            // Plain reads and writes on a stream: never to or from an address given.
            r.allow_if(Sysno::sendto, &[(Arg::Pointer(4), Eq, 0)]);
            r.allow_if(Sysno::recvfrom, &[(Arg::Pointer(4), Eq, 0)]);
            r.allow_values(
                Sysno::setsockopt,
                2,
                &[libc::SO_RCVTIMEO as u64, libc::SO_SNDTIMEO as u64],
            );
        }
        Role::Janitor => {
            common(&mut r);
            messages_on(&mut r, ctx.message_fd);
            // Checking and removing the API socket's path.
            r.allow(&[Sysno::newfstatat, Sysno::unlink]);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOORS: [Sysno; 28] = [
        Sysno::execve,
        Sysno::execveat,
        Sysno::memfd_create,
        Sysno::socket,
        Sysno::socketpair,
        Sysno::connect,
        Sysno::bind,
        Sysno::listen,
        Sysno::fchmod,
        Sysno::fchmodat,
        Sysno::fchown,
        Sysno::fchownat,
        Sysno::fsetxattr,
        Sysno::setxattr,
        Sysno::chroot,
        Sysno::mount,
        Sysno::sethostname,
        Sysno::setuid,
        Sysno::ptrace,
        Sysno::kill,
        Sysno::open_by_handle_at,
        Sysno::process_vm_writev,
        Sysno::bpf,
        Sysno::io_uring_setup,
        Sysno::init_module,
        Sysno::unshare,
        Sysno::setns,
        Sysno::pidfd_getfd,
    ];

    #[test]
    fn no_role_opens_a_door() {
        let ctx = FilterContext {
            ioctls: vec![],
            message_fd: Some(5),
        };
        for role in [
            Role::Vmm,
            Role::Api,
            Role::Vcpu,
            Role::Device,
            Role::Vsock,
            Role::Janitor,
            Role::Connector,
        ] {
            let r = rules(role, &ctx);
            // The VMM thread builds the disks' restricted rings and the connector connects
            // and binds (Unix stream sockets only, see below); no other thread may.
            let opened = |d: Sysno| match role {
                Role::Vmm => d == Sysno::io_uring_setup,
                Role::Connector => {
                    matches!(
                        d,
                        Sysno::socket | Sysno::connect | Sysno::bind | Sysno::listen
                    )
                }
                _ => false,
            };
            let doors = DOORS.iter().filter(|d| !opened(**d));
            for &door in doors {
                assert!(!r.names(door), "{role:?} allows {door}");
            }
        }
    }

    #[test]
    fn only_a_vsock_worker_accepts_and_watches_connections() {
        let ctx = FilterContext::default();
        let (device, vsock) = (rules(Role::Device, &ctx), rules(Role::Vsock, &ctx));
        for call in [Sysno::accept4, Sysno::epoll_ctl, Sysno::shutdown] {
            assert!(vsock.names(call) && !device.names(call), "{call}");
        }
        // It makes and binds no socket: the connector does.
        for call in [Sysno::socket, Sysno::bind, Sysno::listen, Sysno::connect] {
            assert!(!vsock.names(call), "{call}");
        }
    }

    #[test]
    fn the_connector_makes_unix_stream_sockets_only() {
        let r = rules(Role::Connector, &FilterContext::default());
        assert!(r.names(Sysno::socket) && r.names(Sysno::connect) && r.names(Sysno::bind));
        for call in [Sysno::accept4, Sysno::openat, Sysno::clone] {
            assert!(!r.names(call), "{call}");
        }
        let f = crate::seccomp::build(
            Role::Connector,
            crate::SeccompMode::Enforce,
            &FilterContext::default(),
        )
        .unwrap();
        // What the filter says is checked end to end: a thread with it may make a Unix
        // stream socket; an inet one would end the process (tests/sandbox.rs style).
        let made = std::thread::spawn(move || {
            f.install().unwrap();
            // SAFETY: socket() takes no pointers; the descriptor is closed at once.
            unsafe {
                let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
                let fd = libc::socket(libc::AF_UNIX, kind, 0);
                libc::close(fd);
                fd
            }
        })
        .join()
        .unwrap();
        assert!(made >= 0);
    }

    #[test]
    fn only_the_vmm_opens_files_or_starts_threads() {
        let ctx = FilterContext::default();
        for role in [
            Role::Api,
            Role::Vcpu,
            Role::Device,
            Role::Vsock,
            Role::Janitor,
            Role::Connector,
        ] {
            let r = rules(role, &ctx);
            for call in [
                Sysno::openat,
                Sysno::clone,
                Sysno::clone3,
                Sysno::io_uring_register,
            ] {
                assert!(!r.names(call), "{role:?} allows {call}");
            }
            // Only a device worker may confine itself further (see `rules`).
            let workers = matches!(role, Role::Device | Role::Vsock);
            assert_eq!(r.names(Sysno::prctl), workers, "{role:?}");
        }
        let vmm = rules(Role::Vmm, &ctx);
        assert!(vmm.names(Sysno::openat) && vmm.names(Sysno::clone));
        // Without a channel, no socket message at all.
        assert!(!vmm.names(Sysno::sendmsg) && !vmm.names(Sysno::sendto));
    }
}
