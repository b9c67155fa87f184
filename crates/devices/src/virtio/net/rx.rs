//! Receive: frames read from the tap into the chains the driver posted, mergeable buffers included, without ever spinning while the guest posts none.

use super::*;

/// Puts a chain on the used ring of queue `index`; true if it was.
pub(super) fn return_chain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: u16,
    head: u16,
    len: u32,
    warned: &mut bool,
) -> bool {
    let name = format_args!("virtio-net queue {index}");
    queue::return_chain(queue, mem, head, len, name, warned)
}

/// Calls `f` for each slice of guest memory making up `len` bytes at `addr` (one, unless
/// the buffer straddles regions). False if any of it lies outside guest memory.
pub(super) fn for_each_slice(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    mut f: impl FnMut(GuestAddress, &VolatileSlice<'_, ()>),
) -> bool {
    // One region lookup in the usual case.
    if let Ok(slice) = GuestMemoryBackend::get_slice(mem, addr, len) {
        f(addr, &slice);
        return true;
    }
    let mut at = addr;
    let mut seen = 0usize;
    for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
        let Ok(slice) = slice else {
            return false;
        };
        f(at, &slice);
        seen += slice.len();
        let Some(next) = at.checked_add(slice.len() as u64) else {
            return false;
        };
        at = next;
    }
    seen == len
}

/// Writes `data` at `offset` into the bytes of a receive chain.
pub(super) fn write_chain(
    mem: &GuestMemoryMmap,
    pieces: &[Piece],
    mut offset: usize,
    data: &[u8],
) -> bool {
    let mut done = 0usize;
    for p in pieces {
        if done == data.len() {
            break;
        }
        if offset >= p.len {
            offset -= p.len;
            continue;
        }
        let n = (p.len - offset).min(data.len() - done);
        let Some(addr) = p.addr.checked_add(offset as u64) else {
            return false;
        };
        if mem.write_slice(&data[done..done + n], addr).is_err() {
            return false;
        }
        done += n;
        offset = 0;
    }
    done == data.len()
}

/// Checks a receive chain and records its buffers in `out`.
pub(super) fn parse_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    out: &mut RxChain,
) -> Result<(), &'static str> {
    out.head = chain.head_index();
    out.cap = 0;
    out.pieces.clear();
    for d in chain {
        if !d.is_write_only() {
            return Err("device-readable descriptor in a receive chain");
        }
        let len = d.len() as usize;
        if len == 0 {
            continue;
        }
        let pieces = &mut out.pieces;
        if !for_each_slice(mem, d.addr(), len, |addr, s| {
            pieces.push(Piece { addr, len: s.len() })
        }) {
            return Err("receive buffer outside guest memory");
        }
        // Leave room in one read for the scratch area.
        if out.pieces.len() >= IOV_MAX {
            return Err("receive chain of more than 1023 buffers");
        }
        out.cap += len;
    }
    if out.cap < VNET_HDR_SIZE {
        return Err("receive chain smaller than the 12-byte header");
    }
    Ok(())
}

/// What the receive path works with.
pub(super) struct RxCtx<'a> {
    pub(super) mem: &'a GuestMemoryMmap,
    pub(super) fd: RawFd,
    pub(super) tap: &'a str,
    pub(super) counters: &'a mut Counters,
    pub(super) iov: &'a mut Vec<libc::iovec>,
    pub(super) warned: &'a mut bool,
    pub(super) host_warned: &'a mut bool,
    pub(super) mrg: bool,
    pub(super) want: usize,
    /// Each frame takes an operation before it is read, and its bytes after.
    pub(super) limiter: Option<&'a mut crate::rate_limiter::RateLimiter>,
}

/// Outcome of one read.
pub(super) enum Step {
    /// A frame went to the driver.
    Delivered,
    /// Go on (a frame was dropped, or is pending).
    Again,
    /// The tap is empty, or failed.
    Stop,
}

/// Outcome of completing a pending frame.
pub(super) enum Finish {
    Done,
    Dropped,
    NeedBuffers,
}

impl RxQueue {
    pub(super) fn new(q: ActiveQueue, mrg: bool) -> RxQueue {
        RxQueue {
            index: q.index,
            queue: q.queue,
            notify: q.notify,
            ready: VecDeque::new(),
            spare: Vec::new(),
            pending: None,
            scratch: vec![0; if mrg { MAX_BUFFER_SIZE } else { SMALL_SCRATCH }],
            rejected: Vec::new(),
            large_left: 0,
        }
    }

    /// Reads frames until the tap is empty or the buffers run out. True if any chain was
    /// returned to the used ring.
    pub(super) fn run(&mut self, cx: &mut RxCtx<'_>) -> bool {
        let mut completed = false;
        let mut rechecks = 0u32;
        loop {
            if self.pending.is_some() {
                if self.refill(cx, &mut completed) > 0 {
                    rechecks = 0;
                }
                match self.finish_pending(cx) {
                    Finish::Done => completed = true,
                    Finish::Dropped => {}
                    Finish::NeedBuffers => {
                        if self.await_buffers(cx, &mut rechecks) {
                            continue;
                        }
                        return completed;
                    }
                }
                continue;
            }
            // Take what the driver added since (one load of the avail index when nothing
            // was), so that a frame can use every buffer there is.
            if self.refill(cx, &mut completed) > 0 {
                rechecks = 0;
            }
            if self.ready.is_empty() {
                if self.await_buffers(cx, &mut rechecks) {
                    continue;
                }
                return completed;
            }
            if let Some(l) = cx.limiter.as_deref_mut() {
                if !l.admit(0) {
                    // The frames stay in the tap; the limiter's timer brings us back.
                    return completed;
                }
            }
            let before = cx.counters.rx_bytes;
            let step = self.read_frame(cx);
            if let Some(l) = cx.limiter.as_deref_mut() {
                l.charge(cx.counters.rx_bytes - before);
            }
            match step {
                Step::Delivered => completed = true,
                Step::Again => {}
                Step::Stop => break,
            }
        }
        // The tap is drained and buffers remain: no notification is needed until they run
        // out (a no-op with EVENT_IDX).
        if let Err(e) = self.queue.disable_notification(cx.mem) {
            let msg = format_args!(
                "virtio-net queue {}: cannot disable notifications: {e}",
                self.index
            );
            guest_error(cx.warned, msg);
        }
        completed
    }

    /// Out of buffers: asks the driver to notify the queue when it adds some. True if it
    /// added some meanwhile (look again), false to stop until the notification.
    pub(super) fn await_buffers(&mut self, cx: &mut RxCtx<'_>, rechecks: &mut u32) -> bool {
        match self.queue.enable_notification(cx.mem) {
            // Bounded, in case the ring cannot be read (which would make this spin).
            Ok(true) if *rechecks < 2 => {
                *rechecks += 1;
                true
            }
            Ok(_) => false,
            Err(e) => {
                let msg = format_args!(
                    "virtio-net queue {}: cannot enable notifications: {e}",
                    self.index
                );
                guest_error(cx.warned, msg);
                false
            }
        }
    }

    /// Takes the chains the driver published (up to the ring's size held at once); returns
    /// how many were taken. Malformed ones go straight back to the used ring.
    pub(super) fn refill(&mut self, cx: &mut RxCtx<'_>, completed: &mut bool) -> usize {
        let RxQueue {
            index,
            queue,
            ready,
            spare,
            pending,
            rejected,
            ..
        } = self;
        let limit = usize::from(queue.size());
        let filled = pending.as_ref().map_or(0, |p| p.filled.len());
        if ready.len() + filled >= limit {
            return 0;
        }
        let mut taken = 0;
        rejected.clear();
        {
            let mut chains = match queue.iter(cx.mem) {
                Ok(chains) => chains,
                Err(e) => {
                    guest_error(cx.warned, format_args!("virtio-net queue {index}: {e}"));
                    return 0;
                }
            };
            while ready.len() + filled < limit {
                let Some(chain) = chains.next() else {
                    break;
                };
                taken += 1;
                let mut c = spare.pop().unwrap_or_default();
                match parse_rx_chain(cx.mem, chain, &mut c) {
                    Ok(()) => ready.push_back(c),
                    Err(why) => {
                        cx.counters.errors += 1;
                        guest_error(cx.warned, format_args!("virtio-net queue {index}: {why}"));
                        rejected.push(c.head);
                        spare.push(c);
                    }
                }
            }
        }
        for &head in rejected.iter() {
            *completed |= return_chain(queue, cx.mem, *index, head, 0, cx.warned);
        }
        taken
    }

    /// Reads one frame into the chains at the front of `ready` (and the scratch area).
    pub(super) fn read_frame(&mut self, cx: &mut RxCtx<'_>) -> Step {
        let iov = &mut *cx.iov;
        iov.clear();
        let mut given = 0usize;
        let mut chains = 0usize;
        let mut broken = None;
        let want = if self.large_left > 0 {
            cx.want
        } else {
            cx.want.min(RX_WANT_SMALL)
        };
        for (i, c) in self.ready.iter().enumerate() {
            if chains > 0 && (!cx.mrg || given >= want || iov.len() + c.pieces.len() >= IOV_MAX) {
                break;
            }
            for p in &c.pieces {
                match GuestMemoryBackend::get_slice(cx.mem, p.addr, p.len) {
                    Ok(s) => iov.push(iovec_of(&s, true)),
                    Err(_) => broken = Some(i),
                }
            }
            if broken.is_some() {
                break;
            }
            given += c.cap;
            chains += 1;
        }
        if let Some(i) = broken {
            // Cannot happen (the pieces were checked against the same memory), but never
            // read into a chain that is not all there: return it empty.
            iov.clear();
            if let Some(c) = self.ready.remove(i) {
                cx.counters.errors += 1;
                return_chain(&mut self.queue, cx.mem, self.index, c.head, 0, cx.warned);
                self.spare.push(c);
            }
            return Step::Again;
        }
        iov.push(libc::iovec {
            iov_base: self.scratch.as_mut_ptr() as *mut libc::c_void,
            iov_len: self.scratch.len(),
        });
        // SAFETY: every iovec describes writable memory that stays valid for the call: guest
        // memory checked when the chain was taken (mapped while the device holds `mem`, and
        // given by the driver for the device to fill), and the scratch area, which `self`
        // owns and nothing else borrows during the call.
        let ret = unsafe { libc::readv(cx.fd, iov.as_ptr(), iov.len() as libc::c_int) };
        iov.clear();
        if ret < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Step::Stop,
                io::ErrorKind::Interrupted => Step::Again,
                _ => {
                    cx.counters.errors += 1;
                    host_error(
                        cx.host_warned,
                        format_args!("virtio-net: tap {}: cannot receive: {e}", cx.tap),
                    );
                    Step::Stop
                }
            };
        }
        let n = ret as usize;
        if n > RX_WANT_SMALL {
            self.large_left = RX_LARGE_STICKY;
        } else {
            self.large_left = self.large_left.saturating_sub(1);
        }
        if n < VNET_HDR_SIZE {
            // Not a frame the tap can produce; stop rather than spin on it.
            cx.counters.errors += 1;
            host_error(
                cx.host_warned,
                format_args!("virtio-net: tap {}: read of {n} bytes", cx.tap),
            );
            return if n == 0 { Step::Stop } else { Step::Again };
        }
        if n <= given {
            self.deliver(cx, n);
            return Step::Delivered;
        }
        if cx.mrg && n - given <= self.scratch.len() {
            // Wait for more chains for the rest of the frame.
            let mut filled = Vec::with_capacity(chains + 4);
            for _ in 0..chains {
                if let Some(c) = self.ready.pop_front() {
                    let cap = c.cap;
                    filled.push((c, cap));
                }
            }
            self.pending = Some(Pending {
                filled,
                overflow: n - given,
                copied: 0,
            });
            return Step::Again;
        }
        // Too large for the buffers: the chains stay for the next frame.
        cx.counters.rx_dropped += 1;
        debug!(
            "virtio-net queue {}: dropped a {n}-byte frame larger than the receive buffers ({given} bytes)",
            self.index
        );
        Step::Again
    }

    /// Hands a frame of `len` bytes (header included), read into the front chains, to the
    /// driver.
    pub(super) fn deliver(&mut self, cx: &mut RxCtx<'_>, len: usize) {
        let mut left = len;
        let mut count = 0usize;
        while left > 0 {
            let Some(c) = self.ready.get(count) else {
                break;
            };
            left -= c.cap.min(left);
            count += 1;
        }
        if let Some(first) = self.ready.front() {
            let num = (count as u16).to_le_bytes();
            if !write_chain(cx.mem, &first.pieces, NUM_BUFFERS_OFFSET, &num) {
                cx.counters.errors += 1;
            }
        }
        let mut left = len;
        for _ in 0..count {
            let Some(c) = self.ready.pop_front() else {
                break;
            };
            let n = c.cap.min(left);
            left -= n;
            return_chain(
                &mut self.queue,
                cx.mem,
                self.index,
                c.head,
                n as u32,
                cx.warned,
            );
            self.spare.push(c);
        }
        cx.counters.rx_frames += 1;
        cx.counters.rx_bytes += (len - VNET_HDR_SIZE) as u64;
    }

    /// Copies the rest of a pending frame into further chains, and hands it to the driver
    /// once it is all there.
    pub(super) fn finish_pending(&mut self, cx: &mut RxCtx<'_>) -> Finish {
        let RxQueue {
            index,
            queue,
            ready,
            spare,
            pending,
            scratch,
            ..
        } = self;
        let Some(p) = pending.as_mut() else {
            return Finish::Done;
        };
        while p.copied < p.overflow {
            let Some(c) = ready.pop_front() else {
                if p.filled.len() >= usize::from(queue.size()) {
                    // The ring can never hold this frame: drop it, keep the chains.
                    for (c, _) in p.filled.drain(..).rev() {
                        ready.push_front(c);
                    }
                    *pending = None;
                    cx.counters.rx_dropped += 1;
                    debug!("virtio-net queue {index}: dropped a frame larger than the whole ring");
                    return Finish::Dropped;
                }
                return Finish::NeedBuffers;
            };
            let n = c.cap.min(p.overflow - p.copied);
            let Some(data) = scratch.get(p.copied..p.copied + n) else {
                // Cannot happen: `overflow` <= the scratch size.
                ready.push_front(c);
                *pending = None;
                cx.counters.rx_dropped += 1;
                return Finish::Dropped;
            };
            if !write_chain(cx.mem, &c.pieces, 0, data) {
                cx.counters.errors += 1;
                return_chain(queue, cx.mem, *index, c.head, 0, cx.warned);
                spare.push(c);
                continue;
            }
            p.copied += n;
            p.filled.push((c, n));
        }
        let Some(p) = pending.take() else {
            return Finish::Done;
        };
        if let Some((first, _)) = p.filled.first() {
            let num = (p.filled.len() as u16).to_le_bytes();
            if !write_chain(cx.mem, &first.pieces, NUM_BUFFERS_OFFSET, &num) {
                cx.counters.errors += 1;
            }
        }
        let mut total = 0usize;
        for (c, n) in p.filled {
            total += n;
            return_chain(queue, cx.mem, *index, c.head, n as u32, cx.warned);
            spare.push(c);
        }
        cx.counters.rx_frames += 1;
        cx.counters.rx_bytes += total.saturating_sub(VNET_HDR_SIZE) as u64;
        Finish::Done
    }
}
