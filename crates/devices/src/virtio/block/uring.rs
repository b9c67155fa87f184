//! Asynchronous disk I/O through io_uring.
//!
//! The ring is built on the VMM thread when the disk is created, with the image as its only
//! registered file (and, if asked, guest RAM as its registered buffers), and is restricted
//! before it is enabled (`IORING_REGISTER_RESTRICTIONS`): its submissions may only be
//! vectored or fixed-buffer reads and writes and `fsync`, and only on registered file 0. The
//! device thread, which may call `io_uring_enter` but neither `io_uring_setup` nor
//! `io_uring_register`, therefore cannot turn the ring into a way around its system-call
//! filter: opening, connecting or reading another descriptor through it is refused by the
//! kernel. Completions are announced on an eventfd the device thread waits on.
//!
//! Requests in flight own their `iovec` arrays, which the kernel reads when it runs them;
//! the ring is drained before the device forgets its queues (reset) or goes away, so guest
//! memory is never written after the driver was told the device stopped.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, register::Restriction, squeue, types, IoUring};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
    Flush,
}

/// A request handed to the ring, with what its completion needs.
pub(crate) struct Submission<T> {
    pub op: Op,
    pub offset: u64,
    pub iovecs: Vec<libc::iovec>,
    /// Bytes the request moves (the sum of `iovecs`).
    pub len: u64,
    /// The caller's record of the request (queue, head, status byte…).
    pub tag: T,
}

/// A finished request: its record, its iovec array (to reuse), and the bytes moved or the
/// error.
pub(crate) struct Completion<T> {
    pub op: Op,
    pub tag: T,
    pub iovecs: Vec<libc::iovec>,
    pub result: io::Result<u64>,
}

struct InFlight<T> {
    op: Op,
    offset: u64,
    iovecs: Vec<libc::iovec>,
    len: u64,
    tag: T,
}

/// A restricted ring over one disk image.
pub(crate) struct Uring<T> {
    ring: IoUring,
    /// The image, as the ring's file 0 (and for finishing short transfers).
    file: File,
    eventfd: EventFd,
    /// Host address ranges of the registered buffers, by buffer index.
    buffers: Vec<(usize, usize)>,
    slots: Vec<Option<InFlight<T>>>,
    free: Vec<usize>,
    /// Pushed to the submission queue, not yet submitted.
    unsubmitted: usize,
}

// SAFETY: the raw pointers (the ring's mappings, the iovecs) point into memory the ring or
// guest RAM owns, valid from any thread; the device moves the ring between threads only as a
// whole, behind its lock.
unsafe impl<T: Send> Send for Uring<T> {}

impl<T> Uring<T> {
    /// A ring of `entries` requests over `file`, with `mem`'s regions as fixed buffers
    /// (left out if the kernel refuses to pin them, e.g. under a low memlock limit).
    pub fn new(file: File, entries: u32, mem: Option<&GuestMemoryMmap>) -> io::Result<Self> {
        let entries = entries.clamp(1, 4096).next_power_of_two();
        let ring = IoUring::builder()
            .setup_r_disabled()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        let fd = file.as_raw_fd();
        let submitter = ring.submitter();
        submitter.register_files(&[fd])?;
        let mut buffers = Vec::new();
        if let Some(mem) = mem {
            let iovecs: Vec<libc::iovec> = mem
                .iter()
                .filter_map(|r| {
                    let host = mem.get_host_address(r.start_addr()).ok()?;
                    Some(libc::iovec {
                        iov_base: host.cast(),
                        iov_len: r.len() as usize,
                    })
                })
                .collect();
            // SAFETY: each iovec is a whole guest RAM region, mapped for as long as the
            // memory (which the device holds) lives, and longer than the ring.
            match unsafe { submitter.register_buffers(&iovecs) } {
                Ok(()) => {
                    buffers = iovecs
                        .iter()
                        .map(|v| (v.iov_base as usize, v.iov_len))
                        .collect()
                }
                Err(e) => log::debug!("virtio-blk: guest RAM not registered with io_uring: {e}"),
            }
        }
        let eventfd = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        submitter.register_eventfd(eventfd.as_raw_fd())?;
        let mut restrictions = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::ReadFixed::CODE),
            Restriction::sqe_op(opcode::WriteFixed::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_required(squeue::Flags::FIXED_FILE.bits()),
        ];
        submitter.register_restrictions(&mut restrictions)?;
        submitter.register_enable_rings()?;
        Ok(Uring {
            ring,
            file,
            eventfd,
            buffers,
            slots: Vec::new(),
            free: Vec::new(),
            unsubmitted: 0,
        })
    }

    /// The eventfd that becomes readable when requests complete.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether the ring has room for another request.
    pub fn has_room(&self) -> bool {
        self.in_flight() < self.ring.params().sq_entries() as usize
    }

    /// The registered buffer holding all of `iov`, if any.
    fn fixed_buffer(&self, iov: &libc::iovec) -> Option<u16> {
        let start = iov.iov_base as usize;
        let end = start.checked_add(iov.iov_len)?;
        self.buffers
            .iter()
            .position(|&(base, len)| start >= base && end <= base + len)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Queues `s`; handed back when the ring is full. The kernel sees it at the next
    /// [`Uring::submit`].
    pub fn push(&mut self, s: Submission<T>) -> Result<(), Submission<T>> {
        if !self.has_room() {
            return Err(s);
        }
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let file = types::Fixed(0);
        let entry = match (s.op, s.iovecs.as_slice()) {
            (Op::Flush, _) => opcode::Fsync::new(file)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            (Op::Read, [one]) if self.fixed_buffer(one).is_some() => {
                let index = self.fixed_buffer(one).unwrap_or_default();
                opcode::ReadFixed::new(file, one.iov_base.cast(), one.iov_len as u32, index)
                    .offset(s.offset)
                    .build()
            }
            (Op::Write, [one]) if self.fixed_buffer(one).is_some() => {
                let index = self.fixed_buffer(one).unwrap_or_default();
                opcode::WriteFixed::new(file, one.iov_base.cast(), one.iov_len as u32, index)
                    .offset(s.offset)
                    .build()
            }
            (Op::Read, iov) => opcode::Readv::new(file, iov.as_ptr(), iov.len() as u32)
                .offset(s.offset)
                .build(),
            (Op::Write, iov) => opcode::Writev::new(file, iov.as_ptr(), iov.len() as u32)
                .offset(s.offset)
                .build(),
        }
        .user_data(slot as u64);
        // SAFETY: the entry's buffers (the iovec array, moved into the slot below without
        // moving its heap storage, and the guest memory it points to) stay valid until the
        // completion is reaped: slots are only emptied by `reap`, and the ring is drained
        // before it is dropped.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.free.push(slot);
            return Err(s);
        }
        self.slots[slot] = Some(InFlight {
            op: s.op,
            offset: s.offset,
            iovecs: s.iovecs,
            len: s.len,
            tag: s.tag,
        });
        self.unsubmitted += 1;
        Ok(())
    }

    /// Hands the queued requests to the kernel (one `io_uring_enter` for the batch).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Calls `done` with every finished request. A short transfer is finished with plain
    /// system calls (`finish` is given the fd, the remaining iovecs and their offset, and
    /// returns the bytes it moved and whether all were), as are requests the kernel
    /// answered EAGAIN or EINTR.
    pub fn reap(
        &mut self,
        mut finish: impl FnMut(RawFd, Op, &mut [libc::iovec], u64) -> (usize, io::Result<()>),
        mut done: impl FnMut(Completion<T>),
    ) {
        let _ = self.eventfd.read();
        loop {
            let next = self.ring.completion().next();
            let Some(cqe) = next else {
                break;
            };
            let slot = cqe.user_data() as usize;
            let Some(req) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            let res = cqe.result();
            let mut iovecs = req.iovecs;
            let result = if res >= 0 && res as u64 == req.len {
                Ok(req.len)
            } else if req.op == Op::Flush {
                Err(io::Error::from_raw_os_error(-res))
            } else if res >= 0 || res == -libc::EAGAIN || res == -libc::EINTR {
                let moved = res.max(0) as u64;
                advance(&mut iovecs, moved as usize);
                let (more, r) = finish(
                    self.file.as_raw_fd(),
                    req.op,
                    &mut iovecs,
                    req.offset + moved,
                );
                r.map(|()| moved + more as u64)
            } else {
                Err(io::Error::from_raw_os_error(-res))
            };
            done(Completion {
                op: req.op,
                tag: req.tag,
                iovecs,
                result,
            });
        }
    }

    /// Waits until nothing is in flight, discarding the completions (used when the device
    /// stops: guest memory must not be written afterwards).
    pub fn drain(&mut self) -> Vec<T> {
        let mut tags = Vec::new();
        while self.in_flight() > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("virtio-blk: cannot wait for I/O in flight: {e}");
                    break;
                }
            }
            self.reap(|_, _, _, _| (0, Ok(())), |c| tags.push(c.tag));
        }
        tags
    }
}

impl<T> Drop for Uring<T> {
    fn drop(&mut self) {
        self.drain();
    }
}

/// Drops the first `n` bytes of `iovecs`.
fn advance(iovecs: &mut [libc::iovec], mut n: usize) {
    for iov in iovecs.iter_mut() {
        let take = n.min(iov.iov_len);
        // SAFETY: `take` <= `iov_len`, so the advanced pointer stays within (or one past) the
        // buffer.
        iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(take) }.cast();
        iov.iov_len -= take;
        n -= take;
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vmm_sys_util::tempfile::TempFile;

    /// Pushes `entry` straight onto the ring, as a compromised device thread could, and
    /// returns the kernel's answer.
    fn raw(u: &mut Uring<()>, entry: squeue::Entry) -> i32 {
        // SAFETY: the entries below point at buffers that outlive the call, which waits
        // for the completion.
        unsafe { u.ring.submission().push(&entry.user_data(7)) }.unwrap();
        u.ring.submit_and_wait(1).unwrap();
        let cqe = u.ring.completion().next().unwrap();
        assert_eq!(cqe.user_data(), 7);
        cqe.result()
    }

    #[test]
    fn the_ring_serves_its_own_file_and_refuses_anything_else() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().write_all(&[0x5a; 4096]).unwrap();
        let file = std::fs::File::open(tmp.as_path()).unwrap();
        let mut u: Uring<()> = Uring::new(file, 8, None).unwrap();
        let mut buf = [0u8; 512];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let ok = opcode::Readv::new(types::Fixed(0), iov.as_ptr(), 1).build();
        assert_eq!(raw(&mut u, ok), 512);
        assert_eq!(buf, [0x5a; 512]);
        // Another descriptor than the registered file.
        let other = std::fs::File::open("/dev/zero").unwrap();
        let by_fd = opcode::Readv::new(types::Fd(other.as_raw_fd()), iov.as_ptr(), 1).build();
        assert_eq!(raw(&mut u, by_fd), -libc::EACCES);
        // Operations the disk never needs: opening a file, connecting, a plain read.
        let path = c"/etc/hostname";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build();
        assert_eq!(raw(&mut u, open), -libc::EACCES);
        let read = opcode::Read::new(types::Fixed(0), buf.as_mut_ptr(), 512).build();
        assert_eq!(raw(&mut u, read), -libc::EACCES);
        let socket = opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0).build();
        assert_eq!(raw(&mut u, socket), -libc::EACCES);
        // Nor can the ring be given more files.
        assert!(u
            .ring
            .submitter()
            .register_files_update(0, &[other.as_raw_fd()])
            .is_err());
    }
}
