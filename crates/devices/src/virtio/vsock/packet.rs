//! The vsock packet header (virtio 1.2, 5.10.6) and moving packets between descriptor chains
//! and the device.
//!
//! A packet is a 44-byte little-endian header followed by `len` bytes of payload. Drivers lay
//! packets out as they like: one buffer holding both, or the header and the payload in
//! separate descriptors. So a chain is read and written here as one flat run of bytes, across
//! however many descriptors it has; nothing about its shape is trusted.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::queue::Seg;

/// Bytes of the header.
pub const HDR_LEN: usize = 44;
/// The only socket type: stream.
pub const TYPE_STREAM: u16 = 1;
/// The host's context id.
pub const HOST_CID: u64 = 2;

/// Operations.
pub const OP_REQUEST: u16 = 1;
/// The connection is accepted.
pub const OP_RESPONSE: u16 = 2;
/// The connection is refused or torn down.
pub const OP_RST: u16 = 3;
/// One side will send (or receive) no more.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// The sender's receive buffer has room again.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// The sender asks for the peer's credit.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// Shutdown flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (shutdown flags).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Parses a header from its wire bytes.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Total bytes of the segments of `descs` with direction `write`, saturating.
pub(crate) fn capacity(descs: &[Seg], write: bool) -> u64 {
    descs
        .iter()
        .filter(|s| s.write == write)
        .fold(0u64, |n, s| n.saturating_add(u64::from(s.len)))
}

/// Reads `out.len()` bytes from the device-readable segments of `descs`, starting `skip`
/// bytes in; false if the chain is too short or points outside guest memory.
pub(crate) fn read_chain(
    mem: &GuestMemoryMmap,
    descs: &[Seg],
    mut skip: u64,
    out: &mut [u8],
) -> bool {
    let mut done = 0usize;
    for s in descs.iter().filter(|s| !s.write) {
        if done == out.len() {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        let Some(at) = s.addr.0.checked_add(skip) else {
            return false;
        };
        if mem
            .read_slice(&mut out[done..done + n], GuestAddress(at))
            .is_err()
        {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == out.len()
}

/// Writes `data` into the device-writable segments of `descs`, starting `skip` bytes in;
/// false if the chain is too short or points outside guest memory.
pub(crate) fn write_chain(
    mem: &GuestMemoryMmap,
    descs: &[Seg],
    mut skip: u64,
    data: &[u8],
) -> bool {
    let mut done = 0usize;
    for s in descs.iter().filter(|s| s.write) {
        if done == data.len() {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len() - done);
        let Some(at) = s.addr.0.checked_add(skip) else {
            return false;
        };
        if mem
            .write_slice(&data[done..done + n], GuestAddress(at))
            .is_err()
        {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_round_trip_in_wire_order() {
        let h = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x1234,
            dst_port: 80,
            len: 5,
            kind: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 3);
        assert_eq!(b[8], 2);
        assert_eq!(&b[16..18], &[0x34, 0x12]);
        assert_eq!(b[30], OP_RW as u8);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn chains_are_read_and_written_across_segments_and_checked() {
        let mem = crate::virtio::test_driver::guest_memory();
        let seg = |addr: u64, len: u32, write: bool| Seg {
            addr: GuestAddress(addr),
            len,
            write,
        };
        let descs = [
            seg(0x1000, 3, true),
            seg(0x2000, 100, false),
            seg(0x3000, 5, true),
        ];
        assert!(write_chain(&mem, &descs, 1, b"abcdef"));
        let mut out = [0u8; 6];
        mem.read_slice(&mut out[..2], GuestAddress(0x1001)).unwrap();
        mem.read_slice(&mut out[2..], GuestAddress(0x3000)).unwrap();
        assert_eq!(&out, b"abcdef");
        assert!(!write_chain(&mem, &descs, 0, &[0u8; 9]), "too short");
        assert_eq!((capacity(&descs, true), capacity(&descs, false)), (8, 100));
        mem.write_slice(b"xyz", GuestAddress(0x2000 + 50)).unwrap();
        let mut got = [0u8; 3];
        assert!(read_chain(&mem, &descs, 50, &mut got));
        assert_eq!(&got, b"xyz");
        assert!(!read_chain(&mem, &descs, 99, &mut got), "past the end");
        let outside = [seg(crate::virtio::test_driver::OUTSIDE, 64, true)];
        assert!(!write_chain(&mem, &outside, 0, b"a"));
        let wraps = [seg(u64::MAX - 1, 64, true)];
        assert!(!write_chain(&mem, &wraps, 8, b"a"));
    }
}
