//! One vsock stream between a guest port and a host Unix socket: its state, the credit each
//! side gives the other, and the bytes on their way to the host.
//!
//! Credit (virtio 1.2, 5.10.6.3): each side announces how big its receive buffer is
//! (`buf_alloc`) and how much it has consumed (`fwd_cnt`); a sender may have at most
//! `buf_alloc - (sent - fwd_cnt)` bytes in flight. Palisade's receive buffer for a connection
//! is [`BUF_ALLOC`] bytes held here until the host socket takes them: a guest that sends
//! beyond its credit breaks the protocol and its connection is reset, so a guest can never
//! make the VMM hold more than that per connection. Bytes for the guest are read from the
//! host socket only when the guest has credit for them, so a guest that stops reading
//! leaves them in the host's socket buffer, where they push back on the host client.

use std::io;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{Header, HOST_CID, OP_RW, TYPE_STREAM};

/// Palisade's receive buffer per connection (what the guest may have in flight).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// A credit update is sent once the host has consumed this much since the last one told.
const CREDIT_UPDATE_AFTER: u32 = BUF_ALLOC / 4;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the request is with the guest, which has not answered yet.
    Requested,
    /// Data flows.
    Established,
}

/// What writing to the host did.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything buffered is written.
    All,
    /// The socket is full; the rest waits for it to drain.
    Partly,
    /// The host socket is gone (the connection must be reset).
    Broken,
}

/// The guest sent more than the credit it was given.
#[derive(Debug, PartialEq, Eq)]
pub struct BeyondCredit;

/// One connection.
pub struct Connection {
    /// The host socket (non-blocking).
    pub stream: UnixStream,
    /// The host-side port.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
    /// The guest's context id.
    pub guest_cid: u64,
    /// Where it stands.
    pub state: State,
    /// Bytes from the guest not yet taken by the host socket.
    to_host: Vec<u8>,
    /// How far into `to_host` the host socket has taken.
    to_host_done: usize,
    /// Bytes sent to the guest, ever.
    pub rx_cnt: Wrapping<u32>,
    /// Bytes from the guest the host socket took, ever.
    pub fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    pub fwd_cnt_told: Wrapping<u32>,
    /// The guest's receive buffer, as it last said.
    pub peer_buf_alloc: u32,
    /// What the guest consumed of it, as it last said.
    pub peer_fwd_cnt: Wrapping<u32>,
    /// The guest will send no more.
    pub guest_done_sending: bool,
    /// The guest will receive no more.
    pub guest_done_receiving: bool,
    /// The host socket reached end of file.
    pub host_eof: bool,
    /// The host end was shut for writing (after the guest's SHUTDOWN).
    pub host_write_shut: bool,
}

impl Connection {
    /// A connection over `stream` between host port `local_port` and guest port `peer_port`.
    pub fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        state: State,
    ) -> Connection {
        Connection {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state,
            to_host: Vec::new(),
            to_host_done: 0,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            guest_done_sending: false,
            guest_done_receiving: false,
            host_eof: false,
            host_write_shut: false,
        }
    }

    /// A header from the host side of this connection for `op` (with the current credit).
    pub fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Takes the guest's credit from a header it sent.
    pub fn take_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// Bytes the guest has room for now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether bytes for the guest should be read from the host socket now.
    pub fn wants_host_input(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_done_receiving
            && self.peer_credit() > 0
    }

    /// Bytes from the guest still waiting for the host socket.
    pub fn pending_to_host(&self) -> usize {
        self.to_host.len() - self.to_host_done
    }

    /// Whether the guest has consumed enough credit that it should hear how much the host
    /// has taken since.
    pub fn owes_credit_update(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_told).0 >= CREDIT_UPDATE_AFTER
    }

    /// Queues `data` from the guest for the host and writes what the socket takes; an error
    /// if the guest sent beyond its credit.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<Flushed, BeyondCredit> {
        if self.pending_to_host() + data.len() > BUF_ALLOC as usize {
            return Err(BeyondCredit);
        }
        if self.pending_to_host() == 0 {
            // The common case: straight to the socket, buffering only what it leaves.
            self.to_host.clear();
            self.to_host_done = 0;
            match write_some(&self.stream, data) {
                Ok(n) => {
                    self.fwd_cnt += Wrapping(n as u32);
                    self.to_host.extend_from_slice(&data[n..]);
                }
                Err(_) => return Ok(Flushed::Broken),
            }
            return Ok(if self.to_host.is_empty() {
                Flushed::All
            } else {
                Flushed::Partly
            });
        }
        self.to_host.extend_from_slice(data);
        Ok(self.flush())
    }

    /// Writes what is buffered for the host.
    pub fn flush(&mut self) -> Flushed {
        while self.pending_to_host() > 0 {
            match write_some(&self.stream, &self.to_host[self.to_host_done..]) {
                Ok(0) => return Flushed::Partly,
                Ok(n) => {
                    self.to_host_done += n;
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(_) => return Flushed::Broken,
            }
        }
        self.to_host.clear();
        self.to_host_done = 0;
        if self.to_host.capacity() > 64 * 1024 {
            self.to_host.shrink_to(64 * 1024);
        }
        Flushed::All
    }

    /// Reads at most `max` bytes for the guest from the host socket: `Ok(None)` if there is
    /// nothing now, `Ok(Some(0))` at end of file.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match read_stream(&self.stream, buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Records `n` bytes sent to the guest in a data packet; returns its header.
    pub fn data_header(&mut self, n: u32) -> Header {
        self.rx_cnt += Wrapping(n);
        self.header(OP_RW, n, 0)
    }

    /// Shuts the host socket for writing (the guest will send no more), once everything
    /// buffered is written.
    pub fn shut_host_write_when_flushed(&mut self) {
        if self.guest_done_sending && !self.host_write_shut && self.pending_to_host() == 0 {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Reads from a stream with read(2): the `recv` that `UnixStream`'s own `read` makes is not in
/// the filters of the threads that serve connections (see the vsock allow-list).
pub fn read_stream(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for writes of its length for the duration of the call, and
    // the descriptor is the stream's own, open while it is borrowed.
    let n = unsafe { libc::read(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes to a stream with write(2), for the same reason as [`read_stream`] (`UnixStream`'s
/// own `write` is a `send`). A peer that is gone is `EPIPE` (Palisade ignores SIGPIPE, as
/// every Rust program does).
pub fn write_stream(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `data` is valid for reads of its length for the duration of the call, and
    // the descriptor is the stream's own, open while it is borrowed.
    let n = unsafe { libc::write(stream.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes what the non-blocking socket takes now: `Ok(0)` when it takes nothing.
fn write_some(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match write_stream(stream, &data[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
