//! A minimal HTTP/1.1 client that keeps its connection open between requests, for timing
//! API round trips without a client library's own costs in the figures.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A client that keeps its connection open between requests.
pub struct KeepAlive {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        KeepAlive {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// `GET vmm.ping`; returns the status.
    pub fn ping(&mut self) -> u16 {
        self.stream
            .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("send a ping");
        self.read_response()
    }

    /// Reads one response (head and `Content-Length` body); returns its status.
    pub fn read_response(&mut self) -> u16 {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("malformed response {head:?}"));
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            self.fill();
        }
        self.buf.drain(..head_end + length);
        status
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).expect("read a response");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}
