//! Issue target for virtio-net: the device model's transmit rate against writing the same
//! frames straight to the tap, in process (no VM).
//!
//! The program creates a network namespace of its own (`devices::netns`, removed at the
//! end, also on a panic), and in it a tap that is up, with no address and IPv6 off,
//! so that the host does nothing but receive the frames. Each frame is 1500 bytes: an IPv4
//! UDP datagram addressed to a MAC that is not the tap's, which the kernel drops as soon as
//! it sees it is for another host, on both sides alike.
//!
//! The program plays the guest driver ([`bench::virtq`]): it publishes 32 transmit chains
//! (a 12-byte header descriptor and a 1500-byte frame descriptor each), kicks the queue,
//! calls `process_queue` (as the VMM's event loop would) and checks the used ring. The
//! other side writes the same headers and frames (from as many distinct buffers as the
//! driver cycles through) to the same tap with `writev`.
//!
//! Two device rates are printed: "VMM thread" counts only the time spent in
//! `process_queue` (what the VMM's event-loop thread spends: clearing the kick, walking the
//! chains, the `writev`s, the used ring and the interrupt), which the target is judged by,
//! since in a VM the driver's work runs on the guest's vCPU; "with driver" also counts this
//! program's simulated driver. The two sides run in paired rounds ([`bench::paired`]).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bench::paired::{self, ROUNDS};
use bench::virtq::{BenchQueue, BUFFERS, F_NEXT, F_WRITE, QUEUE_SIZE};
use devices::netns::NetNs;
use devices::tap::Tap;
use devices::virtio::net::{Net, NetOptions};
use devices::virtio::{ActiveQueue, VirtioDevice};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BATCH: u16 = 32;
const FRAME: usize = 1500;
const HDR: usize = 12;
const PER_ROUND: usize = 32 * 512;
const TARGET: f64 = 0.95;

// Guest memory layout above the rings (queue 1 is the transmit queue; queue 0, receive,
// stays disabled).
const HEADERS: u64 = BUFFERS; // 16 bytes per chain
const FRAMES: u64 = 0x10_0000; // 2 KiB per chain

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xbe, 0x0c, 0x01];
/// A destination that is not the tap's MAC: the host drops the frames on arrival.
const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xde, 0xad, 0x01];

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

/// Writes the chains once: chain `i` is descriptors 2i (header) and 2i + 1 (frame).
fn setup(q: &BenchQueue, frame: &[u8]) {
    for i in 0..QUEUE_SIZE / 2 {
        let hdr = HEADERS + 16 * u64::from(i);
        let data = FRAMES + 2048 * u64::from(i);
        q.mem.write_slice(&[0u8; HDR], GuestAddress(hdr)).unwrap();
        q.mem.write_slice(frame, GuestAddress(data)).unwrap();
        q.write_chain(
            2 * i,
            &[(hdr, HDR as u32, F_NEXT), (data, frame.len() as u32, 0)],
        );
    }
}

/// Publishes `BATCH` chains and lets the device send them; returns the time spent in the
/// device.
fn batch(q: &mut BenchQueue, net: &mut Net) -> Duration {
    let first = q.avail_idx();
    let heads = (0..BATCH).map(|i| 2 * (first.wrapping_add(i) % (QUEUE_SIZE / 2)));
    q.run(heads, || net.process_queue(1))
}

fn make_device(tap: Tap) -> (Net, BenchQueue) {
    let options = NetOptions {
        queue_size: QUEUE_SIZE,
        ..NetOptions::default()
    };
    let mut net = Net::new(vec![tap], GUEST_MAC, options).expect("network device");
    // Everything offered, as Linux's driver would accept it.
    let features = net.features();
    net.ack_features(features);
    let q = BenchQueue::new();
    let rx = ActiveQueue {
        index: 0,
        queue: Queue::new(QUEUE_SIZE).expect("queue"),
        notify: Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
    };
    net.activate(q.mem.clone(), q.interrupt(), vec![rx, q.active_queue(1)])
        .expect("activate");
    (net, q)
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
    setup(&drv, &frame);

    // The direct side writes to the device's own tap, through a second descriptor of it.
    // SAFETY: dup of a descriptor the device holds open; the copy is owned below.
    let dup = unsafe { libc::dup(net.taps()[0].as_raw_fd()) };
    assert!(dup >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    let direct_tap = Tap::from_fd(unsafe { OwnedFd::from_raw_fd(dup) }).expect("tap fd");
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

    let c = paired::compare(
        PER_ROUND,
        |_| {
            (0..PER_ROUND / usize::from(BATCH))
                .map(|_| batch(&mut drv, &mut net))
                .sum()
        },
        |_| direct(),
    );
    println!(
        "virtio-net transmit in process: {FRAME}-byte frames (+{HDR}-byte header) to tap {name} \
         in namespace {}, {BATCH} per notify, {PER_ROUND} frames per round, best of {ROUNDS} paired rounds",
        ns.name()
    );
    paired::print(&c, "frames", "writev to the tap", TARGET);
    let (vmm, _, sys) = c.rates();
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
    receive(&ns, &frame);
    drop(ns);
}

/// Frames the host queues on the receive tap per round (its `txqueuelen` is raised to
/// hold them), drained by either side.
const RX_PER_ROUND: usize = 4096;
/// Receive buffers the driver posts per kick: one 2 KiB descriptor each (mergeable buffers
/// put the header in the same descriptor).
const RX_BATCH: u16 = 128;
const RX_TARGET: f64 = 0.90;

/// The receive side: the host sends frames out of a second tap (an `AF_PACKET` socket
/// bound to it, untimed, before each run); the device reads them into the buffers its
/// driver posts, against `readv` of the same frames from the same tap.
fn receive(ns: &NetNs, frame: &[u8]) {
    let tap = ns.run(|| {
        let tap = Tap::open(None, 1).expect("tap").remove(0);
        tap.up().expect("tap up");
        tap
    });
    let name = tap.name().to_string();
    ns.ip(&["link", "set", "dev", &name, "txqueuelen", "8192"]);
    let sender = ns.run(|| packet_socket(&name));
    let fill = || {
        for _ in 0..RX_PER_ROUND {
            // SAFETY: sending a frame from a local buffer on a socket this program owns.
            let n =
                unsafe { libc::send(sender.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(
                n as usize,
                frame.len(),
                "send: {}",
                std::io::Error::last_os_error()
            );
        }
    };

    let options = NetOptions {
        queue_size: QUEUE_SIZE,
        ..NetOptions::default()
    };
    let mut net = Net::new(vec![tap], GUEST_MAC, options).expect("network device");
    let features = net.features();
    net.ack_features(features);
    let mut drv = BenchQueue::new();
    let tx = ActiveQueue {
        index: 1,
        queue: Queue::new(QUEUE_SIZE).expect("queue"),
        notify: Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
    };
    net.activate(
        drv.mem.clone(),
        drv.interrupt(),
        vec![drv.active_queue(0), tx],
    )
    .expect("activate");
    for i in 0..QUEUE_SIZE {
        drv.write_chain(i, &[(FRAMES + 2048 * u64::from(i), 2048, F_WRITE)]);
    }
    // SAFETY: dup of a descriptor the device holds open; the copy is owned below.
    let dup = unsafe { libc::dup(net.taps()[0].as_raw_fd()) };
    assert!(dup >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    let direct_tap = Tap::from_fd(unsafe { OwnedFd::from_raw_fd(dup) }).expect("tap fd");
    let slots = usize::from(QUEUE_SIZE);
    let mut headers = vec![0u8; 16 * slots];
    let mut frames = vec![0u8; 2048 * slots];

    let c = paired::compare_prepared(
        RX_PER_ROUND,
        fill,
        |_| {
            (0..RX_PER_ROUND / usize::from(RX_BATCH))
                .map(|_| {
                    let first = drv.avail_idx();
                    let heads = (0..RX_BATCH).map(|i| first.wrapping_add(i) % QUEUE_SIZE);
                    drv.run(heads, || net.process_queue(0))
                })
                .sum()
        },
        |_| {
            let mut r = &direct_tap;
            let mut got = 0;
            while got < RX_PER_ROUND {
                let slot = got % slots;
                let (h, f) = (&mut headers[16 * slot..], &mut frames[2048 * slot..]);
                let mut bufs = [
                    IoSliceMut::new(&mut h[..HDR]),
                    IoSliceMut::new(&mut f[..2048]),
                ];
                match r.read_vectored(&mut bufs) {
                    Ok(n) if n > HDR => got += 1,
                    Ok(_) => {}
                    Err(e) => panic!("readv from the tap: {e}"),
                }
            }
        },
    );
    println!(
        "virtio-net receive in process: {}-byte frames sent out of tap {name} (AF_PACKET, untimed), \
         {RX_BATCH} buffers per kick, {RX_PER_ROUND} frames per round, best of {ROUNDS} paired rounds",
        frame.len()
    );
    paired::print(&c, "frames", "readv from the tap", RX_TARGET);
    let (vmm, _, sys) = c.rates();
    println!(
        "  per frame: device {:.0} ns, readv {:.0} ns",
        1e9 / vmm,
        1e9 / sys
    );
    let counters = net.counters();
    assert!(counters["rx_frames"].as_u64().unwrap() >= (RX_PER_ROUND * (ROUNDS + 1)) as u64);
    assert_eq!(counters["rx_dropped"], 0, "{counters:?}");
    drop(net);
    drop(direct_tap);
}

/// A raw packet socket sending on interface `name`.
fn packet_socket(name: &str) -> OwnedFd {
    let ifname = std::ffi::CString::new(name).expect("name");
    // SAFETY: plain system calls on a NUL-terminated name and a local address.
    unsafe {
        let index = libc::if_nametoindex(ifname.as_ptr());
        assert!(index > 0, "no interface {name}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let r = libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            len,
        );
        assert_eq!(r, 0, "bind to {name}: {}", std::io::Error::last_os_error());
        fd
    }
}
