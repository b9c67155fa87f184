//! Virtio network device (virtio 1.x, section 5.1) backed by host tap devices.
//!
//! Each queue pair (receive queue `2n`, transmit queue `2n + 1`) is served by one tap file
//! descriptor ([`Tap`]); with several pairs the taps are the queues of one multi-queue tap,
//! and a control queue (index `2N`) lets the driver choose how many pairs it uses. Frames
//! move between the tap and guest memory without a copy in the VMM: the tap's 12-byte
//! virtio-net header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ`) is the very header the driver
//! reads and writes, so a transmit chain is handed to `writev` as it lies in guest memory,
//! and `readv` places a received frame, header included, straight into the receive
//! buffers.
//!
//! Transmit: every chain published on a transmit queue is returned to the used ring (with
//! length 0), whatever it holds. A chain with a device-writable descriptor, a buffer outside
//! guest memory, less than a header and an Ethernet header, or more than
//! [`MAX_BUFFER_SIZE`] bytes is dropped and counted; so is a frame the tap refuses (the
//! device never waits for the tap to accept a frame, so a queue cannot stall).
//!
//! Receive: the device takes the driver's receive chains off the available ring as soon as
//! it sees them, checks them (device-writable only, inside guest memory, room for the
//! header) and keeps them, as guest addresses, in a queue of at most the ring's size; a
//! chain that fails the checks is returned at once with length 0. It reads the tap only
//! when it holds a buffer, and only as long as it does: when the driver has given no
//! buffer, frames stay in the tap's own queue (where the kernel drops what does not fit),
//! and the device asks the driver for a notification; the next notification of the receive
//! queue resumes reading. The tap is watched edge-triggered, so each pass reads until the
//! tap is empty or the buffers run out.
//!
//! Without `VIRTIO_NET_F_MRG_RXBUF` a frame goes into one chain. The read covers that chain
//! and a small scratch area behind it: a frame that spills into the scratch did not fit, and
//! is dropped (and counted) while the chain stays first in line for the next frame. With
//! `VIRTIO_NET_F_MRG_RXBUF` one read covers as many chains as a frame of the expected size
//! needs (1530 bytes, or [`MAX_BUFFER_SIZE`] when the driver accepts large segments) and a
//! scratch area of [`MAX_BUFFER_SIZE`]; the frame takes the chains it needs and
//! `num_buffers` says how many. A frame larger than the chains at hand lands partly in the
//! scratch: the device then waits for more chains and copies the rest into them (at most
//! one such frame per queue pair; reading stops meanwhile). A frame larger than the whole
//! ring can ever hold is dropped.
//!
//! The checksum and segmentation offloads of the guest-to-host direction (`CSUM`,
//! `HOST_TSO4/6`, `HOST_ECN`) need nothing from the tap beyond the header. Those of the
//! host-to-guest direction (`GUEST_CSUM`, `GUEST_TSO4/6`, `GUEST_ECN`) are offered only if
//! the tap accepts the matching `TUNSETOFFLOAD` flags, which are set when the device is
//! activated, to what the driver accepted, and cleared on reset.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_OK, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use super::iov::{iovec_of, IoVecs, IOV_MAX};
use super::queue::{
    self, clear_notification, drain, guest_error, interrupt_if_needed, log_limited, rearm, Budget,
    Served,
};
use super::{
    counters_map, queue_size_is_valid, ActivateError, ActiveQueue, VirtioCommon, VirtioDevice,
    VirtioInterrupt, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, MAX_QUEUE_SIZE, TYPE_NET,
};
use crate::tap::{Tap, VNET_HDR_SIZE};

/// Feature bit: the device handles frames with a partial checksum (guest to host).
pub const F_CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
/// Feature bit: the driver handles frames with a partial checksum (host to guest).
pub const F_GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
/// Feature bit: the configuration space holds the MAC address.
pub const F_MAC: u64 = 1 << VIRTIO_NET_F_MAC;
/// Feature bit: the driver accepts TCP/IPv4 segments larger than the MTU.
pub const F_GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
/// Feature bit: the driver accepts TCP/IPv6 segments larger than the MTU.
pub const F_GUEST_TSO6: u64 = 1 << VIRTIO_NET_F_GUEST_TSO6;
/// Feature bit: the driver accepts large segments with ECN.
pub const F_GUEST_ECN: u64 = 1 << VIRTIO_NET_F_GUEST_ECN;
/// Feature bit: the device accepts TCP/IPv4 segments larger than the MTU.
pub const F_HOST_TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
/// Feature bit: the device accepts TCP/IPv6 segments larger than the MTU.
pub const F_HOST_TSO6: u64 = 1 << VIRTIO_NET_F_HOST_TSO6;
/// Feature bit: the device accepts large segments with ECN.
pub const F_HOST_ECN: u64 = 1 << VIRTIO_NET_F_HOST_ECN;
/// Feature bit: the driver takes unfragmented large UDP datagrams.
pub const F_GUEST_UFO: u64 = 1 << VIRTIO_NET_F_GUEST_UFO;
/// Feature bit: the device takes UDP datagrams to fragment.
pub const F_HOST_UFO: u64 = 1 << VIRTIO_NET_F_HOST_UFO;
/// Feature bit: a received frame may span several receive chains.
pub const F_MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
/// Feature bit: the configuration space holds the link status.
pub const F_STATUS: u64 = 1 << VIRTIO_NET_F_STATUS;
/// Feature bit: there is a control queue.
pub const F_CTRL_VQ: u64 = 1 << VIRTIO_NET_F_CTRL_VQ;
/// Feature bit: several queue pairs (chosen through the control queue).
pub const F_MQ: u64 = 1 << VIRTIO_NET_F_MQ;

/// Size of the device configuration space: `mac`, `status`, `max_virtqueue_pairs`.
pub const CONFIG_SPACE_SIZE: usize = 10;
/// Largest Ethernet frame (without the virtio-net header) the device moves: a 64 KiB
/// segment and its Ethernet header.
pub const MAX_FRAME_SIZE: usize = 65550;
/// Largest frame with its virtio-net header.
pub const MAX_BUFFER_SIZE: usize = VNET_HDR_SIZE + MAX_FRAME_SIZE;
/// Most queue pairs a device may have (queue indices are 16-bit, with the control queue).
pub const MAX_QUEUE_PAIRS: usize = 0x7fff;

/// Shortest transmit chain: a header and an Ethernet header.
const MIN_TX_LEN: usize = VNET_HDR_SIZE + 14;
/// Frames sent per call before the transmit queue yields to the device's other events.
const TX_BUDGET: Budget = Budget {
    bytes: u64::MAX,
    chains: 256,
};
/// The receive buffer space one frame is expected to need when the driver takes no large
/// segments: a 1500-byte MTU frame with a VLAN tag, and the header.
const RX_WANT_SMALL: usize = VNET_HDR_SIZE + 1518;
/// After a frame larger than [`RX_WANT_SMALL`], this many reads are given buffers for a
/// largest frame; otherwise a read is given buffers for an MTU-sized frame, and a larger one
/// that arrives meanwhile takes the rest through the scratch area. Building (and the kernel
/// importing) an `iovec` over 64 KiB of buffers for each 1.5 KiB frame costs more than the
/// frame's own copy.
const RX_LARGE_STICKY: u32 = 256;
/// Scratch area behind a receive chain without MRG_RXBUF: only detects overflow.
const SMALL_SCRATCH: usize = 64;
/// Where `num_buffers` lies in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// How a caller configures a [`Net`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// Largest size of each queue (a power of two, 2 to 32768).
    pub queue_size: u16,
    /// Offer checksum offloads: `CSUM`, and `GUEST_CSUM` if the tap accepts it.
    pub csum: bool,
    /// Offer TCP segmentation offloads (only with `csum`): `HOST_TSO4/6` and `HOST_ECN`,
    /// and `GUEST_TSO4/6` and `GUEST_ECN` if the tap accepts them.
    pub tso: bool,
    /// Offer UDP fragmentation offloads (only with `csum`): `HOST_UFO`, and `GUEST_UFO` if
    /// the tap accepts it.
    pub ufo: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            queue_size: 256,
            csum: true,
            tso: true,
            ufo: true,
        }
    }
}

/// Traffic statistics, reported by [`VirtioDevice::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    /// Frame bytes (without the header) delivered to the driver.
    rx_bytes: u64,
    /// Frames delivered to the driver.
    rx_frames: u64,
    /// Frames read from the tap that no receive buffer could hold.
    rx_dropped: u64,
    /// Frame bytes (without the header) written to the tap.
    tx_bytes: u64,
    /// Frames written to the tap.
    tx_frames: u64,
    /// Transmit chains that did not reach the tap.
    tx_dropped: u64,
    /// Malformed chains from the driver, and failed tap reads and writes.
    errors: u64,
}

/// A piece of a buffer that lies within one guest memory region.
#[derive(Clone, Copy, Debug)]
struct Piece {
    addr: GuestAddress,
    len: usize,
}

/// A receive chain taken from the available ring and checked.
#[derive(Debug, Default)]
struct RxChain {
    head: u16,
    /// Bytes the chain can hold.
    cap: usize,
    pieces: Vec<Piece>,
}

/// A frame that needed more receive chains than the device held when it was read: the
/// chains it filled, and the rest of it, which waits in the scratch area.
#[derive(Debug)]
struct Pending {
    /// Each chain with the bytes it received.
    filled: Vec<(RxChain, usize)>,
    /// Bytes of the frame in the scratch area.
    overflow: usize,
    /// Of those, bytes already copied into chains.
    copied: usize,
}

/// The receive side of an active queue pair.
struct RxQueue {
    index: u16,
    queue: Queue,
    notify: Arc<EventFd>,
    /// Chains taken from the ring, in order, not yet used.
    ready: VecDeque<RxChain>,
    /// Chains already returned, kept for their allocations.
    spare: Vec<RxChain>,
    pending: Option<Pending>,
    /// Receives the part of a frame that does not fit the chains given to a read.
    scratch: Vec<u8>,
    /// Heads of malformed chains to return (reused between passes).
    rejected: Vec<u16>,
    /// Reads left that are given the whole of `rx_want` since the last frame larger than
    /// an MTU-sized one (see [`RX_LARGE_STICKY`]).
    large_left: u32,
}

/// One queue pair of the active device.
#[derive(Default)]
struct Pair {
    rx: Option<RxQueue>,
    tx: Option<ActiveQueue>,
    /// Among the pairs the driver uses (always pair 0; others after `VQ_PAIRS_SET`).
    enabled: bool,
}

/// What the activated device holds.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    pairs: Vec<Pair>,
    /// The control queue.
    ctrl: Option<ActiveQueue>,
    mrg: bool,
    /// Receive buffer space to give one read (see the module documentation).
    rx_want: usize,
    /// A driver error was logged at warning level (later ones go to debug).
    warned: bool,
}

/// Logs a host error at warning level the first time, at debug level afterwards.
fn host_error(warned: &mut bool, args: std::fmt::Arguments<'_>) {
    log_limited(warned, "tap", args);
}

/// A virtio-net device model.
///
/// Create it with [`Net::new`] from open taps, and hand it (as a [`VirtioDevice`]) to a
/// virtio transport; the VMM watches [`VirtioDevice::host_fds`] and calls
/// [`VirtioDevice::process_host`] when a tap is readable. See the module documentation.
pub struct Net {
    taps: Vec<Tap>,
    /// Whether each tap queue is attached (queues of unused pairs are detached).
    attached: Vec<bool>,
    mac: [u8; 6],
    queue_size: u16,
    common: VirtioCommon,
    active: Option<Active>,
    counters: Counters,
    /// Cleared before `TxCtx::transmit` and `RxQueue::read_frame` return.
    iovecs: IoVecs,
    /// Heads of the chains served in the current pass over a transmit or control queue.
    done: Vec<(u16, u32)>,
    /// A tap error was logged at warning level.
    host_warned: bool,
    /// `rate_limiter_config`, if any.
    limiters: Option<Limiters>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("taps", &self.taps)
            .field("mac", &format_mac(&self.mac))
            .field("queue_size", &self.queue_size)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Creates a network device over `taps` (one per queue pair, all opened with
    /// [`Tap::open`] or [`Tap::from_fd`]) with the guest MAC address `mac`.
    ///
    /// The host-to-guest offloads are probed here with `TUNSETOFFLOAD` (and left off until
    /// a driver accepts them); those the tap refuses are not offered.
    pub fn new(taps: Vec<Tap>, mac: [u8; 6], options: NetOptions) -> io::Result<Net> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if taps.is_empty() {
            return Err(invalid("a network device needs at least one tap".into()));
        }
        if taps.len() > MAX_QUEUE_PAIRS {
            return Err(invalid(format!(
                "a network device has at most {MAX_QUEUE_PAIRS} queue pairs; {} taps were given",
                taps.len()
            )));
        }
        let qs = options.queue_size;
        if !queue_size_is_valid(qs) {
            return Err(invalid(format!(
                "network queue size {qs} is not a power of two between 2 and {MAX_QUEUE_SIZE}"
            )));
        }
        if mac[0] & 1 != 0 {
            return Err(invalid(format!(
                "MAC address {} is a multicast address",
                format_mac(&mac)
            )));
        }
        for tap in &taps {
            tap.set_vnet_hdr_size(VNET_HDR_SIZE)?;
        }

        // Which host-to-guest offloads the tap takes.
        let csum = options.csum;
        let tso = options.csum && options.tso;
        let ufo = options.csum && options.ufo;
        let all_tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        // The richest set first; a kernel without one (UFO is gone from recent ones) is
        // asked for less.
        let mut candidates = Vec::new();
        if tso && ufo {
            candidates.push(all_tso | libc::TUN_F_UFO);
        }
        if tso {
            candidates.push(all_tso);
        }
        if ufo {
            candidates.push(libc::TUN_F_CSUM | libc::TUN_F_UFO);
        }
        if csum {
            candidates.push(libc::TUN_F_CSUM);
        }
        let accepted = candidates
            .into_iter()
            .find(|&flags| match taps[0].set_offload(flags) {
                Ok(()) => true,
                Err(e) => {
                    debug!("virtio-net: offloads {flags:#x} not available: {e}");
                    false
                }
            })
            .unwrap_or(0);
        // No offload until a driver accepts one (a persistent tap may have kept some).
        for tap in &taps {
            tap.set_offload(0)?;
        }

        let pairs = taps.len();
        let mut avail_features =
            F_VERSION_1 | F_RING_EVENT_IDX | F_RING_INDIRECT_DESC | F_MAC | F_STATUS | F_MRG_RXBUF;
        if pairs > 1 {
            avail_features |= F_MQ | F_CTRL_VQ;
        }
        if csum {
            avail_features |= F_CSUM;
        }
        if tso {
            avail_features |= F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN;
        }
        if ufo {
            avail_features |= F_HOST_UFO;
        }
        if accepted & libc::TUN_F_CSUM != 0 {
            avail_features |= F_GUEST_CSUM;
        }
        if accepted & libc::TUN_F_TSO4 != 0 {
            avail_features |= F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN;
        }
        if accepted & libc::TUN_F_UFO != 0 {
            avail_features |= F_GUEST_UFO;
        }

        let mut config = [0u8; CONFIG_SPACE_SIZE];
        config[0..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&(pairs as u16).to_le_bytes());

        Ok(Net {
            attached: vec![true; pairs],
            taps,
            mac,
            queue_size: qs,
            // The queue pairs, and the control queue when there are several pairs.
            common: VirtioCommon::new(
                TYPE_NET,
                "virtio-net",
                vec![qs; 2 * pairs + usize::from(pairs > 1)],
                avail_features,
                config.to_vec(),
            ),
            active: None,
            counters: Counters::default(),
            iovecs: IoVecs(Vec::new()),
            done: Vec::new(),
            host_warned: false,
            limiters: None,
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The taps, one per queue pair.
    pub fn taps(&self) -> &[Tap] {
        &self.taps
    }

    /// Number of queue pairs.
    pub fn queue_pairs(&self) -> usize {
        self.taps.len()
    }

    /// The `TUN_F_*` flags matching the host-to-guest offloads in `features`.
    fn tun_offloads(features: u64) -> u32 {
        if features & F_GUEST_CSUM == 0 {
            return 0;
        }
        let mut flags = libc::TUN_F_CSUM;
        if features & F_GUEST_TSO4 != 0 {
            flags |= libc::TUN_F_TSO4;
        }
        if features & F_GUEST_TSO6 != 0 {
            flags |= libc::TUN_F_TSO6;
        }
        if features & F_GUEST_ECN != 0 && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
            flags |= libc::TUN_F_TSO_ECN;
        }
        if features & F_GUEST_UFO != 0 {
            flags |= libc::TUN_F_UFO;
        }
        flags
    }

    /// Uses the first `n` queue pairs: attaches their tap queues, detaches the others (so
    /// that the kernel steers no frame to a pair the driver does not serve), and resumes
    /// reading the newly enabled ones.
    fn set_active_pairs(&mut self, n: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        for (i, pair) in active.pairs.iter_mut().enumerate() {
            let want = i < n;
            pair.enabled = want;
            // The first queue always stays attached.
            if i > 0 && self.attached[i] != want {
                match self.taps[i].set_queue_enabled(want) {
                    Ok(()) => self.attached[i] = want,
                    Err(e) => host_error(&mut self.host_warned, format_args!("virtio-net: {e}")),
                }
            }
        }
        for i in 0..n {
            self.process_rx(i);
        }
    }

    /// Reads frames from the tap of `pair` into its receive queue (see the module
    /// documentation), then interrupts the driver if it wants.
    fn process_rx(&mut self, pair: usize) {
        let Net {
            taps,
            active,
            counters,
            iovecs,
            host_warned,
            limiters,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        let Active {
            mem,
            interrupt,
            pairs,
            mrg,
            rx_want,
            warned,
            ..
        } = active;
        let Some(p) = pairs.get_mut(pair) else {
            return;
        };
        if !p.enabled {
            return;
        }
        let (Some(rx), Some(tap)) = (p.rx.as_mut(), taps.get(pair)) else {
            return;
        };
        let mut cx = RxCtx {
            mem,
            fd: tap.as_raw_fd(),
            tap: tap.name(),
            counters,
            iov: &mut iovecs.0,
            warned,
            host_warned,
            mrg: *mrg,
            want: *rx_want,
            limiter: limiters.as_mut().map(|l| &mut l.rx),
        };
        let completed = rx.run(&mut cx);
        iovecs.0.clear();
        interrupt_if_needed(completed, &mut rx.queue, mem, interrupt.as_ref(), rx.index);
    }

    /// Sends the chains published on the transmit queue of `pair`, at most [`TX_BUDGET`] per
    /// call.
    fn process_tx(&mut self, pair: usize) {
        let Net {
            taps,
            active,
            counters,
            iovecs,
            done,
            host_warned,
            limiters,
            ..
        } = self;
        let mut limiter = limiters.as_mut().map(|l| &mut l.tx);
        let Some(active) = active.as_mut() else {
            return;
        };
        let Active {
            mem,
            interrupt,
            pairs,
            warned,
            ..
        } = active;
        let (Some(tx), Some(tap)) = (
            pairs.get_mut(pair).and_then(|p| p.tx.as_mut()),
            taps.get(pair),
        ) else {
            return;
        };
        let index = tx.index;
        let queue = &mut tx.queue;
        let mem: &GuestMemoryMmap = mem;
        let mut cx = TxCtx {
            mem,
            fd: tap.as_raw_fd(),
            tap: tap.name(),
            counters,
            iov: &mut iovecs.0,
            host_warned,
        };
        let drained = drain(
            queue,
            mem,
            format_args!("virtio-net queue {index}"),
            warned,
            done,
            TX_BUDGET,
            |chain, _, warned| {
                if let Some(l) = limiter.as_deref_mut() {
                    let bytes: u64 = chain.clone().map(|d| u64::from(d.len())).sum();
                    if !l.admit(bytes) {
                        return (Served::Wait, 0);
                    }
                }
                cx.transmit(chain, warned);
                (Served::Used(0), 0)
            },
        );
        cx.iov.clear();
        if drained.out_of_budget {
            // A guest that keeps the ring full does not keep its thread: the rest is sent
            // after the device's other events (receive above all).
            rearm(&tx.notify, "virtio-net", index);
        }
        interrupt_if_needed(drained.completed, queue, mem, interrupt.as_ref(), index);
    }

    #[cfg(test)]
    fn rx_held(&self, pair: usize) -> (usize, usize) {
        self.active
            .as_ref()
            .and_then(|a| a.pairs.get(pair))
            .and_then(|p| p.rx.as_ref())
            .map_or((0, 0), |rx| {
                (
                    rx.ready.len(),
                    rx.pending.as_ref().map_or(0, |p| p.filled.len()),
                )
            })
    }
}

impl VirtioDevice for Net {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    // The configuration space takes no write: the MAC is writable only by legacy drivers.

    fn set_memory(&mut self, mem: GuestMemoryMmap) {
        if let Some(active) = &mut self.active {
            active.mem = mem;
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let acked = self.common.acked_features;
        let mrg = acked & F_MRG_RXBUF != 0;
        // Without MQ the driver uses one pair, and the control queue (if any) comes after it.
        let usable_pairs = if acked & F_MQ != 0 {
            self.taps.len()
        } else {
            1
        };
        let ctrl_index = (acked & F_CTRL_VQ != 0).then_some(2 * usable_pairs);
        let mut pairs: Vec<Pair> = (0..self.taps.len()).map(|_| Pair::default()).collect();
        let mut ctrl = None;
        for q in self.common.enabled_queues(queues, &mem)? {
            let i = usize::from(q.index);
            if ctrl_index != Some(i) && i >= 2 * usable_pairs {
                return Err(ActivateError::Invalid(format!(
                    "virtio-net queue {i} was enabled, but the negotiated features use only \
                     {usable_pairs} queue pair(s)"
                )));
            }
            if ctrl_index == Some(i) {
                ctrl = Some(q);
            } else if i.is_multiple_of(2) {
                pairs[i / 2].rx = Some(RxQueue::new(q, mrg));
            } else {
                pairs[i / 2].tx = Some(q);
            }
        }

        // Host-to-guest offloads as negotiated (a device setting, shared by all queues).
        let offloads = Net::tun_offloads(acked);
        for tap in &self.taps {
            if let Err(e) = tap.set_offload(offloads) {
                warn!("virtio-net: {e}");
            }
        }
        let gso = acked & (F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO) != 0;
        self.active = Some(Active {
            mem,
            interrupt,
            pairs,
            ctrl,
            mrg,
            rx_want: if gso { MAX_BUFFER_SIZE } else { RX_WANT_SMALL },
            warned: false,
        });
        // Only the first pair is used until the driver asks for more (virtio 5.1.6.5.5).
        self.set_active_pairs(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.common.reset();
        if let Some(l) = &mut self.limiters {
            l.rx.reset();
            l.tx.reset();
        }
        for (tap, attached) in self.taps.iter().zip(self.attached.iter_mut()) {
            if !*attached {
                match tap.set_queue_enabled(true) {
                    Ok(()) => *attached = true,
                    Err(e) => debug!("virtio-net: {e}"),
                }
            }
        }
        for tap in &self.taps {
            if let Err(e) = tap.set_offload(0) {
                debug!("virtio-net: {e}");
            }
        }
    }

    fn process_queue(&mut self, index: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if let Some(ctrl) = active.ctrl.as_ref().filter(|c| c.index == index) {
            clear_notification(&ctrl.notify);
            self.process_ctrl();
            return;
        }
        let pair = usize::from(index / 2);
        let Some(p) = active.pairs.get(pair) else {
            return;
        };
        if index.is_multiple_of(2) {
            if let Some(rx) = p.rx.as_ref() {
                clear_notification(&rx.notify);
                self.process_rx(pair);
            }
        } else if let Some(tx) = p.tx.as_ref() {
            clear_notification(&tx.notify);
            self.process_tx(pair);
        }
    }

    fn host_fds(&self) -> Vec<(RawFd, u32)> {
        let taps = self.taps.iter().enumerate();
        let mut fds: Vec<(RawFd, u32)> = taps.map(|(i, t)| (t.as_raw_fd(), i as u32)).collect();
        fds.extend(self.limiter_fds());
        fds
    }

    fn process_host(&mut self, token: u32) {
        if self.limiter_timer(token) {
            return;
        }
        if let Ok(pair) = usize::try_from(token) {
            self.process_rx(pair);
        }
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.counters;
        counters_map(&[
            ("rx_bytes", c.rx_bytes),
            ("rx_frames", c.rx_frames),
            ("rx_dropped", c.rx_dropped),
            ("tx_bytes", c.tx_bytes),
            ("tx_frames", c.tx_frames),
            ("tx_dropped", c.tx_dropped),
            ("errors", c.errors),
            ("rx_rate_limited", self.limited().0),
            ("tx_rate_limited", self.limited().1),
        ])
    }
}

mod control;
mod limits;
mod mac;
mod rx;
#[cfg(test)]
mod tests;
mod tx;

use limits::*;
pub use mac::{format_mac, parse_mac, random_mac};
use rx::*;
use tx::*;
