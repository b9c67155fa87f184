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
    clear_notification, drain, enabled_queues, guest_error, interrupt_if_needed, log_limited,
    rearm, return_chains, walk_chain, Budget, Seg,
};
use super::{
    counters_map, log_ignored_config_write, read_config_bytes, ActivateError, ActiveQueue,
    VirtioDevice, VirtioInterrupt, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
    TYPE_CONSOLE,
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
    acked_features: u64,
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
            acked_features: 0,
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
            |chain, _, _| (Some(0), host.transmit(mem, chain)),
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
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX | VIRTIO_CONSOLE_F_EMERG_WRITE
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `emerg_wr` is writable: its low byte (the first, little endian) is output.
        let covers = offset <= EMERG_WR_OFFSET
            && offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end > EMERG_WR_OFFSET);
        if !covers {
            log_ignored_config_write("virtio-console", offset, data);
            return;
        }
        // In range: `offset` <= 8 < `offset + data.len()`.
        let byte = data[(EMERG_WR_OFFSET - offset) as usize];
        self.host.write_output(&[byte]);
        self.host.flush_output();
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & F_RING_EVENT_IDX != 0;
        let mut rx = None;
        let mut tx = None;
        for q in enabled_queues("virtio-console", 2, queues, &mem, event_idx)? {
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
        self.acked_features = 0;
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
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::sync::Mutex;

    use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
    use vm_memory::GuestAddress;

    use crate::virtio::test_driver::{Driver, OUTSIDE, POISON, QSIZE, R, REGION, W};

    /// A writer that keeps what it is given; past `limit` bytes it reports `WouldBlock`
    /// (or, with `fail`, an I/O error).
    #[derive(Clone, Default)]
    struct Capture {
        data: Arc<Mutex<Vec<u8>>>,
        limit: Arc<Mutex<Option<usize>>>,
        fail: bool,
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut data = self.data.lock().unwrap();
            let room = match *self.limit.lock().unwrap() {
                Some(l) => l.saturating_sub(data.len()),
                None => usize::MAX,
            };
            if room == 0 {
                return Err(if self.fail {
                    io::Error::from_raw_os_error(libc::EIO)
                } else {
                    io::ErrorKind::WouldBlock.into()
                });
            }
            // Short writes, to exercise the resume path.
            let n = buf.len().min(room).min(1000);
            data.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn take(&self) -> Vec<u8> {
            std::mem::take(&mut *self.data.lock().unwrap())
        }

        fn set_limit(&self, limit: Option<usize>) {
            *self.limit.lock().unwrap() = limit;
        }
    }

    /// A pipe: the read end for the device, the write end for the test.
    fn pipe() -> (OwnedFd, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors were just created and nothing else owns them.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    /// The test's ends of the console: the captured output, and the write end of the
    /// input pipe.
    struct HostEnds {
        out: Capture,
        input: Option<File>,
    }

    /// The test plays the driver of both queues.
    type Harness = Driver<Console, HostEnds>;

    impl Harness {
        /// A console with captured output and a pipe as input, all features acked.
        fn new() -> Harness {
            Self::with(true, |f| f, None)
        }

        fn with(with_input: bool, features: impl Fn(u64) -> u64, ready: Option<&[u16]>) -> Harness {
            let out = Capture::default();
            let (input, writer) = if with_input {
                let (r, w) = pipe();
                (Some(r), Some(w))
            } else {
                (None, None)
            };
            let con = Console::new(Box::new(out.clone()), input);
            let host = HostEnds { out, input: writer };
            let mut h = Driver::for_device(con, host, features);
            h.start(&[QSIZE; 2], ready);
            // Activation arms the enabled queues; serve them as the worker thread would.
            h.run_notified();
            h
        }

        /// Publishes one transmit chain of `parts` and notifies.
        fn send(&mut self, parts: &[&[u8]]) -> u16 {
            let descs: Vec<(u64, u32, u16)> = parts
                .iter()
                .map(|p| (self.data(p), p.len() as u32, R))
                .collect();
            let head = self.publish_chain(1, &descs);
            self.kick(1);
            head
        }

        /// Publishes a receive buffer of `len` bytes (not notified); returns (head, address).
        fn rx_buf(&mut self, len: u32) -> (u16, u64) {
            let addr = self.buf(u64::from(len), POISON);
            (self.publish_chain(0, &[(addr, len, W)]), addr)
        }

        fn type_input(&mut self, data: &[u8]) {
            self.host.input.as_mut().unwrap().write_all(data).unwrap();
        }

        fn pending(&self) -> usize {
            self.dev.host.pending.len() - self.dev.host.pending_pos
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 253) as u8).collect()
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let mut h = Harness::new();
        let head = h.send(&[b"hello, ", b"world\n"]);
        assert_eq!(h.host.out.take(), b"hello, world\n");
        assert_eq!(h.used_len(1, head), 0);
        assert_eq!(h.irq.count_for(1), 1);
        // Several chains in one notification, in order, with one interrupt.
        let big = pattern(5000);
        let a = h.data(b"abc");
        let b = h.data(&big);
        h.publish_chain(1, &[(a, 3, R)]);
        h.publish_chain(1, &[(b, 5000, R)]);
        h.set_used_event(1, 1);
        h.kick(1);
        assert_eq!(h.host.out.take(), [&b"abc"[..], &big].concat());
        assert_eq!(h.used_idx(1), 3);
        assert_eq!(h.irq.count_for(1), 2);
        assert_eq!(h.irq.count_for(0), 0);
        assert_eq!(h.counter("tx_bytes"), 13 + 5003);
        assert_eq!(h.counter("dropped_bytes"), 0);
        assert_eq!(h.counter("errors"), 0);
    }

    #[test]
    fn output_that_would_block_is_dropped() {
        let mut h = Harness::new();
        h.host.out.set_limit(Some(4));
        let head = h.send(&[b"0123456789"]);
        assert_eq!(h.used_len(1, head), 0);
        assert_eq!(h.host.out.take(), b"0123");
        assert_eq!(h.counter("tx_bytes"), 4);
        assert_eq!(h.counter("dropped_bytes"), 6);
        // The writer drains: output flows again.
        h.host.out.set_limit(None);
        h.send(&[b"ok"]);
        assert_eq!(h.host.out.take(), b"ok");
        assert_eq!(h.counter("dropped_bytes"), 6);
    }

    #[test]
    fn output_that_fails_is_dropped() {
        let out = Capture {
            fail: true,
            ..Capture::default()
        };
        out.set_limit(Some(0));
        let mut h = Harness::new();
        h.dev.host.output = Box::new(out.clone());
        h.send(&[b"lost"]);
        h.send(&[b"lost too"]);
        assert_eq!(h.used_idx(1), 2);
        assert!(out.take().is_empty());
        assert_eq!(h.counter("dropped_bytes"), 12);
    }

    #[test]
    fn hostile_transmit_chains() {
        let mut h = Harness::new();
        // A device-writable descriptor in a transmit chain: nothing is output.
        let a = h.data(b"nope");
        let w = h.buf(16, 0);
        let h1 = h.publish_chain(1, &[(a, 4, R), (w, 16, W)]);
        // A buffer outside guest memory, and one running off its end.
        let h2 = h.publish_chain(1, &[(OUTSIDE, 100, R)]);
        let h3 = h.publish_chain(1, &[(2 * REGION - 10, 100, R)]);
        // A huge buffer: the first MAX_TX_CHAIN_BYTES are output, the rest dropped.
        let big = pattern(MAX_TX_CHAIN_BYTES + 10);
        let b = h.data(&big);
        let h4 = h.publish_chain(1, &[(b, u32::MAX, R)]);
        h.kick(1);
        for head in [h1, h2, h3, h4] {
            assert_eq!(h.used_len(1, head), 0);
        }
        assert_eq!(h.host.out.take(), &big[..MAX_TX_CHAIN_BYTES]);
        assert_eq!(h.counter("errors"), 3);
        assert_eq!(
            h.counter("dropped_bytes"),
            u64::from(u32::MAX) - MAX_TX_CHAIN_BYTES as u64
        );
        // The queue still works.
        h.send(&[b"fine"]);
        assert_eq!(h.host.out.take(), b"fine");
    }

    #[test]
    fn transmit_work_per_call_is_bounded() {
        let mut h = Harness::new();
        let big = pattern(MAX_TX_CHAIN_BYTES);
        let b = h.data(&big);
        let chains = (MAX_TX_BYTES_PER_CALL / MAX_TX_CHAIN_BYTES as u64) as u16 + 3;
        for _ in 0..chains {
            h.publish_chain(1, &[(b, MAX_TX_CHAIN_BYTES as u32, R)]);
        }
        h.kick(1);
        let first = (MAX_TX_BYTES_PER_CALL / MAX_TX_CHAIN_BYTES as u64) as u16;
        assert_eq!(h.used_idx(1), first);
        // The device re-armed its notification; the VMM loop serves the rest.
        assert_eq!(h.run_notified(), 1);
        assert_eq!(h.used_idx(1), chains);
        assert_eq!(
            h.host.out.take().len(),
            usize::from(chains) * MAX_TX_CHAIN_BYTES
        );
    }

    #[test]
    fn input_reaches_guest_buffers() {
        let mut h = Harness::new();
        let fds = h.dev.host_fds();
        assert_eq!(fds.len(), 1);
        assert_eq!(fds[0].1, INPUT_TOKEN);
        let (h1, a) = h.rx_buf(8);
        let (h2, b) = h.rx_buf(8);
        h.kick(0);
        assert_eq!(h.used_idx(0), 0);
        h.type_input(b"ls -l\n");
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.used_len(0, h1), 6);
        assert_eq!(h.read_guest(a, 8), b"ls -l\n\xa5\xa5");
        assert_eq!(h.irq.count_for(0), 1);
        // More input than one buffer holds spreads over the next ones.
        h.type_input(b"0123456789");
        let (h3, c) = h.rx_buf(64);
        h.set_used_event(0, 1);
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.used_len(0, h2), 8);
        assert_eq!(h.read_guest(b, 8), b"01234567");
        assert_eq!(h.used_len(0, h3), 2);
        assert_eq!(h.read_guest(c, 2), b"89");
        assert_eq!(h.irq.count_for(0), 2);
        assert_eq!(h.counter("rx_bytes"), 16);
        assert_eq!(h.pending(), 0);
        // Nothing to read: nothing happens.
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.used_idx(0), 3);
        // Unknown tokens are ignored.
        h.type_input(b"x");
        h.dev.process_host(7);
        assert_eq!(h.used_idx(0), 3);
    }

    #[test]
    fn input_waits_when_the_guest_has_no_buffer() {
        let mut h = Harness::new();
        let input = pattern(20_000);
        h.type_input(&input);
        h.dev.process_host(INPUT_TOKEN);
        // Only a bounded amount was taken from the host; the rest waits in the pipe.
        assert_eq!(h.pending(), PENDING_INPUT_MAX);
        assert_eq!(h.used_idx(0), 0);
        assert_eq!(h.irq.count_for(0), 0);
        // Another edge changes nothing.
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.pending(), PENDING_INPUT_MAX);

        // A small buffer arrives: it gets the start of the input.
        let (h1, a) = h.rx_buf(1000);
        h.kick(0);
        assert_eq!(h.used_len(0, h1), 1000);
        assert_eq!(h.read_guest(a, 1000), &input[..1000]);
        assert_eq!(h.irq.count_for(0), 1);
        assert_eq!(h.pending(), PENDING_INPUT_MAX - 1000);

        // Enough buffers for the rest: everything arrives, in order, nothing dropped.
        let bufs: Vec<(u16, u64)> = (0..10).map(|_| h.rx_buf(2000)).collect();
        h.set_used_event(0, 1);
        h.kick(0);
        let mut got = h.read_guest(a, 1000);
        for &(head, addr) in &bufs {
            let len = h.used_len(0, head) as usize;
            got.extend(h.read_guest(addr, len));
        }
        assert!(got == input, "{} bytes received", got.len());
        assert_eq!(h.counter("rx_bytes"), 20_000);
        assert_eq!(h.counter("dropped_bytes"), 0);
        assert_eq!(h.pending(), 0);
        assert_eq!(h.irq.count_for(0), 2);
    }

    #[test]
    fn input_work_per_call_is_bounded() {
        let mut h = Harness::new();
        let fd = h.host.input.as_ref().unwrap().as_raw_fd();
        let size = 4 * MAX_RX_BYTES_PER_CALL as libc::c_int;
        // SAFETY: F_SETPIPE_SZ on a pipe the test owns.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) };
        assert!(rc >= size, "cannot grow the pipe");
        let input = pattern(2 * MAX_RX_BYTES_PER_CALL as usize);
        h.type_input(&input);
        let chunk = PENDING_INPUT_MAX as u32;
        let n = (input.len() / chunk as usize) as u16;
        assert!(n <= QSIZE);
        let bufs: Vec<(u16, u64)> = (0..n).map(|_| h.rx_buf(chunk)).collect();
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.counter("rx_bytes"), MAX_RX_BYTES_PER_CALL);
        // The device yields and re-arms its receive queue; the VMM loop finishes the job.
        assert!(h.run_notified() >= 1);
        assert_eq!(h.counter("rx_bytes"), input.len() as u64);
        let mut got = Vec::new();
        for &(head, addr) in &bufs {
            let len = h.used_len(0, head) as usize;
            got.extend(h.read_guest(addr, len));
        }
        assert_eq!(got, input);
    }

    #[test]
    fn end_of_input_stops_the_watch() {
        let mut h = Harness::new();
        let (h1, a) = h.rx_buf(16);
        h.type_input(b"bye");
        drop(h.host.input.take());
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.used_len(0, h1), 3);
        assert_eq!(h.read_guest(a, 3), b"bye");
        h.rx_buf(16);
        h.dev.process_host(INPUT_TOKEN);
        assert!(h.dev.host_fds().is_empty());
        assert!(h.dev.host.input_closed);
        // Later calls do nothing.
        h.dev.process_host(INPUT_TOKEN);
        h.kick(0);
        assert_eq!(h.used_idx(0), 1);
        assert_eq!(h.counter("errors"), 0);
    }

    #[test]
    fn hostile_receive_chains() {
        let mut h = Harness::new();
        h.type_input(b"abcdef");
        // A device-readable descriptor, a buffer outside memory, an empty buffer: returned
        // with length 0, and the input goes to the next good buffer.
        let r = h.buf(16, POISON);
        let h1 = h.publish_chain(0, &[(r, 16, R)]);
        let h2 = h.publish_chain(0, &[(OUTSIDE, 16, W)]);
        let h3 = h.publish_chain(0, &[(r, 0, W)]);
        // A buffer running off the end of guest memory takes what fits.
        let end = 2 * REGION - 2;
        let h4 = h.publish_chain(0, &[(end, 16, W), (r, 16, W)]);
        let (h5, b) = h.rx_buf(16);
        h.dev.process_host(INPUT_TOKEN);
        for head in [h1, h2, h3] {
            assert_eq!(h.used_len(0, head), 0);
        }
        assert_eq!(h.read_guest(r, 16), [POISON; 16]);
        assert_eq!(h.used_len(0, h4), 2);
        assert_eq!(h.read_guest(end, 2), b"ab");
        assert_eq!(h.used_len(0, h5), 4);
        assert_eq!(h.read_guest(b, 4), b"cdef");
        assert_eq!(h.counter("errors"), 3);
        assert_eq!(h.counter("rx_bytes"), 6);
    }

    #[test]
    fn emergency_write_outputs_a_byte() {
        let mut h = Harness::new();
        h.dev.write_config(8, &u32::from(b'A').to_le_bytes());
        h.dev.write_config(8, b"B");
        // A wider write covering emerg_wr.
        h.dev.write_config(4, &[0, 0, 0, 0, b'C', 0, 0, 0]);
        // Writes elsewhere are ignored.
        h.dev.write_config(0, &[b'x'; 4]);
        h.dev.write_config(9, &[b'y'; 3]);
        h.dev.write_config(u64::MAX, &[b'z'; 4]);
        h.dev.write_config(8, &[]);
        assert_eq!(h.host.out.take(), b"ABC");
        assert_eq!(h.counter("tx_bytes"), 3);
        // The configuration space did not change.
        let mut cfg = [0u8; CONFIG_SPACE_SIZE];
        h.dev.read_config(0, &mut cfg);
        assert_eq!(cfg, config_space());
        // It works before activation too (early console), and when the writer blocks the
        // byte is dropped.
        h.dev.reset();
        h.host.out.set_limit(Some(0));
        h.dev.write_config(8, b"D");
        assert_eq!(h.counter("dropped_bytes"), 1);
    }

    #[test]
    fn config_space_layout() {
        let h = Harness::new();
        let rd = |off: u64, len: usize| {
            let mut v = vec![0xeeu8; len];
            h.dev.read_config(off, &mut v);
            v
        };
        assert_eq!(rd(0, 2), [0, 0], "cols");
        assert_eq!(rd(2, 2), [0, 0], "rows");
        assert_eq!(rd(4, 4), 1u32.to_le_bytes(), "max_nr_ports");
        assert_eq!(rd(8, 4), [0; 4], "emerg_wr");
        assert_eq!(rd(10, 6), [0; 6]);
        assert_eq!(rd(4096, 4), [0; 4]);
        assert_eq!(rd(u64::MAX - 1, 4), [0; 4]);
        assert_eq!(rd(4, 1), [1]);
    }

    #[test]
    fn features_and_queues() {
        let mut h = Harness::new();
        let f = h.dev.features();
        for bit in [
            F_VERSION_1,
            F_RING_INDIRECT_DESC,
            F_RING_EVENT_IDX,
            VIRTIO_CONSOLE_F_EMERG_WRITE,
        ] {
            assert_ne!(f & bit, 0, "{bit:#x}");
        }
        assert_eq!(f & (VIRTIO_CONSOLE_F_SIZE | VIRTIO_CONSOLE_F_MULTIPORT), 0);
        assert_eq!(h.dev.device_type(), TYPE_CONSOLE);
        assert_eq!(h.dev.queue_max_sizes(), vec![QUEUE_SIZE; 2]);
        h.dev.ack_features(u64::MAX);
        assert_eq!(h.dev.acked_features, f);
        assert_eq!(h.dev.counters().len(), 4);
        // Unknown queues are ignored.
        h.dev.process_queue(2);
    }

    #[test]
    fn without_input_nothing_is_watched() {
        let mut h = Harness::with(false, |f| f, None);
        assert!(h.dev.host_fds().is_empty());
        h.dev.process_host(INPUT_TOKEN);
        h.rx_buf(16);
        h.kick(0);
        assert_eq!(h.used_idx(0), 0);
        h.send(&[b"out only"]);
        assert_eq!(h.host.out.take(), b"out only");
    }

    #[test]
    fn interrupts_follow_avail_flags_without_event_idx() {
        let mut h = Harness::with(true, |f| f & !F_RING_EVENT_IDX, None);
        h.set_avail_flags(1, VRING_AVAIL_F_NO_INTERRUPT as u16);
        h.send(&[b"a"]);
        assert_eq!(h.irq.count_for(1), 0);
        h.set_avail_flags(1, 0);
        h.send(&[b"b"]);
        h.send(&[b"c"]);
        assert_eq!(h.irq.count_for(1), 2);
        assert_eq!(h.host.out.take(), b"abc");
    }

    #[test]
    fn activation_is_validated() {
        let mut h = Harness::new();
        h.dev.reset();
        let irq: Arc<dyn VirtioInterrupt> = h.irq.clone();
        // No queue enabled.
        let q = h.make_rings(&[QSIZE; 2], Some(&[]));
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), q).is_err());
        // A queue that does not exist.
        let mut q = h.make_rings(&[QSIZE; 2], None);
        q[1].index = 2;
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), q).is_err());
        // A queue given twice.
        let mut q = h.make_rings(&[QSIZE; 2], None);
        q[1].index = 0;
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), q).is_err());
        // A ring outside guest memory.
        let mut q = h.make_rings(&[QSIZE; 2], None);
        q[0].queue
            .try_set_desc_table_address(GuestAddress(OUTSIDE))
            .unwrap();
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), q).is_err());
        // An inactive device serves nothing.
        h.type_input(b"x");
        h.rx_buf(4);
        h.dev.process_host(INPUT_TOKEN);
        h.kick(0);
        assert_eq!(h.used_idx(0), 0);
        // Only the transmit queue enabled: output works, input waits.
        let q = h.make_rings(&[QSIZE; 2], Some(&[1]));
        h.dev.activate(h.mem.clone(), irq, q).unwrap();
        h.run_notified();
        h.send(&[b"tx"]);
        assert_eq!(h.host.out.take(), b"tx");
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.counter("rx_bytes"), 0);
    }

    #[test]
    fn reset_and_reactivate() {
        let mut h = Harness::new();
        h.send(&[b"before"]);
        assert_eq!(h.host.out.take(), b"before");
        // Input arrives while the guest has no buffer, then the driver resets.
        h.type_input(b"typed early");
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.pending(), 11);
        h.dev.reset();
        assert_eq!(h.dev.acked_features, 0);
        // Requests made after the reset are not served.
        h.rx_buf(64);
        h.send(&[b"stale"]);
        h.dev.process_host(INPUT_TOKEN);
        assert!(h.host.out.take().is_empty());
        assert_eq!(h.used_idx(0), 0);
        // The host side stays: the input is still watched.
        assert_eq!(h.dev.host_fds().len(), 1);

        let f = h.dev.features();
        h.dev.ack_features(f);
        let q = h.make_rings(&[QSIZE; 2], None);
        h.dev.activate(h.mem.clone(), h.irq.clone(), q).unwrap();
        // The pending input, and what is typed next, reach the driver's buffers once the
        // VMM serves the queues that activation armed; a chain is filled as far as the
        // input allows.
        let (h1, a) = h.rx_buf(64);
        h.type_input(b", and late");
        h.run_notified();
        let len = h.used_len(0, h1) as usize;
        assert_eq!(h.read_guest(a, len), b"typed early, and late");
        let (h2, b) = h.rx_buf(64);
        h.type_input(b"!");
        h.dev.process_host(INPUT_TOKEN);
        assert_eq!(h.used_len(0, h2), 1);
        assert_eq!(h.read_guest(b, 1), b"!");
        h.send(&[b"after"]);
        assert_eq!(h.host.out.take(), b"after");
    }
}
