//! The migration stream: framed messages on a Unix stream socket, every wait bounded.
//!
//! A message is a 16-byte header — magic `PLMG`, kind, payload length (little endian) —
//! and its payload. The socket is read and written with `read(2)` and `write(2)` after
//! `poll(2)` with a timeout, on a non-blocking descriptor: a peer that stops reading or
//! writing is an error after [`Wire::timeout`], never a hung VMM. (`recv`/`send` are not
//! used: the VMM thread's filter keeps socket messages to the janitor's channel.)

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

const MAGIC: u32 = u32::from_le_bytes(*b"PLMG");
/// Largest JSON payload (a configuration, a state) taken.
pub const MAX_JSON: u64 = 64 << 20;
/// Largest pages payload (a guest address, then whole pages).
pub const MAX_PAGES: u64 = 8 + (1 << 20);

/// Message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Source → destination: format, version, Palisade version (JSON).
    Hello = 1,
    /// Source → destination: the VM's configuration and device slots (JSON).
    Config = 2,
    /// Source → destination: a guest address (u64), then whole pages from there.
    Pages = 3,
    /// Source → destination: the paused VM's state (JSON), after the last pages.
    State = 4,
    /// Destination → source: `{"ok": bool, "error": …}` (JSON).
    Ack = 5,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Config,
            3 => Kind::Pages,
            4 => Kind::State,
            5 => Kind::Ack,
            _ => return None,
        })
    }
}

/// One end of a migration stream.
pub struct Wire {
    fd: OwnedFd,
    /// How long one read or write may wait for the peer.
    pub timeout: Duration,
    /// Payload bytes sent so far.
    pub sent: u64,
}

fn wait(fd: i32, events: i16, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer did not answer within {timeout:?}"),
            ));
        }
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd, owned by this frame.
        let n = unsafe { libc::poll(&mut p, 1, ms.max(1)) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            return Ok(());
        }
    }
}

impl Wire {
    /// A wire on the connected stream `fd`, made non-blocking.
    pub fn new(fd: OwnedFd, timeout: Duration) -> io::Result<Wire> {
        let raw = fd.as_raw_fd();
        // SAFETY: reading and setting the status flags of a descriptor we own.
        unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Wire {
            fd,
            timeout,
            sent: 0,
        })
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        while !bytes.is_empty() {
            // SAFETY: writes at most `bytes.len()` bytes from a live slice.
            let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => wait(fd, libc::POLLOUT, self.timeout)?,
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
                continue;
            }
            bytes = &bytes[n as usize..];
        }
        Ok(())
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        while !buf.is_empty() {
            // SAFETY: reads at most `buf.len()` bytes into a live buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => wait(fd, libc::POLLIN, self.timeout)?,
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
                continue;
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the migration socket",
                ));
            }
            buf = &mut std::mem::take(&mut buf)[n as usize..];
        }
        Ok(())
    }

    /// Sends a message of `kind` whose payload is the concatenation of `parts`.
    pub fn send(&mut self, kind: Kind, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
        header[8..].copy_from_slice(&(len as u64).to_le_bytes());
        self.write_all(&header)?;
        for part in parts {
            self.write_all(part)?;
        }
        self.sent += len as u64;
        Ok(())
    }

    /// Sends `value` as a JSON message of `kind`.
    pub fn send_json<T: serde::Serialize>(&mut self, kind: Kind, value: &T) -> io::Result<()> {
        let json = serde_json::to_vec(value).map_err(io::Error::other)?;
        self.send(kind, &[&json])
    }

    /// The next message's kind and payload length, checked against what that kind may carry.
    pub fn recv_header(&mut self) -> io::Result<(Kind, u64)> {
        let mut header = [0u8; 16];
        self.read_exact(&mut header)?;
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let word = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        if word(0) != MAGIC {
            return Err(bad(
                "the peer does not speak Palisade's migration protocol".into()
            ));
        }
        let kind = Kind::from_u32(word(4))
            .ok_or_else(|| bad(format!("unknown message kind {}", word(4))))?;
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[8..]);
        let len = u64::from_le_bytes(len);
        let max = if kind == Kind::Pages {
            MAX_PAGES
        } else {
            MAX_JSON
        };
        if len > max || (kind == Kind::Pages && (len < 8 || (len - 8) % 4096 != 0)) {
            return Err(bad(format!("a {kind:?} message of {len} bytes")));
        }
        Ok((kind, len))
    }

    /// Reads a payload of `len` bytes.
    pub fn recv_payload(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let mut payload = vec![0u8; len as usize];
        self.read_exact(&mut payload)?;
        Ok(payload)
    }

    /// Reads a JSON message, which must be of `kind`.
    pub fn recv_json<T: for<'de> serde::Deserialize<'de>>(&mut self, kind: Kind) -> io::Result<T> {
        let (got, len) = self.recv_header()?;
        if got != kind {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected a {kind:?} message, got {got:?}"),
            ));
        }
        let payload = self.recv_payload(len)?;
        serde_json::from_slice(&payload).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a damaged {kind:?} message: {e}"),
            )
        })
    }

    /// Sends the destination's answer.
    pub fn send_ack(&mut self, result: Result<(), String>) -> io::Result<()> {
        let ack = match result {
            Ok(()) => serde_json::json!({"ok": true}),
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        };
        self.send_json(Kind::Ack, &ack)
    }

    /// Waits for the destination's answer: Ok, or its error.
    pub fn recv_ack(&mut self) -> io::Result<Result<(), String>> {
        let ack: serde_json::Value = self.recv_json(Kind::Ack)?;
        if ack["ok"] == serde_json::Value::Bool(true) {
            return Ok(Ok(()));
        }
        Ok(Err(ack["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Wire, Wire) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = Duration::from_millis(300);
        (
            Wire::new(a.into(), t).unwrap(),
            Wire::new(b.into(), t).unwrap(),
        )
    }

    #[test]
    fn messages_cross_and_bad_ones_are_refused() {
        let (mut a, mut b) = pair();
        a.send_json(Kind::Hello, &serde_json::json!({"v": 1}))
            .unwrap();
        let v: serde_json::Value = b.recv_json(Kind::Hello).unwrap();
        assert_eq!(v["v"], 1);
        a.send(Kind::Pages, &[&0x1000u64.to_le_bytes(), &[7u8; 4096]])
            .unwrap();
        assert_eq!(b.recv_header().unwrap(), (Kind::Pages, 8 + 4096));
        assert_eq!(b.recv_payload(4104).unwrap()[8], 7);
        b.send_ack(Err("no room".into())).unwrap();
        assert_eq!(a.recv_ack().unwrap(), Err("no room".into()));
        // Pages that are not whole pages, an unknown kind, and silence are errors.
        a.send(Kind::Pages, &[&0u64.to_le_bytes(), &[0u8; 10]])
            .unwrap();
        assert!(b.recv_header().is_err());
        let (mut a, mut b) = pair();
        a.write_all(b"PLMG\x09\0\0\0\0\0\0\0\0\0\0\0").unwrap();
        assert!(b.recv_header().unwrap_err().to_string().contains("unknown"));
        let e = b.recv_header().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        drop(a);
        assert_eq!(
            b.recv_header().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
