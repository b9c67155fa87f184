//! Tests of the virtio-blk device model, driven through its queues as a driver would.
use super::*;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_USED_F_NO_NOTIFY,
};
use vmm_sys_util::tempfile::TempFile;

use crate::virtio::test_driver::{Driver, MEM_END, OUTSIDE, QSIZE, R, REGION, W};
use crate::virtio::InterruptCause;

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// The test plays the driver; the host side is the temporary backing file.
type Harness = Driver<Block, TempFile>;

/// A request written into guest memory.
struct Req {
    head: u16,
    data: Vec<u64>,
    status: u64,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
}

impl Harness {
    fn new(options: BlockOptions, contents: &[u8]) -> Harness {
        Self::with(options, contents, |f| f, None)
    }

    /// Creates the device; `features` maps the offered features to those acked;
    /// `ready` (if given) lists which queues the driver enabled.
    fn with(
        options: BlockOptions,
        contents: &[u8],
        features: impl Fn(u64) -> u64,
        ready: Option<&[u16]>,
    ) -> Harness {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().write_all(contents).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(!options.readonly)
            .open(tmp.as_path())
            .unwrap();
        let num_queues = usize::from(options.num_queues);
        let blk = Block::new(file, options).unwrap();
        let mut h = Driver::for_device(blk, tmp, features);
        // Every kick clears the notification.
        h.check_kicks = true;
        h.start(&vec![QSIZE; num_queues], ready);
        h
    }

    fn header(&mut self, req_type: u32, sector: u64) -> u64 {
        let hdr = self.alloc(16);
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&req_type.to_le_bytes());
        b[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&b, GuestAddress(hdr)).unwrap();
        hdr
    }

    fn status_buf(&mut self) -> u64 {
        let s = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
        s
    }

    /// Builds `[header][data...][status]` with data descriptors of `lens`, writable
    /// when `data_flags` is `W`, and publishes it on queue `q`.
    fn request(
        &mut self,
        q: usize,
        req_type: u32,
        sector: u64,
        lens: &[u32],
        data_flags: u16,
    ) -> Req {
        let hdr = self.header(req_type, sector);
        let data: Vec<u64> = lens.iter().map(|&l| self.alloc(u64::from(l))).collect();
        let status = self.status_buf();
        let mut descs = vec![(hdr, 16, R)];
        descs.extend(data.iter().zip(lens).map(|(&a, &l)| (a, l, data_flags)));
        descs.push((status, 1, W));
        let head = self.chain(q, &descs);
        self.publish(q, head);
        Req { head, data, status }
    }

    fn status(&self, req: &Req) -> u8 {
        self.mem.read_obj(GuestAddress(req.status)).unwrap()
    }

    /// Submits a request on queue 0 and returns (status, used length).
    fn submit(&mut self, req_type: u32, sector: u64, lens: &[u32], flags: u16) -> (u8, u32, Req) {
        let req = self.request(0, req_type, sector, lens, flags);
        self.kick(0);
        (self.status(&req), self.used_len(0, req.head), req)
    }

    fn read_file(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.host.as_file().read_exact_at(&mut v, offset).unwrap();
        v
    }

    fn file_contents(&self) -> Vec<u8> {
        std::fs::read(self.host.as_path()).unwrap()
    }

    /// Writes discard/write-zeroes segments and publishes the request.
    fn dwz(&mut self, req_type: u32, segs: &[(u64, u32, u32)]) -> (u8, u32) {
        let hdr = self.header(req_type, 0);
        let payload = self.alloc(16 * segs.len() as u64);
        for (i, &(sector, n, flags)) in segs.iter().enumerate() {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&sector.to_le_bytes());
            b[8..12].copy_from_slice(&n.to_le_bytes());
            b[12..16].copy_from_slice(&flags.to_le_bytes());
            self.mem
                .write_slice(&b, GuestAddress(payload + 16 * i as u64))
                .unwrap();
        }
        let status = self.status_buf();
        let head = self.chain(
            0,
            &[
                (hdr, 16, R),
                (payload, 16 * segs.len() as u32, R),
                (status, 1, W),
            ],
        );
        self.publish(0, head);
        self.kick(0);
        let s = self.mem.read_obj(GuestAddress(status)).unwrap();
        (s, self.used_len(0, head))
    }
}

fn disk(sectors: usize) -> Vec<u8> {
    pattern(sectors * 512)
}

fn rw_options() -> BlockOptions {
    BlockOptions {
        id: "palisade-disk-0".into(),
        queue_size: QSIZE,
        discard: true,
        write_zeroes: true,
        ..BlockOptions::default()
    }
}

#[test]
fn a_truncated_or_grown_image_changes_the_capacity_and_tells_the_driver() {
    let contents = disk(64);
    let mut h = Harness::new(rw_options(), &contents);
    assert_eq!(h.dev.capacity_sectors(), 64);
    h.host.as_file().set_len(16 * 512).unwrap();
    // The next request meets the new size: sector 20 is gone.
    let (status, _, _) = h.submit(VIRTIO_BLK_T_IN, 20, &[512], W);
    assert_eq!(status, S_IOERR);
    assert_eq!(h.dev.capacity_sectors(), 16);
    let mut capacity = [0u8; 8];
    h.dev.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 16);
    assert!(h.irq.causes().contains(&InterruptCause::Config));
    // Grown again: reachable again, and no change means no interrupt.
    h.host.as_file().set_len(32 * 512).unwrap();
    let (status, _, _) = h.submit(VIRTIO_BLK_T_IN, 20, &[512], W);
    assert_eq!(status, S_OK);
    assert_eq!(h.dev.capacity_sectors(), 32);
    let configs = |h: &Harness| {
        h.irq
            .causes()
            .iter()
            .filter(|c| **c == InterruptCause::Config)
            .count()
    };
    let before = configs(&h);
    assert!(!h.dev.refresh_capacity());
    assert_eq!(configs(&h), before);
}

#[test]
fn reads_sectors_the_file_holds() {
    let contents = disk(64);
    let mut h = Harness::new(rw_options(), &contents);
    assert_eq!(h.dev.capacity_sectors(), 64);
    let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 3, &[1024], W);
    assert_eq!(status, S_OK);
    assert_eq!(used, 1025);
    assert_eq!(h.read_guest(req.data[0], 1024), &contents[3 * 512..5 * 512]);
    assert_eq!(h.counter("read_ops"), 1);
    assert_eq!(h.counter("read_bytes"), 1024);
    assert_eq!(h.counter("errors"), 0);
    assert_eq!(h.irq.count(), 1);
    assert_eq!(h.irq.causes()[0], InterruptCause::Queue(0));
}

#[test]
fn writes_reach_the_file() {
    let contents = disk(64);
    let mut h = Harness::new(rw_options(), &contents);
    let hdr = h.header(VIRTIO_BLK_T_OUT, 10);
    let data = h.alloc(1024);
    let payload: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    h.mem.write_slice(&payload, GuestAddress(data)).unwrap();
    let status = h.status_buf();
    let head = h.chain(0, &[(hdr, 16, R), (data, 1024, R), (status, 1, W)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_OK);
    assert_eq!(h.used_len(0, head), 1);
    assert_eq!(h.read_file(10 * 512, 1024), payload);
    // Nothing else changed.
    let after = h.file_contents();
    assert_eq!(after[..10 * 512], contents[..10 * 512]);
    assert_eq!(after[12 * 512..], contents[12 * 512..]);
    assert_eq!(h.counter("write_ops"), 1);
    assert_eq!(h.counter("write_bytes"), 1024);
}

#[test]
fn flush_syncs() {
    let mut h = Harness::new(rw_options(), &disk(8));
    let (status, used, _) = h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R);
    assert_eq!((status, used), (S_OK, 1));
    assert_eq!(h.counter("flush_ops"), 1);
}

#[test]
fn get_id_writes_the_zero_padded_id_or_what_fits() {
    let mut h = Harness::new(rw_options(), &disk(8));
    let (status, used, req) = h.submit(VIRTIO_BLK_T_GET_ID, 0, &[20], W);
    assert_eq!((status, used), (S_OK, 21));
    let mut want = b"palisade-disk-0".to_vec();
    want.resize(20, 0);
    assert_eq!(h.read_guest(req.data[0], 20), want);

    let (status, used, req) = h.submit(VIRTIO_BLK_T_GET_ID, 0, &[8], W);
    assert_eq!((status, used), (S_OK, 9));
    assert_eq!(h.read_guest(req.data[0], 8), b"palisade");

    // A larger buffer receives exactly 20 bytes.
    let (status, used, _) = h.submit(VIRTIO_BLK_T_GET_ID, 0, &[64], W);
    assert_eq!((status, used), (S_OK, 21));
}

#[test]
fn discard_punches_a_hole() {
    let contents = disk(64);
    let mut h = Harness::new(rw_options(), &contents);
    assert_eq!(
        h.dwz(VIRTIO_BLK_T_DISCARD, &[(8, 8, 0), (32, 4, 0)]),
        (S_OK, 1)
    );
    let after = h.file_contents();
    assert_eq!(after.len(), contents.len(), "the file keeps its size");
    assert!(after[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert!(after[32 * 512..36 * 512].iter().all(|&b| b == 0));
    assert_eq!(after[..8 * 512], contents[..8 * 512]);
    assert_eq!(after[16 * 512..32 * 512], contents[16 * 512..32 * 512]);
    assert_eq!(after[36 * 512..], contents[36 * 512..]);
    // The unmap flag and unknown flags are unsupported on a discard.
    assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(0, 1, 1)]).0, S_UNSUPP);
    assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(0, 1, 4)]).0, S_UNSUPP);
    // Beyond the capacity.
    assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(60, 8, 0)]).0, S_IOERR);
    assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(u64::MAX, 1, 0)]).0, S_IOERR);
    assert_eq!(h.file_contents()[60 * 512..], contents[60 * 512..]);
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    let contents = disk(64);
    let mut h = Harness::new(rw_options(), &contents);
    let flag = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    assert_eq!(h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(1, 3, 0)]), (S_OK, 1));
    assert_eq!(
        h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(20, 9, flag)]),
        (S_OK, 1)
    );
    let after = h.file_contents();
    assert_eq!(after.len(), contents.len());
    assert!(after[512..4 * 512].iter().all(|&b| b == 0));
    assert!(after[20 * 512..29 * 512].iter().all(|&b| b == 0));
    assert_eq!(after[..512], contents[..512]);
    assert_eq!(after[4 * 512..20 * 512], contents[4 * 512..20 * 512]);
    assert_eq!(after[29 * 512..], contents[29 * 512..]);
    // Unknown flags, too many segments, too many sectors.
    assert_eq!(h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 2)]).0, S_UNSUPP);
    assert_eq!(
        h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0), (2, 1, 0)]).0,
        S_IOERR
    );
    assert_eq!(
        h.dwz(
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)]
        )
        .0,
        S_IOERR
    );
    assert_eq!(h.file_contents()[..512], contents[..512]);
    assert_eq!(h.counter("write_ops"), 2);
}

#[test]
fn discard_and_write_zeroes_not_offered_are_unsupported() {
    let options = BlockOptions {
        discard: false,
        write_zeroes: false,
        ..rw_options()
    };
    let mut h = Harness::new(options, &disk(8));
    assert_eq!(h.dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(h.dev.features() & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(0, 1, 0)]).0, S_UNSUPP);
    assert_eq!(h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0)]).0, S_UNSUPP);
    assert_eq!(h.file_contents(), disk(8));
}

#[test]
fn readonly_disk_refuses_writes() {
    let contents = disk(16);
    let options = BlockOptions {
        readonly: true,
        ..rw_options()
    };
    let mut h = Harness::new(options, &contents);
    let f = h.dev.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);

    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let data = h.alloc(512);
    h.mem.write_slice(&[0xaa; 512], GuestAddress(data)).unwrap();
    let status = h.status_buf();
    let head = h.chain(0, &[(hdr, 16, R), (data, 512, R), (status, 1, W)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
    assert_eq!(h.used_len(0, head), 1);
    assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(0, 1, 0)]).0, S_IOERR);
    assert_eq!(h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0)]).0, S_IOERR);
    assert_eq!(h.file_contents(), contents, "file unchanged");
    // Reads, flushes and GET_ID still work.
    let (status, _, req) = h.submit(VIRTIO_BLK_T_IN, 0, &[512], W);
    assert_eq!(status, S_OK);
    assert_eq!(h.read_guest(req.data[0], 512), &contents[..512]);
    assert_eq!(h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R).0, S_OK);
    assert_eq!(h.submit(VIRTIO_BLK_T_GET_ID, 0, &[20], W).0, S_OK);
    assert_eq!(h.counter("errors"), 3);
    assert_eq!(h.counter("write_ops"), 0);
}

#[test]
fn request_spanning_several_descriptors_and_regions() {
    let contents = disk(64);
    let mut h = Harness::new(rw_options(), &contents);
    // Header split over two descriptors, three data descriptors, one straddling the
    // boundary between the two memory regions.
    let hdr = h.header(VIRTIO_BLK_T_IN, 5);
    let d1 = h.alloc(512);
    let d2 = h.alloc(1024);
    let d3 = REGION - 256;
    let status = h.status_buf();
    let head = h.chain(
        0,
        &[
            (hdr, 8, R),
            (hdr + 8, 8, R),
            (d1, 512, W),
            (d2, 1024, W),
            (d3, 512, W),
            (status, 1, W),
        ],
    );
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_OK);
    assert_eq!(h.used_len(0, head), 2049);
    assert_eq!(h.read_guest(d1, 512), &contents[5 * 512..6 * 512]);
    assert_eq!(h.read_guest(d2, 1024), &contents[6 * 512..8 * 512]);
    assert_eq!(h.read_guest(d3, 512), &contents[8 * 512..9 * 512]);

    // And a write gathered from several descriptors.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 40);
    h.mem.write_slice(&[1; 512], GuestAddress(d1)).unwrap();
    h.mem.write_slice(&[2; 1024], GuestAddress(d2)).unwrap();
    h.mem.write_slice(&[3; 512], GuestAddress(d3)).unwrap();
    let status = h.status_buf();
    let head = h.chain(
        0,
        &[
            (hdr, 16, R),
            (d1, 512, R),
            (d2, 1024, R),
            (d3, 512, R),
            (status, 1, W),
        ],
    );
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_OK);
    let mut want = vec![1u8; 512];
    want.extend([2u8; 1024]);
    want.extend([3u8; 512]);
    assert_eq!(h.read_file(40 * 512, 2048), want);
}

#[test]
fn indirect_descriptors() {
    let contents = disk(32);
    let mut h = Harness::new(rw_options(), &contents);
    let hdr = h.header(VIRTIO_BLK_T_IN, 7);
    let data = h.alloc(1024);
    let status = h.status_buf();
    let table = h.alloc(48);
    let next = VRING_DESC_F_NEXT as u16;
    h.write_raw_desc(table, hdr, 16, next, 1);
    h.write_raw_desc(table + 16, data, 1024, W | next, 2);
    h.write_raw_desc(table + 32, status, 1, W, 0);
    let head = h.chain(0, &[(table, 48, VRING_DESC_F_INDIRECT as u16)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_OK);
    assert_eq!(h.used_len(0, head), 1025);
    assert_eq!(h.read_guest(data, 1024), &contents[7 * 512..9 * 512]);
}

#[test]
fn more_segments_than_iov_max() {
    // 1100 data descriptors in an indirect table: two preadv calls.
    let contents = disk(1200);
    let mut h = Harness::new(rw_options(), &contents);
    let n = 1100u16;
    let hdr = h.header(VIRTIO_BLK_T_IN, 50);
    let data = h.alloc(u64::from(n) * 512);
    let status = h.status_buf();
    let table = h.alloc(16 * (u64::from(n) + 2));
    let next = VRING_DESC_F_NEXT as u16;
    h.write_raw_desc(table, hdr, 16, next, 1);
    for i in 0..n {
        // Data descriptors in reverse memory order so no two slices are adjacent.
        let addr = data + u64::from(n - 1 - i) * 512;
        h.write_raw_desc(table + 16 * u64::from(i + 1), addr, 512, W | next, i + 2);
    }
    h.write_raw_desc(table + 16 * u64::from(n + 1), status, 1, W, 0);
    let head = h.chain(
        0,
        &[(table, 16 * (u32::from(n) + 2), VRING_DESC_F_INDIRECT as u16)],
    );
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_OK);
    assert_eq!(h.used_len(0, head), u32::from(n) * 512 + 1);
    for i in 0..u64::from(n) {
        let addr = data + (u64::from(n) - 1 - i) * 512;
        let sector = (50 + i) as usize;
        assert_eq!(
            h.read_guest(addr, 512),
            &contents[sector * 512..(sector + 1) * 512]
        );
    }
}

#[test]
fn misaligned_header_and_status() {
    let contents = disk(16);
    let mut h = Harness::new(rw_options(), &contents);
    let buf = h.alloc(64);
    let hdr = buf + 3;
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    b[8..16].copy_from_slice(&6u64.to_le_bytes());
    h.mem.write_slice(&b, GuestAddress(hdr)).unwrap();
    let data = h.alloc(512);
    let status = buf + 33;
    let head = h.chain(0, &[(hdr, 16, R), (data, 512, W), (status, 1, W)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_OK);
    assert_eq!(h.read_guest(data, 512), &contents[6 * 512..7 * 512]);
}

#[test]
fn short_chains_and_misplaced_headers() {
    let contents = disk(16);
    let mut h = Harness::new(rw_options(), &contents);

    // Header only: no status byte can be written; returned with length 0.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let head = h.chain(0, &[(hdr, 16, R)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.used_len(0, head), 0);

    // Status only.
    let status = h.status_buf();
    let head = h.chain(0, &[(status, 1, W)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
    assert_eq!(h.used_len(0, head), 1);

    // Header shorter than 16 bytes.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let status = h.status_buf();
    let head = h.chain(0, &[(hdr, 8, R), (status, 1, W)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
    assert_eq!(h.used_len(0, head), 1);

    // Header in a writable descriptor.
    let hdr = h.header(VIRTIO_BLK_T_GET_ID, 0);
    let status = h.status_buf();
    let head = h.chain(0, &[(hdr, 16, W), (status, 1, W)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
    assert_eq!(h.used_len(0, head), 1);
    assert_eq!(
        h.read_guest(hdr, 1)[0],
        VIRTIO_BLK_T_GET_ID as u8,
        "untouched"
    );

    // A write without a writable status byte: nothing written, length 0.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let data = h.alloc(512);
    h.mem.write_slice(&[0x55; 512], GuestAddress(data)).unwrap();
    let head = h.chain(0, &[(hdr, 16, R), (data, 512, R)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.used_len(0, head), 0);

    // Readable data after the status byte.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let status = h.status_buf();
    let head = h.chain(0, &[(hdr, 16, R), (status, 1, W), (data, 512, R)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_IOERR);

    assert_eq!(h.file_contents(), contents);
    assert_eq!(h.used_idx(0), 6);
    assert_eq!(h.counter("errors"), 6);
}

#[test]
fn data_in_the_wrong_direction() {
    let contents = disk(16);
    let mut h = Harness::new(rw_options(), &contents);
    // A read whose data buffer is device-readable.
    let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 0, &[512], R);
    assert_eq!((status, used), (S_IOERR, 1));
    assert!(h.read_guest(req.data[0], 512).iter().all(|&b| b == 0));
    // A write whose data buffer is device-writable.
    let (status, used, req) = h.submit(VIRTIO_BLK_T_OUT, 0, &[512], W);
    assert_eq!((status, used), (S_IOERR, 1));
    assert!(h.read_guest(req.data[0], 512).iter().all(|&b| b == 0));
    assert_eq!(h.file_contents(), contents);
    assert_eq!(h.counter("read_ops") + h.counter("write_ops"), 0);
}

#[test]
fn buffers_outside_guest_memory() {
    let contents = disk(16);
    let mut h = Harness::new(rw_options(), &contents);
    for (addr, len, flags, t) in [
        (OUTSIDE, 512, W, VIRTIO_BLK_T_IN),
        (MEM_END - 256, 512, W, VIRTIO_BLK_T_IN),
        (u64::MAX - 255, 512, W, VIRTIO_BLK_T_IN),
        (OUTSIDE, 512, R, VIRTIO_BLK_T_OUT),
        (MEM_END - 256, 512, R, VIRTIO_BLK_T_OUT),
    ] {
        let hdr = h.header(t, 0);
        let status = h.status_buf();
        let head = h.chain(0, &[(hdr, 16, R), (addr, len, flags), (status, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_IOERR, "{addr:#x}");
        assert_eq!(h.used_len(0, head), 1);
    }
    // Header outside guest memory.
    let status = h.status_buf();
    let head = h.chain(0, &[(OUTSIDE, 16, R), (status, 1, W)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
    // Status byte outside guest memory: the request is not executed (the file keeps
    // its contents) and the chain comes back with length 0.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let data = h.alloc(512);
    h.mem.write_slice(&[0x77; 512], GuestAddress(data)).unwrap();
    let head = h.chain(0, &[(hdr, 16, R), (data, 512, R), (OUTSIDE, 1, W)]);
    h.publish(0, head);
    h.kick(0);
    assert_eq!(h.used_len(0, head), 0);
    assert_eq!(h.file_contents(), contents);
    // The queue still works.
    assert_eq!(h.submit(VIRTIO_BLK_T_IN, 0, &[512], W).0, S_OK);
}

#[test]
fn lengths_and_sectors_out_of_range() {
    let contents = disk(16);
    let mut h = Harness::new(rw_options(), &contents);
    for (t, sector, len, flags) in [
        (VIRTIO_BLK_T_IN, 0, 100, W),
        (VIRTIO_BLK_T_OUT, 0, 513, R),
        (VIRTIO_BLK_T_IN, 16, 512, W),
        (VIRTIO_BLK_T_IN, 15, 1024, W),
        (VIRTIO_BLK_T_OUT, 15, 1024, R),
        (VIRTIO_BLK_T_IN, u64::MAX, 512, W),
        (VIRTIO_BLK_T_IN, u64::MAX >> 9, 512, W),
        (VIRTIO_BLK_T_OUT, u64::MAX, 512, R),
    ] {
        let (status, used, _) = h.submit(t, sector, &[len], flags);
        assert_eq!((status, used), (S_IOERR, 1), "type {t} sector {sector}");
    }
    assert_eq!(h.file_contents(), contents);
    // The last sector is fine.
    let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 15, &[512], W);
    assert_eq!((status, used), (S_OK, 513));
    assert_eq!(h.read_guest(req.data[0], 512), &contents[15 * 512..]);
}

#[test]
fn trailing_partial_sector_is_not_exposed() {
    let mut contents = disk(4);
    contents.extend([9u8; 100]);
    let mut h = Harness::new(rw_options(), &contents);
    assert_eq!(h.dev.capacity_sectors(), 4);
    let mut cap = [0u8; 8];
    h.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 4);
    assert_eq!(h.submit(VIRTIO_BLK_T_IN, 3, &[512], W).0, S_OK);
    assert_eq!(h.submit(VIRTIO_BLK_T_IN, 4, &[512], W).0, S_IOERR);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mut h = Harness::new(rw_options(), &disk(8));
    for t in [2, 3, 14, 99, u32::MAX] {
        let (status, used, _) = h.submit(t, 0, &[512], W);
        assert_eq!((status, used), (S_UNSUPP, 1), "type {t}");
    }
}

#[test]
fn hostile_chain_structures_do_not_stall_the_queue() {
    let contents = disk(16);
    let mut h = Harness::new(rw_options(), &contents);
    let next = VRING_DESC_F_NEXT as u16;

    // A loop: header -> status -> header -> ... (ends at the queue size).
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let status = h.status_buf();
    h.write_desc(0, 0, hdr, 16, next, 1);
    h.write_desc(0, 1, status, 1, W | next, 0);
    h.publish(0, 0);
    h.kick(0);
    assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
    assert_eq!(h.used_len(0, 0), 1);

    // A next index beyond the queue: the chain ends there, without a status byte.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    h.write_desc(0, 2, hdr, 16, next, 1000);
    h.publish(0, 2);
    h.kick(0);
    assert_eq!(h.used_len(0, 2), 0);

    // An indirect table whose length is not a multiple of 16, and a nested one.
    let table = h.alloc(64);
    let status = h.status_buf();
    h.write_raw_desc(table, table, 32, VRING_DESC_F_INDIRECT as u16, 0);
    h.write_desc(0, 3, table, 20, VRING_DESC_F_INDIRECT as u16, 0);
    h.write_desc(0, 4, table, 16, VRING_DESC_F_INDIRECT as u16, 0);
    h.write_desc(0, 5, hdr, 16, next, 6);
    h.write_desc(0, 6, OUTSIDE, 16, VRING_DESC_F_INDIRECT as u16, 0);
    for head in [3, 4, 5] {
        h.publish(0, head);
    }
    // A head index beyond the queue: cannot be returned, skipped.
    h.publish(0, 200);
    h.kick(0);
    for head in [3, 4, 5] {
        assert_eq!(h.used_len(0, head), 0);
    }
    assert_eq!(h.used_idx(0), 5);
    let _ = status;

    // The queue still serves well-formed requests.
    h.rings[0].next_desc = 10;
    let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 1, &[512], W);
    assert_eq!((status, used), (S_OK, 513));
    assert_eq!(h.read_guest(req.data[0], 512), &contents[512..1024]);
    // EVENT_IDX is on and the driver left used_event at 0: only the first batch interrupts.
    assert_eq!(h.irq.count(), 1);
}

#[test]
fn avail_index_beyond_the_queue_is_ignored() {
    let mut h = Harness::new(rw_options(), &disk(8));
    let avail = h.rings[0].avail;
    h.mem
        .write_obj(200u16.to_le(), GuestAddress(avail + 2))
        .unwrap();
    h.kick(0);
    assert_eq!(h.used_idx(0), 0);
    assert_eq!(h.irq.count(), 0);
}

#[test]
fn batch_of_requests_gets_one_interrupt() {
    let contents = disk(64);
    let mut h = Harness::new(rw_options(), &contents);
    let reqs: Vec<Req> = (0..8u64)
        .map(|i| {
            let t = if i == 3 { 77 } else { VIRTIO_BLK_T_IN };
            h.request(0, t, i * 4, &[2048], W)
        })
        .collect();
    h.kick(0);
    assert_eq!(h.used_idx(0), 8);
    assert_eq!(h.irq.count(), 1);
    for (i, r) in reqs.iter().enumerate() {
        if i == 3 {
            assert_eq!(h.status(r), S_UNSUPP);
        } else {
            assert_eq!(h.status(r), S_OK);
            let s = i * 4 * 512;
            assert_eq!(h.read_guest(r.data[0], 2048), &contents[s..s + 2048]);
        }
    }
    // A kick with nothing new raises no interrupt.
    h.kick(0);
    assert_eq!(h.irq.count(), 1);
}

#[test]
fn interrupts_follow_avail_flags_without_event_idx() {
    let mut h = Harness::with(rw_options(), &disk(8), |f| f & !F_RING_EVENT_IDX, None);
    h.set_avail_flags(0, VRING_AVAIL_F_NO_INTERRUPT as u16);
    assert_eq!(h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R).0, S_OK);
    assert_eq!(h.irq.count(), 0);
    h.set_avail_flags(0, 0);
    assert_eq!(h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R).0, S_OK);
    assert_eq!(h.irq.count(), 1);
    // Notifications are enabled again once the ring is drained.
    assert_eq!(h.used_flags(0) & VRING_USED_F_NO_NOTIFY as u16, 0);
}

#[test]
fn interrupts_are_suppressed_with_event_idx() {
    let mut h = Harness::new(rw_options(), &disk(8));
    assert_ne!(h.dev.acked_features & F_RING_EVENT_IDX, 0);

    // used_event 0: the first used buffer (index 0) interrupts.
    h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R);
    assert_eq!(h.irq.count(), 1);
    // The device asks to be notified when the driver adds the next request.
    assert_eq!(h.avail_event(0), 1);

    // The driver wants an interrupt once used index 5 is written.
    h.set_used_event(0, 5);
    h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R); // used idx 2
    assert_eq!(h.irq.count(), 1);
    for _ in 0..3 {
        h.request(0, VIRTIO_BLK_T_FLUSH, 0, &[], R);
    }
    h.kick(0); // used idx 5: entry 4 written, event 5 not yet reached
    assert_eq!(h.used_idx(0), 5);
    assert_eq!(h.irq.count(), 1);
    h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R); // entry 5 written
    assert_eq!(h.irq.count(), 2);
    assert_eq!(h.avail_event(0), 6);
}

#[test]
fn config_space_layout() {
    let options = BlockOptions {
        num_queues: 4,
        ..rw_options()
    };
    let h = Harness::new(options, &disk(100));
    let rd = |off: u64, len: usize| {
        let mut v = vec![0xeeu8; len];
        h.dev.read_config(off, &mut v);
        v
    };
    let u32_at = |off: u64| u32::from_le_bytes(rd(off, 4).try_into().unwrap());
    assert_eq!(u64::from_le_bytes(rd(0, 8).try_into().unwrap()), 100);
    assert_eq!(u32_at(8), 0, "size_max");
    assert_eq!(u32_at(12), u32::from(QSIZE) - 2, "seg_max");
    assert_eq!(rd(16, 4), [0; 4], "geometry");
    assert_eq!(u32_at(20), 512, "blk_size");
    assert_eq!(rd(32, 1), [1], "writeback");
    assert_eq!(u16::from_le_bytes(rd(34, 2).try_into().unwrap()), 4);
    assert_eq!(u32_at(36), MAX_DISCARD_SECTORS);
    assert_eq!(u32_at(40), MAX_DISCARD_SEG);
    assert_eq!(u32_at(44), DISCARD_SECTOR_ALIGNMENT);
    assert_eq!(u32_at(48), MAX_WRITE_ZEROES_SECTORS);
    assert_eq!(u32_at(52), MAX_WRITE_ZEROES_SEG);
    assert_eq!(rd(56, 4), [1, 0, 0, 0]);
    // Past the end, partly and wholly, and at absurd offsets.
    assert_eq!(rd(58, 6), [0; 6]);
    assert_eq!(rd(4096, 4), [0; 4]);
    assert_eq!(rd(u64::MAX - 1, 4), [0; 4]);
    // Unaligned reads see the same bytes.
    assert_eq!(rd(1, 2), [0, 0]);
    assert_eq!(rd(0, 1), [100]);
}

#[test]
fn config_writes_are_ignored() {
    let mut h = Harness::new(rw_options(), &disk(8));
    let mut before = [0u8; CONFIG_SPACE_SIZE];
    h.dev.read_config(0, &mut before);
    h.dev.write_config(0, &[0xff; CONFIG_SPACE_SIZE]);
    h.dev.write_config(u64::MAX, &[1, 2, 3]);
    let mut after = [0u8; CONFIG_SPACE_SIZE];
    h.dev.read_config(0, &mut after);
    assert_eq!(before, after);
}

#[test]
fn features_offered() {
    let h = Harness::new(rw_options(), &disk(8));
    let f = h.dev.features();
    for bit in [
        F_VERSION_1,
        F_RING_INDIRECT_DESC,
        F_RING_EVENT_IDX,
        1 << VIRTIO_BLK_F_SEG_MAX,
        1 << VIRTIO_BLK_F_BLK_SIZE,
        1 << VIRTIO_BLK_F_FLUSH,
        1 << VIRTIO_BLK_F_DISCARD,
        1 << VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_eq!(h.dev.device_type(), TYPE_BLOCK);
    assert_eq!(h.dev.queue_max_sizes(), vec![QSIZE]);
}

#[test]
fn multiple_queues() {
    let contents = disk(32);
    let options = BlockOptions {
        num_queues: 3,
        ..rw_options()
    };
    let mut h = Harness::new(options, &contents);
    assert_ne!(h.dev.features() & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_eq!(h.dev.queue_max_sizes(), vec![QSIZE; 3]);
    let r1 = h.request(1, VIRTIO_BLK_T_IN, 2, &[512], W);
    let r2 = h.request(2, VIRTIO_BLK_T_IN, 9, &[512], W);
    // Kicking queue 0 does not serve the others.
    h.kick(0);
    assert_eq!(h.irq.count(), 0);
    h.kick(2);
    assert_eq!(h.status(&r2), S_OK);
    assert_eq!(h.used_idx(1), 0);
    h.kick(1);
    assert_eq!(h.status(&r1), S_OK);
    assert_eq!(h.read_guest(r1.data[0], 512), &contents[2 * 512..3 * 512]);
    assert_eq!(h.read_guest(r2.data[0], 512), &contents[9 * 512..10 * 512]);
    assert_eq!(
        h.irq.causes(),
        vec![InterruptCause::Queue(2), InterruptCause::Queue(1)]
    );
    // An unknown queue index is ignored.
    h.dev.process_queue(7);
}

#[test]
fn driver_may_enable_fewer_queues() {
    let options = BlockOptions {
        num_queues: 4,
        ..rw_options()
    };
    let mut h = Harness::with(options, &disk(8), |f| f, Some(&[0, 1]));
    let r = h.request(1, VIRTIO_BLK_T_IN, 0, &[512], W);
    h.kick(1);
    assert_eq!(h.status(&r), S_OK);
    h.rings[3].notify.write(1).unwrap();
    h.dev.process_queue(3);
}

#[test]
fn activation_is_validated() {
    let mut h = Harness::new(rw_options(), &disk(8));
    h.dev.reset();
    let irq: Arc<dyn VirtioInterrupt> = h.irq.clone();
    // Queue index out of range.
    let mut queues = h.make_rings(&[QSIZE; 2], None);
    assert!(h
        .dev
        .activate(h.mem.clone(), irq.clone(), queues.split_off(1))
        .is_err());
    // No queue enabled.
    let queues = h.make_rings(&[QSIZE], Some(&[]));
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    // A ring outside guest memory.
    let mut queues = h.make_rings(&[QSIZE], None);
    queues[0]
        .queue
        .try_set_used_ring_address(GuestAddress(OUTSIDE))
        .unwrap();
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    // Processing an inactive device does nothing.
    h.dev.process_queue(0);
    assert_eq!(h.used_idx(0), 0);
}

#[test]
fn reset_and_reactivate() {
    let contents = disk(8);
    let mut h = Harness::new(rw_options(), &contents);
    assert_eq!(h.submit(VIRTIO_BLK_T_IN, 0, &[512], W).0, S_OK);
    h.dev.reset();
    assert_eq!(h.dev.acked_features, 0);
    // A request published after the reset is not served.
    let stale = h.request(0, VIRTIO_BLK_T_IN, 0, &[512], W);
    h.dev.process_queue(0);
    assert_eq!(h.status(&stale), 0xff);

    let f = h.dev.features();
    h.dev.ack_features(f);
    let queues = h.make_rings(&[QSIZE], None);
    h.dev
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .unwrap();
    let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 1, &[512], W);
    assert_eq!((status, used), (S_OK, 513));
    assert_eq!(h.read_guest(req.data[0], 512), &contents[512..1024]);
}

#[test]
fn counters_are_reported() {
    let mut h = Harness::new(rw_options(), &disk(16));
    h.submit(VIRTIO_BLK_T_IN, 0, &[4096], W);
    h.submit(VIRTIO_BLK_T_OUT, 8, &[512, 512], R);
    h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R);
    h.submit(VIRTIO_BLK_T_IN, 100, &[512], W);
    let c = h.dev.counters();
    let get = |k: &str| c[k].as_u64().unwrap();
    assert_eq!(get("read_bytes"), 4096);
    assert_eq!(get("read_ops"), 1);
    assert_eq!(get("write_bytes"), 1024);
    assert_eq!(get("write_ops"), 1);
    assert_eq!(get("flush_ops"), 1);
    assert_eq!(get("errors"), 1);
    assert_eq!(
        get("io_uring_ops"),
        0,
        "no ring: every request ran on the thread"
    );
    assert_eq!(c.len(), 7);
}

#[test]
fn options_are_validated() {
    let file = || TempFile::new().unwrap().into_file();
    let bad = [
        BlockOptions {
            id: "x".repeat(21),
            ..BlockOptions::default()
        },
        BlockOptions {
            num_queues: 0,
            ..BlockOptions::default()
        },
        BlockOptions {
            queue_size: 100,
            ..BlockOptions::default()
        },
        BlockOptions {
            queue_size: 0,
            ..BlockOptions::default()
        },
    ];
    for o in bad {
        let err = Block::new(file(), o.clone()).err().expect("accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{o:?}");
    }
    let ok = BlockOptions {
        id: "x".repeat(20),
        ..BlockOptions::default()
    };
    assert_eq!(Block::new(file(), ok).unwrap().capacity_sectors(), 0);
}

impl Harness {
    /// A disk whose reads, writes and flushes go through io_uring.
    fn with_uring(options: BlockOptions, contents: &[u8]) -> Harness {
        let mut h = Harness::new(options, contents);
        let mem = h.mem.clone();
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(h.host.as_path())
            .unwrap();
        h.dev
            .use_io_uring(image, Some(&mem))
            .expect("io_uring is available");
        h
    }

    /// Waits for the ring's completions and hands them to the device, until nothing is in
    /// flight (as the device's worker would on the ring's eventfd).
    fn settle(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.dev.io_in_flight() > 0 {
            assert!(std::time::Instant::now() < deadline, "I/O never completed");
            let fds = self.dev.host_fds();
            let mut pfd = libc::pollfd {
                fd: fds[0].0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            self.dev.process_host(fds[0].1);
        }
    }
}

#[test]
fn io_uring_reads_writes_and_flushes_complete_through_the_ring() {
    let contents = disk(256);
    let mut h = Harness::with_uring(rw_options(), &contents);
    assert!(h.dev.uses_io_uring());
    assert_eq!(h.dev.host_fds().len(), 1, "the ring's eventfd is watched");
    // A batch: one-segment reads (fixed buffers), a three-segment read (readv), a write, a
    // flush.
    let reads: Vec<Req> = (0..8)
        .map(|i| h.request(0, VIRTIO_BLK_T_IN, 8 * i, &[4096], W))
        .collect();
    let multi = h.request(0, VIRTIO_BLK_T_IN, 100, &[512, 1024, 512], W);
    let payload = pattern(2048);
    let wdata = h.data(&payload);
    let hdr = h.header(VIRTIO_BLK_T_OUT, 200);
    let wstatus = h.status_buf();
    let whead = h.chain(0, &[(hdr, 16, R), (wdata, 2048, R), (wstatus, 1, W)]);
    h.publish(0, whead);
    let flush = h.request(0, VIRTIO_BLK_T_FLUSH, 0, &[], W);
    h.kick(0);
    assert!(h.dev.io_in_flight() > 0, "requests wait in the ring");
    assert_eq!(h.status(&reads[0]), 0xff, "no status before completion");
    h.settle();
    for (i, r) in reads.iter().enumerate() {
        assert_eq!(h.status(r), S_OK);
        assert_eq!(h.used_len(0, r.head), 4097);
        let at = 8 * 512 * i;
        assert_eq!(h.read_guest(r.data[0], 4096), &contents[at..at + 4096]);
    }
    assert_eq!(h.status(&multi), S_OK);
    assert_eq!(
        h.read_guest(multi.data[1], 1024),
        &contents[100 * 512 + 512..100 * 512 + 1536]
    );
    let ws: u8 = h.mem.read_obj(GuestAddress(wstatus)).unwrap();
    assert_eq!(ws, S_OK);
    assert_eq!(h.read_file(200 * 512, 2048), payload);
    assert_eq!(h.status(&flush), S_OK);
    assert_eq!(h.counter("read_ops"), 9);
    assert_eq!(h.counter("read_bytes"), 8 * 4096 + 2048);
    assert_eq!(h.counter("write_ops"), 1);
    assert_eq!(h.counter("flush_ops"), 1);
    assert_eq!(h.counter("errors"), 0);
    assert_eq!(h.counter("io_uring_ops"), 11);
    assert!(h.irq.count() >= 1);
    // Bad requests fail at once, without the ring.
    let (status, _, _) = h.submit(VIRTIO_BLK_T_IN, 255, &[1024], W);
    assert_eq!(status, S_IOERR);
    assert_eq!(h.dev.io_in_flight(), 0);
}

#[test]
fn a_reset_waits_for_the_ring_and_nothing_completes_afterwards() {
    let contents = disk(512);
    let mut h = Harness::with_uring(rw_options(), &contents);
    let reqs: Vec<Req> = (0..16)
        .map(|i| h.request(0, VIRTIO_BLK_T_IN, 16 * i, &[8192], W))
        .collect();
    h.kick(0);
    h.dev.reset();
    assert_eq!(h.dev.io_in_flight(), 0, "reset drained the ring");
    let irqs = h.irq.count();
    let fds = h.dev.host_fds();
    h.dev.process_host(fds[0].1);
    assert_eq!(h.irq.count(), irqs, "no interrupt after reset");
    for r in &reqs {
        assert_eq!(h.status(r), 0xff, "no status written after reset");
    }
}
