//! The device itself: configuration space, features, queues, activation, reset, counters, options.

use super::*;

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
    assert_eq!(h.dev.common.acked_features, 0);
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
    for engine in ["io_uring_ops", "thread_pool_ops", "nowait_ops"] {
        assert_eq!(get(engine), 0, "no engine: every request ran on the thread");
    }
    assert_eq!(get("rate_limited"), 0, "no limiter");
    assert_eq!(c.len(), 10);
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

#[test]
fn resizing_changes_the_image_and_tells_the_driver() {
    let mut h = Harness::new(rw_options(), &disk(16));
    h.dev.resize(64 * 512).unwrap();
    assert_eq!(h.dev.capacity_sectors(), 64);
    assert_eq!(h.file_contents().len(), 64 * 512);
    assert!(h.irq.causes().contains(&InterruptCause::Config));
    // A request beyond the old end now reaches the disk.
    assert_eq!(h.submit(VIRTIO_BLK_T_IN, 40, &[512], W).0, S_OK);
    assert!(h.dev.resize(1000).unwrap_err().contains("512-byte sectors"));
    assert!(h.dev.resize(0).is_err());
    assert_eq!(h.dev.capacity_sectors(), 64);
}
