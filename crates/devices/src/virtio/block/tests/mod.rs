//! Tests of the virtio-blk device model, driven through its queues as a driver would: the
//! harness here, the tests by subject in the submodules.
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

/// An asynchronous engine for a test disk.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Ring,
    Pool,
    /// Both, as Palisade sets up a disk without `O_DIRECT`.
    Both,
}

impl Harness {
    /// A disk whose reads, writes and flushes all go through `engine` (none is tried at
    /// once first).
    fn with_engine(engine: Engine, options: BlockOptions, contents: &[u8]) -> Harness {
        let mut h = Harness::new(options, contents);
        let mem = h.mem.clone();
        let image = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(h.host.as_path())
                .unwrap()
        };
        let (ring, pool) = (image(), image());
        if engine != Engine::Pool {
            h.dev
                .use_io_uring(ring, Some(&mem))
                .expect("io_uring is available");
        }
        if engine != Engine::Ring {
            h.dev
                .use_thread_pool(pool, 2, "test-io", None)
                .expect("I/O threads start");
        }
        h.dev.set_try_without_blocking(false);
        h
    }

    /// Waits for the ring's completions and hands them to the device, until nothing is in
    /// flight (as the device's worker would on the ring's eventfd).
    fn settle(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.dev.io_in_flight() > 0 {
            assert!(std::time::Instant::now() < deadline, "I/O never completed");
            let fds = self.dev.host_fds();
            let mut pfds: Vec<libc::pollfd> = fds
                .iter()
                .map(|&(fd, _)| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: valid pollfds, as many as given.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
            for &(_, token) in &fds {
                self.dev.process_host(token);
            }
        }
    }
}

mod chains;
mod device;
mod rate_limit;
mod requests;
