//! Confining every thread of the process on kernels without Landlock's all-threads flag
//! (ABI < 8).
//!
//! `landlock_restrict_self` only restricts the calling thread. The coordinator lists the
//! process's threads and sends each a signal whose handler restricts that thread with the
//! same ruleset — the way the C library changes credentials of all threads for `setuid`. The
//! handler records its thread id and result; the coordinator waits for every thread it
//! signalled, lists the threads again (an unconfined thread may have started another), and
//! stops when a pass finds no new thread. Threads started later by a confined thread inherit
//! its confinement. The coordinator confines itself last, through the `landlock` crate.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// How long a signalled thread may take to confine itself.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_ACKS: usize = 4096;

// The ruleset the handler applies, and the acknowledgements it leaves: (thread id, errno).
static RULESET_FD: AtomicI32 = AtomicI32::new(-1);
static ACK_COUNT: AtomicUsize = AtomicUsize::new(0);
static ACK_TIDS: [AtomicI32; MAX_ACKS] = [const { AtomicI32::new(0) }; MAX_ACKS];
static ACK_ERRNO: [AtomicI32; MAX_ACKS] = [const { AtomicI32::new(0) }; MAX_ACKS];

/// The signal that asks a thread to confine itself (the kick signal of vCPUs is SIGRTMIN).
pub fn confine_signal() -> libc::c_int {
    SIGRTMIN() + 1
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

extern "C" fn confine_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: two system calls and atomics.
    let saved_errno = errno();
    let fd = RULESET_FD.load(Ordering::Acquire);
    // SAFETY: prctl with integer arguments has no memory-safety preconditions.
    let mut result = if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0 {
        0
    } else {
        errno()
    };
    if result == 0 {
        // SAFETY: landlock_restrict_self takes a descriptor and flags; a bad descriptor is
        // reported through errno.
        let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
        if rc != 0 {
            result = errno();
        }
    }
    let slot = ACK_COUNT.fetch_add(1, Ordering::AcqRel);
    if slot < MAX_ACKS {
        ACK_ERRNO[slot].store(result, Ordering::Relaxed);
        ACK_TIDS[slot].store(gettid(), Ordering::Release);
    }
    // SAFETY: restoring this thread's errno slot.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// A thread that could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    /// The thread failed to apply the ruleset.
    #[error("thread {tid} could not confine itself: {source}")]
    Failed {
        /// Its id.
        tid: i32,
        /// Why.
        source: io::Error,
    },
    /// The thread did not answer (it blocks the signal, or is stuck).
    #[error("thread {tid} did not confine itself within {ACK_TIMEOUT:?}")]
    NoAnswer {
        /// Its id.
        tid: i32,
    },
    /// The threads could not be listed or signalled.
    #[error("cannot reach the process's threads: {0}")]
    Io(io::Error),
}

/// The list of the process's threads, read through a descriptor of `/proc/self/task` opened
/// before confinement (a confined process may not open it again).
pub struct TaskList {
    dir: File,
}

impl TaskList {
    /// Opens `/proc/self/task`.
    pub fn open() -> io::Result<Self> {
        Ok(TaskList {
            dir: File::open("/proc/self/task")?,
        })
    }

    /// Whether `tid` is a kernel worker living in the process (KVM starts one per VM): it
    /// never runs user code, so it neither needs nor can take a Landlock domain. Unknown
    /// (unreadable) counts as a user thread.
    pub fn is_kernel_worker(&self, tid: i32) -> bool {
        const PF_KTHREAD: u64 = 0x0020_0000;
        const PF_USER_WORKER: u64 = 0x0000_4000;
        let Ok(name) = std::ffi::CString::new(format!("{tid}/stat")) else {
            return false;
        };
        // SAFETY: `name` is NUL-terminated and the directory descriptor is ours.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 512];
        // SAFETY: reading into a local buffer from a descriptor we just opened.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(fd) };
        if n <= 0 {
            return false;
        }
        let text = String::from_utf8_lossy(&buf[..n as usize]);
        // The command name may hold spaces; the fields after its closing parenthesis are
        // state, ppid, pgrp, session, tty_nr, tpgid, flags.
        let flags = text
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(6))
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        flags & (PF_KTHREAD | PF_USER_WORKER) != 0
    }

    /// The ids of the process's threads now.
    pub fn tids(&self) -> io::Result<Vec<i32>> {
        let fd = self.dir.as_raw_fd();
        // SAFETY: rewinding a directory descriptor we own.
        if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut tids = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: `buf` is writable for its length; getdents64 writes at most that much.
            let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
            let mut off = 0usize;
            while off + 19 < n as usize {
                // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                let name = &buf[off + 19..(off + reclen).min(n as usize)];
                let name = name.split(|b| *b == 0).next().unwrap_or(&[]);
                if let Some(tid) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                    tids.push(tid);
                }
                off += reclen;
            }
        }
        Ok(tids)
    }
}

/// Installs the handler of [`confine_signal`]: at start-up, before system-call filters
/// forbid changing signal actions.
pub fn install_handler() -> io::Result<()> {
    register_signal_handler(confine_signal(), confine_handler)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

fn acked() -> Vec<(i32, i32)> {
    let n = ACK_COUNT.load(Ordering::Acquire).min(MAX_ACKS);
    (0..n)
        .filter_map(|i| {
            let tid = ACK_TIDS[i].load(Ordering::Acquire);
            (tid != 0).then(|| (tid, ACK_ERRNO[i].load(Ordering::Relaxed)))
        })
        .collect()
}

fn alive(pid: i32, tid: i32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) == 0 }
}

/// Confines every thread but the caller and those in `skip` with the ruleset `fd`; returns
/// how many were.
pub fn confine_others(fd: RawFd, tasks: &TaskList, skip: &[i32]) -> Result<usize, ThreadError> {
    RULESET_FD.store(fd, Ordering::Release);
    for slot in ACK_TIDS.iter() {
        slot.store(0, Ordering::Relaxed);
    }
    ACK_COUNT.store(0, Ordering::Release);

    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let me = gettid();
    let mut signalled: HashSet<i32> = HashSet::new();
    loop {
        let fresh: Vec<i32> = tasks
            .tids()
            .map_err(ThreadError::Io)?
            .into_iter()
            .filter(|t| {
                *t != me
                    && !skip.contains(t)
                    && !signalled.contains(t)
                    && !tasks.is_kernel_worker(*t)
            })
            .collect();
        if fresh.is_empty() {
            break;
        }
        for &tid in &fresh {
            // SAFETY: tgkill with our own pid and a thread id read from /proc/self/task.
            let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, confine_signal()) };
            if rc == 0 {
                signalled.insert(tid);
            }
            // ESRCH: the thread ended in the meantime; nothing to confine.
        }
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let done: HashSet<i32> = acked().into_iter().map(|(t, _)| t).collect();
            let waiting: Vec<i32> = signalled
                .iter()
                .copied()
                .filter(|t| !done.contains(t) && alive(pid, *t))
                .collect();
            if waiting.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ThreadError::NoAnswer { tid: waiting[0] });
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let acks = acked();
    if let Some((tid, err)) = acks.iter().find(|(_, e)| *e != 0) {
        return Err(ThreadError::Failed {
            tid: *tid,
            source: io::Error::from_raw_os_error(*err),
        });
    }
    RULESET_FD.store(-1, Ordering::Release);
    Ok(acks.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_list_sees_new_threads() {
        let tasks = TaskList::open().unwrap();
        let before = tasks.tids().unwrap();
        assert!(before.contains(&gettid()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            let _ = rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        assert!(tasks.tids().unwrap().contains(&tid));
        assert!(!tasks.is_kernel_worker(tid));
        assert!(!tasks.is_kernel_worker(gettid()));
        drop(tx);
        t.join().unwrap();
    }
}
