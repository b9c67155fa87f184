//! Virtio entropy device (virtio 1.x, section 5.4) fed from a host file.
//!
//! The device has one request queue. The driver posts device-writable buffers; the device
//! fills them with bytes read from its source (normally `/dev/urandom`, opened by the caller
//! before any sandboxing) and returns each chain with the number of bytes it wrote.
//!
//! Bytes are read from the source straight into guest memory (through vm-memory's
//! bounds-checked slices), one descriptor after the other, resuming after short reads. A
//! chain gets a contiguous prefix of its writable bytes: filling stops at the first
//! descriptor that cannot be filled completely (end of the source, a read error, a buffer
//! outside guest memory, or the per-chain cap), and the used length says how far it got.
//!
//! What a guest controls is bounded:
//! - a chain holding any device-readable descriptor is malformed (the spec only allows
//!   device-writable buffers on this queue): it is returned with length 0, untouched;
//! - at most [`MAX_CHAIN_BYTES`] are written into one chain (the spec lets the device use
//!   less than the whole buffer);
//! - at most [`MAX_BYTES_PER_CALL`] bytes and [`MAX_CHAINS_PER_CALL`] chains are served per
//!   notification. When either budget runs out with requests still pending, the device
//!   re-arms its own queue notification, so the VMM thread serves its other events first
//!   and then comes back to this queue.

use std::fs::File;
use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions, ReadVolatile,
    VolatileMemoryError,
};

use super::{
    ActivateError, ActiveQueue, InterruptCause, VirtioDevice, VirtioInterrupt, F_RING_EVENT_IDX,
    F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_RNG,
};

/// Largest size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes written into one chain.
pub const MAX_CHAIN_BYTES: u32 = 64 * 1024;
/// Most bytes served per queue notification before the device yields to other events.
pub const MAX_BYTES_PER_CALL: u64 = 1024 * 1024;
/// Most chains served per queue notification before the device yields to other events.
pub const MAX_CHAINS_PER_CALL: u32 = 1024;

/// Statistics, reported by [`VirtioDevice::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    /// Random bytes written into guest buffers.
    bytes: u64,
    /// Chains returned to the driver (well-formed or not).
    requests: u64,
    /// Malformed chains, buffers outside guest memory, and source failures.
    errors: u64,
}

/// One (device-writable) descriptor of the chain being served.
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: GuestAddress,
    len: u32,
}

/// What the activated device holds.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: ActiveQueue,
    /// A driver error was logged at warning level (later ones go to debug).
    warned: bool,
}

/// The source and the per-request state (everything a request needs besides the queue).
struct Source {
    file: File,
    /// A failure of the source was logged at warning level (later ones go to debug).
    warned: bool,
    descs: Vec<Seg>,
    /// (head, used length) of the chains served in the current pass over the ring.
    completions: Vec<(u16, u32)>,
    counters: Counters,
}

/// Logs a driver error at warning level the first time, at debug level afterwards.
fn guest_error(warned: &mut bool, args: std::fmt::Arguments<'_>) {
    if *warned {
        debug!("{args}");
    } else {
        *warned = true;
        warn!("{args} (further driver errors are logged at debug level)");
    }
}

/// A virtio-rng device model.
///
/// Create it with [`Rng::new`] from an open source file and hand it (as a [`VirtioDevice`])
/// to a virtio transport. See the module documentation for how requests are served.
pub struct Rng {
    source: Source,
    acked_features: u64,
    active: Option<Active>,
}

impl Rng {
    /// Creates an entropy device that reads from `source`, which the caller opened for
    /// reading (for example `/dev/urandom`). The file is kept open for the device's life,
    /// across driver resets, so that it can be opened before the process confines itself.
    ///
    /// The source should not block: `/dev/urandom` (or `/dev/random` on Linux 5.6 and later,
    /// once seeded) never does. A regular file works too; once its end is reached, requests
    /// are returned with length 0.
    pub fn new(source: File) -> Rng {
        Rng {
            source: Source {
                file: source,
                warned: false,
                descs: Vec::new(),
                completions: Vec::new(),
                counters: Counters::default(),
            },
            acked_features: 0,
            active: None,
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "virtio-rng: ignoring a {}-byte configuration write at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & F_RING_EVENT_IDX != 0;
        let mut request = None;
        for mut q in queues {
            if q.index != 0 {
                return Err(ActivateError::Invalid(format!(
                    "virtio-rng has one queue; queue {} does not exist",
                    q.index
                )));
            }
            if request.is_some() {
                return Err(ActivateError::Invalid(
                    "virtio-rng queue 0 was given twice".into(),
                ));
            }
            if !q.queue.ready() {
                continue;
            }
            if !q.queue.is_valid(&mem) {
                return Err(ActivateError::Invalid(format!(
                    "virtio-rng queue 0 (size {}) lies outside guest memory or is misaligned",
                    q.queue.size()
                )));
            }
            q.queue.set_event_idx(event_idx);
            request = Some(q);
        }
        let Some(queue) = request else {
            return Err(ActivateError::Invalid(
                "virtio-rng activated without its request queue enabled".into(),
            ));
        };
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
            warned: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    fn process_queue(&mut self, index: u16) {
        let Rng { source, active, .. } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        if index != 0 {
            return;
        }
        let Active {
            mem,
            interrupt,
            queue: aq,
            warned,
        } = active;
        // Clear the notification (the eventfd is non-blocking: EAGAIN when already clear).
        let _ = aq.notify.read();
        let queue = &mut aq.queue;
        let mem: &GuestMemoryMmap = mem;

        let mut bytes_left = MAX_BYTES_PER_CALL;
        let mut chains_left = MAX_CHAINS_PER_CALL;
        let mut out_of_budget = false;
        let mut completed = false;
        let mut idle_passes = 0;
        'outer: loop {
            if let Err(e) = queue.disable_notification(mem) {
                let msg = format_args!("virtio-rng queue 0: cannot disable notifications: {e}");
                guest_error(warned, msg);
            }
            loop {
                source.completions.clear();
                match queue.iter(mem) {
                    Ok(mut chains) => {
                        while bytes_left > 0 && chains_left > 0 {
                            let Some(chain) = chains.next() else {
                                break;
                            };
                            let head = chain.head_index();
                            let cap = bytes_left.min(u64::from(MAX_CHAIN_BYTES)) as u32;
                            let len = source.serve(mem, chain, cap);
                            bytes_left -= u64::from(len);
                            chains_left -= 1;
                            source.completions.push((head, len));
                        }
                    }
                    Err(e) => {
                        // An impossible avail index: stop until the next notification.
                        guest_error(warned, format_args!("virtio-rng queue 0: {e}"));
                        break 'outer;
                    }
                }
                for &(head, len) in &source.completions {
                    match queue.add_used(mem, head, len) {
                        Ok(()) => completed = true,
                        Err(e) => guest_error(
                            warned,
                            format_args!("virtio-rng queue 0: cannot return chain {head}: {e}"),
                        ),
                    }
                }
                if bytes_left == 0 || chains_left == 0 {
                    // Whatever is left is served on the next call, which the re-armed
                    // notification below brings about.
                    out_of_budget = true;
                    break 'outer;
                }
                if source.completions.is_empty() {
                    break;
                }
                idle_passes = 0;
            }
            match queue.enable_notification(mem) {
                Ok(true) if idle_passes < 2 => idle_passes += 1,
                Ok(_) => break,
                Err(e) => {
                    let msg = format_args!("virtio-rng queue 0: cannot enable notifications: {e}");
                    guest_error(warned, msg);
                    break;
                }
            }
        }
        if out_of_budget {
            // Come back later without waiting for the driver (which may not notify again).
            if let Err(e) = aq.notify.write(1) {
                warn!("virtio-rng: cannot re-arm the queue notification: {e}");
            }
        }
        if completed && needs_interrupt(&mut aq.queue, mem) {
            interrupt.trigger(InterruptCause::Queue(0));
        }
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.source.counters;
        let mut m = serde_json::Map::new();
        for (name, value) in [
            ("bytes", c.bytes),
            ("requests", c.requests),
            ("errors", c.errors),
        ] {
            m.insert(name.into(), value.into());
        }
        m
    }
}

/// Whether the driver wants an interrupt for the used buffers just added: with EVENT_IDX,
/// when `used_event` was crossed; without it, unless the driver set `VRING_AVAIL_F_NO_INTERRUPT`.
fn needs_interrupt(queue: &mut virtio_queue::Queue, mem: &GuestMemoryMmap) -> bool {
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem).unwrap_or(true);
    }
    // Make the used index visible before reading the driver's flags.
    fence(Ordering::SeqCst);
    match mem.load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Relaxed) {
        Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0,
        Err(_) => true,
    }
}

impl Source {
    /// Fills the device-writable buffers of one chain, up to `cap` bytes. Returns the used
    /// length: the bytes written, from the start of the chain's writable part.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        cap: u32,
    ) -> u32 {
        self.counters.requests += 1;
        self.descs.clear();
        let mut readable = false;
        for d in chain {
            readable |= !d.is_write_only();
            self.descs.push(Seg {
                addr: d.addr(),
                len: d.len(),
            });
        }
        if self.descs.capacity() > usize::from(QUEUE_SIZE) * 4 {
            self.descs.shrink_to(usize::from(QUEUE_SIZE) * 4);
        }
        if readable {
            debug!("virtio-rng: request with a device-readable descriptor");
            self.counters.errors += 1;
            return 0;
        }
        let mut written = 0u32;
        for i in 0..self.descs.len() {
            let seg = self.descs[i];
            let want = seg.len.min(cap - written);
            if want == 0 {
                continue;
            }
            let got = self.fill(mem, seg.addr, want as usize);
            // `got` <= `want`, so the sum stays within `cap`.
            written += got as u32;
            if got < want as usize || written == cap {
                break;
            }
        }
        // A request that got nothing (no writable bytes, a buffer outside guest memory, a
        // failed or exhausted source) is an error; a partly filled one is not.
        if written == 0 {
            self.counters.errors += 1;
        }
        self.counters.bytes += u64::from(written);
        written
    }

    /// Reads `len` bytes from the source into guest memory at `addr`, resuming after short
    /// reads. Returns how many bytes were written: fewer than `len` when the source ends or
    /// fails, or when the range leaves guest memory.
    fn fill(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> usize {
        let Ok(slices) = GuestMemory::get_slices(mem, addr, len, Permissions::Write) else {
            debug!("virtio-rng: buffer at {:#x} outside guest memory", addr.0);
            return 0;
        };
        let mut done = 0usize;
        for slice in slices {
            let Ok(slice) = slice else {
                debug!("virtio-rng: buffer at {:#x} leaves guest memory", addr.0);
                return done;
            };
            let mut off = 0usize;
            while off < slice.len() {
                let Ok(mut rest) = slice.offset(off) else {
                    return done;
                };
                match (&self.file).read_volatile(&mut rest) {
                    Ok(0) => {
                        self.source_error(format_args!("the source has no more bytes"));
                        return done;
                    }
                    Ok(n) => {
                        // A read never returns more than asked for; stay safe if it did.
                        let n = n.min(rest.len());
                        off += n;
                        done += n;
                    }
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.source_error(format_args!("reading the source failed: {e}"));
                        return done;
                    }
                }
            }
        }
        done
    }

    /// Logs a host-side failure at warning level the first time, at debug level afterwards.
    fn source_error(&mut self, args: std::fmt::Arguments<'_>) {
        if self.warned {
            debug!("virtio-rng: {args}");
        } else {
            self.warned = true;
            warn!("virtio-rng: {args} (further source errors are logged at debug level)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::Queue;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    use vmm_sys_util::tempfile::TempFile;

    /// Guest memory: two adjacent 16 MiB regions (buffers may straddle them).
    const REGION: u64 = 0x100_0000;
    /// An address outside guest memory.
    const OUTSIDE: u64 = 0x1000_0000;
    const QSIZE: u16 = 64;
    const BUF_START: u64 = 0x10_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;
    const R: u16 = 0;
    /// Bytes guest buffers are filled with before a request, to see what the device wrote.
    const POISON: u8 = 0xa5;

    #[derive(Default)]
    struct TestIrq(Mutex<Vec<InterruptCause>>);

    impl VirtioInterrupt for TestIrq {
        fn trigger(&self, cause: InterruptCause) {
            self.0.lock().unwrap().push(cause);
        }
    }

    impl TestIrq {
        fn count(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    /// The test plays the driver of one request queue.
    struct Harness {
        rng: Rng,
        mem: GuestMemoryMmap,
        irq: Arc<TestIrq>,
        desc: u64,
        avail: u64,
        used: u64,
        next_desc: u16,
        avail_idx: u16,
        notify: Arc<EventFd>,
        buf_next: u64,
        _file: Option<TempFile>,
    }

    impl Harness {
        /// A device reading `/dev/urandom`, all features acked.
        fn urandom() -> Harness {
            let file = File::open("/dev/urandom").unwrap();
            Self::with(Rng::new(file), None, |f| f)
        }

        /// A device reading a regular file holding `contents`.
        fn file(contents: &[u8]) -> Harness {
            let tmp = TempFile::new().unwrap();
            tmp.as_file().write_all(contents).unwrap();
            let file = File::open(tmp.as_path()).unwrap();
            Self::with(Rng::new(file), Some(tmp), |f| f)
        }

        fn with(mut rng: Rng, tmp: Option<TempFile>, features: impl Fn(u64) -> u64) -> Harness {
            let f = features(rng.features());
            rng.ack_features(f);
            let mem = GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), REGION as usize),
                (GuestAddress(REGION), REGION as usize),
            ])
            .unwrap();
            let mut h = Harness {
                rng,
                mem,
                irq: Arc::new(TestIrq::default()),
                desc: 0,
                avail: 0,
                used: 0,
                next_desc: 0,
                avail_idx: 0,
                notify: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
                buf_next: BUF_START,
                _file: tmp,
            };
            let queues = h.make_ring(true);
            h.rng
                .activate(h.mem.clone(), h.irq.clone(), queues)
                .unwrap();
            h
        }

        /// Lays out a fresh (zeroed) ring at 0x1000 and the queue describing it.
        fn make_ring(&mut self, ready: bool) -> Vec<ActiveQueue> {
            let base = 0x1000;
            self.desc = base;
            self.avail = base + 0x4000;
            self.used = base + 0x8000;
            self.next_desc = 0;
            self.avail_idx = 0;
            self.notify = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
            self.mem
                .write_slice(&[0u8; 0x1_0000], GuestAddress(base))
                .unwrap();
            let mut q = Queue::new(QSIZE).unwrap();
            q.set_size(QSIZE);
            q.try_set_desc_table_address(GuestAddress(self.desc))
                .unwrap();
            q.try_set_avail_ring_address(GuestAddress(self.avail))
                .unwrap();
            q.try_set_used_ring_address(GuestAddress(self.used))
                .unwrap();
            q.set_ready(ready);
            vec![ActiveQueue {
                index: 0,
                queue: q,
                notify: self.notify.clone(),
            }]
        }

        /// A guest buffer of `len` bytes filled with [`POISON`].
        fn buf(&mut self, len: u64) -> u64 {
            let addr = self.buf_next;
            self.buf_next = (self.buf_next + len + 63) & !63;
            self.mem
                .write_slice(&vec![POISON; len as usize], GuestAddress(addr))
                .unwrap();
            addr
        }

        fn write_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&d, GuestAddress(at)).unwrap();
        }

        /// Writes a chain (NEXT added to all but the last), publishes it, returns its head.
        fn publish_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
            let head = self.next_desc;
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let idx = (head + i as u16) % QSIZE;
                let flags = if i + 1 == descs.len() {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT as u16
                };
                let at = self.desc + u64::from(idx) * 16;
                self.write_desc(at, addr, len, flags, (idx + 1) % QSIZE);
            }
            self.next_desc = (head + descs.len() as u16) % QSIZE;
            self.publish(head);
            head
        }

        fn publish(&mut self, head: u16) {
            let slot = self.avail + 4 + u64::from(self.avail_idx % QSIZE) * 2;
            self.mem
                .write_obj(head.to_le(), GuestAddress(slot))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
                .unwrap();
        }

        fn kick(&mut self) {
            self.notify.write(1).unwrap();
            self.rng.process_queue(0);
        }

        /// With EVENT_IDX: the driver wants an interrupt once used entry `idx` is written.
        fn set_used_event(&self, idx: u16) {
            let at = self.avail + 4 + 2 * u64::from(QSIZE);
            self.mem.write_obj(idx.to_le(), GuestAddress(at)).unwrap();
        }

        fn used_idx(&self) -> u16 {
            self.mem
                .read_obj::<u16>(GuestAddress(self.used + 2))
                .unwrap()
        }

        fn used_elem(&self, i: u16) -> (u32, u32) {
            let at = self.used + 4 + u64::from(i % QSIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            (id, len)
        }

        /// The used length reported for `head` (the last used entry with that id).
        fn used_len(&self, head: u16) -> u32 {
            (0..self.used_idx())
                .rev()
                .map(|i| self.used_elem(i))
                .find(|&(id, _)| id == u32::from(head))
                .map(|(_, len)| len)
                .expect("chain not returned")
        }

        fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }

        fn counter(&self, name: &str) -> u64 {
            self.rng.counters()[name].as_u64().unwrap()
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + i / 251) as u8).collect()
    }

    #[test]
    fn fills_buffers_from_urandom() {
        let mut h = Harness::urandom();
        let a = h.buf(4096);
        let b = h.buf(100);
        let head = h.publish_chain(&[(a, 4096, W), (b, 100, W)]);
        h.kick();
        assert_eq!(h.used_len(head), 4196);
        let data = [h.read_guest(a, 4096), h.read_guest(b, 100)].concat();
        // 4196 random bytes are neither all zero nor all the poison byte (odds 2^-33568).
        assert!(data.iter().any(|&x| x != 0));
        assert!(data.iter().any(|&x| x != POISON));
        // A second request gets different bytes. (The driver asks for an interrupt on the
        // next used buffer, as Linux does when it re-enables callbacks.)
        h.set_used_event(1);
        let c = h.buf(4096);
        let head = h.publish_chain(&[(c, 4096, W)]);
        h.kick();
        assert_eq!(h.used_len(head), 4096);
        assert_ne!(h.read_guest(c, 4096), data[..4096]);
        assert_eq!(h.counter("bytes"), 8292);
        assert_eq!(h.counter("requests"), 2);
        assert_eq!(h.counter("errors"), 0);
        assert_eq!(*h.irq.0.lock().unwrap(), vec![InterruptCause::Queue(0); 2]);
        // The device cleared the notification.
        assert!(h.notify.read().is_err());
    }

    #[test]
    fn bytes_come_from_the_source_in_order() {
        let contents = pattern(10_000);
        let mut h = Harness::file(&contents);
        let a = h.buf(1000);
        let b = h.buf(24);
        let c = h.buf(3000);
        let h1 = h.publish_chain(&[(a, 1000, W), (b, 24, W)]);
        let h2 = h.publish_chain(&[(c, 3000, W)]);
        h.kick();
        assert_eq!(h.used_len(h1), 1024);
        assert_eq!(h.used_len(h2), 3000);
        assert_eq!(h.read_guest(a, 1000), &contents[..1000]);
        assert_eq!(h.read_guest(b, 24), &contents[1000..1024]);
        assert_eq!(h.read_guest(c, 3000), &contents[1024..4024]);
        // One batch, one interrupt.
        assert_eq!(h.irq.count(), 1);

        // The end of the source: the chain gets what is left; then nothing, as an error.
        let d = h.buf(8000);
        let h3 = h.publish_chain(&[(d, 8000, W)]);
        h.kick();
        assert_eq!(h.used_len(h3), 10_000 - 4024);
        assert_eq!(h.read_guest(d, 10_000 - 4024), &contents[4024..]);
        assert_eq!(h.read_guest(d + 10_000 - 4024, 1), [POISON]);
        assert_eq!(h.counter("errors"), 0);
        let e = h.buf(16);
        let h4 = h.publish_chain(&[(e, 16, W)]);
        h.kick();
        assert_eq!(h.used_len(h4), 0);
        assert_eq!(h.read_guest(e, 16), [POISON; 16]);
        assert_eq!(h.counter("bytes"), 10_000);
        assert_eq!(h.counter("requests"), 4);
        assert_eq!(h.counter("errors"), 1);
    }

    #[test]
    fn buffers_may_straddle_regions_and_be_indirect() {
        let contents = pattern(600);
        let mut h = Harness::file(&contents);
        // 200 bytes before the region boundary, 200 after.
        let straddle = REGION - 200;
        h.mem
            .write_slice(&[POISON; 400], GuestAddress(straddle))
            .unwrap();
        let table = h.buf(32);
        let small = h.buf(200);
        h.write_desc(table, straddle, 400, W | VRING_DESC_F_NEXT as u16, 1);
        h.write_desc(table + 16, small, 200, W, 0);
        let head = h.publish_chain(&[(table, 32, VRING_DESC_F_INDIRECT as u16)]);
        h.kick();
        assert_eq!(h.used_len(head), 600);
        assert_eq!(h.read_guest(straddle, 400), &contents[..400]);
        assert_eq!(h.read_guest(small, 200), &contents[400..]);
    }

    #[test]
    fn hostile_chains_get_correct_used_lengths() {
        let contents = pattern(1 << 20);
        let mut h = Harness::file(&contents);
        let mut offset = 0usize;

        // Readable only, and readable mixed with writable: length 0, untouched.
        let a = h.buf(64);
        let h1 = h.publish_chain(&[(a, 64, R)]);
        let b = h.buf(64);
        let c = h.buf(64);
        let h2 = h.publish_chain(&[(b, 64, W), (c, 64, R)]);
        // A zero-length writable buffer.
        let h3 = h.publish_chain(&[(b, 0, W)]);
        // Entirely outside guest memory, and a buffer running off the end of memory.
        let h4 = h.publish_chain(&[(OUTSIDE, 512, W)]);
        let end = 2 * REGION - 100;
        let h5 = h.publish_chain(&[(end, 300, W), (a, 64, W)]);
        // A valid buffer followed by one outside memory: the first is used.
        let d = h.buf(128);
        let h6 = h.publish_chain(&[(d, 128, W), (OUTSIDE, 128, W)]);
        h.kick();
        assert_eq!(h.used_len(h1), 0);
        assert_eq!(h.used_len(h2), 0);
        assert_eq!(h.read_guest(a, 64), [POISON; 64]);
        assert_eq!(h.read_guest(b, 64), [POISON; 64]);
        assert_eq!(h.used_len(h3), 0);
        assert_eq!(h.used_len(h4), 0);
        assert_eq!(h.used_len(h5), 100);
        assert_eq!(h.read_guest(end, 100), &contents[..100]);
        offset += 100;
        assert_eq!(h.read_guest(a, 64), [POISON; 64]);
        assert_eq!(h.used_len(h6), 128);
        assert_eq!(h.read_guest(d, 128), &contents[offset..offset + 128]);
        offset += 128;
        // h1, h2, h3 (nothing to fill), h4: errors; h5 and h6 gave bytes.
        assert_eq!(h.counter("errors"), 4);

        // A huge buffer: capped per chain.
        let big = h.buf(u64::from(MAX_CHAIN_BYTES) + 4096);
        let h7 = h.publish_chain(&[(big, u32::MAX, W)]);
        h.kick();
        assert_eq!(h.used_len(h7), MAX_CHAIN_BYTES);
        let cap = MAX_CHAIN_BYTES as usize;
        assert_eq!(h.read_guest(big, cap), &contents[offset..offset + cap]);
        assert_eq!(h.read_guest(big + cap as u64, 1), [POISON]);

        // A descriptor loop and a head beyond the queue do not stall the queue.
        let e = h.buf(16);
        let at = h.desc + 20 * 16;
        h.write_desc(at, e, 16, W | VRING_DESC_F_NEXT as u16, 20);
        h.next_desc = 21;
        h.publish(20);
        h.publish(500);
        let f = h.buf(32);
        let h8 = h.publish_chain(&[(f, 32, W)]);
        h.kick();
        assert_eq!(h.used_len(h8), 32);
        // The loop was returned (with what fit in its descriptors); the bad head was not.
        assert_eq!(h.used_idx(), 9);
        assert_eq!(h.used_elem(7).0, 20);
    }

    #[test]
    fn work_per_call_is_bounded() {
        let mut h = Harness::urandom();
        let chains = (MAX_BYTES_PER_CALL / u64::from(MAX_CHAIN_BYTES)) as u16 + 4;
        assert!(chains < QSIZE);
        let len = MAX_CHAIN_BYTES;
        for _ in 0..chains {
            let b = h.buf(u64::from(len));
            h.publish_chain(&[(b, len, W)]);
        }
        h.kick();
        let first = (MAX_BYTES_PER_CALL / u64::from(len)) as u16;
        assert_eq!(h.used_idx(), first);
        assert_eq!(h.counter("bytes"), MAX_BYTES_PER_CALL);
        // The device re-armed its notification so that the VMM calls it again.
        assert_eq!(h.notify.read().unwrap(), 1);
        h.rng.process_queue(0);
        assert_eq!(h.used_idx(), chains);
        assert!(h.notify.read().is_err());
        for i in 0..chains {
            assert_eq!(h.used_elem(i).1, len);
        }
    }

    #[test]
    fn interrupts_follow_avail_flags_without_event_idx() {
        let file = File::open("/dev/urandom").unwrap();
        let mut h = Harness::with(Rng::new(file), None, |f| f & !F_RING_EVENT_IDX);
        h.mem
            .write_obj(
                (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le(),
                GuestAddress(h.avail),
            )
            .unwrap();
        let b = h.buf(16);
        h.publish_chain(&[(b, 16, W)]);
        h.kick();
        assert_eq!(h.used_idx(), 1);
        assert_eq!(h.irq.count(), 0);
        h.mem.write_obj(0u16, GuestAddress(h.avail)).unwrap();
        h.publish_chain(&[(b, 16, W)]);
        h.kick();
        assert_eq!(h.irq.count(), 1);
    }

    #[test]
    fn interrupts_are_suppressed_with_event_idx() {
        let mut h = Harness::urandom();
        let b = h.buf(16);
        h.publish_chain(&[(b, 16, W)]);
        h.kick();
        assert_eq!(h.irq.count(), 1);
        // The driver wants an interrupt once used entry 3 is written.
        h.set_used_event(3);
        h.publish_chain(&[(b, 16, W)]);
        h.kick();
        assert_eq!(h.irq.count(), 1);
        h.publish_chain(&[(b, 16, W)]);
        h.publish_chain(&[(b, 16, W)]);
        h.kick();
        assert_eq!(h.used_idx(), 4);
        assert_eq!(h.irq.count(), 2);
    }

    #[test]
    fn features_config_and_type() {
        let mut h = Harness::urandom();
        let f = h.rng.features();
        for bit in [F_VERSION_1, F_RING_INDIRECT_DESC, F_RING_EVENT_IDX] {
            assert_ne!(f & bit, 0, "{bit:#x}");
        }
        assert_eq!(h.rng.device_type(), TYPE_RNG);
        assert_eq!(h.rng.queue_max_sizes(), vec![QUEUE_SIZE]);
        let mut cfg = [0xeeu8; 8];
        h.rng.read_config(0, &mut cfg);
        assert_eq!(cfg, [0; 8]);
        h.rng.write_config(u64::MAX, &[1, 2, 3]);
        h.rng.read_config(u64::MAX - 2, &mut cfg);
        assert_eq!(cfg, [0; 8]);
        // Unknown features are not acked.
        h.rng.ack_features(u64::MAX);
        assert_eq!(h.rng.acked_features, f);
        assert!(h.rng.host_fds().is_empty());
        let c = h.rng.counters();
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn activation_is_validated() {
        let mut h = Harness::urandom();
        h.rng.reset();
        let irq: Arc<dyn VirtioInterrupt> = h.irq.clone();
        // Queue not enabled.
        let q = h.make_ring(false);
        assert!(h.rng.activate(h.mem.clone(), irq.clone(), q).is_err());
        // Wrong index.
        let mut q = h.make_ring(true);
        q[0].index = 1;
        assert!(h.rng.activate(h.mem.clone(), irq.clone(), q).is_err());
        // Twice.
        let mut q = h.make_ring(true);
        q.extend(h.make_ring(true));
        assert!(h.rng.activate(h.mem.clone(), irq.clone(), q).is_err());
        // Outside guest memory.
        let mut q = h.make_ring(true);
        q[0].queue
            .try_set_used_ring_address(GuestAddress(OUTSIDE))
            .unwrap();
        assert!(h.rng.activate(h.mem.clone(), irq.clone(), q).is_err());
        // Nothing.
        assert!(h.rng.activate(h.mem.clone(), irq, Vec::new()).is_err());
        // An inactive device ignores notifications.
        let b = h.buf(16);
        h.publish_chain(&[(b, 16, W)]);
        h.rng.process_queue(0);
        assert_eq!(h.used_idx(), 0);
    }

    #[test]
    fn reset_and_reactivate() {
        let contents = pattern(256);
        let mut h = Harness::file(&contents);
        let a = h.buf(100);
        let head = h.publish_chain(&[(a, 100, W)]);
        h.kick();
        assert_eq!(h.used_len(head), 100);
        h.rng.reset();
        assert_eq!(h.rng.acked_features, 0);
        let stale = h.buf(16);
        h.publish_chain(&[(stale, 16, W)]);
        h.rng.process_queue(0);
        assert_eq!(h.read_guest(stale, 16), [POISON; 16]);

        let f = h.rng.features();
        h.rng.ack_features(f);
        let q = h.make_ring(true);
        h.rng.activate(h.mem.clone(), h.irq.clone(), q).unwrap();
        let b = h.buf(100);
        let head = h.publish_chain(&[(b, 100, W)]);
        h.kick();
        assert_eq!(h.used_len(head), 100);
        // The source continues where it was.
        assert_eq!(h.read_guest(b, 100), &contents[100..200]);
        assert_eq!(h.counter("requests"), 2);
        // Other queue indices are ignored.
        h.rng.process_queue(3);
    }
}
