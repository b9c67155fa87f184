//! Tests of the virtio-net device model, on a tap in a network namespace of its own.
use super::*;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
};

use crate::netns::NetNs;
use crate::virtio::test_driver::{Driver, MEM_END, OUTSIDE, QSIZE, R, REGION, W};
use crate::virtio::InterruptCause;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The MAC of a host-side peer that does not exist.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// A local experimental Ethertype for test frames.
const TEST_TYPE: [u8; 2] = [0x88, 0xb5];

/// A receive chain the driver posted.
struct RxPost {
    head: u16,
    bufs: Vec<(u64, u32)>,
}

/// How a harness is set up.
struct Setup {
    pairs: usize,
    options: NetOptions,
    features: fn(u64) -> u64,
    /// Give the host side 10.200.<n>.1/24.
    ip: bool,
    /// Queues the driver enables (all when `None`).
    ready: Option<Vec<u16>>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            pairs: 1,
            options: NetOptions {
                queue_size: QSIZE,
                ..NetOptions::default()
            },
            features: |f| f,
            ip: false,
            ready: None,
        }
    }
}

/// The host side of the tap: an `AF_PACKET` socket on it to inject and capture frames.
struct HostSide {
    sock: OwnedFd,
    mac: [u8; 6],
    subnet: u8,
    // Last: the namespace is deleted after the taps and sockets are closed.
    ns: NetNs,
}

/// The test plays the driver; the host side is a tap in a namespace of the test's own.
type Harness = Driver<Net, HostSide>;

/// An `AF_PACKET` socket bound to `ifname` (in the calling thread's namespace).
fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain system call; the result is checked and then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = CString::new(ifname).unwrap();
    // SAFETY: `name` is a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0);
    // SAFETY: plain data, all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size given.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
    fd
}

/// Waits up to `ms` for `fd` to be readable.
fn readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// A test frame of `len` bytes: to the guest, from the peer, payload numbered by `seq`.
fn frame(len: usize, seq: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&TEST_TYPE);
    f.push(seq);
    while f.len() < len {
        f.push((f.len() * 7 + usize::from(seq)) as u8);
    }
    f.truncate(len);
    f
}

fn header(num_buffers: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
}

impl Harness {
    fn new(setup: Setup) -> Harness {
        let ns = NetNs::new();
        let subnet = ns.index();
        let (pairs, ip) = (setup.pairs, setup.ip);
        let (taps, sock, mac) = ns.run(move || {
            let taps = Tap::open(None, pairs).unwrap();
            if ip {
                taps[0]
                    .configure(
                        Ipv4Addr::new(10, 200, subnet, 1),
                        Ipv4Addr::new(255, 255, 255, 0),
                    )
                    .unwrap();
            }
            taps[0].up().unwrap();
            let sock = packet_socket(taps[0].name());
            let mac = taps[0].host_mac().unwrap();
            (taps, sock, mac)
        });
        let net = Net::new(taps, GUEST_MAC, setup.options).unwrap();
        let host = HostSide {
            sock,
            mac,
            subnet,
            ns,
        };
        let mut h = Driver::for_device(net, host, setup.features);
        // Every kick clears the notification.
        h.check_kicks = true;
        let queues = h.device_rings(setup.ready.as_deref());
        h.activate(queues).unwrap();
        h
    }

    /// Transmits `data` (header and frame) split into descriptors of `split` bytes (the
    /// rest in a last one) on queue `q`, and returns the head.
    fn send(&mut self, q: usize, data: &[u8], split: &[usize]) -> u16 {
        let mut descs = Vec::new();
        let mut at = 0;
        for &n in split.iter().chain(std::iter::once(&usize::MAX)) {
            let n = n.min(data.len() - at);
            if n == 0 && at == data.len() {
                break;
            }
            let addr = self.data(&data[at..at + n]);
            descs.push((addr, n as u32, R));
            at += n;
        }
        let head = self.chain(q, &descs);
        self.publish(q, head);
        self.kick(q);
        head
    }

    /// Posts a receive chain of device-writable buffers of `lens` bytes (filled with
    /// 0xee) on queue `q`, without notifying.
    fn post_rx(&mut self, q: usize, lens: &[u32]) -> RxPost {
        let mut bufs = Vec::new();
        for &len in lens {
            let addr = self.alloc(u64::from(len));
            self.mem
                .write_slice(&vec![0xee; len as usize], GuestAddress(addr))
                .unwrap();
            bufs.push((addr, len));
        }
        let descs: Vec<_> = bufs.iter().map(|&(a, l)| (a, l, W)).collect();
        let head = self.chain(q, &descs);
        self.publish(q, head);
        RxPost { head, bufs }
    }

    /// The first `len` bytes a receive chain holds.
    fn received(&self, post: &RxPost, len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for &(addr, l) in &post.bufs {
            let n = (l as usize).min(len - v.len());
            v.extend(self.read_guest(addr, n));
        }
        v
    }

    /// Injects a frame from the host side: it leaves through the tap towards the guest.
    fn inject(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                self.host.sock.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
    }

    /// The next frame the host received from the tap (frames it sent are skipped).
    fn capture(&self, ms: i32) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_millis(ms as u64);
        let mut buf = vec![0u8; 70000];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !readable(self.host.sock.as_raw_fd(), left.as_millis() as i32) {
                return None;
            }
            // SAFETY: plain data, all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `sll` are valid for writes of the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.host.sock.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut sl,
                )
            };
            if n < 0 {
                continue;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Some(buf[..n as usize].to_vec());
        }
    }

    fn tap_fd(&self, pair: usize) -> RawFd {
        self.dev.taps()[pair].as_raw_fd()
    }

    /// Lets the device read the tap of `pair` (as the event loop would) until `done`
    /// holds; false after 3 s.
    fn pump_until(&mut self, pair: usize, done: impl Fn(&Harness) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            self.dev.process_host(pair as u32);
            if done(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            readable(self.tap_fd(pair), 20);
        }
    }

    /// Pumps until receive queue `q` has `n` used entries.
    fn wait_used(&mut self, pair: usize, q: usize, n: u16) {
        let ok = self.pump_until(pair, |h| h.used_idx(q) >= n);
        assert!(
            ok,
            "queue {q}: {} used entries, {n} expected",
            self.used_idx(q)
        );
    }

    fn guest_ip(&self) -> [u8; 4] {
        [10, 200, self.host.subnet, 2]
    }

    fn host_ip(&self) -> [u8; 4] {
        [10, 200, self.host.subnet, 1]
    }
}

fn arp(op: u16, dst: [u8; 6], sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f
}

#[test]
fn arp_request_gets_the_host_reply() {
    let mut h = Harness::new(Setup {
        ip: true,
        ..Setup::default()
    });
    let (gip, hip) = (h.guest_ip(), h.host_ip());
    let request = arp(1, [0xff; 6], GUEST_MAC, gip, [0; 6], hip);
    assert_eq!(request.len(), 42);

    // Receive buffers first, as a driver does.
    let posts: Vec<RxPost> = (0..4).map(|_| h.post_rx(0, &[2048])).collect();
    h.kick(0);
    assert_eq!(h.used_idx(0), 0);

    // TX: the header and the frame in two descriptors.
    let mut bytes = header(0).to_vec();
    bytes.extend_from_slice(&request);
    let head = h.send(1, &bytes, &[12]);
    assert_eq!(h.used_idx(1), 1);
    assert_eq!(h.used_elem(1, 0), (u32::from(head), 0));
    // The host side saw exactly the frame the guest sent.
    let seen = h.capture(2000).expect("the host saw no frame");
    assert_eq!(seen, request);

    // RX: the kernel's reply, straight into the first buffer.
    h.wait_used(0, 0, 1);
    let (id, len) = h.used_elem(0, 0);
    assert_eq!(id, u32::from(posts[0].head));
    let reply = arp(2, GUEST_MAC, h.host.mac, hip, GUEST_MAC, gip);
    assert_eq!(len as usize, 12 + reply.len());
    let got = h.received(&posts[0], len as usize);
    assert_eq!(&got[..12], &header(1), "header");
    assert_eq!(&got[12..], &reply[..], "ARP reply");
    assert_eq!(&got[12..18], &GUEST_MAC, "reply's destination");
    assert_eq!(&got[12 + 32..12 + 38], &GUEST_MAC, "reply's target MAC");
    // Nothing else came.
    assert_eq!(h.used_idx(0), 1);
    assert_eq!(h.irq.count(), 2);

    assert_eq!(h.counter("tx_frames"), 1);
    assert_eq!(h.counter("tx_bytes"), 42);
    assert_eq!(h.counter("rx_frames"), 1);
    assert_eq!(h.counter("rx_bytes"), 42);
    assert_eq!(h.counter("errors"), 0);
    assert_eq!(h.dev.rx_held(0), (3, 0));
}

#[test]
fn transmitted_frames_reach_the_host_unchanged() {
    let mut h = Harness::new(Setup::default());
    let cases: Vec<(usize, Vec<usize>)> = vec![
        (60, vec![]),             // header and frame in one descriptor
        (200, vec![5, 7, 30, 1]), // header split, frame in pieces
        (1514, vec![12]),
        (9000, vec![12, 4000]),
    ];
    for (i, (len, split)) in cases.iter().enumerate() {
        let f = frame(*len, i as u8);
        let mut bytes = header(0).to_vec();
        bytes.extend_from_slice(&f);
        h.send(1, &bytes, split);
        assert_eq!(h.capture(2000).as_deref(), Some(&f[..]), "case {i}");
    }
    // A frame straddling the two memory regions, and one behind an indirect table.
    let f = frame(300, 9);
    let mut bytes = header(0).to_vec();
    bytes.extend_from_slice(&f);
    let at = REGION - 100;
    h.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    let head = h.chain(1, &[(at, bytes.len() as u32, R)]);
    h.publish(1, head);
    h.kick(1);
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]), "straddling");

    let f = frame(100, 10);
    let hdr = h.data(&header(0));
    let data = h.data(&f);
    let table = h.alloc(32);
    h.write_raw_desc(table, hdr, 12, VRING_DESC_F_NEXT as u16, 1);
    h.write_raw_desc(table + 16, data, 100, 0, 0);
    let head = h.chain(1, &[(table, 32, VRING_DESC_F_INDIRECT as u16)]);
    h.publish(1, head);
    h.kick(1);
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]), "indirect");

    assert_eq!(h.used_idx(1), 6);
    assert_eq!(h.counter("tx_frames"), 6);
    assert_eq!(h.counter("tx_bytes"), 60 + 200 + 1514 + 9000 + 300 + 100);
    assert_eq!(h.counter("tx_dropped"), 0);
}

#[test]
fn hostile_transmit_chains_are_dropped_and_returned() {
    let mut h = Harness::new(Setup::default());
    let f = frame(100, 1);
    let mut good = header(0).to_vec();
    good.extend_from_slice(&f);
    let g = h.data(&good);
    let wbuf = h.alloc(100);
    let big = h.alloc(MAX_BUFFER_SIZE as u64 + 1);
    let heads = vec![
        // A device-writable descriptor, alone and after the frame.
        h.chain(1, &[(wbuf, 100, W)]),
        h.chain(1, &[(g, 112, R), (wbuf, 100, W)]),
        // Buffers outside guest memory, and running off its end.
        h.chain(1, &[(g, 12, R), (OUTSIDE, 100, R)]),
        h.chain(1, &[(MEM_END - 50, 112, R)]),
        // One byte too many, and too short for an Ethernet header.
        h.chain(1, &[(big, MAX_BUFFER_SIZE as u32 + 1, R)]),
        h.chain(1, &[(g, 12 + 13, R)]),
        // Empty descriptors only.
        h.chain(1, &[(g, 0, R), (g, 0, R)]),
    ];
    for &head in &heads {
        h.publish(1, head);
    }
    // A loop whose descriptors add up to more than the largest frame (the walk stops at
    // the queue size).
    let loop_head = h.rings[1].next_desc;
    h.write_desc(
        1,
        loop_head,
        big,
        4096,
        VRING_DESC_F_NEXT as u16,
        loop_head + 1,
    );
    h.write_desc(
        1,
        loop_head + 1,
        big,
        4096,
        VRING_DESC_F_NEXT as u16,
        loop_head,
    );
    h.rings[1].next_desc += 2;
    h.publish(1, loop_head);
    // A head index beyond the queue: cannot be returned.
    h.publish(1, QSIZE + 5);
    // A well-formed frame after all that.
    let ok = h.chain(1, &[(g, 112, R)]);
    h.publish(1, ok);
    h.kick(1);

    let n = heads.len() as u16 + 1;
    assert_eq!(h.used_idx(1), n + 1);
    for (i, &head) in heads.iter().chain([&loop_head]).enumerate() {
        assert_eq!(h.used_elem(1, i as u16), (u32::from(head), 0), "chain {i}");
    }
    assert_eq!(h.used_elem(1, n), (u32::from(ok), 0));
    // Only the good frame reached the host.
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]));
    assert_eq!(h.capture(200), None);
    assert_eq!(h.counter("tx_frames"), 1);
    assert_eq!(h.counter("tx_dropped"), u64::from(n) + 1);
    assert_eq!(h.counter("errors"), u64::from(n) + 1);

    // The queue still works.
    h.send(1, &good, &[]);
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]));
}

#[test]
fn hostile_receive_chains_are_returned_and_the_frame_goes_to_the_next() {
    let mut h = Harness::new(Setup::default());
    let rbuf = h.alloc(2048);
    let wbuf = h.alloc(2048);
    let small = h.alloc(8);
    let bad = vec![
        h.chain(0, &[(rbuf, 2048, R)]),
        h.chain(0, &[(wbuf, 100, W), (rbuf, 100, R)]),
        h.chain(0, &[(OUTSIDE, 2048, W)]),
        h.chain(0, &[(MEM_END - 100, 2048, W)]),
        h.chain(0, &[(small, 8, W)]),
    ];
    for &head in &bad {
        h.publish(0, head);
    }
    // A good chain whose buffer straddles the two memory regions.
    let at = REGION - 50;
    let good = h.chain(0, &[(at, 2048, W)]);
    h.publish(0, good);
    h.kick(0);
    // The bad chains came back at once, empty.
    assert_eq!(h.used_idx(0), bad.len() as u16);
    for (i, &head) in bad.iter().enumerate() {
        assert_eq!(h.used_elem(0, i as u16), (u32::from(head), 0), "chain {i}");
    }
    assert_eq!(h.counter("errors"), bad.len() as u64);

    let f = frame(200, 3);
    h.inject(&f);
    h.wait_used(0, 0, bad.len() as u16 + 1);
    assert_eq!(h.used_elem(0, bad.len() as u16), (u32::from(good), 212));
    let got = h.read_guest(at, 212);
    assert_eq!(&got[..12], &header(1));
    assert_eq!(&got[12..], &f[..]);
    assert_eq!(h.counter("rx_frames"), 1);
}

#[test]
fn a_chain_too_small_drops_the_frame_but_stays() {
    let mut h = Harness::new(Setup {
        features: |f| f & !F_MRG_RXBUF,
        ..Setup::default()
    });
    let post = h.post_rx(0, &[60, 40]);
    h.kick(0);
    h.inject(&frame(300, 1));
    assert!(h.pump_until(0, |h| h.counter("rx_dropped") == 1));
    assert_eq!(h.used_idx(0), 0);
    assert_eq!(h.dev.rx_held(0), (1, 0));
    // An exact fit goes into the same chain.
    let f = frame(88, 2);
    h.inject(&f);
    h.wait_used(0, 0, 1);
    assert_eq!(h.used_elem(0, 0), (u32::from(post.head), 100));
    let got = h.received(&post, 100);
    assert_eq!(&got[..12], &header(1));
    assert_eq!(&got[12..], &f[..]);
    assert_eq!(h.counter("rx_frames"), 1);
    assert_eq!(h.counter("rx_dropped"), 1);
    assert_eq!(h.counter("errors"), 0);
}

#[test]
fn without_receive_buffers_the_device_stops_reading() {
    let mut h = Harness::new(Setup::default());
    let total = 200u16;
    for seq in 0..total {
        h.inject(&frame(100, seq as u8));
    }
    assert!(readable(h.tap_fd(0), 2000));
    for _ in 0..10 {
        h.dev.process_host(0);
    }
    // Nothing was read: the frames wait in the tap, not in the VMM.
    assert_eq!(h.counter("rx_frames"), 0);
    assert_eq!(h.counter("rx_dropped"), 0);
    assert_eq!(h.dev.rx_held(0), (0, 0));
    assert!(readable(h.tap_fd(0), 0));
    // The device asked to be notified when the driver adds buffers (EVENT_IDX:
    // avail_event = the next available index, 0).
    assert_eq!(h.avail_event(0), 0);

    // Refilling with a few buffers delivers that many frames, in order, then stops.
    let posts: Vec<RxPost> = (0..5).map(|_| h.post_rx(0, &[2048])).collect();
    h.kick(0);
    assert_eq!(h.used_idx(0), 5);
    for (i, p) in posts.iter().enumerate() {
        assert_eq!(h.used_elem(0, i as u16), (u32::from(p.head), 112));
        assert_eq!(h.received(p, 27)[26], i as u8);
    }
    assert_eq!(h.dev.rx_held(0), (0, 0));
    assert!(readable(h.tap_fd(0), 0));
    assert_eq!(h.avail_event(0), 5);
    assert_eq!(h.irq.count(), 1);

    // Then the rest, one ring at a time.
    let mut seq = 5u16;
    while seq < total {
        let n = (total - seq).min(QSIZE);
        let posts: Vec<RxPost> = (0..n).map(|_| h.post_rx(0, &[2048])).collect();
        h.kick(0);
        for p in &posts {
            assert_eq!(h.received(p, 27)[26], seq as u8);
            seq += 1;
        }
    }
    assert_eq!(h.used_idx(0), total);
    assert_eq!(h.counter("rx_frames"), u64::from(total));
    assert!(!readable(h.tap_fd(0), 0));
}

#[test]
fn mergeable_buffers_carry_a_frame_over_several_chains() {
    let mut h = Harness::new(Setup::default());
    assert_ne!(h.dev.acked_features & F_MRG_RXBUF, 0);
    let posts: Vec<RxPost> = (0..3).map(|_| h.post_rx(0, &[100, 156])).collect();
    h.kick(0);
    let f = frame(600, 1);
    h.inject(&f);
    h.wait_used(0, 0, 3);
    let lens: Vec<u32> = (0..3).map(|i| h.used_elem(0, i).1).collect();
    assert_eq!(lens, [256, 256, 100]);
    let mut got = Vec::new();
    for (p, &l) in posts.iter().zip(&lens) {
        assert_eq!(h.used_elem(0, got.len() as u16 / 256).0, u32::from(p.head));
        got.extend(h.received(p, l as usize));
    }
    assert_eq!(&got[..12], &header(3));
    assert_eq!(&got[12..], &f[..]);
    assert_eq!(h.irq.count(), 1);

    // Not enough buffers yet: the frame waits, partly placed, until more come.
    let first = h.post_rx(0, &[256]);
    h.kick(0);
    let f = frame(700, 2);
    h.inject(&f);
    assert!(h.pump_until(0, |h| h.dev.rx_held(0) == (0, 1)));
    assert_eq!(h.used_idx(0), 3);
    // A second frame waits in the tap meanwhile.
    let f2 = frame(80, 3);
    h.inject(&f2);
    let more: Vec<RxPost> = (0..3).map(|_| h.post_rx(0, &[256])).collect();
    h.kick(0);
    h.wait_used(0, 0, 7);
    let lens: Vec<u32> = (3..7).map(|i| h.used_elem(0, i).1).collect();
    assert_eq!(lens, [256, 256, 200, 92]);
    let mut got = h.received(&first, 256);
    got.extend(h.received(&more[0], 256));
    got.extend(h.received(&more[1], 200));
    assert_eq!(&got[..12], &header(3));
    assert_eq!(&got[12..], &f[..]);
    let got2 = h.received(&more[2], 92);
    assert_eq!(&got2[..12], &header(1));
    assert_eq!(&got2[12..], &f2[..]);
    assert_eq!(h.counter("rx_frames"), 3);
    assert_eq!(h.counter("rx_bytes"), 600 + 700 + 80);
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped() {
    let mut h = Harness::new(Setup {
        options: NetOptions {
            queue_size: 4,
            ..NetOptions::default()
        },
        ..Setup::default()
    });
    let posts: Vec<RxPost> = (0..4).map(|_| h.post_rx(0, &[32])).collect();
    h.kick(0);
    h.inject(&frame(200, 1));
    assert!(h.pump_until(0, |h| h.counter("rx_dropped") == 1));
    assert_eq!(h.used_idx(0), 0);
    assert_eq!(h.dev.rx_held(0), (4, 0));
    // The chains serve the next frame.
    let f = frame(50, 2);
    h.inject(&f);
    h.wait_used(0, 0, 2);
    assert_eq!(h.used_elem(0, 0), (u32::from(posts[0].head), 32));
    assert_eq!(h.used_elem(0, 1), (u32::from(posts[1].head), 30));
    let mut got = h.received(&posts[0], 32);
    got.extend(h.received(&posts[1], 30));
    assert_eq!(&got[..12], &header(2));
    assert_eq!(&got[12..], &f[..]);
}

#[test]
fn interrupts_are_suppressed_with_event_idx() {
    let mut h = Harness::new(Setup::default());
    let good = {
        let mut b = header(0).to_vec();
        b.extend_from_slice(&frame(60, 0));
        b
    };
    // used_event 0: the first used buffer (index 0) interrupts, the next do not.
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 1);
    // The device asks to be notified of the next chain (avail_event).
    assert_eq!(h.avail_event(1), 1);
    h.send(1, &good, &[]);
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 1);
    // The driver asks for an interrupt once entry 3 is used.
    h.set_used_event(1, 3);
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 2);
    assert_eq!(
        h.irq.causes(),
        vec![InterruptCause::Queue(1), InterruptCause::Queue(1)]
    );

    // Receive side: the same rule.
    for _ in 0..4 {
        h.post_rx(0, &[2048]);
    }
    h.kick(0);
    h.inject(&frame(60, 1));
    h.wait_used(0, 0, 1);
    assert_eq!(h.irq.count(), 3);
    h.inject(&frame(60, 2));
    h.wait_used(0, 0, 2);
    assert_eq!(h.irq.count(), 3);
    h.set_used_event(0, 2);
    h.inject(&frame(60, 3));
    h.wait_used(0, 0, 3);
    assert_eq!(h.irq.count(), 4);
    assert_eq!(h.irq.causes()[3], InterruptCause::Queue(0));
}

#[test]
fn interrupts_follow_avail_flags_without_event_idx() {
    let mut h = Harness::new(Setup {
        features: |f| f & !F_RING_EVENT_IDX,
        ..Setup::default()
    });
    let good = {
        let mut b = header(0).to_vec();
        b.extend_from_slice(&frame(60, 0));
        b
    };
    h.set_avail_flags(1, VRING_AVAIL_F_NO_INTERRUPT as u16);
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 0);
    h.set_avail_flags(1, 0);
    h.send(1, &good, &[]);
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 2);
    // While it has receive buffers and nothing to read, the device asks not to be
    // notified; once they run out it asks again.
    h.post_rx(0, &[2048]);
    h.kick(0);
    assert_eq!(h.used_flags(0), 1);
    h.inject(&frame(60, 1));
    h.wait_used(0, 0, 1);
    assert_eq!(h.used_flags(0), 0);
    assert_eq!(h.irq.count(), 3);
}

#[test]
fn configuration_space_and_features() {
    let h = Harness::new(Setup::default());
    let rd = |off: u64, len: usize| {
        let mut v = vec![0xaau8; len];
        h.dev.read_config(off, &mut v);
        v
    };
    assert_eq!(rd(0, 6), GUEST_MAC);
    assert_eq!(rd(6, 2), [1, 0], "status: link up");
    assert_eq!(rd(8, 2), [1, 0], "max_virtqueue_pairs");
    assert_eq!(rd(3, 4), [0x12, 0x34, 0x56, 1]);
    assert_eq!(rd(10, 4), [0; 4]);
    assert_eq!(rd(u64::MAX, 2), [0; 2]);
    assert_eq!(h.dev.device_type(), TYPE_NET);
    assert_eq!(h.dev.queue_max_sizes(), vec![QSIZE; 2]);
    let f = h.dev.features();
    for bit in [
        F_VERSION_1,
        F_RING_EVENT_IDX,
        F_RING_INDIRECT_DESC,
        F_MAC,
        F_STATUS,
        F_MRG_RXBUF,
        F_CSUM,
        F_HOST_TSO4,
        F_HOST_TSO6,
        F_HOST_ECN,
        F_GUEST_CSUM,
        F_GUEST_TSO4,
        F_GUEST_TSO6,
        F_GUEST_ECN,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & (F_MQ | F_CTRL_VQ), 0);
    let fds = h.dev.host_fds();
    assert_eq!(fds, vec![(h.tap_fd(0), 0)]);

    // Configuration writes are ignored.
    let mut net = h.dev;
    net.write_config(0, &[0xff; 10]);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, GUEST_MAC);
}

#[test]
fn offered_offloads_follow_the_options() {
    let ns = NetNs::new();
    let taps = ns.run(|| {
        (0..5)
            .map(|_| Tap::open(None, 1).unwrap().remove(0))
            .collect::<Vec<_>>()
    });
    let mut taps = taps.into_iter();
    let mut features = |csum: bool, tso: bool, ufo: bool| {
        let o = NetOptions {
            csum,
            tso,
            ufo,
            ..NetOptions::default()
        };
        Net::new(vec![taps.next().unwrap()], GUEST_MAC, o)
            .unwrap()
            .features()
    };
    let tso_bits =
        F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN;
    let ufo_bits = F_HOST_UFO | F_GUEST_UFO;
    let csum_only = features(true, false, false);
    assert_ne!(csum_only & F_CSUM, 0);
    assert_ne!(csum_only & F_GUEST_CSUM, 0);
    assert_eq!(csum_only & (tso_bits | ufo_bits), 0);
    // Without checksum offload nothing else is offered (offload_csum=off).
    let none = features(false, true, true);
    assert_eq!(
        none & (F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_GUEST_TSO4 | ufo_bits),
        0
    );
    let all = features(true, true, true);
    assert_eq!(
        all & (F_GUEST_TSO4 | F_HOST_TSO4),
        F_GUEST_TSO4 | F_HOST_TSO4
    );
    assert_ne!(
        all & F_HOST_UFO,
        0,
        "the tap takes UFO frames from the guest"
    );
    // offload_tso=off keeps UFO; offload_ufo=off keeps TSO.
    let no_tso = features(true, false, true);
    assert_eq!(no_tso & tso_bits, 0);
    assert_ne!(no_tso & F_HOST_UFO, 0);
    let no_ufo = features(true, true, false);
    assert_eq!(no_ufo & ufo_bits, 0);
    assert_ne!(no_ufo & F_HOST_TSO4, 0);
    // GUEST_UFO is offered exactly when this kernel's tap takes TUN_F_UFO.
    let probe = ns.run(|| Tap::open(None, 1).unwrap().remove(0));
    let kernel_ufo = probe
        .set_offload(libc::TUN_F_CSUM | libc::TUN_F_UFO)
        .is_ok();
    assert_eq!(all & F_GUEST_UFO != 0, kernel_ufo);
}

#[test]
fn guest_checksum_offload_follows_negotiation() {
    for offload in [false, true] {
        let mut h = Harness::new(Setup {
            ip: true,
            features: if offload {
                |f| f
            } else {
                |f| f & !(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN)
            },
            ..Setup::default()
        });
        let (gip, hip) = (h.guest_ip(), h.host_ip());
        let tap = h.dev.taps()[0].name().to_string();
        let gip_s = Ipv4Addr::from(gip).to_string();
        h.host.ns.ip(&[
            "neigh",
            "add",
            &gip_s,
            "lladdr",
            &format_mac(&GUEST_MAC),
            "dev",
            &tap,
        ]);
        let post = h.post_rx(0, &[2048]);
        h.kick(0);
        h.host.ns.run(move || {
            let s = std::net::UdpSocket::bind((Ipv4Addr::from(hip), 0)).unwrap();
            s.send_to(&[7u8; 100], (Ipv4Addr::from(gip), 9)).unwrap();
        });
        h.wait_used(0, 0, 1);
        let (_, len) = h.used_elem(0, 0);
        // Ethernet 14 + IPv4 20 + UDP 8 + 100.
        assert_eq!(len, 12 + 142);
        let got = h.received(&post, len as usize);
        assert_eq!(&got[12..18], &GUEST_MAC);
        assert_eq!(&got[24..26], &[0x08, 0x00]);
        let flags = got[0];
        let udp_csum = u16::from_be_bytes([got[12 + 34 + 6], got[12 + 34 + 7]]);
        if offload {
            // Partial checksum: the driver is told where to finish it.
            assert_eq!(flags, 1, "VIRTIO_NET_HDR_F_NEEDS_CSUM expected");
            let csum_start = u16::from_le_bytes([got[6], got[7]]);
            let csum_offset = u16::from_le_bytes([got[8], got[9]]);
            assert_eq!((csum_start, csum_offset), (34, 6));
        } else {
            assert_eq!(flags & 1, 0, "a complete checksum expected");
            assert_ne!(udp_csum, 0);
        }
    }
}

/// Writes a control command; returns (head, ack address).
fn control(h: &mut Harness, q: usize, cmd: &[u8]) -> (u16, u64) {
    let c = h.data(cmd);
    let ack = h.data(&[0xee]);
    let head = h.chain(q, &[(c, cmd.len() as u32, R), (ack, 1, W)]);
    h.publish(q, head);
    (head, ack)
}

#[test]
fn multiple_queue_pairs_and_the_control_queue() {
    let mut h = Harness::new(Setup {
        pairs: 2,
        ..Setup::default()
    });
    assert_eq!(h.dev.queue_max_sizes(), vec![QSIZE; 5]);
    let f = h.dev.features();
    assert_ne!(f & F_MQ, 0);
    assert_ne!(f & F_CTRL_VQ, 0);
    let mut pairs = [0u8; 2];
    h.dev.read_config(8, &mut pairs);
    assert_eq!(pairs, [2, 0]);
    assert_eq!(h.dev.host_fds().len(), 2);
    assert_eq!(h.dev.host_fds()[1].1, 1);

    // Until the driver asks for more, only the first pair is used: the second tap
    // queue is detached, so every frame goes to the first.
    assert!(h.dev.taps()[1].set_queue_enabled(false).is_err());
    for _ in 0..4 {
        h.post_rx(0, &[2048]);
        h.post_rx(2, &[2048]);
    }
    h.kick(0);
    h.kick(2);
    for seq in 0..4 {
        h.inject(&frame(100, seq));
    }
    h.wait_used(0, 0, 4);
    h.dev.process_host(1);
    assert_eq!(h.used_idx(2), 0);

    // VQ_PAIRS_SET: 2 is fine; 0, 3, a short command and an unknown class are not.
    let ctrl = 4;
    let cmds: [(&[u8], u8); 5] = [
        (&[4, 0, 2, 0], 0),
        (&[4, 0, 0, 0], 1),
        (&[4, 0, 3, 0], 1),
        (&[4, 0, 2], 1),
        (&[9, 9], 1),
    ];
    let mut acks = Vec::new();
    for (cmd, _) in &cmds {
        acks.push(control(&mut h, ctrl, cmd));
    }
    // A command without room for the acknowledgement.
    let c = h.data(&[4, 0, 1, 0]);
    let no_ack = h.chain(ctrl, &[(c, 4, R)]);
    h.publish(ctrl, no_ack);
    h.kick(ctrl);
    assert_eq!(h.used_idx(ctrl), 6);
    for (i, ((head, ack), (_, want))) in acks.iter().zip(&cmds).enumerate() {
        assert_eq!(
            h.used_elem(ctrl, i as u16),
            (u32::from(*head), 1),
            "command {i}"
        );
        assert_eq!(h.read_guest(*ack, 1)[0], *want, "command {i}");
    }
    assert_eq!(h.used_elem(ctrl, 5), (u32::from(no_ack), 0));
    // The device asked to be notified of the next command (EVENT_IDX: avail_event).
    assert_eq!(h.avail_event(ctrl), 6);
    assert!(h.irq.causes().contains(&InterruptCause::Queue(4)));
    // Both tap queues are attached now.
    assert!(h.dev.taps()[1].set_queue_enabled(true).is_err());

    // Transmitting on the second pair reaches the host.
    let f = frame(90, 7);
    let mut bytes = header(0).to_vec();
    bytes.extend_from_slice(&f);
    h.send(3, &bytes, &[12]);
    assert_eq!(h.used_idx(3), 1);
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]));

    // Back to one pair.
    let (_, ack) = control(&mut h, ctrl, &[4, 0, 1, 0]);
    h.kick(ctrl);
    assert_eq!(h.read_guest(ack, 1)[0], 0);
    assert!(h.dev.taps()[1].set_queue_enabled(false).is_err());
}

#[test]
fn without_mq_only_the_first_pair_is_used() {
    let mut h = Harness::new(Setup {
        pairs: 2,
        features: |f| f & !(F_MQ | F_CTRL_VQ),
        ready: Some(vec![0, 1]),
        ..Setup::default()
    });
    assert!(h.dev.taps()[1].set_queue_enabled(false).is_err());
    h.post_rx(0, &[2048]);
    h.kick(0);
    h.inject(&frame(70, 1));
    h.wait_used(0, 0, 1);
    // Queues of the second pair cannot be enabled.
    h.dev.reset();
    let f = h.dev.features() & !F_MQ;
    h.dev.ack_features(f);
    let queues = h.device_rings(None);
    assert!(h
        .dev
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .is_err());
    // With CTRL_VQ but not MQ, the control queue is queue 2.
    h.dev.reset();
    h.dev.ack_features(f);
    let queues = h.device_rings(Some(&[0, 1, 2]));
    h.dev
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .unwrap();
    let (head, ack) = control(&mut h, 2, &[4, 0, 2, 0]);
    h.kick(2);
    assert_eq!(h.used_elem(2, 0), (u32::from(head), 1));
    assert_eq!(
        h.read_guest(ack, 1)[0],
        1,
        "VQ_PAIRS_SET without MQ is refused"
    );
}

#[test]
fn reset_and_reactivate() {
    let mut h = Harness::new(Setup {
        pairs: 2,
        ..Setup::default()
    });
    let good = {
        let mut b = header(0).to_vec();
        b.extend_from_slice(&frame(60, 0));
        b
    };
    h.send(1, &good, &[]);
    assert!(h.capture(2000).is_some());
    h.post_rx(0, &[2048]);
    h.kick(0);
    h.dev.reset();
    assert_eq!(h.dev.acked_features, 0);
    // Every tap queue is attached again.
    assert!(h.dev.taps()[1].set_queue_enabled(true).is_err());
    // Nothing is served while reset.
    let stale = h.chain(1, &[(h.buf_next, 0, R)]);
    h.publish(1, stale);
    h.dev.process_queue(1);
    h.dev.process_host(0);
    h.inject(&frame(60, 1));
    h.dev.process_host(0);
    assert_eq!(h.used_idx(1), 1);

    let f = h.dev.features();
    h.dev.ack_features(f);
    let queues = h.device_rings(None);
    h.dev
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .unwrap();
    let post = h.post_rx(0, &[2048]);
    h.kick(0);
    // Frames flow again: the one that waited in the tap if the kernel steered it to the
    // first queue (a multi-queue tap picks a queue by flow hash), else a new one.
    h.inject(&frame(60, 2));
    h.wait_used(0, 0, 1);
    let marker = h.received(&post, 27)[26];
    assert!(marker == 1 || marker == 2, "frame {marker} received");
    h.send(1, &good, &[]);
    assert_eq!(h.used_idx(1), 1);
    assert!(h.capture(2000).is_some());
}

#[test]
fn activation_is_validated() {
    let mut h = Harness::new(Setup::default());
    h.dev.reset();
    let f = h.dev.features();
    h.dev.ack_features(f);
    let irq: Arc<dyn VirtioInterrupt> = h.irq.clone();
    // Queue index out of range, or given twice.
    let mut queues = h.device_rings(None);
    queues[1].index = 2;
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    let mut queues = h.device_rings(None);
    queues[1].index = 0;
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    // No queue enabled.
    let queues = h.device_rings(Some(&[]));
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    // A ring outside guest memory.
    let mut queues = h.device_rings(None);
    queues[0]
        .queue
        .try_set_used_ring_address(GuestAddress(OUTSIDE))
        .unwrap();
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    // An inactive device ignores everything.
    h.dev.process_queue(0);
    h.dev.process_queue(1);
    h.dev.process_queue(9);
    h.dev.process_host(0);
    h.dev.process_host(7);
    // Only the transmit queue enabled: transmitting works, receiving is skipped.
    let queues = h.device_rings(Some(&[1]));
    h.dev.activate(h.mem.clone(), irq, queues).unwrap();
    h.dev.process_host(0);
    h.dev.process_queue(0);
    let mut b = header(0).to_vec();
    b.extend_from_slice(&frame(60, 0));
    h.send(1, &b, &[]);
    assert_eq!(h.used_idx(1), 1);
}

#[test]
fn options_are_validated() {
    assert_eq!(
        Net::new(Vec::new(), GUEST_MAC, NetOptions::default())
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    let ns = NetNs::new();
    for (qs, mac) in [
        (100, GUEST_MAC),
        (0, GUEST_MAC),
        (1, GUEST_MAC),
        (256, [1, 2, 3, 4, 5, 6]),
    ] {
        let tap = ns.run(|| Tap::open(None, 1).unwrap().remove(0));
        let o = NetOptions {
            queue_size: qs,
            ..NetOptions::default()
        };
        let err = Net::new(vec![tap], mac, o).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{qs} {mac:?}");
    }
    let tap = ns.run(|| Tap::open(None, 1).unwrap().remove(0));
    let net = Net::new(vec![tap], GUEST_MAC, NetOptions::default()).unwrap();
    assert_eq!(net.queue_max_sizes(), vec![256, 256]);
    assert_eq!(net.mac(), GUEST_MAC);
    assert_eq!(net.queue_pairs(), 1);
}

#[test]
fn mac_addresses() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let mac = random_mac();
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(mac[0] & 2, 2, "locally administered");
        seen.insert(mac);
    }
    assert!(seen.len() > 95);
    assert_eq!(parse_mac("52:54:00:12:34:56"), Ok(GUEST_MAC));
    assert_eq!(
        parse_mac("52:54:00:AB:cd:ef").unwrap()[3..],
        [0xab, 0xcd, 0xef]
    );
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52-54-00-12-34-56",
        "5:54:00:12:34:56",
        "52:54:00:12:34:5g",
        "+2:54:00:12:34:56",
    ] {
        assert!(parse_mac(bad).is_err(), "{bad:?}");
    }
    assert!(parse_mac("01:00:5e:00:00:01")
        .unwrap_err()
        .contains("multicast"));
    assert_eq!(format_mac(&GUEST_MAC), "52:54:00:12:34:56");
    assert_eq!(
        parse_mac(&format_mac(&random_mac())).map(|m| m[0] & 3),
        Ok(2)
    );
}

#[test]
fn counters_are_reported() {
    let h = Harness::new(Setup::default());
    let c = h.dev.counters();
    for name in [
        "rx_bytes",
        "rx_frames",
        "rx_dropped",
        "tx_bytes",
        "tx_frames",
        "tx_dropped",
        "errors",
    ] {
        assert_eq!(c[name], 0, "{name}");
    }
    assert_eq!(c.len(), 7);
}

#[test]
fn transmit_yields_after_its_budget_and_comes_back() {
    let mut h = Harness::new(Setup {
        options: NetOptions {
            queue_size: 512,
            ..NetOptions::default()
        },
        ..Setup::default()
    });
    // The budget's re-arm leaves the queue notified on purpose.
    h.check_kicks = false;
    let total = TX_BUDGET.chains + 44;
    for i in 0..total {
        let mut bytes = header(0).to_vec();
        bytes.extend_from_slice(&frame(60, i as u8));
        let addr = h.data(&bytes);
        let head = h.chain(1, &[(addr, bytes.len() as u32, R)]);
        h.publish(1, head);
    }
    h.kick(1);
    assert_eq!(h.counter("tx_frames"), TX_BUDGET.chains as u64);
    assert_eq!(h.used_idx(1), TX_BUDGET.chains as u16);
    // The queue re-armed itself: the device's loop serves its other events, then the rest.
    assert!(h.run_notified() >= 1);
    assert_eq!(h.counter("tx_frames"), total as u64);
    assert_eq!(h.used_idx(1), total as u16);
    assert_eq!(h.counter("tx_dropped"), 0);
}
