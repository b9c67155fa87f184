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
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_OK,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use super::iov::{iovec_of, IoVecs, IOV_MAX};
use super::queue::{
    self, clear_notification, drain, enabled_queues, guest_error, interrupt_if_needed, log_limited,
    rearm, Budget,
};
use super::{
    counters_map, log_ignored_config_write, queue_size_is_valid, read_config_bytes, ActivateError,
    ActiveQueue, VirtioDevice, VirtioInterrupt, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC,
    F_VERSION_1, MAX_QUEUE_SIZE, TYPE_NET,
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
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            queue_size: 256,
            csum: true,
            tso: true,
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
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_SPACE_SIZE],
    active: Option<Active>,
    counters: Counters,
    /// Cleared before `TxCtx::transmit` and `RxQueue::read_frame` return.
    iovecs: IoVecs,
    /// Heads of the chains served in the current pass over a transmit or control queue.
    done: Vec<(u16, u32)>,
    /// A tap error was logged at warning level.
    host_warned: bool,
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
        let all_tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        let mut candidates = Vec::new();
        if tso {
            candidates.push(all_tso);
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
        if accepted & libc::TUN_F_CSUM != 0 {
            avail_features |= F_GUEST_CSUM;
        }
        if accepted & libc::TUN_F_TSO4 != 0 {
            avail_features |= F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN;
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
            avail_features,
            acked_features: 0,
            config,
            active: None,
            counters: Counters::default(),
            iovecs: IoVecs(Vec::new()),
            done: Vec::new(),
            host_warned: false,
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
            ..
        } = self;
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
                cx.transmit(chain, warned);
                (Some(0), 0)
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

    /// Answers the commands published on the control queue.
    fn process_ctrl(&mut self) {
        let mut completed = false;
        let mut idle_passes = 0;
        loop {
            match self.ctrl_pass() {
                Some(0) => {}
                Some(_) => {
                    completed = true;
                    idle_passes = 0;
                    continue;
                }
                None => break,
            }
            // Ask to be notified of the next command (with EVENT_IDX this writes
            // avail_event, without which the driver would stop notifying), and look again
            // in case one arrived meanwhile.
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let Some(ctrl) = active.ctrl.as_mut() else {
                return;
            };
            match ctrl.queue.enable_notification(&active.mem) {
                Ok(true) if idle_passes < 2 => idle_passes += 1,
                Ok(_) => break,
                Err(e) => {
                    let index = ctrl.index;
                    guest_error(
                        &mut active.warned,
                        format_args!("virtio-net queue {index}: cannot enable notifications: {e}"),
                    );
                    break;
                }
            }
        }
        if let Some(active) = self.active.as_mut() {
            if let Some(ctrl) = active.ctrl.as_mut() {
                let (queue, index) = (&mut ctrl.queue, ctrl.index);
                interrupt_if_needed(completed, queue, &active.mem, &*active.interrupt, index);
            }
        }
    }

    /// Answers the commands published so far; returns how many chains went back to the used
    /// ring, or `None` if the ring cannot be read.
    fn ctrl_pass(&mut self) -> Option<usize> {
        let mq = self.acked_features & F_MQ != 0;
        let max_pairs = self.taps.len();
        let Net {
            active,
            counters,
            done,
            ..
        } = self;
        let active = active.as_mut()?;
        let Active {
            mem, ctrl, warned, ..
        } = active;
        let ctrl = ctrl.as_mut()?;
        let index = ctrl.index;
        let mem: &GuestMemoryMmap = mem;
        let mut new_pairs = None;
        done.clear();
        match ctrl.queue.iter(mem) {
            Ok(chains) => {
                for chain in chains {
                    let head = chain.head_index();
                    let (len, pairs) = control_command(mem, chain, mq, max_pairs, warned);
                    if len == 0 {
                        counters.errors += 1;
                    }
                    new_pairs = pairs.or(new_pairs);
                    done.push((head, len));
                }
            }
            Err(e) => {
                guest_error(warned, format_args!("virtio-net queue {index}: {e}"));
                return None;
            }
        }
        let done = std::mem::take(&mut self.done);
        // The new number of pairs applies before the driver sees the acknowledgement.
        if let Some(n) = new_pairs {
            self.set_active_pairs(n);
        }
        let mut returned = 0;
        if let Some(active) = self.active.as_mut() {
            let Active {
                mem, ctrl, warned, ..
            } = active;
            if let Some(ctrl) = ctrl.as_mut() {
                for &(head, len) in &done {
                    if return_chain(&mut ctrl.queue, mem, index, head, len, warned) {
                        returned += 1;
                    }
                }
            }
        }
        self.done = done;
        Some(returned)
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

/// Puts a chain on the used ring of queue `index`; true if it was.
fn return_chain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: u16,
    head: u16,
    len: u32,
    warned: &mut bool,
) -> bool {
    let name = format_args!("virtio-net queue {index}");
    queue::return_chain(queue, mem, head, len, name, warned)
}

/// Executes one control command; returns the used length (1 once the acknowledgement is
/// written, 0 if it could not be) and the number of queue pairs to switch to, if any.
fn control_command(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    mq: bool,
    max_pairs: usize,
    warned: &mut bool,
) -> (u32, Option<usize>) {
    // class, command, and the 16-bit argument of VQ_PAIRS_SET.
    let mut cmd = [0u8; 4];
    let mut readable = 0usize;
    let mut ack_at = None;
    let mut misordered = false;
    for d in chain {
        if d.is_write_only() {
            if ack_at.is_none() && d.len() > 0 {
                ack_at = Some(d.addr());
            }
            continue;
        }
        misordered |= ack_at.is_some();
        let len = d.len() as usize;
        let want = cmd.len().saturating_sub(readable).min(len);
        if want > 0
            && mem
                .read_slice(&mut cmd[readable..readable + want], d.addr())
                .is_err()
        {
            guest_error(
                warned,
                format_args!("virtio-net control: command outside guest memory"),
            );
            misordered = true;
        }
        readable = readable.saturating_add(len);
    }
    let Some(ack_at) = ack_at else {
        guest_error(
            warned,
            format_args!("virtio-net control: command without a writable acknowledgement byte"),
        );
        return (0, None);
    };
    let mut pairs = None;
    let ok = if misordered || readable < 2 {
        false
    } else if u32::from(cmd[0]) == VIRTIO_NET_CTRL_MQ
        && u32::from(cmd[1]) == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
    {
        let n = usize::from(u16::from_le_bytes([cmd[2], cmd[3]]));
        if mq && readable == 4 && (1..=max_pairs).contains(&n) {
            pairs = Some(n);
            true
        } else {
            debug!("virtio-net control: refusing {n} queue pairs (at most {max_pairs})");
            false
        }
    } else {
        debug!(
            "virtio-net control: unsupported command class {} command {}",
            cmd[0], cmd[1]
        );
        false
    };
    let ack = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR } as u8;
    if mem.write_obj(ack, ack_at).is_err() {
        guest_error(
            warned,
            format_args!("virtio-net control: acknowledgement outside guest memory"),
        );
        return (0, None);
    }
    (1, pairs)
}

/// Calls `f` for each slice of guest memory making up `len` bytes at `addr` (one, unless
/// the buffer straddles regions). False if any of it lies outside guest memory.
fn for_each_slice(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    mut f: impl FnMut(GuestAddress, &VolatileSlice<'_, ()>),
) -> bool {
    // One region lookup in the usual case.
    if let Ok(slice) = GuestMemoryBackend::get_slice(mem, addr, len) {
        f(addr, &slice);
        return true;
    }
    let mut at = addr;
    let mut seen = 0usize;
    for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
        let Ok(slice) = slice else {
            return false;
        };
        f(at, &slice);
        seen += slice.len();
        let Some(next) = at.checked_add(slice.len() as u64) else {
            return false;
        };
        at = next;
    }
    seen == len
}

/// Writes `data` at `offset` into the bytes of a receive chain.
fn write_chain(mem: &GuestMemoryMmap, pieces: &[Piece], mut offset: usize, data: &[u8]) -> bool {
    let mut done = 0usize;
    for p in pieces {
        if done == data.len() {
            break;
        }
        if offset >= p.len {
            offset -= p.len;
            continue;
        }
        let n = (p.len - offset).min(data.len() - done);
        let Some(addr) = p.addr.checked_add(offset as u64) else {
            return false;
        };
        if mem.write_slice(&data[done..done + n], addr).is_err() {
            return false;
        }
        done += n;
        offset = 0;
    }
    done == data.len()
}

/// Checks a receive chain and records its buffers in `out`.
fn parse_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    out: &mut RxChain,
) -> Result<(), &'static str> {
    out.head = chain.head_index();
    out.cap = 0;
    out.pieces.clear();
    for d in chain {
        if !d.is_write_only() {
            return Err("device-readable descriptor in a receive chain");
        }
        let len = d.len() as usize;
        if len == 0 {
            continue;
        }
        let pieces = &mut out.pieces;
        if !for_each_slice(mem, d.addr(), len, |addr, s| {
            pieces.push(Piece { addr, len: s.len() })
        }) {
            return Err("receive buffer outside guest memory");
        }
        // Leave room in one read for the scratch area.
        if out.pieces.len() >= IOV_MAX {
            return Err("receive chain of more than 1023 buffers");
        }
        out.cap += len;
    }
    if out.cap < VNET_HDR_SIZE {
        return Err("receive chain smaller than the 12-byte header");
    }
    Ok(())
}

/// What the transmit path works with.
struct TxCtx<'a> {
    mem: &'a GuestMemoryMmap,
    fd: RawFd,
    tap: &'a str,
    counters: &'a mut Counters,
    iov: &'a mut Vec<libc::iovec>,
    host_warned: &'a mut bool,
}

impl TxCtx<'_> {
    /// Writes one transmit chain to the tap, or drops it (logging why with `warned`).
    fn transmit(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, warned: &mut bool) {
        self.iov.clear();
        let mut total = 0usize;
        let mut problem = None;
        for d in chain {
            if d.is_write_only() {
                problem = Some("device-writable descriptor in a transmit chain");
                break;
            }
            let len = d.len() as usize;
            if len == 0 {
                continue;
            }
            total += len;
            if total > MAX_BUFFER_SIZE {
                problem = Some("transmit frame larger than 65550 bytes");
                break;
            }
            let iov = &mut *self.iov;
            if !for_each_slice(self.mem, d.addr(), len, |_, s| iov.push(iovec_of(s, false))) {
                problem = Some("transmit buffer outside guest memory");
                break;
            }
            if self.iov.len() > IOV_MAX {
                problem = Some("transmit chain of more than 1024 buffers");
                break;
            }
        }
        if problem.is_none() && total < MIN_TX_LEN {
            problem = Some("transmit chain shorter than a header and an Ethernet header");
        }
        if let Some(why) = problem {
            self.iov.clear();
            self.counters.tx_dropped += 1;
            self.counters.errors += 1;
            guest_error(warned, format_args!("virtio-net: {why}: dropped"));
            return;
        }
        loop {
            // SAFETY: every iovec describes guest memory (checked above) that stays mapped
            // while the device holds `mem`; writev only reads it.
            let ret =
                unsafe { libc::writev(self.fd, self.iov.as_ptr(), self.iov.len() as libc::c_int) };
            if ret >= 0 {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += (total - VNET_HDR_SIZE) as u64;
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            self.counters.tx_dropped += 1;
            self.counters.errors += 1;
            host_error(
                self.host_warned,
                format_args!("virtio-net: tap {}: cannot send a frame: {e}", self.tap),
            );
            break;
        }
        self.iov.clear();
    }
}

/// What the receive path works with.
struct RxCtx<'a> {
    mem: &'a GuestMemoryMmap,
    fd: RawFd,
    tap: &'a str,
    counters: &'a mut Counters,
    iov: &'a mut Vec<libc::iovec>,
    warned: &'a mut bool,
    host_warned: &'a mut bool,
    mrg: bool,
    want: usize,
}

/// Outcome of one read.
enum Step {
    /// A frame went to the driver.
    Delivered,
    /// Go on (a frame was dropped, or is pending).
    Again,
    /// The tap is empty, or failed.
    Stop,
}

/// Outcome of completing a pending frame.
enum Finish {
    Done,
    Dropped,
    NeedBuffers,
}

impl RxQueue {
    fn new(q: ActiveQueue, mrg: bool) -> RxQueue {
        RxQueue {
            index: q.index,
            queue: q.queue,
            notify: q.notify,
            ready: VecDeque::new(),
            spare: Vec::new(),
            pending: None,
            scratch: vec![0; if mrg { MAX_BUFFER_SIZE } else { SMALL_SCRATCH }],
            rejected: Vec::new(),
        }
    }

    /// Reads frames until the tap is empty or the buffers run out. True if any chain was
    /// returned to the used ring.
    fn run(&mut self, cx: &mut RxCtx<'_>) -> bool {
        let mut completed = false;
        let mut rechecks = 0u32;
        loop {
            if self.pending.is_some() {
                if self.refill(cx, &mut completed) > 0 {
                    rechecks = 0;
                }
                match self.finish_pending(cx) {
                    Finish::Done => completed = true,
                    Finish::Dropped => {}
                    Finish::NeedBuffers => {
                        if self.await_buffers(cx, &mut rechecks) {
                            continue;
                        }
                        return completed;
                    }
                }
                continue;
            }
            // Take what the driver added since (one load of the avail index when nothing
            // was), so that a frame can use every buffer there is.
            if self.refill(cx, &mut completed) > 0 {
                rechecks = 0;
            }
            if self.ready.is_empty() {
                if self.await_buffers(cx, &mut rechecks) {
                    continue;
                }
                return completed;
            }
            match self.read_frame(cx) {
                Step::Delivered => completed = true,
                Step::Again => {}
                Step::Stop => break,
            }
        }
        // The tap is drained and buffers remain: no notification is needed until they run
        // out (a no-op with EVENT_IDX).
        if let Err(e) = self.queue.disable_notification(cx.mem) {
            let msg = format_args!(
                "virtio-net queue {}: cannot disable notifications: {e}",
                self.index
            );
            guest_error(cx.warned, msg);
        }
        completed
    }

    /// Out of buffers: asks the driver to notify the queue when it adds some. True if it
    /// added some meanwhile (look again), false to stop until the notification.
    fn await_buffers(&mut self, cx: &mut RxCtx<'_>, rechecks: &mut u32) -> bool {
        match self.queue.enable_notification(cx.mem) {
            // Bounded, in case the ring cannot be read (which would make this spin).
            Ok(true) if *rechecks < 2 => {
                *rechecks += 1;
                true
            }
            Ok(_) => false,
            Err(e) => {
                let msg = format_args!(
                    "virtio-net queue {}: cannot enable notifications: {e}",
                    self.index
                );
                guest_error(cx.warned, msg);
                false
            }
        }
    }

    /// Takes the chains the driver published (up to the ring's size held at once); returns
    /// how many were taken. Malformed ones go straight back to the used ring.
    fn refill(&mut self, cx: &mut RxCtx<'_>, completed: &mut bool) -> usize {
        let RxQueue {
            index,
            queue,
            ready,
            spare,
            pending,
            rejected,
            ..
        } = self;
        let limit = usize::from(queue.size());
        let filled = pending.as_ref().map_or(0, |p| p.filled.len());
        if ready.len() + filled >= limit {
            return 0;
        }
        let mut taken = 0;
        rejected.clear();
        {
            let mut chains = match queue.iter(cx.mem) {
                Ok(chains) => chains,
                Err(e) => {
                    guest_error(cx.warned, format_args!("virtio-net queue {index}: {e}"));
                    return 0;
                }
            };
            while ready.len() + filled < limit {
                let Some(chain) = chains.next() else {
                    break;
                };
                taken += 1;
                let mut c = spare.pop().unwrap_or_default();
                match parse_rx_chain(cx.mem, chain, &mut c) {
                    Ok(()) => ready.push_back(c),
                    Err(why) => {
                        cx.counters.errors += 1;
                        guest_error(cx.warned, format_args!("virtio-net queue {index}: {why}"));
                        rejected.push(c.head);
                        spare.push(c);
                    }
                }
            }
        }
        for &head in rejected.iter() {
            *completed |= return_chain(queue, cx.mem, *index, head, 0, cx.warned);
        }
        taken
    }

    /// Reads one frame into the chains at the front of `ready` (and the scratch area).
    fn read_frame(&mut self, cx: &mut RxCtx<'_>) -> Step {
        let iov = &mut *cx.iov;
        iov.clear();
        let mut given = 0usize;
        let mut chains = 0usize;
        let mut broken = None;
        for (i, c) in self.ready.iter().enumerate() {
            if chains > 0 && (!cx.mrg || given >= cx.want || iov.len() + c.pieces.len() >= IOV_MAX)
            {
                break;
            }
            for p in &c.pieces {
                match GuestMemoryBackend::get_slice(cx.mem, p.addr, p.len) {
                    Ok(s) => iov.push(iovec_of(&s, true)),
                    Err(_) => broken = Some(i),
                }
            }
            if broken.is_some() {
                break;
            }
            given += c.cap;
            chains += 1;
        }
        if let Some(i) = broken {
            // Cannot happen (the pieces were checked against the same memory), but never
            // read into a chain that is not all there: return it empty.
            iov.clear();
            if let Some(c) = self.ready.remove(i) {
                cx.counters.errors += 1;
                return_chain(&mut self.queue, cx.mem, self.index, c.head, 0, cx.warned);
                self.spare.push(c);
            }
            return Step::Again;
        }
        iov.push(libc::iovec {
            iov_base: self.scratch.as_mut_ptr() as *mut libc::c_void,
            iov_len: self.scratch.len(),
        });
        // SAFETY: every iovec describes writable memory that stays valid for the call: guest
        // memory checked when the chain was taken (mapped while the device holds `mem`, and
        // given by the driver for the device to fill), and the scratch area, which `self`
        // owns and nothing else borrows during the call.
        let ret = unsafe { libc::readv(cx.fd, iov.as_ptr(), iov.len() as libc::c_int) };
        iov.clear();
        if ret < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Step::Stop,
                io::ErrorKind::Interrupted => Step::Again,
                _ => {
                    cx.counters.errors += 1;
                    host_error(
                        cx.host_warned,
                        format_args!("virtio-net: tap {}: cannot receive: {e}", cx.tap),
                    );
                    Step::Stop
                }
            };
        }
        let n = ret as usize;
        if n < VNET_HDR_SIZE {
            // Not a frame the tap can produce; stop rather than spin on it.
            cx.counters.errors += 1;
            host_error(
                cx.host_warned,
                format_args!("virtio-net: tap {}: read of {n} bytes", cx.tap),
            );
            return if n == 0 { Step::Stop } else { Step::Again };
        }
        if n <= given {
            self.deliver(cx, n);
            return Step::Delivered;
        }
        if cx.mrg && n - given <= self.scratch.len() {
            // Wait for more chains for the rest of the frame.
            let mut filled = Vec::with_capacity(chains + 4);
            for _ in 0..chains {
                if let Some(c) = self.ready.pop_front() {
                    let cap = c.cap;
                    filled.push((c, cap));
                }
            }
            self.pending = Some(Pending {
                filled,
                overflow: n - given,
                copied: 0,
            });
            return Step::Again;
        }
        // Too large for the buffers: the chains stay for the next frame.
        cx.counters.rx_dropped += 1;
        debug!(
            "virtio-net queue {}: dropped a {n}-byte frame larger than the receive buffers ({given} bytes)",
            self.index
        );
        Step::Again
    }

    /// Hands a frame of `len` bytes (header included), read into the front chains, to the
    /// driver.
    fn deliver(&mut self, cx: &mut RxCtx<'_>, len: usize) {
        let mut left = len;
        let mut count = 0usize;
        while left > 0 {
            let Some(c) = self.ready.get(count) else {
                break;
            };
            left -= c.cap.min(left);
            count += 1;
        }
        if let Some(first) = self.ready.front() {
            let num = (count as u16).to_le_bytes();
            if !write_chain(cx.mem, &first.pieces, NUM_BUFFERS_OFFSET, &num) {
                cx.counters.errors += 1;
            }
        }
        let mut left = len;
        for _ in 0..count {
            let Some(c) = self.ready.pop_front() else {
                break;
            };
            let n = c.cap.min(left);
            left -= n;
            return_chain(
                &mut self.queue,
                cx.mem,
                self.index,
                c.head,
                n as u32,
                cx.warned,
            );
            self.spare.push(c);
        }
        cx.counters.rx_frames += 1;
        cx.counters.rx_bytes += (len - VNET_HDR_SIZE) as u64;
    }

    /// Copies the rest of a pending frame into further chains, and hands it to the driver
    /// once it is all there.
    fn finish_pending(&mut self, cx: &mut RxCtx<'_>) -> Finish {
        let RxQueue {
            index,
            queue,
            ready,
            spare,
            pending,
            scratch,
            ..
        } = self;
        let Some(p) = pending.as_mut() else {
            return Finish::Done;
        };
        while p.copied < p.overflow {
            let Some(c) = ready.pop_front() else {
                if p.filled.len() >= usize::from(queue.size()) {
                    // The ring can never hold this frame: drop it, keep the chains.
                    for (c, _) in p.filled.drain(..).rev() {
                        ready.push_front(c);
                    }
                    *pending = None;
                    cx.counters.rx_dropped += 1;
                    debug!("virtio-net queue {index}: dropped a frame larger than the whole ring");
                    return Finish::Dropped;
                }
                return Finish::NeedBuffers;
            };
            let n = c.cap.min(p.overflow - p.copied);
            let Some(data) = scratch.get(p.copied..p.copied + n) else {
                // Cannot happen: `overflow` <= the scratch size.
                ready.push_front(c);
                *pending = None;
                cx.counters.rx_dropped += 1;
                return Finish::Dropped;
            };
            if !write_chain(cx.mem, &c.pieces, 0, data) {
                cx.counters.errors += 1;
                return_chain(queue, cx.mem, *index, c.head, 0, cx.warned);
                spare.push(c);
                continue;
            }
            p.copied += n;
            p.filled.push((c, n));
        }
        let Some(p) = pending.take() else {
            return Finish::Done;
        };
        if let Some((first, _)) = p.filled.first() {
            let num = (p.filled.len() as u16).to_le_bytes();
            if !write_chain(cx.mem, &first.pieces, NUM_BUFFERS_OFFSET, &num) {
                cx.counters.errors += 1;
            }
        }
        let mut total = 0usize;
        for (c, n) in p.filled {
            total += n;
            return_chain(queue, cx.mem, *index, c.head, n as u32, cx.warned);
            spare.push(c);
        }
        cx.counters.rx_frames += 1;
        cx.counters.rx_bytes += total.saturating_sub(VNET_HDR_SIZE) as u64;
        Finish::Done
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let pairs = self.taps.len();
        let ctrl = usize::from(pairs > 1);
        vec![self.queue_size; 2 * pairs + ctrl]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only by legacy drivers; nothing else is writable.
        log_ignored_config_write("virtio-net", offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let acked = self.acked_features;
        let num_queues = self.queue_max_sizes().len();
        let event_idx = acked & F_RING_EVENT_IDX != 0;
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
        for q in enabled_queues("virtio-net", num_queues, queues, &mem, event_idx)? {
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
        let gso = acked & (F_GUEST_TSO4 | F_GUEST_TSO6) != 0;
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
        self.acked_features = 0;
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
        self.taps
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_raw_fd(), i as u32))
            .collect()
    }

    fn process_host(&mut self, token: u32) {
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
        ])
    }
}

/// A random MAC address: locally administered (bit 1 of the first byte set) and unicast
/// (bit 0 clear).
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the array.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr() as *mut libc::c_void, mac.len(), 0) };
    if n != mac.len() as isize {
        // No kernel randomness (cannot happen on Linux 3.17+): fall back on the standard
        // library's randomly seeded hasher.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        mac.copy_from_slice(&h.finish().to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & !0x01) | 0x02;
    mac
}

/// Parses a unicast MAC address written as six colon-separated pairs of hex digits
/// (`52:54:00:12:34:56`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || {
        format!(
            "{text:?} is not a MAC address (write six pairs of hex digits, e.g. 52:54:00:12:34:56)"
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{text} is a multicast address (the lowest bit of the first byte must be 0)"
        ));
    }
    Ok(mac)
}

/// Formats a MAC address as `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
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

    fn arp(
        op: u16,
        dst: [u8; 6],
        sha: [u8; 6],
        spa: [u8; 4],
        tha: [u8; 6],
        tpa: [u8; 4],
    ) -> Vec<u8> {
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
            (0..3)
                .map(|_| Tap::open(None, 1).unwrap().remove(0))
                .collect::<Vec<_>>()
        });
        let mut taps = taps.into_iter();
        let features = |tap: Tap, csum: bool, tso: bool| {
            let o = NetOptions {
                csum,
                tso,
                ..NetOptions::default()
            };
            Net::new(vec![tap], GUEST_MAC, o).unwrap().features()
        };
        let csum_only = features(taps.next().unwrap(), true, false);
        assert_ne!(csum_only & F_CSUM, 0);
        assert_ne!(csum_only & F_GUEST_CSUM, 0);
        assert_eq!(
            csum_only
                & (F_HOST_TSO4
                    | F_HOST_TSO6
                    | F_HOST_ECN
                    | F_GUEST_TSO4
                    | F_GUEST_TSO6
                    | F_GUEST_ECN),
            0
        );
        let none = features(taps.next().unwrap(), false, true);
        assert_eq!(
            none & (F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_GUEST_TSO4),
            0
        );
        let all = features(taps.next().unwrap(), true, true);
        assert_ne!(all & (F_GUEST_TSO4 | F_HOST_TSO4), 0);
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
}
