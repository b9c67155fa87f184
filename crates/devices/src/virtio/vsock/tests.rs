//! The vsock device against the test driver, with real Unix sockets on the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::BUF_ALLOC;
use super::muxer::{Dialer, Muxer};
use super::packet::*;
use super::*;
use crate::virtio::test_driver::{Driver, R, W};

const CID: u64 = 3;
const RX_BUF: u32 = 4096;

struct Host {
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Guest {
    d: Driver<Vsock, Host>,
    rx_bufs: HashMap<u16, u64>,
    rx_seen: u16,
    next_rx_desc: u16,
}

fn dial_now() -> Dialer {
    Arc::new(
        |path: PathBuf, done: Box<dyn FnOnce(std::io::Result<UnixStream>) + Send>| {
            done(UnixStream::connect(path))
        },
    )
}

fn guest(name: &str) -> Guest {
    let dir = std::env::temp_dir().join(format!("vsock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("v.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let muxer = Muxer::new(listener, socket.clone(), CID, dial_now()).unwrap();
    let mut d = Driver::for_device(Vsock::new(CID, muxer), Host { dir, socket }, |f| f);
    d.start(&[64, 64, 8], None);
    Guest {
        d,
        rx_bufs: HashMap::new(),
        rx_seen: 0,
        next_rx_desc: 0,
    }
}

impl Guest {
    fn socket(&self) -> &Path {
        &self.d.host.socket
    }

    /// Posts `n` receive buffers, one descriptor each.
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.d.buf(u64::from(RX_BUF), 0);
            let idx = self.next_rx_desc;
            self.next_rx_desc = (idx + 1) % 64;
            self.d.write_desc(0, idx, addr, RX_BUF, W, 0);
            self.d.publish(0, idx);
            self.rx_bufs.insert(idx, addr);
        }
        self.d.kick(0);
    }

    /// Packets the device returned on the receive queue since the last call.
    fn take_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.d.used_idx(0) {
            let (id, len) = self.d.used_elem(0, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = self.rx_bufs[&(id as u16)];
            let bytes = self.d.read_guest(addr, len as usize);
            let h = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
            out.push((h, bytes[HDR_LEN..].to_vec()));
        }
        out
    }

    /// Sends a packet, header and payload in two descriptors.
    fn send(&mut self, h: Header, payload: &[u8]) {
        let hdr = self.d.data(&h.to_bytes());
        let mut descs = vec![(hdr, HDR_LEN as u32, R)];
        if !payload.is_empty() {
            descs.push((self.d.data(payload), payload.len() as u32, R));
        }
        self.d.publish_chain(1, &descs);
        self.d.kick(1);
    }

    fn to_host(&self, op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Header::default()
        }
    }

    /// Lets the host side run until `f` finds what it waits for among the packets received.
    fn wait_for(&mut self, what: &str, mut f: impl FnMut(&Header, &[u8]) -> bool) -> Header {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.d.dev.process_host(0);
            for (h, p) in self.take_rx() {
                if f(&h, &p) {
                    return h;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A host client connected to guest `port`, accepted by the guest; returns the client
    /// and the host port the connection has.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut c = UnixStream::connect(self.socket()).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let req = self.wait_for("the request", |h, _| {
            h.op == OP_REQUEST && h.dst_port == port
        });
        assert_eq!(
            (req.src_cid, req.dst_cid, req.kind),
            (HOST_CID, CID, TYPE_STREAM)
        );
        assert!(req.src_port >= 1 << 30);
        let resp = self.to_host(OP_RESPONSE, port, req.src_port);
        self.send(resp, &[]);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            c.read_exact(&mut b).unwrap();
            line.push(b[0]);
        }
        assert_eq!(line, format!("OK {}\n", req.src_port).into_bytes());
        (c, req.src_port)
    }
}

#[test]
fn offers_its_queues_and_the_guests_cid() {
    let g = guest("config");
    assert_eq!(g.d.dev.device_type(), TYPE_VSOCK);
    assert_eq!(g.d.dev.queue_max_sizes().len(), 3);
    let mut cid = [0u8; 8];
    g.d.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
}

#[test]
fn a_host_client_connects_exchanges_data_and_both_sides_shut_down() {
    let mut g = guest("host");
    g.post_rx(16);
    let (mut c, local) = g.host_connect(1234);
    c.write_all(b"hello guest").unwrap();
    let got = g.wait_for("data", |h, p| h.op == OP_RW && p == b"hello guest");
    assert_eq!(
        (got.src_port, got.dst_port, got.buf_alloc),
        (local, 1234, BUF_ALLOC)
    );
    let rw = Header {
        len: 11,
        ..g.to_host(OP_RW, 1234, local)
    };
    g.send(rw, b"hello host!");
    let mut buf = [0u8; 11];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host!");
    // The client is done sending: the guest hears it, and can still send.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let sh = g.wait_for("the shutdown", |h, _| h.op == OP_SHUTDOWN);
    assert_eq!(sh.flags, SHUTDOWN_SEND);
    let rw = Header {
        len: 4,
        ..g.to_host(OP_RW, 1234, local)
    };
    g.send(rw, b"more");
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"more");
    // The guest closes: it is answered with a reset, and the client reads end of file.
    let close = Header {
        flags: SHUTDOWN_SEND | SHUTDOWN_RCV,
        ..g.to_host(OP_SHUTDOWN, 1234, local)
    };
    g.send(close, &[]);
    g.wait_for("the reset", |h, _| h.op == OP_RST && h.src_port == local);
    assert_eq!(c.read(&mut buf).unwrap(), 0);
    assert_eq!(g.d.counter("open_connections"), 0);
    assert_eq!(g.d.counter("host_connections"), 1);
}

#[test]
fn a_guest_connection_reaches_the_socket_of_its_port_and_half_closes() {
    let mut g = guest("guest");
    g.post_rx(16);
    let mut path = g.socket().as_os_str().to_owned();
    path.push("_5000");
    let listener = UnixListener::bind(PathBuf::from(path)).unwrap();
    g.send(g.to_host(OP_REQUEST, 777, 5000), &[]);
    let resp = g.wait_for("the response", |h, _| h.op == OP_RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (5000, 777));
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let rw = Header {
        len: 5,
        ..g.to_host(OP_RW, 777, 5000)
    };
    g.send(rw, b"hello");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // The guest will send no more: the host reads end of file, and can still answer.
    let half = Header {
        flags: SHUTDOWN_SEND,
        ..g.to_host(OP_SHUTDOWN, 777, 5000)
    };
    g.send(half, &[]);
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    s.write_all(b"reply").unwrap();
    g.wait_for("the reply", |h, p| h.op == OP_RW && p == b"reply");
    // A port with no socket is refused with a reset; so is a second request for a
    // connection that exists.
    g.send(g.to_host(OP_REQUEST, 778, 5001), &[]);
    g.wait_for("a refusal", |h, _| h.op == OP_RST && h.src_port == 5001);
    g.send(g.to_host(OP_REQUEST, 777, 5000), &[]);
    g.wait_for("a refusal", |h, _| h.op == OP_RST && h.src_port == 5000);
    assert_eq!(g.d.counter("guest_connections"), 1);
}

#[test]
fn garbage_from_a_host_client_closes_it_alone_and_many_connections_flow_at_once() {
    let mut g = guest("many");
    g.post_rx(32);
    let mut bad = UnixStream::connect(g.socket()).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut long = UnixStream::connect(g.socket()).unwrap();
    long.write_all(&[b'x'; 100]).unwrap();
    let mut clients = Vec::new();
    for port in 0..12 {
        clients.push(g.host_connect(2000 + port));
        g.post_rx(2);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.d.counter("bad_handshakes") < 2 {
        g.d.dev.process_host(0);
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        bad.read(&mut [0u8; 8]).unwrap(),
        0,
        "closed, with nothing said"
    );
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        c.write_all(format!("client {i}").as_bytes()).unwrap();
    }
    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < clients.len() {
        g.d.dev.process_host(0);
        for (h, p) in g.take_rx() {
            if h.op == OP_RW {
                seen.insert(h.dst_port, p);
                g.post_rx(1);
            }
        }
        assert!(Instant::now() < deadline, "data from every client");
    }
    for (i, port) in (2000..2012).enumerate() {
        assert_eq!(seen[&port], format!("client {i}").into_bytes());
    }
    assert_eq!(g.d.counter("open_connections"), 12);
}

#[test]
fn a_guest_that_stops_reading_holds_up_only_its_own_connection() {
    let mut g = guest("credit");
    g.post_rx(32);
    let (mut slow, slow_port) = g.host_connect(1);
    let (mut fast, fast_port) = g.host_connect(2);
    // The slow connection's guest socket has room for 1000 bytes, and says so.
    let small = Header {
        buf_alloc: 1000,
        ..g.to_host(OP_CREDIT_UPDATE, 1, slow_port)
    };
    g.send(small, &[]);
    slow.write_all(&[7u8; 5000]).unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        g.d.dev.process_host(0);
        for (h, p) in g.take_rx() {
            if h.op == OP_RW && h.dst_port == 1 {
                got += p.len();
            }
        }
    }
    assert_eq!(got, 1000, "no more than the guest's credit");
    fast.write_all(b"still flowing").unwrap();
    g.wait_for("the other connection's data", |h, p| {
        h.dst_port == 2 && p == b"still flowing"
    });
    assert_eq!(fast_port, fast_port);
    // The guest consumed what it got: the rest comes.
    let more = Header {
        buf_alloc: 1000,
        fwd_cnt: 1000,
        ..g.to_host(OP_CREDIT_UPDATE, 1, slow_port)
    };
    g.send(more, &[]);
    g.wait_for("more data", |h, _| h.op == OP_RW && h.dst_port == 1);
}

#[test]
fn data_waits_for_receive_buffers_and_a_request_is_answered_with_credit() {
    let mut g = guest("buffers");
    // One buffer: the connection request takes it.
    g.post_rx(1);
    let (mut c, local) = g.host_connect(9);
    c.write_all(b"one").unwrap();
    c.write_all(b"two").unwrap();
    // No buffer left for it: nothing is lost, it comes when the driver posts some.
    std::thread::sleep(Duration::from_millis(50));
    g.d.dev.process_host(0);
    assert!(g.take_rx().is_empty());
    g.post_rx(4);
    g.wait_for("the data", |h, p| h.op == OP_RW && p == b"onetwo");
    g.send(g.to_host(OP_CREDIT_REQUEST, 9, local), &[]);
    let u = g.wait_for("a credit update", |h, _| h.op == OP_CREDIT_UPDATE);
    assert_eq!((u.buf_alloc, u.fwd_cnt), (BUF_ALLOC, 0));
}

#[test]
fn hostile_packets_fail_alone() {
    let mut g = guest("hostile");
    g.post_rx(32);
    let (mut c, local) = g.host_connect(5);
    // Wrong source cid, wrong type, data for no connection: answered with resets.
    let wrong_cid = Header {
        src_cid: 99,
        ..g.to_host(OP_RW, 5, local)
    };
    g.send(wrong_cid, &[]);
    let wrong_type = Header {
        kind: 2,
        ..g.to_host(OP_REQUEST, 5, 6000)
    };
    g.send(wrong_type, &[]);
    g.send(g.to_host(OP_RW, 5, 12345), &[]);
    // A length beyond the chain, and a chain too short for a header: dropped.
    let lying = Header {
        len: 60000,
        ..g.to_host(OP_RW, 5, local)
    };
    g.send(lying, b"abc");
    let short = g.d.data(&[0u8; 10]);
    g.d.publish_chain(1, &[(short, 10, R)]);
    g.d.kick(1);
    let mut resets = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while resets < 3 && Instant::now() < deadline {
        g.d.dev.process_host(0);
        resets += g.take_rx().iter().filter(|(h, _)| h.op == OP_RST).count();
    }
    assert_eq!(resets, 3);
    assert!(g.d.counter("bad_packets") >= 4);
    // The connection still works.
    c.write_all(b"ok").unwrap();
    g.wait_for("data", |h, p| h.op == OP_RW && p == b"ok");
    // Beyond its credit: the guest's connection is reset, the client reads end of file.
    // (More than the connection's buffer and the host socket's together.)
    let flood = vec![1u8; 60000];
    for _ in 0..20 {
        let rw = Header {
            len: flood.len() as u32,
            ..g.to_host(OP_RW, 5, local)
        };
        g.send(rw, &flood);
    }
    g.wait_for("the reset", |h, _| h.op == OP_RST && h.src_port == local);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    c.read_to_end(&mut sink).unwrap();
    assert!(sink.len() < 20 * flood.len());
}

#[test]
fn a_reset_closes_every_connection_and_a_transport_reset_is_an_event() {
    let mut g = guest("reset");
    g.post_rx(8);
    let (mut c, _) = g.host_connect(1);
    let ev = g.d.buf(8, 0xff);
    g.d.publish_chain(2, &[(ev, 8, W)]);
    g.d.kick(2);
    g.d.dev.transport_reset();
    assert_eq!(g.d.used_idx(2), 1);
    assert_eq!(g.d.read_guest(ev, 4), 0u32.to_le_bytes());
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0);
    let (mut c2, _) = g.host_connect(2);
    g.d.dev.reset();
    assert_eq!(c2.read(&mut [0u8; 4]).unwrap(), 0);
    // With no driver, a new client is turned away.
    let mut c3 = UnixStream::connect(g.socket()).unwrap();
    c3.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.d.dev.process_host_idle(0);
    assert_eq!(c3.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn an_impossible_avail_index_stops_the_queues_without_spinning() {
    let mut g = guest("avail");
    g.post_rx(4);
    let (mut c, _) = g.host_connect(1);
    c.write_all(b"x").unwrap();
    g.wait_for("data", |h, _| h.op == OP_RW);
    c.write_all(b"y").unwrap();
    // The driver claims far more buffers than the rings hold.
    for q in [0, 1] {
        let at = vm_memory::GuestAddress(g.d.rings[q].avail + 2);
        vm_memory::Bytes::write_obj(&g.d.mem, 500u16.to_le(), at).unwrap();
    }
    g.d.kick(1);
    g.d.kick(0);
    g.d.dev.process_host(0);
    assert!(
        g.d.counter("open_connections") == 1,
        "the device still answers"
    );
}
