//! Virtio console (virtio 1.x, section 5.3) with a single port (no `VIRTIO_CONSOLE_F_MULTIPORT`).
//!
//! The device has two queues: `receiveq0` (index 0), where the driver posts device-writable
//! buffers for host input, and `transmitq0` (index 1), where it posts device-readable
//! buffers of guest output.
//!
//! Output: the bytes of each transmit chain are gathered (at most [`MAX_TX_CHAIN_BYTES`] per
//! chain; the rest is dropped) and written to the output writer the caller supplied: a
//! terminal, a file, a pseudo-terminal master or a sink. The device never waits for the
//! writer: a writer that would block (a non-blocking descriptor nobody drains) or fails has
//! the rest of that chain dropped and counted, and the chain is returned all the same. The
//! writer itself decides whether it can block; the caller should hand over non-blocking
//! descriptors for anything that may stall (a pseudo-terminal, a pipe).
//!
//! Input: the input descriptor (if any) is offered to the VMM through
//! [`VirtioDevice::host_fds`] and watched edge-triggered. When it is readable the device
//! reads what is available without blocking (a zero-timeout `poll` before each `read`, so the
//! descriptor's own flags are left alone: a shared standard input stays blocking for other
//! processes) into a small pending buffer of at most [`PENDING_INPUT_MAX`] bytes, and copies
//! that into the guest's receive buffers. Input is read again only once the pending bytes
//! have all reached the guest: when the guest has no receive buffer, the device stops
//! reading and the rest of the input waits in the host descriptor (the kernel's pipe or
//! terminal buffer), so nothing is lost and host memory stays bounded. Reading resumes when
//! the driver adds receive buffers. End of file on the input stops the watch for good.
//!
//! Per notification the device does a bounded amount of work ([`MAX_TX_BYTES_PER_CALL`],
//! [`MAX_RX_BYTES_PER_CALL`], [`MAX_CHAINS_PER_CALL`]); when a budget runs out with work
//! left, it re-arms its own queue notification so its worker thread comes back to it after
//! serving its other events.
//!
//! Configuration space (`struct virtio_console_config`): `cols` and `rows` read as 0
//! (`VIRTIO_CONSOLE_F_SIZE` is not offered), `max_nr_ports` as 1, and a write to
//! `emerg_wr` (`VIRTIO_CONSOLE_F_EMERG_WRITE`) outputs its low byte at once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use log::{debug, info};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::queue::{
    clear_notification, drain, guest_error, interrupt_if_needed, log_limited, rearm, return_chains,
    walk_chain, Budget, Seg, Served,
};
use super::{
    counters_map, ActivateError, ActiveQueue, VirtioCommon, VirtioDevice, VirtioInterrupt,
    F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_CONSOLE,
};

/// Feature bit: the configuration space holds the console size (not offered).
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
/// Feature bit: several ports and a control queue (not offered).
pub const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
/// Feature bit: the driver may write single bytes through `emerg_wr` (offered).
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;

/// Index of `receiveq0` (host to guest).
pub const RX_QUEUE: u16 = 0;
/// Index of `transmitq0` (guest to host).
pub const TX_QUEUE: u16 = 1;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the configuration space: `cols`, `rows`, `max_nr_ports`, `emerg_wr`.
pub const CONFIG_SPACE_SIZE: usize = 12;
/// Offset of `emerg_wr` in the configuration space.
const EMERG_WR_OFFSET: u64 = 8;
/// Offset of `max_nr_ports` in the configuration space.
const MAX_NR_PORTS_OFFSET: usize = 4;

/// The token of the input descriptor in [`VirtioDevice::host_fds`].
pub const INPUT_TOKEN: u32 = 0;
/// Most input bytes held by the device while the guest has no receive buffer.
pub const PENDING_INPUT_MAX: usize = 4096;
/// Most bytes of one transmit chain that are output; the rest is dropped.
pub const MAX_TX_CHAIN_BYTES: usize = 64 * 1024;
/// Most output bytes handled per notification of the transmit queue.
pub const MAX_TX_BYTES_PER_CALL: u64 = 1024 * 1024;
/// Most input bytes read per call before the device yields to other events.
pub const MAX_RX_BYTES_PER_CALL: u64 = 64 * 1024;
/// Most chains served per call on either queue before the device yields to other events.
pub const MAX_CHAINS_PER_CALL: u32 = 1024;

/// Statistics, reported by [`VirtioDevice::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    /// Guest output bytes written to the output.
    tx_bytes: u64,
    /// Input bytes copied into guest buffers.
    rx_bytes: u64,
    /// Guest output bytes dropped (writer would block or failed, chain over the cap).
    dropped_bytes: u64,
    /// Malformed chains, buffers outside guest memory, input read failures.
    errors: u64,
}

/// The host side of the console and the per-request state. It outlives driver resets.
struct Host {
    output: Box<dyn Write + Send>,
    input: Option<File>,
    /// The input reached its end (or became unusable): it is no longer read or watched.
    input_closed: bool,
    /// Input read from the host and not yet in guest buffers: `pending[pending_pos..]`.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Guest output of the chain being transmitted.
    bounce: Vec<u8>,
    descs: Vec<Seg>,
    counters: Counters,
    /// A host-side failure was logged at warning level (later ones go to debug).
    host_warned: bool,
}

/// What the activated device holds.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Option<ActiveQueue>,
    tx: Option<ActiveQueue>,
    /// A driver error was logged at warning level (later ones go to debug).
    warned: bool,
}

/// A virtio-console device model with one port.
///
/// Create it with [`Console::new`] and hand it (as a [`VirtioDevice`]) to a virtio
/// transport; the VMM watches the descriptors of [`VirtioDevice::host_fds`] and calls
/// [`VirtioDevice::process_host`] when they are readable. See the module documentation.
pub struct Console {
    host: Host,
    /// (head, used length) of the chains served in the current pass over a ring.
    completions: Vec<(u16, u32)>,
    common: VirtioCommon,
    active: Option<Active>,
}

impl Console {
    /// Creates a console whose guest output goes to `output` and whose guest input, if any,
    /// is read from `input` (a pipe, a terminal or a pseudo-terminal master; for standard
    /// input, a duplicate of descriptor 0).
    ///
    /// `output` should not block for long: for a pseudo-terminal or a pipe, give a
    /// descriptor in non-blocking mode (the device drops what it cannot write at once). The
    /// input descriptor need not be non-blocking. Both are kept for the device's life,
    /// across driver resets.
    pub fn new(output: Box<dyn Write + Send>, input: Option<OwnedFd>) -> Console {
        Console {
            host: Host {
                output,
                input: input.map(File::from),
                input_closed: false,
                pending: Vec::with_capacity(PENDING_INPUT_MAX),
                pending_pos: 0,
                bounce: Vec::new(),
                descs: Vec::new(),
                counters: Counters::default(),
                host_warned: false,
            },
            completions: Vec::new(),
            common: VirtioCommon::new(
                TYPE_CONSOLE,
                "virtio-console",
                vec![QUEUE_SIZE; 2],
                F_VERSION_1
                    | F_RING_INDIRECT_DESC
                    | F_RING_EVENT_IDX
                    | VIRTIO_CONSOLE_F_EMERG_WRITE,
                config_space().to_vec(),
            ),
            active: None,
        }
    }

    /// Serves the receive queue: delivers pending input and reads more while the guest has
    /// buffers for it.
    fn process_rx(&mut self) {
        let Console {
            host,
            completions,
            active,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        let Active {
            mem,
            interrupt,
            rx,
            warned,
            ..
        } = active;
        let Some(aq) = rx.as_mut() else {
            return;
        };
        clear_notification(&aq.notify);
        let queue = &mut aq.queue;
        let mem: &GuestMemoryMmap = mem;

        let mut read_left = MAX_RX_BYTES_PER_CALL;
        let mut chains_left = MAX_CHAINS_PER_CALL;
        let mut yielded = false;
        let mut completed = false;
        let mut passes = 0;
        'outer: loop {
            // Notifications are not needed while the ring is being filled; they are enabled
            // again below, before the device goes idle.
            if let Err(e) = queue.disable_notification(mem) {
                let msg =
                    format_args!("virtio-console receiveq: cannot disable notifications: {e}");
                guest_error(warned, msg);
            }
            let mut starved = false;
            loop {
                if host.pending_is_empty() {
                    if read_left == 0 {
                        yielded = true;
                        break 'outer;
                    }
                    let n = host.read_input();
                    if n == 0 {
                        break;
                    }
                    read_left = read_left.saturating_sub(n as u64);
                }
                completions.clear();
                match queue.iter(mem) {
                    Ok(mut chains) => {
                        while !host.pending_is_empty() && chains_left > 0 {
                            let Some(chain) = chains.next() else {
                                starved = true;
                                break;
                            };
                            let head = chain.head_index();
                            let len = host.receive(mem, chain, &mut read_left);
                            chains_left -= 1;
                            completions.push((head, len));
                        }
                    }
                    Err(e) => {
                        // An impossible avail index: stop until the next notification.
                        guest_error(warned, format_args!("virtio-console receiveq: {e}"));
                        break 'outer;
                    }
                }
                let name = format_args!("virtio-console receiveq");
                completed |= return_chains(queue, mem, completions, name, warned);
                if chains_left == 0 {
                    yielded = true;
                    break 'outer;
                }
                if starved {
                    break;
                }
            }
            match queue.enable_notification(mem) {
                // Buffers arrived while notifications were off and input is waiting for
                // them: go on (a few times; then come back through the re-armed eventfd).
                Ok(true) if starved => {
                    passes += 1;
                    if passes >= 3 {
                        yielded = true;
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    let msg =
                        format_args!("virtio-console receiveq: cannot enable notifications: {e}");
                    guest_error(warned, msg);
                    break;
                }
            }
        }
        if yielded {
            rearm(&aq.notify, "virtio-console", aq.index);
        }
        interrupt_if_needed(completed, queue, mem, interrupt.as_ref(), RX_QUEUE);
    }

    /// Serves the transmit queue: writes the guest's output.
    fn process_tx(&mut self) {
        let Console {
            host,
            completions,
            active,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        let Active {
            mem,
            interrupt,
            tx,
            warned,
            ..
        } = active;
        let Some(aq) = tx.as_mut() else {
            return;
        };
        clear_notification(&aq.notify);
        let queue = &mut aq.queue;
        let mem: &GuestMemoryMmap = mem;

        let budget = Budget {
            bytes: MAX_TX_BYTES_PER_CALL,
            chains: u64::from(MAX_CHAINS_PER_CALL),
        };
        let drained = drain(
            queue,
            mem,
            format_args!("virtio-console transmitq"),
            warned,
            completions,
            budget,
            // Transmit buffers are only read: the used length is 0.
            |chain, _, _| (Served::Used(0), host.transmit(mem, chain)),
        );
        host.flush_output();
        if drained.out_of_budget {
            rearm(&aq.notify, "virtio-console", aq.index);
        }
        interrupt_if_needed(drained.completed, queue, mem, interrupt.as_ref(), TX_QUEUE);
    }
}

/// What one attempt to read the input gave.
enum InputRead {
    /// Some bytes.
    Data(usize),
    /// Nothing is available now.
    Empty,
    /// The input ended.
    Closed,
}

/// Reads what `file` has available now, without blocking: `poll` with no timeout first, so
/// that the descriptor may be in blocking mode (and stay so for whoever shares it).
fn read_available(file: &File, buf: &mut [u8]) -> io::Result<InputRead> {
    loop {
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid, initialized pollfd and the count passed is 1; a zero
        // timeout makes the call return at once.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(InputRead::Empty);
        }
        if pfd.revents & libc::POLLNVAL != 0 {
            // The descriptor is not open: nothing will ever come from it.
            return Ok(InputRead::Closed);
        }
        // Readable, hung up or in error: `read` tells which without blocking.
        let mut reader = file;
        return match reader.read(buf) {
            Ok(0) => Ok(InputRead::Closed),
            Ok(n) => Ok(InputRead::Data(n.min(buf.len()))),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(InputRead::Empty),
            Err(e) => Err(e),
        };
    }
}

impl Host {
    fn pending_is_empty(&self) -> bool {
        self.pending_pos >= self.pending.len()
    }

    /// Reads up to [`PENDING_INPUT_MAX`] bytes of input into the (empty) pending buffer.
    /// Returns how many; 0 when there is no input now (or ever again).
    fn read_input(&mut self) -> usize {
        self.pending.clear();
        self.pending_pos = 0;
        if self.input_closed {
            return 0;
        }
        let Some(file) = &self.input else {
            return 0;
        };
        self.pending.resize(PENDING_INPUT_MAX, 0);
        let res = read_available(file, &mut self.pending);
        let n = match res {
            Ok(InputRead::Data(n)) => n,
            Ok(InputRead::Empty) => 0,
            Ok(InputRead::Closed) => {
                info!("virtio-console: end of input; no longer reading it");
                self.input_closed = true;
                0
            }
            Err(e) => {
                self.counters.errors += 1;
                self.host_error(format_args!("reading the input failed: {e}"));
                0
            }
        };
        self.pending.truncate(n);
        n
    }

    /// Copies input into the device-writable buffers of one receive chain, reading more
    /// from the host while the chain has room and `read_left` allows it. Called with input
    /// pending. Returns the used length.
    fn receive(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        read_left: &mut u64,
    ) -> u32 {
        walk_chain(chain, &mut self.descs, usize::from(QUEUE_SIZE) * 4);
        if self.descs.iter().any(|s| !s.write) {
            debug!("virtio-console: receive chain with a device-readable descriptor");
            self.counters.errors += 1;
            return 0;
        }
        let mut written = 0usize;
        'descs: for i in 0..self.descs.len() {
            let seg = self.descs[i];
            let mut off = 0usize;
            while off < seg.len as usize {
                if self.pending_is_empty() {
                    if *read_left == 0 {
                        break 'descs;
                    }
                    let n = self.read_input();
                    if n == 0 {
                        break 'descs;
                    }
                    *read_left = read_left.saturating_sub(n as u64);
                }
                let n = (self.pending.len() - self.pending_pos).min(seg.len as usize - off);
                let data = &self.pending[self.pending_pos..self.pending_pos + n];
                // `write` stops where guest memory ends and reports how far it got.
                let done = seg
                    .addr
                    .checked_add(off as u64)
                    .and_then(|addr| mem.write(data, addr).ok())
                    .unwrap_or(0)
                    .min(n);
                self.pending_pos += done;
                written += done;
                off += done;
                if done < n {
                    debug!(
                        "virtio-console: receive buffer at {:#x} outside guest memory",
                        seg.addr.0
                    );
                    break 'descs;
                }
            }
        }
        if written == 0 {
            self.counters.errors += 1;
        }
        self.counters.rx_bytes += written as u64;
        // Bounded by the read budget of a call and the pending buffer.
        u32::try_from(written).unwrap_or(u32::MAX)
    }

    /// Outputs the device-readable buffers of one transmit chain. Returns the bytes it
    /// consumed (output or dropped), charged to the call's budget.
    fn transmit(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u64 {
        walk_chain(chain, &mut self.descs, usize::from(QUEUE_SIZE) * 4);
        if self.descs.iter().any(|s| s.write) {
            debug!("virtio-console: transmit chain with a device-writable descriptor");
            self.counters.errors += 1;
            return 0;
        }
        let total: u64 = self.descs.iter().map(|s| u64::from(s.len)).sum();
        let take = total.min(MAX_TX_CHAIN_BYTES as u64) as usize;
        self.bounce.clear();
        self.bounce.resize(take, 0);
        let mut at = 0usize;
        for i in 0..self.descs.len() {
            if at == take {
                break;
            }
            let seg = self.descs[i];
            let n = (take - at).min(seg.len as usize);
            if mem
                .read_slice(&mut self.bounce[at..at + n], seg.addr)
                .is_err()
            {
                debug!(
                    "virtio-console: transmit buffer at {:#x} outside guest memory",
                    seg.addr.0
                );
                self.counters.errors += 1;
                return take as u64;
            }
            at += n;
        }
        if total > take as u64 {
            debug!(
                "virtio-console: dropping {} bytes of output over the per-chain cap",
                total - take as u64
            );
            self.counters.dropped_bytes += total - take as u64;
        }
        let bounce = std::mem::take(&mut self.bounce);
        self.write_output(&bounce);
        self.bounce = bounce;
        if self.bounce.capacity() > MAX_TX_CHAIN_BYTES {
            self.bounce.shrink_to(MAX_TX_CHAIN_BYTES);
        }
        take as u64
    }

    /// Writes `data` to the output without waiting: what the writer does not take at once
    /// (it would block, or fails) is dropped and counted.
    fn write_output(&mut self, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            match self.output.write(&data[done..]) {
                Ok(0) => break,
                Ok(n) => done += n.min(data.len() - done),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.host_error(format_args!("writing the output failed: {e}"));
                    break;
                }
            }
        }
        self.counters.tx_bytes += done as u64;
        self.counters.dropped_bytes += (data.len() - done) as u64;
    }

    fn flush_output(&mut self) {
        match self.output.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.host_error(format_args!("flushing the output failed: {e}")),
        }
    }

    /// Logs a host-side failure at warning level the first time, at debug level afterwards.
    fn host_error(&mut self, args: std::fmt::Arguments<'_>) {
        let args = format_args!("virtio-console: {args}");
        log_limited(&mut self.host_warned, "host", args);
    }
}

/// `struct virtio_console_config`, little endian: `cols` and `rows` 0, `max_nr_ports` 1,
/// `emerg_wr` 0.
fn config_space() -> [u8; CONFIG_SPACE_SIZE] {
    let mut c = [0u8; CONFIG_SPACE_SIZE];
    c[MAX_NR_PORTS_OFFSET..MAX_NR_PORTS_OFFSET + 4].copy_from_slice(&1u32.to_le_bytes());
    c
}

impl VirtioDevice for Console {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `emerg_wr` is writable: its low byte (the first, little endian) is output.
        let covers = offset <= EMERG_WR_OFFSET
            && offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end > EMERG_WR_OFFSET);
        if !covers {
            self.common.ignore_config_write(offset, data);
            return;
        }
        // In range: `offset` <= 8 < `offset + data.len()`.
        let byte = data[(EMERG_WR_OFFSET - offset) as usize];
        self.host.write_output(&[byte]);
        self.host.flush_output();
    }

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
        let mut rx = None;
        let mut tx = None;
        for q in self.common.enabled_queues(queues, &mem)? {
            if q.index == RX_QUEUE {
                rx = Some(q);
            } else {
                tx = Some(q);
            }
        }
        // Input that arrived before activation (or was pending at a reset) and buffers the
        // driver posted before DRIVER_OK are served as soon as its worker thread gets to them.
        for q in rx.iter().chain(tx.iter()) {
            rearm(&q.notify, "virtio-console", q.index);
        }
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
            warned: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // Pending input is kept for the next activation, like what still waits in the host
        // descriptor.
        self.active = None;
        self.common.reset();
        self.host.flush_output();
    }

    fn process_queue(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => {}
        }
    }

    fn host_fds(&self) -> Vec<(RawFd, u32)> {
        match &self.host.input {
            Some(f) if !self.host.input_closed => vec![(f.as_raw_fd(), INPUT_TOKEN)],
            _ => Vec::new(),
        }
    }

    fn process_host(&mut self, token: u32) {
        if token == INPUT_TOKEN {
            self.process_rx();
        }
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.host.counters;
        counters_map(&[
            ("tx_bytes", c.tx_bytes),
            ("rx_bytes", c.rx_bytes),
            ("dropped_bytes", c.dropped_bytes),
            ("errors", c.errors),
        ])
    }
}

#[cfg(test)]
mod tests;
