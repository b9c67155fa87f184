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
    /// Rate limiters, each direction this many frames per 500 ms.
    frames_per_500ms: Option<u64>,
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
            frames_per_500ms: None,
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
        let mut net = Net::new(taps, GUEST_MAC, setup.options).unwrap();
        if let Some(frames) = setup.frames_per_500ms {
            let limiter = || {
                let ops = crate::rate_limiter::BucketParams {
                    size: frames,
                    one_time_burst: 0,
                    refill_time_ms: 500,
                };
                let buckets = crate::rate_limiter::Buckets::new(None, Some(ops));
                crate::rate_limiter::RateLimiter::new(std::sync::Arc::new(std::sync::Mutex::new(
                    buckets,
                )))
                .unwrap()
            };
            net.set_rate_limiters(limiter(), limiter());
        }
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

mod device;
mod limits;
mod receive;
mod transmit;
