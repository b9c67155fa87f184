//! Issue target for virtio-net: the device model's transmit rate against writing the same
//! frames straight to the tap, in process (no VM).
//!
//! The program creates a network namespace of its own (`palisade-bench-net-<pid>`, removed
//! at the end, also on a panic), and in it a tap that is up, with no address and IPv6 off,
//! so that the host does nothing but receive the frames. Each frame is 1500 bytes: an IPv4
//! UDP datagram addressed to a MAC that is not the tap's, which the kernel drops as soon as
//! it sees it is for another host, on both sides alike.
//!
//! The program plays the guest driver on a `GuestMemoryMmap`: it publishes 32 transmit
//! chains (a 12-byte header descriptor and a 1500-byte frame descriptor each), writes the
//! queue's notify eventfd (as KVM's ioeventfd would), calls `process_queue` (as the VMM's
//! event loop would) and checks the used ring. The device's interrupt writes an eventfd (as
//! an irqfd would), and the driver moves `used_event` so that each batch raises one. The
//! other side writes the same headers and frames (from as many distinct buffers as the
//! driver cycles through) to the same tap with `writev`.
//!
//! Two device rates are printed: "VMM thread" counts only the time spent in
//! `process_queue` (what the VMM's event-loop thread spends: clearing the kick, walking the
//! chains, the `writev`s, the used ring and the interrupt), which the target is judged by,
//! since in a VM the driver's work runs on the guest's vCPU; "with driver" also counts this
//! program's simulated driver. The two sides run in paired rounds, alternating which goes
//! first; the best round of each is compared, and the median of the per-round ratios is
//! shown beside it.

use std::io::{IoSlice, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::netns::NetNs;
use devices::tap::Tap;
use devices::virtio::net::{Net, NetOptions};
use devices::virtio::{ActiveQueue, InterruptCause, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 256;
const BATCH: u16 = 32;
const FRAME: usize = 1500;
const HDR: usize = 12;
const PER_ROUND: usize = 32 * 512;
const ROUNDS: usize = 31;
const TARGET: f64 = 0.7;

// Guest memory layout (queue 1 is the transmit queue; queue 0, receive, stays disabled).
const MEM_SIZE: usize = 16 << 20;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x4000;
const USED: u64 = 0x8000;
const HEADERS: u64 = 0x1_0000; // 16 bytes per chain
const FRAMES: u64 = 0x10_0000; // 2 KiB per chain
const DRIVER_AREA: usize = 0x10_0000 + 2048 * (QUEUE_SIZE as usize / 2);

const F_NEXT: u16 = 1;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xbe, 0x0c, 0x01];
/// A destination that is not the tap's MAC: the host drops the frames on arrival.
const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xde, 0xad, 0x01];

/// The interrupt as an irqfd would deliver it: one eventfd write.
struct IrqFd(EventFd);

impl VirtioInterrupt for IrqFd {
    fn trigger(&self, _cause: InterruptCause) {
        let _ = self.0.write(1);
    }
}

/// The guest driver's side of the transmit queue.
struct Driver {
    mem: GuestMemoryMmap,
    notify: Arc<EventFd>,
    irq: Arc<IrqFd>,
    avail_idx: u16,
    used_idx: u16,
    interrupts: u64,
}

fn area(mem: &GuestMemoryMmap) -> VolatileSlice<'_> {
    mem.get_slice(GuestAddress(0), DRIVER_AREA)
        .expect("driver area")
}

/// A 1500-byte Ethernet frame carrying an IPv4/UDP datagram to another host's MAC.
fn frame() -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME);
    f.extend_from_slice(&OTHER_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (FRAME - 14) as u16;
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 254, 0, 2, 10, 254, 0, 9,
    ];
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    let udp_len = ip_len - 20;
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    while f.len() < FRAME {
        f.push(f.len() as u8);
    }
    f
}

impl Driver {
    /// Writes the chains once: chain `i` is descriptors 2i (header) and 2i + 1 (frame).
    fn setup(&self, frame: &[u8]) {
        let area = area(&self.mem);
        for i in 0..QUEUE_SIZE / 2 {
            let head = 2 * i;
            let hdr = HEADERS + 16 * u64::from(i);
            let data = FRAMES + 2048 * u64::from(i);
            self.mem
                .write_slice(&[0u8; HDR], GuestAddress(hdr))
                .unwrap();
            self.mem.write_slice(frame, GuestAddress(data)).unwrap();
            let descs = [(hdr, HDR as u32, F_NEXT), (data, frame.len() as u32, 0)];
            for (j, (addr, len, flags)) in descs.into_iter().enumerate() {
                let at = (DESC + 16 * u64::from(head + j as u16)) as usize;
                area.write_obj(addr.to_le(), at).unwrap();
                area.write_obj(len.to_le(), at + 8).unwrap();
                area.write_obj(flags.to_le(), at + 12).unwrap();
                area.write_obj((head + 1).to_le(), at + 14).unwrap();
            }
        }
    }

    /// Publishes `BATCH` chains, notifies, lets the device run, checks the used ring;
    /// returns the time spent in `process_queue`.
    fn batch(&mut self, net: &mut Net) -> Duration {
        let area = area(&self.mem);
        for _ in 0..BATCH {
            let head = 2 * (self.avail_idx % (QUEUE_SIZE / 2));
            let slot = AVAIL as usize + 4 + 2 * usize::from(self.avail_idx % QUEUE_SIZE);
            area.write_obj(head.to_le(), slot).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        // One interrupt per batch, when its last chain is used.
        let used_event = AVAIL as usize + 4 + 2 * usize::from(QUEUE_SIZE);
        area.write_obj(self.avail_idx.wrapping_sub(1).to_le(), used_event)
            .unwrap();
        area.store(
            self.avail_idx.to_le(),
            AVAIL as usize + 2,
            Ordering::Release,
        )
        .unwrap();

        self.notify.write(1).unwrap();
        let t = Instant::now();
        net.process_queue(1);
        let vmm = t.elapsed();
        if self.irq.0.read().is_ok() {
            self.interrupts += 1;
        }
        let used = u16::from_le(area.load(USED as usize + 2, Ordering::Acquire).unwrap());
        assert_eq!(
            used.wrapping_sub(self.used_idx),
            BATCH,
            "frames were not completed"
        );
        self.used_idx = used;
        vmm
    }
}

fn make_device(tap: Tap) -> (Net, Driver) {
    let options = NetOptions {
        queue_size: QUEUE_SIZE,
        ..NetOptions::default()
    };
    let mut net = Net::new(vec![tap], GUEST_MAC, options).expect("network device");
    // Everything offered, as Linux's driver would accept it.
    let features = net.features();
    net.ack_features(features);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let mut rx = Queue::new(QUEUE_SIZE).expect("queue");
    rx.set_ready(false);
    let mut tx = Queue::new(QUEUE_SIZE).expect("queue");
    tx.set_size(QUEUE_SIZE);
    tx.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
    tx.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
    tx.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    tx.set_ready(true);
    let notify = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let irq = Arc::new(IrqFd(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    net.activate(
        mem.clone(),
        irq.clone(),
        vec![
            ActiveQueue {
                index: 0,
                queue: rx,
                notify: Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
            },
            ActiveQueue {
                index: 1,
                queue: tx,
                notify: notify.clone(),
            },
        ],
    )
    .expect("activate");
    let driver = Driver {
        mem,
        notify,
        irq,
        avail_idx: 0,
        used_idx: 0,
        interrupts: 0,
    };
    (net, driver)
}

fn main() {
    // Needs root: the benchmark's tap lives in a namespace of its own.
    let ns = NetNs::new();
    let tap = ns.run(|| {
        let tap = Tap::open(None, 1).expect("tap").remove(0);
        tap.up().expect("tap up");
        tap
    });
    let name = tap.name().to_string();
    let frame = frame();
    let (mut net, mut drv) = make_device(tap);
    drv.setup(&frame);

    // The direct side writes to the device's own tap, through a second descriptor of it.
    // SAFETY: dup of a descriptor the device holds open; the copy is owned below.
    let dup = unsafe { libc::dup(net.taps()[0].as_raw_fd()) };
    assert!(dup >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    let direct_tap = Tap::from_fd(unsafe { OwnedFd::from_raw_fd(dup) }).expect("tap fd");
    let mut device = || -> Duration {
        (0..PER_ROUND / usize::from(BATCH))
            .map(|_| drv.batch(&mut net))
            .sum()
    };
    // The same number of distinct header and frame buffers as the driver cycles through,
    // so that both sides touch as much memory.
    let slots = usize::from(QUEUE_SIZE / 2);
    let headers = vec![0u8; 16 * slots];
    let mut frames = vec![0u8; 2048 * slots];
    for i in 0..slots {
        frames[2048 * i..2048 * i + FRAME].copy_from_slice(&frame);
    }
    let direct = || {
        let mut w = &direct_tap;
        for i in 0..PER_ROUND {
            let slot = i % slots;
            let bufs = [
                IoSlice::new(&headers[16 * slot..16 * slot + HDR]),
                IoSlice::new(&frames[2048 * slot..2048 * slot + FRAME]),
            ];
            let n = w.write_vectored(&bufs).expect("writev to the tap");
            assert_eq!(n, HDR + FRAME);
        }
    };

    // Warm up, then paired rounds alternating which side goes first.
    device();
    direct();
    let mut best = (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut run_device = || {
            let t = Instant::now();
            let vmm = device();
            (vmm, t.elapsed())
        };
        let run_direct = || {
            let t = Instant::now();
            direct();
            t.elapsed()
        };
        let ((vmm, wall), d) = if round % 2 == 0 {
            let a = run_device();
            (a, run_direct())
        } else {
            let d = run_direct();
            (run_device(), d)
        };
        best = (best.0.min(vmm), best.1.min(wall), best.2.min(d));
        ratios.push(d.as_secs_f64() / vmm.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];

    let rate = |d: Duration| PER_ROUND as f64 / d.as_secs_f64();
    let (vmm, wall, sys) = (rate(best.0), rate(best.1), rate(best.2));
    println!(
        "virtio-net transmit in process: {FRAME}-byte frames (+{HDR}-byte header) to tap {name} \
         in namespace {}, {BATCH} per notify, {PER_ROUND} frames per round, best of {ROUNDS} paired rounds",
        ns.name()
    );
    println!(
        "  device, VMM thread   {vmm:>9.0} frames/s   ratio {:.2}x (median of rounds {median:.2}x)   target >= {TARGET}x: {}",
        vmm / sys,
        if vmm / sys >= TARGET { "ok" } else { "MISSED" }
    );
    println!(
        "  device, with driver  {wall:>9.0} frames/s   ratio {:.2}x",
        wall / sys
    );
    println!("  writev to the tap    {sys:>9.0} frames/s");
    let per = |r: f64| 1e9 / r;
    println!(
        "  per frame: device {:.0} ns, writev {:.0} ns (device overhead {:.0} ns)",
        per(vmm),
        per(sys),
        per(vmm) - per(sys)
    );
    let c = net.counters();
    let total = (PER_ROUND * (ROUNDS + 1)) as u64;
    assert_eq!(c["tx_frames"], total, "{c:?}");
    assert_eq!(c["tx_dropped"], 0, "{c:?}");
    let batches = PER_ROUND / usize::from(BATCH) * (ROUNDS + 1);
    let counters: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "  ({} interrupts for {batches} batches of {BATCH}; counters: {})",
        drv.interrupts,
        counters.join(" ")
    );
    drop(net);
    drop(direct_tap);
    drop(ns);
}
