//! Receive: frames from the tap into the driver's buffers, and interrupt suppression.

use super::*;

#[test]
fn arp_request_gets_the_host_reply() {
    let mut h = Harness::new(Setup {
        ip: true,
        ..Setup::default()
    });
    let (gip, hip) = (h.guest_ip(), h.host_ip());
    let request = arp(1, [0xff; 6], GUEST_MAC, gip, [0; 6], hip);
    assert_eq!(request.len(), 42);

    // Receive buffers first, as a driver does.
    let posts: Vec<RxPost> = (0..4).map(|_| h.post_rx(0, &[2048])).collect();
    h.kick(0);
    assert_eq!(h.used_idx(0), 0);

    // TX: the header and the frame in two descriptors.
    let mut bytes = header(0).to_vec();
    bytes.extend_from_slice(&request);
    let head = h.send(1, &bytes, &[12]);
    assert_eq!(h.used_idx(1), 1);
    assert_eq!(h.used_elem(1, 0), (u32::from(head), 0));
    // The host side saw exactly the frame the guest sent.
    let seen = h.capture(2000).expect("the host saw no frame");
    assert_eq!(seen, request);

    // RX: the kernel's reply, straight into the first buffer.
    h.wait_used(0, 0, 1);
    let (id, len) = h.used_elem(0, 0);
    assert_eq!(id, u32::from(posts[0].head));
    let reply = arp(2, GUEST_MAC, h.host.mac, hip, GUEST_MAC, gip);
    assert_eq!(len as usize, 12 + reply.len());
    let got = h.received(&posts[0], len as usize);
    assert_eq!(&got[..12], &header(1), "header");
    assert_eq!(&got[12..], &reply[..], "ARP reply");
    assert_eq!(&got[12..18], &GUEST_MAC, "reply's destination");
    assert_eq!(&got[12 + 32..12 + 38], &GUEST_MAC, "reply's target MAC");
    // Nothing else came.
    assert_eq!(h.used_idx(0), 1);
    assert_eq!(h.irq.count(), 2);

    assert_eq!(h.counter("tx_frames"), 1);
    assert_eq!(h.counter("tx_bytes"), 42);
    assert_eq!(h.counter("rx_frames"), 1);
    assert_eq!(h.counter("rx_bytes"), 42);
    assert_eq!(h.counter("errors"), 0);
    assert_eq!(h.dev.rx_held(0), (3, 0));
}

#[test]
fn hostile_receive_chains_are_returned_and_the_frame_goes_to_the_next() {
    let mut h = Harness::new(Setup::default());
    let rbuf = h.alloc(2048);
    let wbuf = h.alloc(2048);
    let small = h.alloc(8);
    let bad = vec![
        h.chain(0, &[(rbuf, 2048, R)]),
        h.chain(0, &[(wbuf, 100, W), (rbuf, 100, R)]),
        h.chain(0, &[(OUTSIDE, 2048, W)]),
        h.chain(0, &[(MEM_END - 100, 2048, W)]),
        h.chain(0, &[(small, 8, W)]),
    ];
    for &head in &bad {
        h.publish(0, head);
    }
    // A good chain whose buffer straddles the two memory regions.
    let at = REGION - 50;
    let good = h.chain(0, &[(at, 2048, W)]);
    h.publish(0, good);
    h.kick(0);
    // The bad chains came back at once, empty.
    assert_eq!(h.used_idx(0), bad.len() as u16);
    for (i, &head) in bad.iter().enumerate() {
        assert_eq!(h.used_elem(0, i as u16), (u32::from(head), 0), "chain {i}");
    }
    assert_eq!(h.counter("errors"), bad.len() as u64);

    let f = frame(200, 3);
    h.inject(&f);
    h.wait_used(0, 0, bad.len() as u16 + 1);
    assert_eq!(h.used_elem(0, bad.len() as u16), (u32::from(good), 212));
    let got = h.read_guest(at, 212);
    assert_eq!(&got[..12], &header(1));
    assert_eq!(&got[12..], &f[..]);
    assert_eq!(h.counter("rx_frames"), 1);
}

#[test]
fn a_chain_too_small_drops_the_frame_but_stays() {
    let mut h = Harness::new(Setup {
        features: |f| f & !F_MRG_RXBUF,
        ..Setup::default()
    });
    let post = h.post_rx(0, &[60, 40]);
    h.kick(0);
    h.inject(&frame(300, 1));
    assert!(h.pump_until(0, |h| h.counter("rx_dropped") == 1));
    assert_eq!(h.used_idx(0), 0);
    assert_eq!(h.dev.rx_held(0), (1, 0));
    // An exact fit goes into the same chain.
    let f = frame(88, 2);
    h.inject(&f);
    h.wait_used(0, 0, 1);
    assert_eq!(h.used_elem(0, 0), (u32::from(post.head), 100));
    let got = h.received(&post, 100);
    assert_eq!(&got[..12], &header(1));
    assert_eq!(&got[12..], &f[..]);
    assert_eq!(h.counter("rx_frames"), 1);
    assert_eq!(h.counter("rx_dropped"), 1);
    assert_eq!(h.counter("errors"), 0);
}

#[test]
fn without_receive_buffers_the_device_stops_reading() {
    let mut h = Harness::new(Setup::default());
    let total = 200u16;
    for seq in 0..total {
        h.inject(&frame(100, seq as u8));
    }
    assert!(readable(h.tap_fd(0), 2000));
    for _ in 0..10 {
        h.dev.process_host(0);
    }
    // Nothing was read: the frames wait in the tap, not in the VMM.
    assert_eq!(h.counter("rx_frames"), 0);
    assert_eq!(h.counter("rx_dropped"), 0);
    assert_eq!(h.dev.rx_held(0), (0, 0));
    assert!(readable(h.tap_fd(0), 0));
    // The device asked to be notified when the driver adds buffers (EVENT_IDX:
    // avail_event = the next available index, 0).
    assert_eq!(h.avail_event(0), 0);

    // Refilling with a few buffers delivers that many frames, in order, then stops.
    let posts: Vec<RxPost> = (0..5).map(|_| h.post_rx(0, &[2048])).collect();
    h.kick(0);
    assert_eq!(h.used_idx(0), 5);
    for (i, p) in posts.iter().enumerate() {
        assert_eq!(h.used_elem(0, i as u16), (u32::from(p.head), 112));
        assert_eq!(h.received(p, 27)[26], i as u8);
    }
    assert_eq!(h.dev.rx_held(0), (0, 0));
    assert!(readable(h.tap_fd(0), 0));
    assert_eq!(h.avail_event(0), 5);
    assert_eq!(h.irq.count(), 1);

    // Then the rest, one ring at a time.
    let mut seq = 5u16;
    while seq < total {
        let n = (total - seq).min(QSIZE);
        let posts: Vec<RxPost> = (0..n).map(|_| h.post_rx(0, &[2048])).collect();
        h.kick(0);
        for p in &posts {
            assert_eq!(h.received(p, 27)[26], seq as u8);
            seq += 1;
        }
    }
    assert_eq!(h.used_idx(0), total);
    assert_eq!(h.counter("rx_frames"), u64::from(total));
    assert!(!readable(h.tap_fd(0), 0));
}

#[test]
fn mergeable_buffers_carry_a_frame_over_several_chains() {
    let mut h = Harness::new(Setup::default());
    assert_ne!(h.dev.common.acked_features & F_MRG_RXBUF, 0);
    let posts: Vec<RxPost> = (0..3).map(|_| h.post_rx(0, &[100, 156])).collect();
    h.kick(0);
    let f = frame(600, 1);
    h.inject(&f);
    h.wait_used(0, 0, 3);
    let lens: Vec<u32> = (0..3).map(|i| h.used_elem(0, i).1).collect();
    assert_eq!(lens, [256, 256, 100]);
    let mut got = Vec::new();
    for (p, &l) in posts.iter().zip(&lens) {
        assert_eq!(h.used_elem(0, got.len() as u16 / 256).0, u32::from(p.head));
        got.extend(h.received(p, l as usize));
    }
    assert_eq!(&got[..12], &header(3));
    assert_eq!(&got[12..], &f[..]);
    assert_eq!(h.irq.count(), 1);

    // Not enough buffers yet: the frame waits, partly placed, until more come.
    let first = h.post_rx(0, &[256]);
    h.kick(0);
    let f = frame(700, 2);
    h.inject(&f);
    assert!(h.pump_until(0, |h| h.dev.rx_held(0) == (0, 1)));
    assert_eq!(h.used_idx(0), 3);
    // A second frame waits in the tap meanwhile.
    let f2 = frame(80, 3);
    h.inject(&f2);
    let more: Vec<RxPost> = (0..3).map(|_| h.post_rx(0, &[256])).collect();
    h.kick(0);
    h.wait_used(0, 0, 7);
    let lens: Vec<u32> = (3..7).map(|i| h.used_elem(0, i).1).collect();
    assert_eq!(lens, [256, 256, 200, 92]);
    let mut got = h.received(&first, 256);
    got.extend(h.received(&more[0], 256));
    got.extend(h.received(&more[1], 200));
    assert_eq!(&got[..12], &header(3));
    assert_eq!(&got[12..], &f[..]);
    let got2 = h.received(&more[2], 92);
    assert_eq!(&got2[..12], &header(1));
    assert_eq!(&got2[12..], &f2[..]);
    assert_eq!(h.counter("rx_frames"), 3);
    assert_eq!(h.counter("rx_bytes"), 600 + 700 + 80);
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped() {
    let mut h = Harness::new(Setup {
        options: NetOptions {
            queue_size: 4,
            ..NetOptions::default()
        },
        ..Setup::default()
    });
    let posts: Vec<RxPost> = (0..4).map(|_| h.post_rx(0, &[32])).collect();
    h.kick(0);
    h.inject(&frame(200, 1));
    assert!(h.pump_until(0, |h| h.counter("rx_dropped") == 1));
    assert_eq!(h.used_idx(0), 0);
    assert_eq!(h.dev.rx_held(0), (4, 0));
    // The chains serve the next frame.
    let f = frame(50, 2);
    h.inject(&f);
    h.wait_used(0, 0, 2);
    assert_eq!(h.used_elem(0, 0), (u32::from(posts[0].head), 32));
    assert_eq!(h.used_elem(0, 1), (u32::from(posts[1].head), 30));
    let mut got = h.received(&posts[0], 32);
    got.extend(h.received(&posts[1], 30));
    assert_eq!(&got[..12], &header(2));
    assert_eq!(&got[12..], &f[..]);
}

#[test]
fn interrupts_are_suppressed_with_event_idx() {
    let mut h = Harness::new(Setup::default());
    let good = {
        let mut b = header(0).to_vec();
        b.extend_from_slice(&frame(60, 0));
        b
    };
    // used_event 0: the first used buffer (index 0) interrupts, the next do not.
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 1);
    // The device asks to be notified of the next chain (avail_event).
    assert_eq!(h.avail_event(1), 1);
    h.send(1, &good, &[]);
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 1);
    // The driver asks for an interrupt once entry 3 is used.
    h.set_used_event(1, 3);
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 2);
    assert_eq!(
        h.irq.causes(),
        vec![InterruptCause::Queue(1), InterruptCause::Queue(1)]
    );

    // Receive side: the same rule.
    for _ in 0..4 {
        h.post_rx(0, &[2048]);
    }
    h.kick(0);
    h.inject(&frame(60, 1));
    h.wait_used(0, 0, 1);
    assert_eq!(h.irq.count(), 3);
    h.inject(&frame(60, 2));
    h.wait_used(0, 0, 2);
    assert_eq!(h.irq.count(), 3);
    h.set_used_event(0, 2);
    h.inject(&frame(60, 3));
    h.wait_used(0, 0, 3);
    assert_eq!(h.irq.count(), 4);
    assert_eq!(h.irq.causes()[3], InterruptCause::Queue(0));
}

#[test]
fn interrupts_follow_avail_flags_without_event_idx() {
    let mut h = Harness::new(Setup {
        features: |f| f & !F_RING_EVENT_IDX,
        ..Setup::default()
    });
    let good = {
        let mut b = header(0).to_vec();
        b.extend_from_slice(&frame(60, 0));
        b
    };
    h.set_avail_flags(1, VRING_AVAIL_F_NO_INTERRUPT as u16);
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 0);
    h.set_avail_flags(1, 0);
    h.send(1, &good, &[]);
    h.send(1, &good, &[]);
    assert_eq!(h.irq.count(), 2);
    // While it has receive buffers and nothing to read, the device asks not to be
    // notified; once they run out it asks again.
    h.post_rx(0, &[2048]);
    h.kick(0);
    assert_eq!(h.used_flags(0), 1);
    h.inject(&frame(60, 1));
    h.wait_used(0, 0, 1);
    assert_eq!(h.used_flags(0), 0);
    assert_eq!(h.irq.count(), 3);
}

#[test]
fn guest_checksum_offload_follows_negotiation() {
    for offload in [false, true] {
        let mut h = Harness::new(Setup {
            ip: true,
            features: if offload {
                |f| f
            } else {
                |f| f & !(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN)
            },
            ..Setup::default()
        });
        let (gip, hip) = (h.guest_ip(), h.host_ip());
        let tap = h.dev.taps()[0].name().to_string();
        let gip_s = Ipv4Addr::from(gip).to_string();
        h.host.ns.ip(&[
            "neigh",
            "add",
            &gip_s,
            "lladdr",
            &format_mac(&GUEST_MAC),
            "dev",
            &tap,
        ]);
        let post = h.post_rx(0, &[2048]);
        h.kick(0);
        h.host.ns.run(move || {
            let s = std::net::UdpSocket::bind((Ipv4Addr::from(hip), 0)).unwrap();
            s.send_to(&[7u8; 100], (Ipv4Addr::from(gip), 9)).unwrap();
        });
        h.wait_used(0, 0, 1);
        let (_, len) = h.used_elem(0, 0);
        // Ethernet 14 + IPv4 20 + UDP 8 + 100.
        assert_eq!(len, 12 + 142);
        let got = h.received(&post, len as usize);
        assert_eq!(&got[12..18], &GUEST_MAC);
        assert_eq!(&got[24..26], &[0x08, 0x00]);
        let flags = got[0];
        let udp_csum = u16::from_be_bytes([got[12 + 34 + 6], got[12 + 34 + 7]]);
        if offload {
            // Partial checksum: the driver is told where to finish it.
            assert_eq!(flags, 1, "VIRTIO_NET_HDR_F_NEEDS_CSUM expected");
            let csum_start = u16::from_le_bytes([got[6], got[7]]);
            let csum_offset = u16::from_le_bytes([got[8], got[9]]);
            assert_eq!((csum_start, csum_offset), (34, 6));
        } else {
            assert_eq!(flags & 1, 0, "a complete checksum expected");
            assert_ne!(udp_csum, 0);
        }
    }
}
