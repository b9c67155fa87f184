//! Issue targets for virtio-blk: the device model's request rate against plain system calls
//! on the same file, in process (no VM).
//!
//! The program plays the guest driver on a `GuestMemoryMmap`: it fills the available ring
//! with 32 requests, writes the queue's notify eventfd (as KVM's ioeventfd would), calls
//! `process_queue` (as the VMM's event loop would) and checks the used ring. The device's
//! interrupt writes an eventfd (as an irqfd would) and the driver moves `used_event` so that
//! each batch raises one interrupt, as Linux's driver does. The backing file is 256 MiB,
//! written just before, so it sits in the page cache. Figures:
//!
//! 1. 4 KiB random reads at queue depth 32 vs `pread` of 4 KiB at the same offsets;
//! 2. sequential 64 KiB writes at queue depth 32 vs `pwrite` of 64 KiB.
//!
//! Two device rates are printed: "VMM thread" counts only the time spent in
//! `process_queue` (what the VMM's event-loop thread spends: clearing the kick, parsing,
//! the I/O itself, the used ring and the interrupt), which is the figure the target is
//! judged by, since in a VM the driver's work runs on the guest's vCPU; "with driver" also
//! counts this program's simulated driver (ring writes, the kick, reading the interrupt).
//! The two sides run in paired rounds, alternating which goes first; the best round of
//! each is compared, and the median of the per-round ratios is shown beside it.
//!
//! `blk read` or `blk write` runs one of the two.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::block::{Block, BlockOptions};
use devices::virtio::{ActiveQueue, InterruptCause, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const FILE_SIZE: u64 = 256 << 20;
const QUEUE_SIZE: u16 = 256;
const DEPTH: u16 = 32;
const ROUNDS: usize = 31;

// Guest memory layout.
const MEM_SIZE: usize = 16 << 20;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x4000;
const USED: u64 = 0x8000;
const HEADERS: u64 = 0x1_0000; // 16 bytes per request
const STATUS: u64 = 0x2_0000; // 1 byte per request
const DATA: u64 = 0x10_0000; // per request: `block` bytes
const DRIVER_AREA: usize = DATA as usize;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// The interrupt as an irqfd would deliver it: one eventfd write.
struct IrqFd(EventFd);

impl VirtioInterrupt for IrqFd {
    fn trigger(&self, _cause: InterruptCause) {
        let _ = self.0.write(1);
    }
}

/// The guest driver's side of one queue.
struct Driver {
    mem: GuestMemoryMmap,
    notify: Arc<EventFd>,
    irq: Arc<IrqFd>,
    avail_idx: u16,
    used_idx: u16,
    interrupts: u64,
}

/// The driver's rings, headers and status bytes, as one bounds-checked slice.
fn area(mem: &GuestMemoryMmap) -> VolatileSlice<'_> {
    mem.get_slice(GuestAddress(0), DRIVER_AREA)
        .expect("driver area")
}

impl Driver {
    /// Writes the descriptor chains once: request `i` uses descriptors 3i..3i+2
    /// (header, data of `block` bytes, status); a write's data is device-readable.
    fn setup(&self, block: u32, write: bool) {
        let area = area(&self.mem);
        for i in 0..QUEUE_SIZE / 3 {
            let head = 3 * i;
            let data_flags = if write { F_NEXT } else { F_NEXT | F_WRITE };
            let descs = [
                (HEADERS + 16 * u64::from(i), 16, F_NEXT),
                (DATA + u64::from(i) * u64::from(block), block, data_flags),
                (STATUS + u64::from(i), 1, F_WRITE),
            ];
            for (j, (addr, len, flags)) in descs.into_iter().enumerate() {
                let at = (DESC + 16 * u64::from(head + j as u16)) as usize;
                area.write_obj(addr.to_le(), at).unwrap();
                area.write_obj(len.to_le(), at + 8).unwrap();
                area.write_obj(flags.to_le(), at + 12).unwrap();
                area.write_obj((head + j as u16 + 1).to_le(), at + 14)
                    .unwrap();
            }
        }
    }

    /// Publishes `sectors.len()` requests of `req_type` (at most `DEPTH`), notifies, lets the
    /// device run, and checks that all completed successfully.
    fn batch(&mut self, blk: &mut Block, req_type: u32, sectors: &[u64]) -> Duration {
        let Driver {
            mem,
            notify,
            irq,
            avail_idx,
            used_idx,
            interrupts,
        } = self;
        let area = area(mem);
        for (i, &sector) in sectors.iter().enumerate() {
            let hdr = HEADERS as usize + 16 * i;
            area.write_obj(req_type.to_le(), hdr).unwrap();
            area.write_obj(sector.to_le(), hdr + 8).unwrap();
            area.write_obj(0xffu8, STATUS as usize + i).unwrap();
            let slot = AVAIL as usize + 4 + 2 * usize::from(*avail_idx % QUEUE_SIZE);
            area.write_obj((3 * i as u16).to_le(), slot).unwrap();
            *avail_idx = avail_idx.wrapping_add(1);
        }
        // Ask for one interrupt, when the last request of the batch is used.
        let used_event = AVAIL as usize + 4 + 2 * usize::from(QUEUE_SIZE);
        let last = avail_idx.wrapping_sub(1);
        area.write_obj(last.to_le(), used_event).unwrap();
        area.store(avail_idx.to_le(), AVAIL as usize + 2, Ordering::Release)
            .unwrap();

        // The kick (KVM's ioeventfd) and the VMM event loop's dispatch.
        notify.write(1).unwrap();
        let t = Instant::now();
        blk.process_queue(0);
        let vmm = t.elapsed();
        if irq.0.read().is_ok() {
            *interrupts += 1;
        }

        let used = u16::from_le(area.load(USED as usize + 2, Ordering::Acquire).unwrap());
        assert_eq!(
            used.wrapping_sub(*used_idx) as usize,
            sectors.len(),
            "requests were not completed"
        );
        *used_idx = used;
        for i in 0..sectors.len() {
            let status: u8 = area.read_obj(STATUS as usize + i).unwrap();
            assert_eq!(status, 0, "request failed with status {status}");
        }
        vmm
    }
}

fn make_device(path: &std::path::Path) -> (Block, Driver) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open disk");
    let options = BlockOptions {
        queue_size: QUEUE_SIZE,
        ..BlockOptions::default()
    };
    let mut blk = Block::new(file, options).expect("block device");
    // The features Linux's driver accepts.
    let features = blk.features();
    blk.ack_features(features);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
    queue.set_size(QUEUE_SIZE);
    queue
        .try_set_desc_table_address(GuestAddress(DESC))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL))
        .unwrap();
    queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    queue.set_ready(true);
    let notify = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let irq = Arc::new(IrqFd(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    blk.activate(
        mem.clone(),
        irq.clone(),
        vec![ActiveQueue {
            index: 0,
            queue,
            notify: notify.clone(),
        }],
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
    (blk, driver)
}

/// A small deterministic generator (xorshift64*), so both sides use the same offsets.
fn random_offsets(count: usize, block: u64) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blocks = FILE_SIZE / block;
    (0..count)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % blocks) * block
        })
        .collect()
}

/// Timings of the two sides over `ROUNDS` paired rounds.
struct Comparison {
    /// Operations per round.
    ops: usize,
    /// Fastest round: device on the VMM thread, device with the simulated driver, system calls.
    best: (Duration, Duration, Duration),
    /// Median over rounds of (system-call time / VMM-thread time) of the same round.
    median_ratio: f64,
}

/// Runs `device(round)` (which returns its VMM-thread time) and `syscall(round)`, each doing
/// `ops` operations, in `ROUNDS` paired rounds alternating which goes first, after one
/// warm-up round each.
fn compare(
    ops: usize,
    mut device: impl FnMut(usize) -> Duration,
    mut syscall: impl FnMut(usize),
) -> Comparison {
    device(0);
    syscall(0);
    let mut best = (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut run_device = || {
            let t = Instant::now();
            let vmm = device(round);
            (vmm, t.elapsed())
        };
        let mut run_syscall = || {
            let t = Instant::now();
            syscall(round);
            t.elapsed()
        };
        let ((vmm, wall), s) = if round % 2 == 0 {
            let d = run_device();
            (d, run_syscall())
        } else {
            let s = run_syscall();
            (run_device(), s)
        };
        best = (best.0.min(vmm), best.1.min(wall), best.2.min(s));
        ratios.push(s.as_secs_f64() / vmm.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    Comparison {
        ops,
        best,
        median_ratio: ratios[ratios.len() / 2],
    }
}

fn print(name: &str, syscall: &str, c: &Comparison, target: f64) {
    let rate = |d: Duration| c.ops as f64 / d.as_secs_f64();
    let (vmm, wall, sys) = (rate(c.best.0), rate(c.best.1), rate(c.best.2));
    println!("{name}");
    println!(
        "  device, VMM thread   {vmm:>9.0} req/s   ratio {:.2}x (median of rounds {:.2}x)   target >= {target}x: {}",
        vmm / sys,
        c.median_ratio,
        if vmm / sys >= target { "ok" } else { "MISSED" }
    );
    println!(
        "  device, with driver  {wall:>9.0} req/s   ratio {:.2}x",
        wall / sys
    );
    println!("  {syscall:<20} {sys:>9.0} op/s");
}

fn fill(file: &File) {
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 31 + 7) as u8).collect();
    let mut w = file;
    for _ in 0..FILE_SIZE >> 20 {
        w.write_all(&chunk).expect("fill disk");
    }
}

fn main() {
    let tmp = TempFile::new_in(&std::env::temp_dir()).expect("temporary file");
    fill(tmp.as_file());
    // Read it all once so that every page is cached.
    let mut buf = vec![0u8; 1 << 20];
    for off in (0..FILE_SIZE).step_by(1 << 20) {
        tmp.as_file().read_exact_at(&mut buf, off).unwrap();
    }
    println!(
        "virtio-blk in process: 256 MiB file in the page cache, queue depth {DEPTH}, best of {ROUNDS} paired rounds"
    );

    let only = std::env::args().nth(1);
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("read") {
        random_reads(&tmp);
        overhead(&tmp);
    }
    if run("write") {
        sequential_writes(&tmp);
    }
}

/// The device's own cost per request, without I/O: zero-length reads at queue depth 32.
fn overhead(tmp: &TempFile) {
    const PER_ROUND: usize = 32 * 1024;
    let (mut blk, mut drv) = make_device(tmp.as_path());
    drv.setup(0, false);
    let sectors = vec![0u64; PER_ROUND];
    let mut best = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let vmm: Duration = sectors
            .chunks(usize::from(DEPTH))
            .map(|batch| drv.batch(&mut blk, VIRTIO_BLK_T_IN, batch))
            .sum();
        best = (best.0.min(vmm), best.1.min(t.elapsed()));
    }
    let per = |d: Duration| d.as_nanos() as f64 / PER_ROUND as f64;
    println!(
        "per-request cost without I/O (zero-length reads, QD32): VMM thread {:.0} ns, with driver {:.0} ns",
        per(best.0),
        per(best.1)
    );
}

/// (1) 4 KiB random reads at queue depth 32 vs `pread`.
fn random_reads(tmp: &TempFile) {
    const PER_ROUND: usize = 32 * 1024;
    const CHUNKS: usize = 8;
    let offsets = random_offsets(PER_ROUND * CHUNKS, 4096);
    let sectors: Vec<u64> = offsets.iter().map(|o| o / 512).collect();
    let (mut blk, mut drv) = make_device(tmp.as_path());
    drv.setup(4096, false);
    let file = tmp.as_file();
    let mut bufs = vec![0u8; 4096 * usize::from(DEPTH)];
    let chunk = |round: usize| (round % CHUNKS) * PER_ROUND..(round % CHUNKS + 1) * PER_ROUND;
    let c = compare(
        PER_ROUND,
        |round| {
            sectors[chunk(round)]
                .chunks(usize::from(DEPTH))
                .map(|batch| drv.batch(&mut blk, VIRTIO_BLK_T_IN, batch))
                .sum()
        },
        |round| {
            for (i, &off) in offsets[chunk(round)].iter().enumerate() {
                let at = (i % usize::from(DEPTH)) * 4096;
                file.read_exact_at(&mut bufs[at..at + 4096], off)
                    .expect("pread");
            }
        },
    );
    print(
        "(1) 4 KiB random reads, queue depth 32",
        "pread 4 KiB",
        &c,
        0.8,
    );
    assert_eq!(blk.counters()["errors"], 0);
    let batches = PER_ROUND / usize::from(DEPTH) * (ROUNDS + 1);
    println!(
        "  ({} interrupts for {batches} batches of {DEPTH}: one per batch)",
        drv.interrupts
    );
}

/// (2) Sequential 64 KiB writes at queue depth 32 vs `pwrite`, 64 MiB per round.
fn sequential_writes(tmp: &TempFile) {
    const WRITE: u64 = 64 * 1024;
    const PER_ROUND: usize = 1024;
    let chunks = (FILE_SIZE / WRITE) as usize / PER_ROUND;
    let offsets: Vec<u64> = (0..FILE_SIZE / WRITE).map(|i| i * WRITE).collect();
    let sectors: Vec<u64> = offsets.iter().map(|o| o / 512).collect();
    let (mut blk, mut drv) = make_device(tmp.as_path());
    drv.setup(WRITE as u32, true);
    let file = tmp.as_file();
    let data = vec![0x5au8; WRITE as usize];
    let chunk = |round: usize| (round % chunks) * PER_ROUND..(round % chunks + 1) * PER_ROUND;
    let c = compare(
        PER_ROUND,
        |round| {
            sectors[chunk(round)]
                .chunks(usize::from(DEPTH))
                .map(|batch| drv.batch(&mut blk, VIRTIO_BLK_T_OUT, batch))
                .sum()
        },
        |round| {
            for &off in &offsets[chunk(round)] {
                file.write_all_at(&data, off).expect("pwrite");
            }
        },
    );
    print(
        "(2) 64 KiB sequential writes, queue depth 32",
        "pwrite 64 KiB",
        &c,
        0.8,
    );
    assert_eq!(blk.counters()["errors"], 0);
}
