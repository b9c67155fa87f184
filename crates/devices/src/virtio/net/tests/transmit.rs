//! Transmit: frames from the guest to the tap, hostile chains, the budget.

use super::*;

#[test]
fn transmitted_frames_reach_the_host_unchanged() {
    let mut h = Harness::new(Setup::default());
    let cases: Vec<(usize, Vec<usize>)> = vec![
        (60, vec![]),             // header and frame in one descriptor
        (200, vec![5, 7, 30, 1]), // header split, frame in pieces
        (1514, vec![12]),
        (9000, vec![12, 4000]),
    ];
    for (i, (len, split)) in cases.iter().enumerate() {
        let f = frame(*len, i as u8);
        let mut bytes = header(0).to_vec();
        bytes.extend_from_slice(&f);
        h.send(1, &bytes, split);
        assert_eq!(h.capture(2000).as_deref(), Some(&f[..]), "case {i}");
    }
    // A frame straddling the two memory regions, and one behind an indirect table.
    let f = frame(300, 9);
    let mut bytes = header(0).to_vec();
    bytes.extend_from_slice(&f);
    let at = REGION - 100;
    h.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    let head = h.chain(1, &[(at, bytes.len() as u32, R)]);
    h.publish(1, head);
    h.kick(1);
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]), "straddling");

    let f = frame(100, 10);
    let hdr = h.data(&header(0));
    let data = h.data(&f);
    let table = h.alloc(32);
    h.write_raw_desc(table, hdr, 12, VRING_DESC_F_NEXT as u16, 1);
    h.write_raw_desc(table + 16, data, 100, 0, 0);
    let head = h.chain(1, &[(table, 32, VRING_DESC_F_INDIRECT as u16)]);
    h.publish(1, head);
    h.kick(1);
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]), "indirect");

    assert_eq!(h.used_idx(1), 6);
    assert_eq!(h.counter("tx_frames"), 6);
    assert_eq!(h.counter("tx_bytes"), 60 + 200 + 1514 + 9000 + 300 + 100);
    assert_eq!(h.counter("tx_dropped"), 0);
}

#[test]
fn hostile_transmit_chains_are_dropped_and_returned() {
    let mut h = Harness::new(Setup::default());
    let f = frame(100, 1);
    let mut good = header(0).to_vec();
    good.extend_from_slice(&f);
    let g = h.data(&good);
    let wbuf = h.alloc(100);
    let big = h.alloc(MAX_BUFFER_SIZE as u64 + 1);
    let heads = vec![
        // A device-writable descriptor, alone and after the frame.
        h.chain(1, &[(wbuf, 100, W)]),
        h.chain(1, &[(g, 112, R), (wbuf, 100, W)]),
        // Buffers outside guest memory, and running off its end.
        h.chain(1, &[(g, 12, R), (OUTSIDE, 100, R)]),
        h.chain(1, &[(MEM_END - 50, 112, R)]),
        // One byte too many, and too short for an Ethernet header.
        h.chain(1, &[(big, MAX_BUFFER_SIZE as u32 + 1, R)]),
        h.chain(1, &[(g, 12 + 13, R)]),
        // Empty descriptors only.
        h.chain(1, &[(g, 0, R), (g, 0, R)]),
    ];
    for &head in &heads {
        h.publish(1, head);
    }
    // A loop whose descriptors add up to more than the largest frame (the walk stops at
    // the queue size).
    let loop_head = h.rings[1].next_desc;
    h.write_desc(
        1,
        loop_head,
        big,
        4096,
        VRING_DESC_F_NEXT as u16,
        loop_head + 1,
    );
    h.write_desc(
        1,
        loop_head + 1,
        big,
        4096,
        VRING_DESC_F_NEXT as u16,
        loop_head,
    );
    h.rings[1].next_desc += 2;
    h.publish(1, loop_head);
    // A head index beyond the queue: cannot be returned.
    h.publish(1, QSIZE + 5);
    // A well-formed frame after all that.
    let ok = h.chain(1, &[(g, 112, R)]);
    h.publish(1, ok);
    h.kick(1);

    let n = heads.len() as u16 + 1;
    assert_eq!(h.used_idx(1), n + 1);
    for (i, &head) in heads.iter().chain([&loop_head]).enumerate() {
        assert_eq!(h.used_elem(1, i as u16), (u32::from(head), 0), "chain {i}");
    }
    assert_eq!(h.used_elem(1, n), (u32::from(ok), 0));
    // Only the good frame reached the host.
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]));
    assert_eq!(h.capture(200), None);
    assert_eq!(h.counter("tx_frames"), 1);
    assert_eq!(h.counter("tx_dropped"), u64::from(n) + 1);
    assert_eq!(h.counter("errors"), u64::from(n) + 1);

    // The queue still works.
    h.send(1, &good, &[]);
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]));
}

#[test]
fn transmit_yields_after_its_budget_and_comes_back() {
    let mut h = Harness::new(Setup {
        options: NetOptions {
            queue_size: 512,
            ..NetOptions::default()
        },
        ..Setup::default()
    });
    // The budget's re-arm leaves the queue notified on purpose.
    h.check_kicks = false;
    let total = TX_BUDGET.chains + 44;
    for i in 0..total {
        let mut bytes = header(0).to_vec();
        bytes.extend_from_slice(&frame(60, i as u8));
        let addr = h.data(&bytes);
        let head = h.chain(1, &[(addr, bytes.len() as u32, R)]);
        h.publish(1, head);
    }
    h.kick(1);
    assert_eq!(h.counter("tx_frames"), TX_BUDGET.chains);
    assert_eq!(h.used_idx(1), TX_BUDGET.chains as u16);
    // The queue re-armed itself: the device's loop serves its other events, then the rest.
    assert!(h.run_notified() >= 1);
    assert_eq!(h.counter("tx_frames"), total);
    assert_eq!(h.used_idx(1), total as u16);
    assert_eq!(h.counter("tx_dropped"), 0);
}
