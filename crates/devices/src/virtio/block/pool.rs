//! Asynchronous disk I/O on a small pool of threads, for disks without io_uring (a kernel
//! without it, or `disable_io_uring=true`).
//!
//! The device thread hands a batch of requests over in one step (one lock, one wake-up);
//! the pool's threads run them with plain `preadv`/`pwritev`/`fdatasync` on their own
//! descriptor of the image and announce finished requests on an eventfd, which the device
//! thread watches like the ring's. A request that blocks in the kernel therefore holds up a
//! pool thread, never the device's queue handling, its configuration accesses or a reset.
//!
//! Each pool thread confines itself with the caller's setup (the device role: no file
//! rights, no capabilities, the device filter) before it runs anything; one that cannot
//! makes the whole pool fail to start. Requests own their `iovec` arrays until they
//! complete, and the pool is drained before the device forgets its queues or goes away, so
//! guest memory is never written after the driver was told the device stopped.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{retry_eintr, rw_vectored};
use super::uring::{Completion, Op, Submission};
use crate::virtio::worker::ThreadSetup;

/// Finished requests the pool collects before it wakes the device thread while more work
/// is queued (when the queue runs dry it wakes it at once).
const SIGNAL_EVERY: usize = 16;

struct State<T> {
    jobs: VecDeque<Submission<T>>,
    done: Vec<Completion<T>>,
    /// The eventfd was written and the device thread has not collected since.
    signalled: bool,
    /// A thread runs a write.
    writing: bool,
    /// Threads waiting for work (only they are woken: a wake-up costs a system call).
    idle: usize,
    /// The device thread waits in `drain` (only then is `finished` signalled: a wake-up
    /// costs a system call).
    draining: bool,
    stop: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Jobs arrived, or the pool stops.
    work: Condvar,
    /// A job finished (for `drain`).
    finished: Condvar,
    eventfd: EventFd,
    image: File,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pool of I/O threads over one disk image.
pub(crate) struct IoPool<T> {
    shared: Arc<Shared<T>>,
    threads: Vec<JoinHandle<()>>,
    /// Pushed, not yet handed to the threads.
    staged: Vec<Submission<T>>,
    /// Handed over or staged, not yet collected.
    in_flight: usize,
    capacity: usize,
}

// SAFETY: the raw pointers in the requests (their iovecs) point into guest memory, which is
// valid from any thread and outlives every request in flight (the pool is drained first).
unsafe impl<T: Send> Send for IoPool<T> {}

// SAFETY: as for `IoPool`: the requests' pointers stay valid until they are collected, and
// the state they sit in is only reached through the mutex.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T: Send + 'static> IoPool<T> {
    /// Starts `threads` threads named `name`, each confined by `setup` before it runs any
    /// request, over `image`; at most `capacity` requests are in flight at once.
    pub fn new(
        image: File,
        threads: usize,
        capacity: usize,
        name: &str,
        setup: Option<ThreadSetup>,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                done: Vec::new(),
                signalled: false,
                writing: false,
                idle: 0,
                draining: false,
                stop: false,
            }),
            work: Condvar::new(),
            finished: Condvar::new(),
            eventfd: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            image,
        });
        let mut pool = IoPool {
            shared,
            threads: Vec::new(),
            staged: Vec::new(),
            in_flight: 0,
            capacity: capacity.max(1),
        };
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        for _ in 0..threads.max(1) {
            let shared = pool.shared.clone();
            let setup = setup.clone();
            let ready_tx = ready_tx.clone();
            let thread_name = name.to_string();
            let thread = std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    let confinement = match setup.map(|s| s(&thread_name)).transpose() {
                        Ok(kept) => kept,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    serve(&shared);
                    drop(confinement);
                })?;
            pool.threads.push(thread);
        }
        drop(ready_tx);
        for _ in 0..pool.threads.len() {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(io::Error::other(format!(
                        "cannot confine an I/O thread: {e}"
                    )))
                }
                Err(_) => return Err(io::Error::other("an I/O thread ended before starting")),
            }
        }
        Ok(pool)
    }
}

impl<T> IoPool<T> {
    /// The eventfd that becomes readable when requests complete.
    pub fn eventfd(&self) -> RawFd {
        self.shared.eventfd.as_raw_fd()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether the pool takes another request.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.capacity
    }

    /// Stages `s`; handed back when the pool is full. The threads see it at the next
    /// [`IoPool::submit`].
    pub fn push(&mut self, s: Submission<T>) -> Result<(), Submission<T>> {
        if !self.has_room() {
            return Err(s);
        }
        self.staged.push(s);
        self.in_flight += 1;
        Ok(())
    }

    /// Hands the staged requests to the threads, all at once.
    pub fn submit(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let wake = {
            let mut st = self.shared.lock();
            st.jobs.extend(self.staged.drain(..));
            // Threads that will find something to run: one per read or flush, one for the
            // writes unless a thread is at them already.
            let others = st.jobs.iter().filter(|j| j.op != Op::Write).count();
            let writes = usize::from(!st.writing && st.jobs.iter().any(|j| j.op == Op::Write));
            st.idle.min(others + writes)
        };
        match wake {
            0 => {}
            1 => self.shared.work.notify_one(),
            _ => self.shared.work.notify_all(),
        }
    }

    /// Calls `done` with every finished request.
    pub fn reap(&mut self, mut done: impl FnMut(Completion<T>)) {
        let _ = self.shared.eventfd.read();
        let finished = {
            let mut st = self.shared.lock();
            st.signalled = false;
            std::mem::take(&mut st.done)
        };
        self.in_flight -= finished.len();
        finished.into_iter().for_each(&mut done);
    }

    /// Waits until nothing is in flight, discarding the completions (used when the device
    /// stops: guest memory must not be written afterwards).
    pub fn drain(&mut self) -> Vec<T> {
        self.submit();
        let mut tags = Vec::new();
        while self.in_flight > 0 {
            {
                let mut st = self.shared.lock();
                st.draining = true;
                while st.done.is_empty() {
                    st = self
                        .shared
                        .finished
                        .wait(st)
                        .unwrap_or_else(|e| e.into_inner());
                }
                st.draining = false;
            }
            self.reap(|c| tags.push(c.tag));
        }
        tags
    }
}

impl<T> Drop for IoPool<T> {
    fn drop(&mut self) {
        self.drain();
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A pool thread's loop: runs queued requests until the pool stops.
fn serve<T: Send>(shared: &Shared<T>) {
    let fd = shared.image.as_raw_fd();
    let mut st = shared.lock();
    loop {
        // Writes go one at a time, like io_uring's workers hash them by file: buffered
        // writes to one file serialize on its inode lock anyway, and two threads fighting
        // for it are slower than one. Reads and flushes run beside them.
        let next = if st.writing {
            st.jobs.iter().position(|j| j.op != Op::Write)
        } else {
            (!st.jobs.is_empty()).then_some(0)
        };
        let Some(job) = next.and_then(|i| st.jobs.remove(i)) else {
            if st.stop {
                return;
            }
            st.idle += 1;
            st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            st.idle -= 1;
            continue;
        };
        let write = job.op == Op::Write;
        st.writing |= write;
        drop(st);
        let done = run(fd, job);
        st = shared.lock();
        if write {
            st.writing = false;
        }
        st.done.push(done);
        let wake = !st.signalled && (st.jobs.is_empty() || st.done.len() >= SIGNAL_EVERY);
        if wake {
            st.signalled = true;
        }
        let drainer = st.draining;
        drop(st);
        if drainer {
            shared.finished.notify_all();
        }
        if wake {
            // Cannot fail short of a counter overflow, which a read clears.
            let _ = shared.eventfd.write(1);
        }
        st = shared.lock();
    }
}

/// Runs one request to its end with plain system calls.
fn run<T>(fd: RawFd, job: Submission<T>) -> Completion<T> {
    let Submission {
        op,
        offset,
        mut iovecs,
        len,
        tag,
    } = job;
    let result = match op {
        Op::Flush => retry_eintr(|| {
            // SAFETY: fdatasync on a descriptor the pool owns.
            if unsafe { libc::fdatasync(fd) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
        .map(|()| 0),
        Op::Read | Op::Write => {
            let (moved, r) = rw_vectored(fd, &mut iovecs, offset, op == Op::Write);
            match r {
                Ok(()) => Ok(len),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("{e} after {moved} of {len} bytes"),
                )),
            }
        }
    };
    Completion {
        op,
        tag,
        iovecs,
        result,
    }
}
