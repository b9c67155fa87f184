//! Each kind of request: reads, writes, flushes, get-id, discard, write-zeroes, read-only disks, through the ring too.

use super::*;

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
fn reads_writes_and_flushes_complete_through_the_ring_or_the_pool() {
    for engine in [Engine::Ring, Engine::Pool, Engine::Both] {
        engine_runs_a_batch(engine);
    }
}

fn engine_runs_a_batch(engine: Engine) {
    let contents = disk(256);
    let mut h = Harness::with_engine(engine, rw_options(), &contents);
    assert_eq!(h.dev.uses_io_uring(), engine != Engine::Pool);
    let engines = if engine == Engine::Both { 2 } else { 1 };
    assert_eq!(
        h.dev.host_fds().len(),
        engines,
        "the engines' eventfds are watched"
    );
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
    assert!(h.dev.io_in_flight() > 0, "requests wait in the engine");
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
    let (ring, pool) = (h.counter("io_uring_ops"), h.counter("thread_pool_ops"));
    match engine {
        Engine::Ring => assert_eq!((ring, pool), (11, 0)),
        Engine::Pool => assert_eq!((ring, pool), (0, 11)),
        // The write goes to the pool, reads and the flush to the ring.
        Engine::Both => assert_eq!((ring, pool), (10, 1)),
    }
    assert_eq!(h.counter("nowait_ops"), 0);
    assert!(h.irq.count() >= 1);
    // Bad requests fail at once, without the engine.
    let (status, _, _) = h.submit(VIRTIO_BLK_T_IN, 255, &[1024], W);
    assert_eq!(status, S_IOERR);
    assert_eq!(h.dev.io_in_flight(), 0);
}

#[test]
fn a_reset_waits_for_the_engine_and_nothing_completes_afterwards() {
    for engine in [Engine::Ring, Engine::Pool, Engine::Both] {
        reset_drains(engine);
    }
}

fn reset_drains(engine: Engine) {
    let contents = disk(512);
    let mut h = Harness::with_engine(engine, rw_options(), &contents);
    // Reads and writes, so that with both engines each has some.
    let mut reqs: Vec<Req> = (0..12)
        .map(|i| h.request(0, VIRTIO_BLK_T_IN, 16 * i, &[8192], W))
        .collect();
    reqs.extend((0..6).map(|i| h.request(0, VIRTIO_BLK_T_OUT, 300 + 16 * i, &[8192], R)));
    h.kick(0);
    h.dev.reset();
    assert_eq!(h.dev.io_in_flight(), 0, "reset drained the {engine:?}");
    let irqs = h.irq.count();
    for (_, token) in h.dev.host_fds() {
        h.dev.process_host(token);
    }
    assert_eq!(h.irq.count(), irqs, "no interrupt after reset");
    for r in &reqs {
        assert_eq!(h.status(r), 0xff, "no status written after reset");
    }
}

#[test]
fn cached_reads_complete_at_once_and_the_rest_goes_to_the_engine() {
    let contents = disk(256);
    let mut h = Harness::with_engine(Engine::Ring, rw_options(), &contents);
    h.dev.set_try_without_blocking(true);
    // The image was just written: its pages are in the page cache.
    let (status, len, req) = h.submit(VIRTIO_BLK_T_IN, 8, &[4096], W);
    assert_eq!((status, len), (S_OK, 4097));
    assert_eq!(
        h.read_guest(req.data[0], 4096),
        &contents[8 * 512..8 * 512 + 4096]
    );
    assert_eq!(h.dev.io_in_flight(), 0);
    assert_eq!(h.counter("nowait_ops"), 1);
    assert_eq!(h.counter("io_uring_ops"), 0);
    // A write: done at once where the file system can, else through the ring; the data
    // is on the file either way, and a flush always goes to the ring.
    let payload = pattern(1024);
    let wdata = h.data(&payload);
    let hdr = h.header(VIRTIO_BLK_T_OUT, 40);
    let wstatus = h.status_buf();
    let whead = h.chain(0, &[(hdr, 16, R), (wdata, 1024, R), (wstatus, 1, W)]);
    h.publish(0, whead);
    h.kick(0);
    h.settle();
    let ws: u8 = h.mem.read_obj(GuestAddress(wstatus)).unwrap();
    assert_eq!(ws, S_OK);
    assert_eq!(h.read_file(40 * 512, 1024), payload);
    assert_eq!(h.counter("nowait_ops") + h.counter("io_uring_ops"), 2);
    assert_eq!(h.counter("read_ops") + h.counter("write_ops"), 2);
}

#[test]
fn an_io_thread_that_cannot_be_confined_stops_the_pool_from_starting() {
    let contents = disk(8);
    let mut h = Harness::new(rw_options(), &contents);
    let image = std::fs::File::open(h.host.as_path()).unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let refuse: crate::virtio::worker::ThreadSetup = std::sync::Arc::new(move |name: &str| {
        assert_eq!(name, "test-io");
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err("not allowed".to_string())
    });
    let err = h
        .dev
        .use_thread_pool(image, 3, "test-io", Some(refuse))
        .unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // The disk keeps working on its own thread.
    assert_eq!(h.dev.io_engine(), "device thread");
    assert_eq!(h.submit(VIRTIO_BLK_T_IN, 0, &[512], W).0, S_OK);
}
