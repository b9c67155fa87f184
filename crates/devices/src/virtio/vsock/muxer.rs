//! The host side of a hybrid vsock device: the Unix socket host clients connect to, the
//! sockets guest connections are relayed to, and the packets for the guest they produce.
//!
//! - **Host-initiated.** A client connects to the device's socket and writes
//!   `CONNECT <port>\n`; the guest is sent a connection request to that port from a fresh
//!   host port, and once it accepts, the client reads `OK <host port>\n` and the bytes flow.
//!   Anything else on that line closes the client.
//! - **Guest-initiated.** A guest connection to host port P is relayed to the Unix socket
//!   `<socket>_P`, which the [`Dialer`] connects to (away from the device's thread, which
//!   may make no socket), answering the guest when it has.
//!
//! Every descriptor is in one epoll set of the device's own (registered edge-triggered), so
//! the device's worker watches a single descriptor however many connections come and go.
//! Nothing here blocks: every socket is non-blocking, and what cannot be done now (a full
//! host socket, a guest with no credit or no receive buffers) is picked up when the other
//! side makes room. Each call does a bounded amount of work and wakes itself (an eventfd
//! in the set) to come back for the rest.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{Connection, Flushed, State, BUF_ALLOC};
use super::packet::*;

/// Connects to the Unix socket at a path and hands the result to the callback, from another
/// thread; the callback may run at any time after.
pub type Dialer =
    Arc<dyn Fn(PathBuf, Box<dyn FnOnce(io::Result<UnixStream>) + Send>) + Send + Sync>;

/// Most connections at once (beyond, new ones are refused).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that have connected but not yet said `CONNECT <port>`.
const MAX_HANDSHAKES: usize = 64;
/// Most guest connections waiting for their host socket.
const MAX_DIALS: usize = 64;
/// The longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// Control packets queued for the guest beyond which the guest's transmissions wait.
pub const MAX_CONTROL: usize = 256;
/// Events handled per call, clients accepted per call.
const EVENTS_PER_CALL: usize = 64;
/// The first host port given to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const KIND_SHIFT: u64 = 56;
const LISTENER: u64 = 1 << KIND_SHIFT;
const WAKE: u64 = 2 << KIND_SHIFT;
const DIALED: u64 = 3 << KIND_SHIFT;
const CONN: u64 = 4 << KIND_SHIFT;
const HANDSHAKE: u64 = 5 << KIND_SHIFT;
const SLOT_MASK: u64 = (1 << 32) - 1;
const KIND_MASK: u64 = 0xff << KIND_SHIFT;

/// What the host side counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Host clients that asked for a guest port.
    pub host_connections: u64,
    /// Guest connections relayed to a host socket.
    pub guest_connections: u64,
    /// Connections reset (either side).
    pub resets: u64,
    /// Host clients closed for a malformed `CONNECT` line.
    pub bad_handshakes: u64,
    /// Bytes from the guest to the host.
    pub tx_bytes: u64,
    /// Bytes from the host to the guest.
    pub rx_bytes: u64,
    /// Packets from the guest that broke the protocol.
    pub bad_packets: u64,
}

struct Slot {
    conn: Connection,
    generation: u64,
    readable: bool,
    in_ready: bool,
    credit_update_queued: bool,
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

type DialResults = Arc<Mutex<Vec<((u32, u32), Header, io::Result<UnixStream>)>>>;

/// The host side of one vsock device.
pub struct Muxer {
    epoll: Epoll,
    listener: UnixListener,
    socket: PathBuf,
    guest_cid: u64,
    dialer: Dialer,
    wake: EventFd,
    dialed: Arc<EventFd>,
    dial_results: DialResults,
    dialing: HashMap<(u32, u32), bool>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_key: HashMap<(u32, u32), usize>,
    generation: u64,
    handshakes: Vec<Option<Handshake>>,
    control: VecDeque<Header>,
    ready: VecDeque<(usize, u64)>,
    next_local_port: u32,
    /// What was counted.
    pub counters: Counters,
}

fn add(epoll: &Epoll, fd: RawFd, data: u64, events: EventSet) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(events | EventSet::EDGE_TRIGGERED, data),
    )
}

fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP
}

impl Muxer {
    /// The host side for guest `guest_cid`, accepting on `listener` (bound at `socket`, the
    /// prefix of guest-initiated connections' paths), dialing through `dialer`.
    pub fn new(
        listener: UnixListener,
        socket: PathBuf,
        guest_cid: u64,
        dialer: Dialer,
    ) -> io::Result<Muxer> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let wake = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let dialed = Arc::new(EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
        add(&epoll, listener.as_raw_fd(), LISTENER, EventSet::IN)?;
        add(&epoll, wake.as_raw_fd(), WAKE, EventSet::IN)?;
        add(&epoll, dialed.as_raw_fd(), DIALED, EventSet::IN)?;
        Ok(Muxer {
            epoll,
            listener,
            socket,
            guest_cid,
            dialer,
            wake,
            dialed,
            dial_results: Arc::default(),
            dialing: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            generation: 0,
            handshakes: Vec::new(),
            control: VecDeque::new(),
            ready: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            counters: Counters::default(),
        })
    }

    /// The descriptor the device's worker watches (the epoll set).
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.by_key.len()
    }

    /// Comes back on the worker for work left undone.
    fn wake_later(&self) {
        let _ = self.wake.write(1);
    }

    /// Handles what the host side's descriptors report. With `live` false (no driver), new
    /// host clients are refused at once.
    pub fn process_host(&mut self, live: bool) {
        let mut events = [EpollEvent::default(); EVENTS_PER_CALL];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("vsock: cannot read the host side's events: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let data = ev.data();
            let slot = (data & SLOT_MASK) as usize;
            match data & KIND_MASK {
                LISTENER => self.accept(live),
                WAKE => {
                    let _ = self.wake.read();
                    if !live {
                        continue;
                    }
                    // Whatever was left: clients still in the backlog, handshakes to read.
                    self.accept(live);
                }
                DIALED => self.take_dials(),
                HANDSHAKE => self.read_handshake(slot),
                CONN => self.conn_event(slot, data >> 32 & 0xff_ffff, ev.event_set()),
                _ => {}
            }
        }
        if n == EVENTS_PER_CALL {
            self.wake_later();
        }
    }

    fn accept(&mut self, live: bool) {
        for _ in 0..EVENTS_PER_CALL {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: cannot accept a host client: {e}");
                    return;
                }
            };
            let open = self.handshakes.iter().filter(|h| h.is_some()).count();
            if !live || open >= MAX_HANDSHAKES || self.by_key.len() >= MAX_CONNECTIONS {
                // Dropped: the client reads end of file.
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let index = match self.handshakes.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.handshakes.push(None);
                    self.handshakes.len() - 1
                }
            };
            if add(
                &self.epoll,
                stream.as_raw_fd(),
                HANDSHAKE | index as u64,
                EventSet::IN | EventSet::READ_HANG_UP,
            )
            .is_err()
            {
                continue;
            }
            self.handshakes[index] = Some(Handshake {
                stream,
                line: Vec::new(),
            });
            // Its line may already be there (edge-triggered: no event would say so).
            self.read_handshake(index);
        }
        self.wake_later();
    }

    /// Reads a host client's `CONNECT <port>\n` one byte at a time, so that nothing it sends
    /// after the line is taken before the connection exists.
    fn read_handshake(&mut self, index: usize) {
        let Some(Some(h)) = self.handshakes.get_mut(index) else {
            return;
        };
        let mut byte = [0u8; 1];
        let line = loop {
            match super::connection::read_stream(&h.stream, &mut byte) {
                Ok(1) if byte[0] == b'\n' => break Some(std::mem::take(&mut h.line)),
                Ok(1) if h.line.len() < MAX_LINE => h.line.push(byte[0]),
                Ok(_) => break None,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let h = self.handshakes[index].take().expect("checked above");
        let port = line.as_deref().and_then(parse_connect);
        let Some(port) = port else {
            self.counters.bad_handshakes += 1;
            log::debug!("vsock: closing a host client that did not send CONNECT <port>");
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            h.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        let local = self.free_local_port();
        let mut conn = Connection::new(h.stream, local, port, self.guest_cid, State::Requested);
        let request = conn.header(OP_REQUEST, 0, 0);
        if self.insert(conn).is_some() {
            self.counters.host_connections += 1;
            self.control.push_back(request);
        }
    }

    fn free_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_key.keys().any(|&(l, _)| l == port) {
                return port;
            }
        }
    }

    /// Adds a connection; `None` (and the connection dropped) if it cannot be watched.
    fn insert(&mut self, conn: Connection) -> Option<usize> {
        let key = (conn.local_port, conn.peer_port);
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.generation = (self.generation + 1) & 0xff_ffff;
        let data = CONN | self.generation << 32 | index as u64;
        if add(&self.epoll, conn.stream.as_raw_fd(), data, stream_events()).is_err() {
            self.free.push(index);
            return None;
        }
        self.slots[index] = Some(Slot {
            conn,
            generation: self.generation,
            readable: false,
            in_ready: false,
            credit_update_queued: false,
        });
        self.by_key.insert(key, index);
        Some(index)
    }

    /// Closes connection `index` (its host socket with it).
    fn remove(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index).and_then(Option::take) {
            self.by_key
                .remove(&(slot.conn.local_port, slot.conn.peer_port));
            self.free.push(index);
        }
    }

    /// Resets connection `index`: the guest is told, the host socket closed.
    fn reset_conn(&mut self, index: usize) {
        if let Some(Some(slot)) = self.slots.get_mut(index) {
            let rst = slot.conn.header(OP_RST, 0, 0);
            self.control.push_back(rst);
            self.counters.resets += 1;
        }
        self.remove(index);
    }

    fn conn_event(&mut self, index: usize, generation: u64, set: EventSet) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        if set.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
            match slot.conn.flush() {
                Flushed::Broken => return self.reset_conn(index),
                Flushed::All => slot.conn.shut_host_write_when_flushed(),
                Flushed::Partly => {}
            }
            self.credit_update_if_owed(index);
        }
        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            self.mark_readable(index);
        }
    }

    fn mark_readable(&mut self, index: usize) {
        if let Some(Some(slot)) = self.slots.get_mut(index) {
            slot.readable = true;
            if !slot.in_ready {
                slot.in_ready = true;
                self.ready.push_back((index, slot.generation));
            }
        }
    }

    fn credit_update_if_owed(&mut self, index: usize) {
        if let Some(Some(slot)) = self.slots.get_mut(index) {
            if slot.conn.owes_credit_update() && !slot.credit_update_queued {
                slot.credit_update_queued = true;
                let h = slot.conn.header(OP_CREDIT_UPDATE, 0, 0);
                self.control.push_back(h);
            }
        }
    }

    fn take_dials(&mut self) {
        let _ = self.dialed.read();
        let done =
            std::mem::take(&mut *self.dial_results.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, request, result) in done {
            // A guest that reset the request meanwhile no longer wants it.
            let wanted = self.dialing.remove(&key).unwrap_or(false);
            let guest_cid = self.guest_cid;
            let reply = |op| Header {
                src_cid: HOST_CID,
                dst_cid: guest_cid,
                src_port: key.0,
                dst_port: key.1,
                kind: TYPE_STREAM,
                op,
                buf_alloc: BUF_ALLOC,
                ..Header::default()
            };
            let stream = match result {
                Ok(s) if wanted && s.set_nonblocking(true).is_ok() => s,
                Ok(_) if !wanted => continue,
                Ok(_) => {
                    self.control.push_back(reply(OP_RST));
                    continue;
                }
                Err(e) => {
                    log::debug!("vsock: guest connection to host port {}: {e}", key.0);
                    if wanted {
                        self.counters.resets += 1;
                        self.control.push_back(reply(OP_RST));
                    }
                    continue;
                }
            };
            let mut conn =
                Connection::new(stream, key.0, key.1, self.guest_cid, State::Established);
            conn.take_credit(&request);
            let response = conn.header(OP_RESPONSE, 0, 0);
            match self.insert(conn) {
                Some(index) => {
                    self.counters.guest_connections += 1;
                    self.control.push_back(response);
                    // Whatever the host side wrote already has raised no edge yet.
                    self.mark_readable(index);
                }
                None => self.control.push_back(reply(OP_RST)),
            }
        }
    }

    /// Whether the guest's transmissions should wait (too many answers are queued for a
    /// guest that is not taking them).
    pub fn backlogged(&self) -> bool {
        self.control.len() >= MAX_CONTROL
    }

    /// A packet from the guest, with its payload.
    pub fn from_guest(&mut self, h: &Header, payload: &[u8]) {
        let key = (h.dst_port, h.src_port);
        let rst_reply = Header {
            src_cid: HOST_CID,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        };
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID || h.kind != TYPE_STREAM {
            self.counters.bad_packets += 1;
            if h.op != OP_RST {
                self.control.push_back(rst_reply);
            }
            return;
        }
        let Some(&index) = self.by_key.get(&key) else {
            match h.op {
                OP_REQUEST => self.dial(key, h),
                // A request the guest gives up on while it is dialed.
                OP_RST => {
                    if let Some(wanted) = self.dialing.get_mut(&key) {
                        *wanted = false;
                    }
                }
                _ => self.control.push_back(rst_reply),
            }
            return;
        };
        let slot = self.slots[index].as_mut().expect("indexed");
        slot.conn.take_credit(h);
        let conn = &mut slot.conn;
        match h.op {
            OP_RST => self.remove(index),
            OP_RESPONSE if conn.state == State::Requested => {
                conn.state = State::Established;
                let ok = format!("OK {}\n", conn.local_port);
                let written = super::connection::write_stream(&conn.stream, ok.as_bytes());
                if written.ok() != Some(ok.len()) {
                    return self.reset_conn(index);
                }
                self.mark_readable(index);
            }
            OP_RW if conn.state == State::Established && !conn.guest_done_sending => {
                self.counters.tx_bytes += payload.len() as u64;
                match conn.send_to_host(payload) {
                    Ok(Flushed::Broken) => self.reset_conn(index),
                    Ok(_) => self.credit_update_if_owed(index),
                    Err(_beyond_credit) => {
                        self.counters.bad_packets += 1;
                        log::debug!("vsock: the guest sent beyond its credit; resetting");
                        self.reset_conn(index);
                    }
                }
            }
            OP_SHUTDOWN if conn.state == State::Established => {
                conn.guest_done_sending |= h.flags & SHUTDOWN_SEND != 0;
                conn.guest_done_receiving |= h.flags & SHUTDOWN_RCV != 0;
                if conn.guest_done_sending && conn.guest_done_receiving {
                    // Closed by the guest: what the host socket takes now is written, then
                    // the reset that ends the connection.
                    let _ = conn.flush();
                    let rst = conn.header(OP_RST, 0, 0);
                    self.control.push_back(rst);
                    self.remove(index);
                } else {
                    conn.shut_host_write_when_flushed();
                }
            }
            OP_CREDIT_UPDATE => {
                if slot.readable {
                    self.mark_readable(index);
                }
            }
            OP_CREDIT_REQUEST => {
                let h = conn.header(OP_CREDIT_UPDATE, 0, 0);
                self.control.push_back(h);
            }
            _ => {
                self.counters.bad_packets += 1;
                self.reset_conn(index);
            }
        }
    }

    fn dial(&mut self, key: (u32, u32), request: &Header) {
        let refuse = |m: &mut Muxer| {
            m.counters.resets += 1;
            m.control.push_back(Header {
                src_cid: HOST_CID,
                dst_cid: m.guest_cid,
                src_port: key.0,
                dst_port: key.1,
                kind: TYPE_STREAM,
                op: OP_RST,
                ..Header::default()
            });
        };
        if self.dialing.contains_key(&key)
            || self.dialing.len() >= MAX_DIALS
            || self.by_key.len() >= MAX_CONNECTIONS
        {
            return refuse(self);
        }
        let mut path = self.socket.clone().into_os_string();
        path.push(format!("_{}", key.0));
        self.dialing.insert(key, true);
        let results = self.dial_results.clone();
        let dialed = self.dialed.clone();
        let request = *request;
        (self.dialer)(
            PathBuf::from(path),
            Box::new(move |result| {
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((key, request, result));
                let _ = dialed.write(1);
            }),
        );
    }

    /// Whether there is a packet for the guest now.
    pub fn has_for_guest(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// The next packet for the guest, its payload (at most `room` bytes) in `payload`.
    pub fn next_for_guest(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        payload.clear();
        if let Some(h) = self.control.pop_front() {
            if h.op == OP_CREDIT_UPDATE {
                if let Some(&i) = self.by_key.get(&(h.src_port, h.dst_port)) {
                    if let Some(slot) = self.slots[i].as_mut() {
                        slot.credit_update_queued = false;
                    }
                }
            }
            return Some(h);
        }
        while let Some((index, generation)) = self.ready.pop_front() {
            let Some(Some(slot)) = self.slots.get_mut(index) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            slot.in_ready = false;
            if !slot.readable || !slot.conn.wants_host_input() {
                // Back when the guest gives credit (its readiness is remembered).
                continue;
            }
            let want = room.min(slot.conn.peer_credit() as usize).min(64 * 1024);
            if want == 0 {
                slot.in_ready = true;
                self.ready.push_front((index, generation));
                return None;
            }
            payload.resize(want, 0);
            match slot.conn.read_host(payload) {
                Ok(None) => {
                    slot.readable = false;
                    payload.clear();
                }
                Ok(Some(0)) => {
                    payload.clear();
                    slot.readable = false;
                    slot.conn.host_eof = true;
                    let h = slot.conn.header(OP_SHUTDOWN, 0, SHUTDOWN_SEND);
                    return Some(h);
                }
                Ok(Some(n)) => {
                    payload.truncate(n);
                    self.counters.rx_bytes += n as u64;
                    let h = slot.conn.data_header(n as u32);
                    // Round robin: the others go first next time.
                    slot.in_ready = true;
                    self.ready.push_back((index, generation));
                    return Some(h);
                }
                Err(_) => {
                    payload.clear();
                    self.reset_conn(index);
                    return self.control.pop_front();
                }
            }
        }
        None
    }

    /// The driver reset the device: every connection is closed, nothing more goes to the
    /// guest.
    pub fn reset(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.by_key.clear();
        self.handshakes.clear();
        self.control.clear();
        self.ready.clear();
        for wanted in self.dialing.values_mut() {
            *wanted = false;
        }
    }
}

/// The port of a `CONNECT <port>` line (the newline taken off), if it is one.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn only_a_connect_line_with_a_port_is_taken() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"connect 1",
            b"CONNECT -1",
            b"CONNECT 99999999999",
            b"CONNECT 1 2",
            b"GET / HTTP/1.1",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
