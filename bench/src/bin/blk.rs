//! Issue targets for virtio-blk: the device model's request rate against plain system calls
//! on the same file, in process (no VM).
//!
//! The program plays the guest driver ([`bench::virtq`]): it fills the available ring with
//! 32 requests, kicks the queue, calls `process_queue` (as the VMM's event loop would) and
//! checks the used ring and every status byte. The backing file is 256 MiB,
//! written just before, so it sits in the page cache. Figures:
//!
//! 1. 4 KiB random reads at queue depth 32 vs `pread` of 4 KiB at the same offsets;
//! 2. sequential 64 KiB writes at queue depth 32 vs `pwrite` of 64 KiB;
//! 3. scaling: 4 KiB random reads over 1, 2 and 4 queues, 32 in flight on each.
//!
//! Each runs twice: with the disk's io_uring (as Palisade runs disks where the kernel has
//! it; the batch is timed until its last completion is back in the used ring) and with
//! synchronous system calls (its fallback). `fio --ioengine=io_uring --iodepth=32` on the
//! same file gives a second baseline, when Debian's `fio` is installed.
//!
//! Two device rates are printed: "VMM thread" counts only the time spent in
//! `process_queue` (what the VMM's event-loop thread spends: clearing the kick, parsing,
//! the I/O itself, the used ring and the interrupt), which is the figure the target is
//! judged by, since in a VM the driver's work runs on the guest's vCPU; "with driver" also
//! counts this program's simulated driver (ring writes, the kick, reading the interrupt).
//! The two sides run in paired rounds ([`bench::paired`]).
//!
//! `blk read`, `blk write` or `blk scaling` runs one of them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use bench::paired::{self, ROUNDS};
use bench::virtq::{BenchQueue, BUFFERS, F_NEXT, F_WRITE, QUEUE_SIZE};
use devices::virtio::block::{Block, BlockOptions};
use devices::virtio::ActiveQueue;
use devices::virtio::VirtioDevice;
use vm_memory::Bytes;
use vmm_sys_util::tempfile::TempFile;

const FILE_SIZE: u64 = 256 << 20;
const DEPTH: u16 = 32;

// Guest memory layout above the rings.
const HEADERS: u64 = BUFFERS; // 16 bytes per request
const STATUS: u64 = BUFFERS + 0x1_0000; // 1 byte per request
const DATA: u64 = 0x10_0000; // per request: `block` bytes

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;

/// Writes the descriptor chains once: request `i` uses descriptors 3i..3i+2 (header, data
/// of `block` bytes, status); a write's data is device-readable.
fn setup(q: &BenchQueue, block: u32, write: bool) {
    let data_flags = if write { F_NEXT } else { F_NEXT | F_WRITE };
    for i in 0..QUEUE_SIZE / 3 {
        q.write_chain(
            3 * i,
            &[
                (HEADERS + 16 * u64::from(i), 16, F_NEXT),
                (DATA + u64::from(i) * u64::from(block), block, data_flags),
                (STATUS + u64::from(i), 1, F_WRITE),
            ],
        );
    }
}

/// Publishes `sectors.len()` requests of `req_type` (at most `DEPTH`), lets the device run,
/// and checks that all completed successfully. Returns the time spent in the device.
fn batch(q: &mut BenchQueue, blk: &mut Block, req_type: u32, sectors: &[u64]) -> Duration {
    {
        let area = q.area();
        for (i, &sector) in sectors.iter().enumerate() {
            let hdr = HEADERS as usize + 16 * i;
            area.write_obj(req_type.to_le(), hdr).unwrap();
            area.write_obj(sector.to_le(), hdr + 8).unwrap();
            area.write_obj(0xffu8, STATUS as usize + i).unwrap();
        }
    }
    let heads = (0..sectors.len() as u16).map(|i| 3 * i);
    let vmm = q.run(heads, || {
        blk.process_queue(0);
        settle(blk);
    });
    let area = q.area();
    for i in 0..sectors.len() {
        let status: u8 = area.read_obj(STATUS as usize + i).unwrap();
        assert_eq!(status, 0, "request failed with status {status}");
    }
    vmm
}

/// Runs one request of `req_type` per entry of `sectors` with `DEPTH` of them in flight all
/// along, as `fio --iodepth=32` does: each time the device returns requests, the driver
/// reuses their slots for the next sectors at once. Checks every status; returns the time
/// spent in the device (waiting for the engine's eventfd is not counted: the device thread
/// sleeps there).
fn sustained(q: &mut BenchQueue, blk: &mut Block, req_type: u32, sectors: &[u64]) -> Duration {
    let depth = usize::from(DEPTH).min(sectors.len());
    let mut vmm = Duration::ZERO;
    let mut next = 0usize;
    let mut done = 0usize;
    let mut used = Vec::with_capacity(usize::from(DEPTH));
    let mut fresh = Vec::with_capacity(usize::from(DEPTH));
    let arm = |q: &BenchQueue, slot: usize, sector: u64| {
        let area = q.area();
        let hdr = HEADERS as usize + 16 * slot;
        area.write_obj(req_type.to_le(), hdr).unwrap();
        area.write_obj(sector.to_le(), hdr + 8).unwrap();
        area.write_obj(0xffu8, STATUS as usize + slot).unwrap();
    };
    for slot in 0..depth {
        arm(q, slot, sectors[next]);
        fresh.push(3 * slot as u16);
        next += 1;
    }
    while done < sectors.len() {
        if !fresh.is_empty() {
            q.publish(fresh.drain(..));
            let t = Instant::now();
            blk.process_queue(0);
            vmm += t.elapsed();
        }
        q.take_used(&mut used);
        if used.is_empty() && blk.io_in_flight() > 0 {
            vmm += complete(blk);
            q.take_used(&mut used);
        }
        for head in used.drain(..) {
            let slot = usize::from(head / 3);
            let status: u8 = q.area().read_obj(STATUS as usize + slot).unwrap();
            assert_eq!(status, 0, "request failed with status {status}");
            done += 1;
            if next < sectors.len() {
                arm(q, slot, sectors[next]);
                fresh.push(head);
                next += 1;
            }
        }
    }
    vmm
}

/// Hands the ring's completions to the device until none is in flight (what the device's
/// worker does when the ring's eventfd fires).
fn settle(blk: &mut Block) {
    while blk.io_in_flight() > 0 {
        complete(blk);
    }
}

/// Waits for an engine's eventfd and hands the completions to the device; returns the
/// time spent in the device.
fn complete(blk: &mut Block) -> Duration {
    let fds = blk.host_fds();
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, _)| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: valid pollfds, as many as given.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
    let t = Instant::now();
    for (p, &(_, token)) in pfds.iter().zip(&fds) {
        if p.revents != 0 {
            blk.process_host(token);
        }
    }
    t.elapsed()
}

fn open_rw(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open disk")
}

/// Where the device runs its requests.
#[derive(Clone, Copy, PartialEq)]
enum Engine {
    /// As Palisade sets up a disk without `direct=on`: the ring, and one I/O thread for the
    /// writes the file system must block for.
    Default,
    Ring,
    Pool,
    Sync,
}

fn make_device(path: &std::path::Path, engine: Engine) -> (Block, BenchQueue) {
    let options = BlockOptions {
        queue_size: QUEUE_SIZE,
        ..BlockOptions::default()
    };
    let mut blk = Block::new(open_rw(path), options).expect("block device");
    // As Palisade sets disks up: a second open for the ring or the pool, no fixed buffers.
    if matches!(engine, Engine::Default | Engine::Ring) {
        blk.use_io_uring(open_rw(path), None).expect("io_uring");
    }
    let threads = match engine {
        Engine::Default => 1,
        Engine::Pool => 2,
        _ => 0,
    };
    if threads > 0 {
        blk.use_thread_pool(open_rw(path), threads, "bench-io", None)
            .expect("thread pool");
    }
    // The features Linux's driver accepts.
    let features = blk.features();
    blk.ack_features(features);
    let q = BenchQueue::new();
    blk.activate(q.mem.clone(), q.interrupt(), vec![q.active_queue(0)])
        .expect("activate");
    (blk, q)
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
    for (engine, name) in [
        (
            Engine::Default,
            "io_uring and one I/O thread for writes (Palisade's default)",
        ),
        (Engine::Ring, "io_uring alone"),
        (Engine::Pool, "thread pool of 2 (disable_io_uring)"),
        (Engine::Sync, "system calls on the device thread"),
    ] {
        println!("-- device engine: {name}");
        if run("read") {
            random_reads(&tmp, engine);
            overhead(&tmp, engine);
        }
        if run("write") {
            sequential_writes(&tmp, engine);
        }
    }
    if run("read") || run("scaling") {
        scaling(&tmp);
    }
    if run("read") {
        fio(&tmp, "randread", "4k");
    }
    if run("write") {
        fio(&tmp, "write", "64k");
    }
}

/// fio with io_uring at queue depth 32 on the same file, for `rw` at block size `bs`.
fn fio(tmp: &TempFile, rw: &str, bs: &str) {
    let out = std::process::Command::new("fio")
        .args([
            "--name=bench",
            "--ioengine=io_uring",
            "--iodepth=32",
            "--runtime=3",
        ])
        .args([
            "--time_based",
            "--numjobs=1",
            "--output-format=terse",
            "--terse-version=3",
        ])
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--filename={}", tmp.as_path().display()))
        .arg(format!("--size={FILE_SIZE}"))
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        println!("fio {rw} {bs}: not run (install Debian's fio: apt-get install fio)");
        return;
    };
    // Terse v3: field 8 is read IOPS, field 49 write IOPS (1-based).
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.trim().split(';').collect();
    let iops = if rw.contains("read") {
        fields.get(7)
    } else {
        fields.get(48)
    };
    let iops = iops.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    println!("fio --ioengine=io_uring --iodepth=32 --rw={rw} --bs={bs}: {iops:.0} req/s");
}

/// The device's own cost per request, without I/O: zero-length reads at queue depth 32.
fn overhead(tmp: &TempFile, engine: Engine) {
    const PER_ROUND: usize = 32 * 1024;
    let (mut blk, mut drv) = make_device(tmp.as_path(), engine);
    setup(&drv, 0, false);
    let sectors = vec![0u64; PER_ROUND];
    let mut best = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let vmm: Duration = sectors
            .chunks(usize::from(DEPTH))
            .map(|b| batch(&mut drv, &mut blk, VIRTIO_BLK_T_IN, b))
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
fn random_reads(tmp: &TempFile, engine: Engine) {
    const PER_ROUND: usize = 32 * 1024;
    const CHUNKS: usize = 8;
    let offsets = random_offsets(PER_ROUND * CHUNKS, 4096);
    let sectors: Vec<u64> = offsets.iter().map(|o| o / 512).collect();
    let (mut blk, mut drv) = make_device(tmp.as_path(), engine);
    setup(&drv, 4096, false);
    let file = tmp.as_file();
    let mut bufs = vec![0u8; 4096 * usize::from(DEPTH)];
    let chunk = |round: usize| (round % CHUNKS) * PER_ROUND..(round % CHUNKS + 1) * PER_ROUND;
    let c = paired::compare(
        PER_ROUND,
        |round| sustained(&mut drv, &mut blk, VIRTIO_BLK_T_IN, &sectors[chunk(round)]),
        |round| {
            for (i, &off) in offsets[chunk(round)].iter().enumerate() {
                let at = (i % usize::from(DEPTH)) * 4096;
                file.read_exact_at(&mut bufs[at..at + 4096], off)
                    .expect("pread");
            }
        },
    );
    println!("(1) 4 KiB random reads, queue depth 32");
    paired::print(&c, "req", "pread 4 KiB", 0.95);
    assert_eq!(blk.counters()["errors"], 0);
    let batches = PER_ROUND / usize::from(DEPTH) * (ROUNDS + 1);
    println!(
        "  ({} interrupts for {} requests)",
        drv.interrupts,
        batches * usize::from(DEPTH)
    );
}

/// (2) Sequential 64 KiB writes at queue depth 32 vs `pwrite`, 64 MiB per round.
fn sequential_writes(tmp: &TempFile, engine: Engine) {
    const WRITE: u64 = 64 * 1024;
    const PER_ROUND: usize = 1024;
    let chunks = (FILE_SIZE / WRITE) as usize / PER_ROUND;
    let offsets: Vec<u64> = (0..FILE_SIZE / WRITE).map(|i| i * WRITE).collect();
    let sectors: Vec<u64> = offsets.iter().map(|o| o / 512).collect();
    let (mut blk, mut drv) = make_device(tmp.as_path(), engine);
    setup(&drv, WRITE as u32, true);
    let file = tmp.as_file();
    // As many distinct 64 KiB buffers as the driver has requests in flight, so that both
    // sides copy from as much memory.
    let data = vec![0x5au8; WRITE as usize * usize::from(DEPTH)];
    let chunk = |round: usize| (round % chunks) * PER_ROUND..(round % chunks + 1) * PER_ROUND;
    let c = paired::compare(
        PER_ROUND,
        |round| sustained(&mut drv, &mut blk, VIRTIO_BLK_T_OUT, &sectors[chunk(round)]),
        |round| {
            for (i, &off) in offsets[chunk(round)].iter().enumerate() {
                let at = (i % usize::from(DEPTH)) * WRITE as usize;
                file.write_all_at(&data[at..at + WRITE as usize], off)
                    .expect("pwrite");
            }
        },
    );
    println!("(2) 64 KiB sequential writes, queue depth 32");
    paired::print(&c, "req", "pwrite 64 KiB", 0.97);
    assert_eq!(blk.counters()["errors"], 0);
}

/// Chains per queue in the scaling runs: `DEPTH` requests in flight on each queue.
const PER_QUEUE: usize = DEPTH as usize;

/// 4 KiB random reads with 1, 2 and 4 queues, each with `DEPTH` requests in flight, against
/// `pread` of as many requests: how the disk's single device thread and its engines keep
/// up as a driver spreads requests over queues (as Linux does, one queue per vCPU).
fn scaling(tmp: &TempFile) {
    const TOTAL: usize = 32 * 1024;
    let offsets = random_offsets(TOTAL, 4096);
    let sectors: Vec<u64> = offsets.iter().map(|o| o / 512).collect();
    println!(
        "(3) scaling: 4 KiB random reads, {DEPTH} in flight per queue, io_uring and one I/O thread"
    );
    let mut first = None;
    for queues in [1u16, 2, 4] {
        let options = BlockOptions {
            queue_size: QUEUE_SIZE,
            num_queues: queues,
            ..BlockOptions::default()
        };
        let mut blk = Block::new(open_rw(tmp.as_path()), options).expect("block device");
        blk.use_io_uring(open_rw(tmp.as_path()), None)
            .expect("io_uring");
        blk.use_thread_pool(open_rw(tmp.as_path()), 1, "bench-io", None)
            .expect("thread pool");
        let features = blk.features();
        blk.ack_features(features);
        let q0 = BenchQueue::new();
        let mut drivers: Vec<BenchQueue> = vec![q0];
        for n in 1..u64::from(queues) {
            let q = BenchQueue::beside(&drivers[0], n);
            drivers.push(q);
        }
        let active: Vec<ActiveQueue> = drivers
            .iter()
            .enumerate()
            .map(|(i, q)| q.active_queue(i as u16))
            .collect();
        blk.activate(drivers[0].mem.clone(), drivers[0].interrupt(), active)
            .expect("activate");
        for (qi, q) in drivers.iter().enumerate() {
            for i in 0..PER_QUEUE as u16 {
                let slot = u64::from(i) + (qi * PER_QUEUE) as u64;
                q.write_chain(
                    3 * i,
                    &[
                        (HEADERS + 16 * slot, 16, F_NEXT),
                        (DATA + slot * 4096, 4096, F_NEXT | F_WRITE),
                        (STATUS + slot, 1, F_WRITE),
                    ],
                );
            }
        }
        let file = tmp.as_file();
        let mut bufs = vec![0u8; 4096 * PER_QUEUE * usize::from(queues)];
        let c = paired::compare(
            TOTAL,
            |_| spread(&mut drivers, &mut blk, &sectors),
            |_| {
                for (i, &off) in offsets.iter().enumerate() {
                    let at = (i % (bufs.len() / 4096)) * 4096;
                    file.read_exact_at(&mut bufs[at..at + 4096], off)
                        .expect("pread");
                }
            },
        );
        let (_, wall, sys) = c.rates();
        let base = *first.get_or_insert(wall);
        println!(
            "  {queues} queue(s): device, with driver {wall:>9.0} req/s   ratio {:.2}x of pread   {:.2}x of 1 queue",
            wall / sys,
            wall / base
        );
        assert_eq!(blk.counters()["errors"], 0);
    }
}

/// Runs a read of each of `sectors` over the queues of `drivers`, `PER_QUEUE` in flight on
/// each, refilling every queue as its requests come back. Returns the time spent in the
/// device.
fn spread(drivers: &mut [BenchQueue], blk: &mut Block, sectors: &[u64]) -> Duration {
    let n = drivers.len();
    let mut vmm = Duration::ZERO;
    let mut next = 0usize;
    let mut done = 0usize;
    let mut used = Vec::new();
    let mut fresh: Vec<Vec<u16>> = vec![Vec::new(); n];
    let arm = |q: &BenchQueue, slot: usize, sector: u64| {
        let area = q.area();
        let hdr = HEADERS as usize + 16 * slot;
        area.write_obj(VIRTIO_BLK_T_IN.to_le(), hdr).unwrap();
        area.write_obj(sector.to_le(), hdr + 8).unwrap();
        area.write_obj(0xffu8, STATUS as usize + slot).unwrap();
    };
    for (qi, q) in drivers.iter().enumerate() {
        for i in 0..PER_QUEUE {
            if next < sectors.len() {
                arm(q, qi * PER_QUEUE + i, sectors[next]);
                fresh[qi].push(3 * i as u16);
                next += 1;
            }
        }
    }
    while done < sectors.len() {
        for (qi, q) in drivers.iter_mut().enumerate() {
            if !fresh[qi].is_empty() {
                q.publish(fresh[qi].drain(..));
                let t = Instant::now();
                blk.process_queue(qi as u16);
                vmm += t.elapsed();
            }
        }
        let mut progress = false;
        for (qi, q) in drivers.iter_mut().enumerate() {
            q.take_used(&mut used);
            for head in used.drain(..) {
                progress = true;
                let slot = qi * PER_QUEUE + usize::from(head / 3);
                let status: u8 = q.area().read_obj(STATUS as usize + slot).unwrap();
                assert_eq!(status, 0, "request failed with status {status}");
                done += 1;
                if next < sectors.len() {
                    arm(q, slot, sectors[next]);
                    fresh[qi].push(head);
                    next += 1;
                }
            }
        }
        if !progress && blk.io_in_flight() > 0 {
            vmm += complete(blk);
        }
    }
    vmm
}
