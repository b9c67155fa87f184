//! Executing one virtio-blk request: validating the chain, the header and the range, and
//! moving the data between the image and guest memory.

use super::*;

impl Disk {
    /// Executes one request of queue `queue` and writes its status. Returns the used length:
    /// the bytes written into guest memory (data and status), or 0 when not even the status
    /// byte could be written; [`Served::Kept`] when the request went to an engine, and is
    /// returned to the used ring when it completes ([`Disk::complete`]); [`Served::Wait`]
    /// when the rate limiter holds it back (untouched).
    pub(super) fn process_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        queue: u16,
    ) -> Served {
        let head = chain.head_index();
        // Keep the reused buffers small after a pathological chain.
        walk_chain(chain, &mut self.descs, 4 * IOV_MAX);
        let layout = Layout::of(&self.descs);

        // The status byte is the last byte of the device-writable part of the chain.
        let status_addr = layout.last_writable.and_then(|i| {
            self.descs[i]
                .addr
                .checked_add(u64::from(self.descs[i].len) - 1)
        });
        let status_slice =
            status_addr.and_then(|addr| GuestMemoryBackend::get_slice(mem, addr, 1).ok());
        let (Some(status_slice), Some(status_addr)) = (status_slice, status_addr) else {
            // A request that cannot report its outcome is not executed.
            debug!("virtio-blk: request without a writable status byte in guest memory");
            self.counters.errors += 1;
            return Served::Used(0);
        };
        if let Some(limiter) = &mut self.limiter {
            // The data: what follows the header, and what precedes the status byte.
            let bytes =
                layout.readable.saturating_sub(HEADER_SIZE) + layout.writable.saturating_sub(1);
            if !limiter.admit(bytes) {
                return Served::Wait;
            }
        }

        let (mut status, mut written) = self.execute(mem, &layout);
        if let Some((lane, op, offset, len)) = self.deferred.take() {
            let spare = self.spare_iovecs.pop().map(|v| v.0).unwrap_or_default();
            let iovecs = std::mem::replace(&mut self.iovecs.0, spare);
            let tag = Pending {
                queue,
                head,
                status: status_addr,
            };
            let submission = Submission {
                op,
                offset,
                iovecs,
                len,
                tag,
            };
            match self.engines.push(lane, submission) {
                Ok(()) => {
                    match lane {
                        Lane::Ring => self.counters.io_uring_ops += 1,
                        Lane::Pool => self.counters.thread_pool_ops += 1,
                    }
                    return Served::Kept;
                }
                Err(back) => {
                    // No room after all: run it here.
                    self.iovecs.0 = back.iovecs;
                    (status, written) = self.run_now(op, offset);
                }
            }
        }
        self.iovecs.0.clear();
        if self.iovecs.0.capacity() > IOV_MAX {
            self.iovecs.0.shrink_to(IOV_MAX);
        }
        if status != VIRTIO_BLK_S_OK as u8 {
            self.counters.errors += 1;
        }
        // Cannot fail: the slice is one byte long. (The used index is published later with
        // release ordering, which orders this store before it.)
        let _ = status_slice.store(status, 0, Ordering::Relaxed);
        Served::Used(written.saturating_add(1))
    }

    /// Leaves the request `self.iovecs` describes to the ring, if the disk has one with room
    /// (and the request moves data, or is a flush).
    fn defer(&mut self, op: Op, offset: u64, len: u64) -> bool {
        if op != Op::Flush && self.iovecs.0.is_empty() {
            return false;
        }
        let Some(lane) = self.engines.lane(op) else {
            return false;
        };
        self.deferred = Some((lane, op, offset, len));
        true
    }

    /// Runs the read or write `self.iovecs` describes at once when the disk has an engine
    /// and the kernel can do all of it without blocking (`RWF_NOWAIT`: a read the page
    /// cache holds, a write the file system takes without waiting). `None` leaves it to
    /// the engine, from the start (a part done here is simply done again).
    fn try_without_blocking(&mut self, op: Op, offset: u64, len: u64) -> Option<Outcome> {
        let write = op == Op::Write;
        let iov = &self.iovecs.0;
        if !self.engines.any() || !self.nowait[usize::from(write)] || iov.is_empty() {
            return None;
        }
        let count = libc::c_int::try_from(iov.len())
            .ok()
            .filter(|&n| n as usize <= IOV_MAX)?;
        let at = libc::off_t::try_from(offset).ok()?;
        let fd = self.file.as_raw_fd();
        // SAFETY: the iovecs describe guest memory checked by `build_iovecs`, writable by the
        // device for a read; the kernel returns at once rather than wait.
        let n = unsafe {
            if write {
                libc::pwritev2(fd, iov.as_ptr(), count, at, libc::RWF_NOWAIT)
            } else {
                libc::preadv2(fd, iov.as_ptr(), count, at, libc::RWF_NOWAIT)
            }
        };
        if n >= 0 && n as u64 == len {
            self.counters.nowait_ops += 1;
            self.iovecs.0.clear();
            return Some(self.account(op, len, Ok(())));
        }
        if n < 0 {
            let errno = io::Error::last_os_error().raw_os_error();
            if matches!(errno, Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) {
                // This file system cannot (e.g. ext4's buffered writes): stop asking.
                self.nowait[usize::from(write)] = false;
            }
        }
        None
    }

    /// Runs a read, write or flush of `self.iovecs` at `offset` on this thread.
    fn run_now(&mut self, op: Op, offset: u64) -> Outcome {
        let fd = self.file.as_raw_fd();
        let (moved, result) = match op {
            Op::Read | Op::Write => rw_vectored(fd, &mut self.iovecs.0, offset, op == Op::Write),
            Op::Flush => (0, retry_eintr(|| self.file.sync_data())),
        };
        self.account(op, moved as u64, result)
    }

    /// Counts a finished read, write or flush that moved `moved` bytes, and gives its
    /// outcome (a read reports the bytes it put in guest memory, even when it failed).
    fn account(&mut self, op: Op, moved: u64, result: io::Result<()>) -> Outcome {
        match op {
            Op::Read => self.counters.read_bytes += moved,
            Op::Write => self.counters.write_bytes += moved,
            Op::Flush => {}
        }
        // Bounded by the chain length, which virtio-queue caps at 4 GiB.
        let written = if op == Op::Read {
            u32::try_from(moved).unwrap_or(u32::MAX)
        } else {
            0
        };
        match result {
            Ok(()) => {
                match op {
                    Op::Read => self.counters.read_ops += 1,
                    Op::Write => self.counters.write_ops += 1,
                    Op::Flush => {}
                }
                (VIRTIO_BLK_S_OK as u8, written)
            }
            Err(e) if op == Op::Flush => {
                warn!("virtio-blk: flush failed: {e}");
                (VIRTIO_BLK_S_IOERR as u8, 0)
            }
            Err(e) => {
                debug!("virtio-blk: {op:?} failed: {e}");
                (VIRTIO_BLK_S_IOERR as u8, written)
            }
        }
    }

    /// Finishes a request the ring completed: counts it, writes its status, and gives the
    /// queue, head and used length to return it with.
    pub(super) fn complete(
        &mut self,
        mem: &GuestMemoryMmap,
        done: Completion<Pending>,
    ) -> (u16, u16, u32) {
        let (moved, result) = match done.result {
            Ok(n) => (n, Ok(())),
            Err(e) => (0, Err(e)),
        };
        let (status, written) = self.account(done.op, moved, result);
        if status != VIRTIO_BLK_S_OK as u8 {
            self.counters.errors += 1;
        }
        let mut iovecs = done.iovecs;
        iovecs.clear();
        if iovecs.capacity() <= IOV_MAX && self.spare_iovecs.len() < SPARE_IOVECS {
            self.spare_iovecs.push(IoVecs(iovecs));
        }
        // The address was checked when the request was read; the store is ordered before
        // the used index as in `process_chain`.
        let _ = mem.store(status, done.tag.status, Ordering::Relaxed);
        (done.tag.queue, done.tag.head, written.saturating_add(1))
    }

    /// Validates and runs the request described by `self.descs` and `layout`.
    pub(super) fn execute(&mut self, mem: &GuestMemoryMmap, layout: &Layout) -> Outcome {
        const IOERR: Outcome = (VIRTIO_BLK_S_IOERR as u8, 0);
        const UNSUPP: Outcome = (VIRTIO_BLK_S_UNSUPP as u8, 0);
        // Left to the ring (`self.deferred` says how): the status comes with the completion.
        const DEFERRED: Outcome = (VIRTIO_BLK_S_OK as u8, 0);

        // Device-readable descriptors must all come before device-writable ones.
        if layout.misordered {
            debug!("virtio-blk: device-readable descriptor after a device-writable one");
            return IOERR;
        }
        let (readable, writable) = (layout.readable, layout.writable);
        let header = if readable < HEADER_SIZE {
            None
        } else {
            self.read_header(mem)
        };
        let Some((req_type, sector)) = header else {
            debug!("virtio-blk: request header missing, short or unreadable");
            return IOERR;
        };
        // `writable` >= 1: the status byte was found.
        let in_len = writable - 1;
        let out_len = readable - HEADER_SIZE;

        match req_type {
            VIRTIO_BLK_T_IN => {
                if out_len != 0 {
                    debug!("virtio-blk: read request with device-readable data buffers");
                    return IOERR;
                }
                let Some(offset) = self.check_range(sector, in_len) else {
                    return IOERR;
                };
                if !self.build_iovecs(mem, true, 0, in_len) {
                    return IOERR;
                }
                if let Some(done) = self.try_without_blocking(Op::Read, offset, in_len) {
                    return done;
                }
                if self.defer(Op::Read, offset, in_len) {
                    return DEFERRED;
                }
                self.run_now(Op::Read, offset)
            }
            VIRTIO_BLK_T_OUT => {
                if self.readonly {
                    return IOERR;
                }
                if in_len != 0 {
                    debug!("virtio-blk: write request with device-writable data buffers");
                    return IOERR;
                }
                let Some(offset) = self.check_range(sector, out_len) else {
                    return IOERR;
                };
                if !self.build_iovecs(mem, false, HEADER_SIZE, out_len) {
                    return IOERR;
                }
                if let Some(done) = self.try_without_blocking(Op::Write, offset, out_len) {
                    return done;
                }
                if self.defer(Op::Write, offset, out_len) {
                    return DEFERRED;
                }
                self.run_now(Op::Write, offset)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.counters.flush_ops += 1;
                if self.defer(Op::Flush, 0, 0) {
                    return DEFERRED;
                }
                self.run_now(Op::Flush, 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                // A buffer smaller than the id gets what fits.
                let n = usize::try_from(in_len).map_or(ID_BYTES, |l| l.min(ID_BYTES));
                let id = self.id;
                if !self.write_stream(mem, 0, &id[..n]) {
                    return IOERR;
                }
                (VIRTIO_BLK_S_OK as u8, n as u32)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if self.readonly {
                    return IOERR;
                }
                let discard = req_type == VIRTIO_BLK_T_DISCARD;
                if (discard && !self.discard) || (!discard && !self.write_zeroes) {
                    return UNSUPP;
                }
                self.discard_or_zero(mem, discard, out_len, in_len)
            }
            other => {
                debug!("virtio-blk: unsupported request type {other}");
                UNSUPP
            }
        }
    }

    /// The byte offset of `sector` if `len` bytes from it are whole sectors within the disk.
    pub(super) fn check_range(&self, sector: u64, len: u64) -> Option<u64> {
        if len & (SECTOR_SIZE - 1) != 0 {
            debug!("virtio-blk: data length {len} is not a multiple of {SECTOR_SIZE}");
            return None;
        }
        let end = sector.checked_add(len >> SECTOR_SHIFT)?;
        if end > self.capacity {
            debug!(
                "virtio-blk: sectors {sector}..{end} lie beyond the capacity {}",
                self.capacity
            );
            return None;
        }
        // Cannot overflow: capacity << 9 is the file length.
        Some(sector << SECTOR_SHIFT)
    }

    /// Fills `self.iovecs` with the guest memory of `len` bytes of the device-writable
    /// (`write`) or device-readable stream, starting `skip` bytes into it. False if any of it
    /// lies outside guest memory.
    pub(super) fn build_iovecs(
        &mut self,
        mem: &GuestMemoryMmap,
        write: bool,
        skip: u64,
        len: u64,
    ) -> bool {
        let iovecs = &mut self.iovecs.0;
        iovecs.clear();
        let perm = if write {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let ok = for_each_in_stream(&self.descs, write, skip, len, |addr, n| {
            // One region lookup when the piece lies in one region (the usual case).
            if let Ok(slice) = GuestMemoryBackend::get_slice(mem, addr, n) {
                iovecs.push(iovec_of(&slice, write));
                return true;
            }
            let Ok(slices) = GuestMemory::get_slices(mem, addr, n, perm) else {
                return false;
            };
            for slice in slices {
                let Ok(slice) = slice else {
                    return false;
                };
                iovecs.push(iovec_of(&slice, write));
            }
            true
        });
        if !ok {
            debug!("virtio-blk: data buffer outside guest memory");
        }
        ok
    }

    /// Reads `virtio_blk_outhdr` (type and sector) from the start of the device-readable
    /// stream: with two loads when it lies, aligned, in the first descriptor (the usual
    /// layout), through the general path otherwise.
    pub(super) fn read_header(&self, mem: &GuestMemoryMmap) -> Option<(u32, u64)> {
        if let Some(first) = self.descs.first().filter(|d| !d.write && d.len >= 16) {
            if let Ok(hdr) = GuestMemoryBackend::get_slice(mem, first.addr, 16) {
                // Both fail (and the general path is taken) if the header is misaligned.
                let req_type = hdr.load::<u32>(0, Ordering::Relaxed);
                let sector = hdr.load::<u64>(8, Ordering::Relaxed);
                if let (Ok(t), Ok(s)) = (req_type, sector) {
                    return Some((u32::from_le(t), u64::from_le(s)));
                }
            }
        }
        let mut hdr = [0u8; HEADER_SIZE as usize];
        if !self.read_stream(mem, 0, &mut hdr) {
            return None;
        }
        let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        Some((req_type, sector))
    }

    /// Copies bytes of the device-readable stream, from `skip`, into `out`.
    pub(super) fn read_stream(&self, mem: &GuestMemoryMmap, skip: u64, out: &mut [u8]) -> bool {
        let mut done = 0usize;
        for_each_in_stream(&self.descs, false, skip, out.len() as u64, |addr, n| {
            let buf = &mut out[done..done + n];
            done += n;
            // One region lookup in the usual case; the general path handles a piece that
            // straddles two regions.
            match GuestMemoryBackend::get_slice(mem, addr, n) {
                Ok(slice) => slice.copy_to(buf) == n,
                Err(_) => mem.read_slice(buf, addr).is_ok(),
            }
        })
    }

    /// Copies `data` into the device-writable stream from `skip`.
    pub(super) fn write_stream(&self, mem: &GuestMemoryMmap, skip: u64, data: &[u8]) -> bool {
        let mut done = 0usize;
        for_each_in_stream(&self.descs, true, skip, data.len() as u64, |addr, n| {
            let ok = mem.write_slice(&data[done..done + n], addr).is_ok();
            done += n;
            ok
        })
    }

    /// Runs a discard or write-zeroes request: `payload` bytes of 16-byte segments after the
    /// header, and no device-writable data besides the status (`in_len` must be 0).
    pub(super) fn discard_or_zero(
        &mut self,
        mem: &GuestMemoryMmap,
        discard: bool,
        payload: u64,
        in_len: u64,
    ) -> Outcome {
        const IOERR: Outcome = (VIRTIO_BLK_S_IOERR as u8, 0);
        const UNSUPP: Outcome = (VIRTIO_BLK_S_UNSUPP as u8, 0);
        let (max_seg, max_sectors) = if discard {
            (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
        } else {
            (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
        };
        if in_len != 0
            || payload == 0
            || payload & (SEGMENT_SIZE - 1) != 0
            || payload / SEGMENT_SIZE > u64::from(max_seg)
        {
            debug!("virtio-blk: malformed discard/write-zeroes payload of {payload} bytes");
            return IOERR;
        }
        for i in 0..payload / SEGMENT_SIZE {
            let mut seg = [0u8; SEGMENT_SIZE as usize];
            if !self.read_stream(mem, HEADER_SIZE + i * SEGMENT_SIZE, &mut seg) {
                return IOERR;
            }
            let sector = u64::from_le_bytes([
                seg[0], seg[1], seg[2], seg[3], seg[4], seg[5], seg[6], seg[7],
            ]);
            let num_sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            // Unknown flags, and the unmap flag on a discard, are unsupported (5.2.6.2).
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return UNSUPP;
            }
            if num_sectors > max_sectors {
                return IOERR;
            }
            let len = u64::from(num_sectors) << SECTOR_SHIFT;
            let Some(offset) = self.check_range(sector, len) else {
                return IOERR;
            };
            if len == 0 {
                continue;
            }
            let res = if discard {
                self.punch_hole(offset, len)
            } else {
                self.zero_range(offset, len, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)
            };
            if let Err(e) = res {
                debug!("virtio-blk: discard/write-zeroes at sector {sector} failed: {e}");
                return IOERR;
            }
        }
        self.counters.write_ops += 1;
        (VIRTIO_BLK_S_OK as u8, 0)
    }

    /// Discards a range: a hole reads back as zeros. A file that cannot hold holes ignores
    /// the hint.
    pub(super) fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        match falloc(&self.file, true, offset, len) {
            Err(e) if is_unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Zeroes a range: with `unmap`, by punching a hole if the file can hold one; otherwise
    /// (or if that fails) with `FALLOC_FL_ZERO_RANGE`, and failing that by writing zeros.
    pub(super) fn zero_range(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap && falloc(&self.file, true, offset, len).is_ok() {
            return Ok(());
        }
        match falloc(&self.file, false, offset, len) {
            Err(e) if is_unsupported(&e) => {}
            other => return other,
        }
        let fd = self.file.as_raw_fd();
        let mut offset = offset;
        let mut left = len;
        const CHUNKS: usize = 16;
        let zero_iov = libc::iovec {
            iov_base: ZEROS.0.as_ptr() as *mut libc::c_void,
            iov_len: ZEROS.0.len(),
        };
        while left > 0 {
            let mut iovs = [zero_iov; CHUNKS];
            let want = left.min((CHUNKS * ZEROS.0.len()) as u64);
            let mut rem = want;
            let mut count = 0;
            for iov in iovs.iter_mut() {
                if rem == 0 {
                    break;
                }
                iov.iov_len = rem.min(ZEROS.0.len() as u64) as usize;
                rem -= iov.iov_len as u64;
                count += 1;
            }
            // `pwritev` only reads from the iovecs' memory (the static zeros).
            let (done, res) = rw_vectored(fd, &mut iovs[..count], offset, true);
            res?;
            offset += done as u64;
            left -= done as u64;
        }
        Ok(())
    }
}

/// Calls `f(addr, len)` for each piece of `len` bytes of the device-writable (`write`) or
/// device-readable stream of `descs`, starting `skip` bytes in. False if `f` fails, an address
/// overflows, or the stream is shorter than `skip + len`.
pub(super) fn for_each_in_stream(
    descs: &[Seg],
    write: bool,
    mut skip: u64,
    mut len: u64,
    mut f: impl FnMut(GuestAddress, usize) -> bool,
) -> bool {
    for s in descs.iter().filter(|s| s.write == write) {
        if len == 0 {
            break;
        }
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let take = (seg_len - skip).min(len);
        let Some(addr) = s.addr.checked_add(skip) else {
            return false;
        };
        // `take` <= u32::MAX, so it fits a usize.
        if !f(addr, take as usize) {
            return false;
        }
        skip = 0;
        len -= take;
    }
    len == 0
}

/// Reads (or writes) the whole of `iovecs` at `offset` with as few `preadv`/`pwritev` calls
/// as possible, resuming after short transfers and `EINTR`. Returns the bytes transferred and
/// whether all were. `iovecs` is consumed (advanced) in place.
pub(super) fn rw_vectored(
    fd: libc::c_int,
    iovecs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> (usize, io::Result<()>) {
    let mut total = 0usize;
    let mut idx = 0usize;
    while idx < iovecs.len() {
        if iovecs[idx].iov_len == 0 {
            idx += 1;
            continue;
        }
        let count = (iovecs.len() - idx).min(IOV_MAX);
        let Ok(off) = libc::off_t::try_from(offset) else {
            return (total, Err(io::Error::from_raw_os_error(libc::EOVERFLOW)));
        };
        let iov = iovecs[idx..].as_ptr();
        let ret = if count == 1 {
            // One segment (the common 4 KiB case): plain pread/pwrite spare the kernel the
            // iovec import.
            let one = iovecs[idx];
            if write {
                // SAFETY: `one` describes mapped memory (guest memory held by the device, or
                // static zeros) of `iov_len` bytes, valid for the call's duration.
                unsafe { libc::pwrite(fd, one.iov_base, one.iov_len, off) }
            } else {
                // SAFETY: as above; the memory is writable guest memory (checked with
                // `Permissions::Write`), which the guest expects the device to overwrite.
                unsafe { libc::pread(fd, one.iov_base, one.iov_len, off) }
            }
        } else if write {
            // SAFETY: `iov` points to `count` initialized iovecs; each describes memory that is
            // mapped (guest memory held by the device, or static zeros) for the call's duration.
            unsafe { libc::pwritev(fd, iov, count as libc::c_int, off) }
        } else {
            // SAFETY: as above; the memory is writable guest memory (checked with
            // `Permissions::Write`), which the guest expects the device to overwrite.
            unsafe { libc::preadv(fd, iov, count as libc::c_int, off) }
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (total, Err(e));
        }
        if ret == 0 {
            // End of file (the file shrank) or a device that accepts nothing more.
            let kind = if write {
                io::ErrorKind::WriteZero
            } else {
                io::ErrorKind::UnexpectedEof
            };
            return (total, Err(kind.into()));
        }
        let mut n = ret as usize;
        total += n;
        offset += n as u64;
        while n > 0 && idx < iovecs.len() {
            let iov = &mut iovecs[idx];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                idx += 1;
            } else {
                // SAFETY: `n` < `iov_len`, so the advanced pointer stays inside the buffer.
                iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
    (total, Ok(()))
}

/// `fallocate` (`FALLOC_FL_PUNCH_HOLE` or `FALLOC_FL_ZERO_RANGE`) with `FALLOC_FL_KEEP_SIZE`,
/// retried on `EINTR`.
pub(super) fn falloc(file: &File, punch: bool, offset: u64, len: u64) -> io::Result<()> {
    retry_eintr(|| {
        let mode = if punch {
            FallocateMode::PunchHole
        } else {
            FallocateMode::ZeroRange
        };
        fallocate(file, mode, true, offset, len)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    })
}

pub(super) fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::ENODEV)
    )
}

pub(super) fn retry_eintr(mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
