//! Chains of every shape a driver (or a hostile guest) can build.

use super::*;

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
    assert_ne!(h.dev.common.acked_features & F_RING_EVENT_IDX, 0);

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
