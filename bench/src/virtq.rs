//! A lean guest driver for the in-process device benchmarks: one split virtqueue in a
//! `GuestMemoryMmap`, whose descriptor chains are written once and then only re-published,
//! so that what a round times is the device's work, not the driver's.
//!
//! The driver kicks the queue by writing its notify eventfd (as KVM's ioeventfd would), and
//! the device's interrupt writes an eventfd (as an irqfd would). Before each kick the
//! driver moves `used_event` to the last chain it published, so that a batch raises one
//! interrupt, as Linux's driver does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::{ActiveQueue, InterruptCause, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// Guest memory: one region from address 0.
pub const MEM_SIZE: usize = 16 << 20;
/// Where the benchmark's own buffers may start (above the rings).
pub const BUFFERS: u64 = 0x1_0000;
/// Descriptor flag: the chain goes on.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const F_WRITE: u16 = 2;

const DESC: u64 = 0x0;
const AVAIL: u64 = 0x4000;
const USED: u64 = 0x8000;
/// Where the rings of the extra queues of [`BenchQueue::beside`] go (one 64 KiB slot each).
pub const EXTRA_RINGS: u64 = 0x80_0000;

/// All of `mem`, as one bounds-checked slice.
fn area(mem: &GuestMemoryMmap) -> VolatileSlice<'_> {
    mem.get_slice(GuestAddress(0), MEM_SIZE).expect("area")
}

/// The device's interrupt as an irqfd would deliver it: one eventfd write.
struct IrqFd(EventFd);

impl VirtioInterrupt for IrqFd {
    fn trigger(&self, _cause: InterruptCause) {
        let _ = self.0.write(1);
    }
}

/// The driver's side of one queue.
pub struct BenchQueue {
    /// Guest memory, shared with the device.
    pub mem: GuestMemoryMmap,
    notify: Arc<EventFd>,
    irq: Arc<IrqFd>,
    avail_idx: u16,
    used_idx: u16,
    /// Interrupts the device raised so far.
    pub interrupts: u64,
    /// Where this queue's descriptor table, available and used rings start.
    rings: u64,
}

impl Default for BenchQueue {
    fn default() -> Self {
        BenchQueue::new()
    }
}

impl BenchQueue {
    /// Fresh guest memory with empty rings.
    pub fn new() -> BenchQueue {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        BenchQueue {
            mem,
            notify: Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
            irq: Arc::new(IrqFd(EventFd::new(EFD_NONBLOCK).expect("eventfd"))),
            avail_idx: 0,
            used_idx: 0,
            interrupts: 0,
            rings: 0,
        }
    }

    /// Another queue of the same device, in the same guest memory, with its rings in slot
    /// `n` (from 1) above [`EXTRA_RINGS`].
    pub fn beside(other: &BenchQueue, n: u64) -> BenchQueue {
        BenchQueue {
            mem: other.mem.clone(),
            notify: Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
            irq: other.irq.clone(),
            avail_idx: 0,
            used_idx: 0,
            interrupts: 0,
            rings: EXTRA_RINGS + (n - 1) * 0x1_0000,
        }
    }

    /// The queue to hand to the device's `activate` as queue `index`.
    pub fn active_queue(&self, index: u16) -> ActiveQueue {
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        queue
            .try_set_desc_table_address(GuestAddress(self.rings + DESC))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(self.rings + AVAIL))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(self.rings + USED))
            .unwrap();
        queue.set_ready(true);
        ActiveQueue {
            index,
            queue,
            notify: self.notify.clone(),
        }
    }

    /// The interrupt to hand to the device's `activate`.
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.irq.clone()
    }

    /// All of guest memory, as one bounds-checked slice.
    pub fn area(&self) -> VolatileSlice<'_> {
        area(&self.mem)
    }

    /// Writes the chain starting at descriptor `head`: `(address, length, flags)` each, in
    /// consecutive descriptors, each pointing at the next.
    pub fn write_chain(&self, head: u16, descs: &[(u64, u32, u16)]) {
        let area = self.area();
        for (j, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = head + j as u16;
            let at = (self.rings + DESC + 16 * u64::from(idx)) as usize;
            area.write_obj(addr.to_le(), at).unwrap();
            area.write_obj(len.to_le(), at + 8).unwrap();
            area.write_obj(flags.to_le(), at + 12).unwrap();
            area.write_obj((idx + 1).to_le(), at + 14).unwrap();
        }
    }

    /// The index the next published chain takes in the available ring.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Publishes the chains at `heads` and kicks the queue, without running the device (for a
    /// driver that keeps requests in flight: see [`BenchQueue::take_used`]). Interrupts
    /// are left on; the driver polls the used ring instead of waiting for them.
    pub fn publish(&mut self, heads: impl IntoIterator<Item = u16>) {
        let area = area(&self.mem);
        for head in heads {
            let slot =
                (self.rings + AVAIL) as usize + 4 + 2 * usize::from(self.avail_idx % QUEUE_SIZE);
            area.write_obj(head.to_le(), slot).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        area.store(
            self.avail_idx.to_le(),
            (self.rings + AVAIL) as usize + 2,
            Ordering::Release,
        )
        .unwrap();
        self.notify.write(1).unwrap();
    }

    /// Appends to `out` the heads the device returned since the last call, in order.
    pub fn take_used(&mut self, out: &mut Vec<u16>) {
        let area = area(&self.mem);
        let used = u16::from_le(
            area.load((self.rings + USED) as usize + 2, Ordering::Acquire)
                .unwrap(),
        );
        while self.used_idx != used {
            let at = (self.rings + USED) as usize + 4 + 8 * usize::from(self.used_idx % QUEUE_SIZE);
            let id: u32 = area.read_obj(at).unwrap();
            out.push(u32::from_le(id) as u16);
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        if self.irq.0.read().is_ok() {
            self.interrupts += 1;
        }
    }

    /// Publishes the chains at `heads`, asks for one interrupt when the last is used, kicks
    /// the queue and runs `device` (the VMM's dispatch of the kick). Returns the time spent
    /// in `device`, and checks that every chain published was used.
    pub fn run(&mut self, heads: impl IntoIterator<Item = u16>, device: impl FnOnce()) -> Duration {
        let area = area(&self.mem);
        let first = self.avail_idx;
        for head in heads {
            let slot =
                (self.rings + AVAIL) as usize + 4 + 2 * usize::from(self.avail_idx % QUEUE_SIZE);
            area.write_obj(head.to_le(), slot).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        let published = self.avail_idx.wrapping_sub(first);
        let used_event = (self.rings + AVAIL) as usize + 4 + 2 * usize::from(QUEUE_SIZE);
        area.write_obj(self.avail_idx.wrapping_sub(1).to_le(), used_event)
            .unwrap();
        area.store(
            self.avail_idx.to_le(),
            (self.rings + AVAIL) as usize + 2,
            Ordering::Release,
        )
        .unwrap();

        self.notify.write(1).unwrap();
        let t = Instant::now();
        device();
        let elapsed = t.elapsed();
        if self.irq.0.read().is_ok() {
            self.interrupts += 1;
        }

        let used = u16::from_le(
            area.load((self.rings + USED) as usize + 2, Ordering::Acquire)
                .unwrap(),
        );
        assert_eq!(
            used.wrapping_sub(self.used_idx),
            published,
            "the device did not use every chain"
        );
        self.used_idx = used;
        elapsed
    }
}
