//! A test stand-in for a guest's virtio driver, shared by the unit tests of the device
//! models.
//!
//! A [`Driver`] owns a device, guest memory (two adjacent regions, so that buffers may
//! straddle them), one split virtqueue per queue laid out in that memory, and a
//! [`TestIrq`] that records the interrupts the device raises. Tests write descriptor
//! chains and publish them on the available ring, notify ("kick") a queue, and read back
//! the used ring, as a driver would. Whatever the device needs on the host side (a backing
//! file, a tap, pipes) is kept in [`Driver::host`].

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, ActiveQueue, InterruptCause, VirtioDevice, VirtioInterrupt};

/// Size of each of the two guest memory regions (16 MiB).
pub const REGION: u64 = 0x100_0000;
/// The end of guest memory.
pub const MEM_END: u64 = 2 * REGION;
/// An address outside guest memory.
pub const OUTSIDE: u64 = 0x1000_0000;
/// The queue size the tests use.
pub const QSIZE: u16 = 64;
/// Descriptor flags: device-writable.
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flags: device-readable.
pub const R: u16 = 0;
/// Bytes guest buffers may be filled with before a request, to see what the device wrote.
pub const POISON: u8 = 0xa5;

/// Where the rings start: queue `i` takes 64 KiB from `RING_BASE + i * RING_STRIDE`.
const RING_BASE: u64 = 0x1000;
const RING_STRIDE: u64 = 0x1_0000;
/// Where buffers are allocated from (above the rings of up to 15 queues).
const BUF_START: u64 = 0x10_0000;

/// Records the interrupts a device raises, in order.
#[derive(Default)]
pub struct TestIrq(pub Mutex<Vec<InterruptCause>>);

impl VirtioInterrupt for TestIrq {
    fn trigger(&self, cause: InterruptCause) {
        self.0.lock().unwrap().push(cause);
    }
}

impl TestIrq {
    /// How many interrupts were raised.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// How many interrupts were raised for queue `q`.
    pub fn count_for(&self, q: u16) -> usize {
        let v = self.0.lock().unwrap();
        v.iter().filter(|&&c| c == InterruptCause::Queue(q)).count()
    }

    /// The interrupts raised so far, in order.
    pub fn causes(&self) -> Vec<InterruptCause> {
        self.0.lock().unwrap().clone()
    }
}

/// Guest memory: two adjacent regions of [`REGION`] bytes.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

/// One split virtqueue as the driver sees it.
pub struct Ring {
    /// The descriptor table.
    pub desc: u64,
    /// The available ring.
    pub avail: u64,
    /// The used ring.
    pub used: u64,
    /// The queue size.
    pub size: u16,
    /// The next free descriptor.
    pub next_desc: u16,
    /// The driver's available index.
    pub avail_idx: u16,
    /// The queue's notification eventfd.
    pub notify: Arc<EventFd>,
}

/// The test plays the driver of `dev`; `host` holds the device's host side.
pub struct Driver<D, H = ()> {
    /// The device under test.
    pub dev: D,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The interrupts the device raised.
    pub irq: Arc<TestIrq>,
    /// The rings laid out by the last [`Driver::make_rings`].
    pub rings: Vec<Ring>,
    /// Where the next buffer is allocated.
    pub buf_next: u64,
    /// [`Driver::kick`] asserts that the device consumed the notification. (Devices that
    /// re-arm their own notification when out of budget leave it set.)
    pub check_kicks: bool,
    /// The host side of the device. Last, so that it is dropped after the device.
    pub host: H,
}

impl<D: VirtioDevice, H> Driver<D, H> {
    /// A driver for `dev`, which has accepted the features `features` maps the offered
    /// ones to; no queue is laid out yet.
    pub fn for_device(mut dev: D, host: H, features: impl Fn(u64) -> u64) -> Self {
        let acked = features(dev.features());
        dev.ack_features(acked);
        Driver {
            dev,
            mem: guest_memory(),
            irq: Arc::new(TestIrq::default()),
            rings: Vec::new(),
            buf_next: BUF_START,
            check_kicks: false,
            host,
        }
    }

    /// Lays out rings of `sizes` and activates the device with them (`ready`, if given,
    /// lists the queues the driver enabled).
    pub fn start(&mut self, sizes: &[u16], ready: Option<&[u16]>) {
        let queues = self.make_rings(sizes, ready);
        self.activate(queues).unwrap();
    }

    /// Activates the device with `queues`.
    pub fn activate(&mut self, queues: Vec<ActiveQueue>) -> Result<(), ActivateError> {
        self.dev
            .activate(self.mem.clone(), self.irq.clone(), queues)
    }

    /// Lays out fresh (zeroed) rings, one of each size of `sizes`, and the queues describing
    /// them; `ready` (if given) lists the queues the driver enabled.
    pub fn make_rings(&mut self, sizes: &[u16], ready: Option<&[u16]>) -> Vec<ActiveQueue> {
        self.rings.clear();
        let mut queues = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let i = i as u16;
            let base = RING_BASE + u64::from(i) * RING_STRIDE;
            assert!(base + RING_STRIDE <= BUF_START, "too many queues");
            self.mem
                .write_slice(&[0u8; RING_STRIDE as usize], GuestAddress(base))
                .unwrap();
            let ring = Ring {
                desc: base,
                avail: base + 0x4000,
                used: base + 0x8000,
                size,
                next_desc: 0,
                avail_idx: 0,
                notify: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            };
            let mut q = Queue::new(size).unwrap();
            q.set_size(size);
            q.try_set_desc_table_address(GuestAddress(ring.desc))
                .unwrap();
            q.try_set_avail_ring_address(GuestAddress(ring.avail))
                .unwrap();
            q.try_set_used_ring_address(GuestAddress(ring.used))
                .unwrap();
            q.set_ready(ready.is_none_or(|r| r.contains(&i)));
            queues.push(ActiveQueue {
                index: i,
                queue: q,
                notify: ring.notify.clone(),
            });
            self.rings.push(ring);
        }
        queues
    }

    /// [`Driver::make_rings`] with the device's largest queue sizes.
    pub fn device_rings(&mut self, ready: Option<&[u16]>) -> Vec<ActiveQueue> {
        let sizes = self.dev.queue_max_sizes();
        self.make_rings(&sizes, ready)
    }

    /// Allocates a guest buffer of `len` bytes (64-byte aligned, left as it is).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.buf_next;
        self.buf_next = (self.buf_next + len + 63) & !63;
        assert!(self.buf_next < REGION - 0x1000 || addr >= REGION);
        addr
    }

    /// Allocates a guest buffer of `len` bytes filled with `fill`.
    pub fn buf(&mut self, len: u64, fill: u8) -> u64 {
        let addr = self.alloc(len);
        self.mem
            .write_slice(&vec![fill; len as usize], GuestAddress(addr))
            .unwrap();
        addr
    }

    /// Allocates a guest buffer holding `data`.
    pub fn data(&mut self, data: &[u8]) -> u64 {
        let addr = self.alloc(data.len() as u64);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        addr
    }

    /// Writes descriptor `idx` of queue `q`.
    pub fn write_desc(&self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.rings[q].desc + u64::from(idx) * 16;
        self.write_raw_desc(at, addr, len, flags, next);
    }

    /// Writes a descriptor at guest address `at` (in a descriptor table or an indirect one).
    pub fn write_raw_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(at)).unwrap();
    }

    /// Writes a linked chain of `(addr, len, flags)` descriptors on queue `q` (NEXT added
    /// to all but the last) and returns its head (not yet published).
    pub fn chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let size = self.rings[q].size;
        let head = self.rings[q].next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % size;
            let flags = if i + 1 == descs.len() {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            self.write_desc(q, idx, addr, len, flags, (idx + 1) % size);
        }
        self.rings[q].next_desc = (head + descs.len() as u16) % size;
        head
    }

    /// Publishes chain `head` on the available ring of queue `q` (without notifying).
    pub fn publish(&mut self, q: usize, head: u16) {
        let ring = &mut self.rings[q];
        let slot = ring.avail + 4 + u64::from(ring.avail_idx % ring.size) * 2;
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(ring.avail_idx.to_le(), GuestAddress(ring.avail + 2))
            .unwrap();
    }

    /// Writes a chain on queue `q` and publishes it (without notifying); returns its head.
    pub fn publish_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.chain(q, descs);
        self.publish(q, head);
        head
    }

    /// Notifies queue `q` and lets the device process it.
    pub fn kick(&mut self, q: usize) {
        self.rings[q].notify.write(1).unwrap();
        self.dev.process_queue(q as u16);
        if self.check_kicks {
            assert!(
                self.rings[q].notify.read().is_err(),
                "notification not cleared"
            );
        }
    }

    /// Calls `process_queue` for each queue whose eventfd is set, as the VMM loop does,
    /// until none is. Returns the number of calls.
    pub fn run_notified(&mut self) -> usize {
        let mut calls = 0;
        loop {
            let mut any = false;
            for q in 0..self.rings.len() {
                // Peek: read and restore, the device reads it itself.
                if let Ok(v) = self.rings[q].notify.read() {
                    self.rings[q].notify.write(v).unwrap();
                    self.dev.process_queue(q as u16);
                    calls += 1;
                    any = true;
                }
            }
            if !any {
                return calls;
            }
        }
    }

    /// Sets the driver's flags in the available ring of queue `q` (`VRING_AVAIL_F_*`).
    pub fn set_avail_flags(&self, q: usize, flags: u16) {
        let at = self.rings[q].avail;
        self.mem.write_obj(flags.to_le(), GuestAddress(at)).unwrap();
    }

    /// With EVENT_IDX: the driver wants an interrupt once used entry `idx` of `q` is
    /// written.
    pub fn set_used_event(&self, q: usize, idx: u16) {
        let ring = &self.rings[q];
        let at = ring.avail + 4 + 2 * u64::from(ring.size);
        self.mem.write_obj(idx.to_le(), GuestAddress(at)).unwrap();
    }

    /// The device's flags in the used ring of queue `q` (`VRING_USED_F_*`).
    pub fn used_flags(&self, q: usize) -> u16 {
        let at = self.rings[q].used;
        u16::from_le(self.mem.read_obj(GuestAddress(at)).unwrap())
    }

    /// With EVENT_IDX: the available index at which the device wants a notification.
    pub fn avail_event(&self, q: usize) -> u16 {
        let ring = &self.rings[q];
        let at = ring.used + 4 + 8 * u64::from(ring.size);
        u16::from_le(self.mem.read_obj(GuestAddress(at)).unwrap())
    }

    /// The used index of queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(self.rings[q].used + 2))
            .unwrap()
    }

    /// Entry `i` of the used ring of queue `q`: (id, len).
    pub fn used_elem(&self, q: usize, i: u16) -> (u32, u32) {
        let ring = &self.rings[q];
        let at = ring.used + 4 + u64::from(i % ring.size) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// The used length reported for `head` on queue `q` (the last used entry with that id).
    pub fn used_len(&self, q: usize, head: u16) -> u32 {
        (0..self.used_idx(q))
            .rev()
            .map(|i| self.used_elem(q, i))
            .find(|&(id, _)| id == u32::from(head))
            .map(|(_, len)| len)
            .expect("chain not returned")
    }

    /// `len` bytes of guest memory at `addr`.
    pub fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// The device's counter `name`.
    pub fn counter(&self, name: &str) -> u64 {
        self.dev.counters()[name].as_u64().unwrap()
    }
}
