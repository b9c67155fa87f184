//! Tests of the virtio console device model.

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
    assert_eq!(h.dev.common.acked_features, f);
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
    assert_eq!(h.dev.common.acked_features, 0);
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
