//! The device as a whole: configuration, features and offloads, queue pairs and the control
//! queue, reset, validation, counters.

use super::*;

/// Writes a control command; returns (head, ack address).
fn send_control(h: &mut Harness, q: usize, cmd: &[u8]) -> (u16, u64) {
    let c = h.data(cmd);
    let ack = h.data(&[0xee]);
    let head = h.chain(q, &[(c, cmd.len() as u32, R), (ack, 1, W)]);
    h.publish(q, head);
    (head, ack)
}

#[test]
fn configuration_space_and_features() {
    let h = Harness::new(Setup::default());
    let rd = |off: u64, len: usize| {
        let mut v = vec![0xaau8; len];
        h.dev.read_config(off, &mut v);
        v
    };
    assert_eq!(rd(0, 6), GUEST_MAC);
    assert_eq!(rd(6, 2), [1, 0], "status: link up");
    assert_eq!(rd(8, 2), [1, 0], "max_virtqueue_pairs");
    assert_eq!(rd(3, 4), [0x12, 0x34, 0x56, 1]);
    assert_eq!(rd(10, 4), [0; 4]);
    assert_eq!(rd(u64::MAX, 2), [0; 2]);
    assert_eq!(h.dev.device_type(), TYPE_NET);
    assert_eq!(h.dev.queue_max_sizes(), vec![QSIZE; 2]);
    let f = h.dev.features();
    for bit in [
        F_VERSION_1,
        F_RING_EVENT_IDX,
        F_RING_INDIRECT_DESC,
        F_MAC,
        F_STATUS,
        F_MRG_RXBUF,
        F_CSUM,
        F_HOST_TSO4,
        F_HOST_TSO6,
        F_HOST_ECN,
        F_GUEST_CSUM,
        F_GUEST_TSO4,
        F_GUEST_TSO6,
        F_GUEST_ECN,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & (F_MQ | F_CTRL_VQ), 0);
    let fds = h.dev.host_fds();
    assert_eq!(fds, vec![(h.tap_fd(0), 0)]);

    // Configuration writes are ignored.
    let mut net = h.dev;
    net.write_config(0, &[0xff; 10]);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, GUEST_MAC);
}

#[test]
fn offered_offloads_follow_the_options() {
    let ns = NetNs::new();
    let taps = ns.run(|| {
        (0..5)
            .map(|_| Tap::open(None, 1).unwrap().remove(0))
            .collect::<Vec<_>>()
    });
    let mut taps = taps.into_iter();
    let mut features = |csum: bool, tso: bool, ufo: bool| {
        let o = NetOptions {
            csum,
            tso,
            ufo,
            ..NetOptions::default()
        };
        Net::new(vec![taps.next().unwrap()], GUEST_MAC, o)
            .unwrap()
            .features()
    };
    let tso_bits =
        F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN;
    let ufo_bits = F_HOST_UFO | F_GUEST_UFO;
    let csum_only = features(true, false, false);
    assert_ne!(csum_only & F_CSUM, 0);
    assert_ne!(csum_only & F_GUEST_CSUM, 0);
    assert_eq!(csum_only & (tso_bits | ufo_bits), 0);
    // Without checksum offload nothing else is offered (offload_csum=off).
    let none = features(false, true, true);
    assert_eq!(
        none & (F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_GUEST_TSO4 | ufo_bits),
        0
    );
    let all = features(true, true, true);
    assert_eq!(
        all & (F_GUEST_TSO4 | F_HOST_TSO4),
        F_GUEST_TSO4 | F_HOST_TSO4
    );
    assert_ne!(
        all & F_HOST_UFO,
        0,
        "the tap takes UFO frames from the guest"
    );
    // offload_tso=off keeps UFO; offload_ufo=off keeps TSO.
    let no_tso = features(true, false, true);
    assert_eq!(no_tso & tso_bits, 0);
    assert_ne!(no_tso & F_HOST_UFO, 0);
    let no_ufo = features(true, true, false);
    assert_eq!(no_ufo & ufo_bits, 0);
    assert_ne!(no_ufo & F_HOST_TSO4, 0);
    // GUEST_UFO is offered exactly when this kernel's tap takes TUN_F_UFO.
    let probe = ns.run(|| Tap::open(None, 1).unwrap().remove(0));
    let kernel_ufo = probe
        .set_offload(libc::TUN_F_CSUM | libc::TUN_F_UFO)
        .is_ok();
    assert_eq!(all & F_GUEST_UFO != 0, kernel_ufo);
}

#[test]
fn multiple_queue_pairs_and_the_control_queue() {
    let mut h = Harness::new(Setup {
        pairs: 2,
        ..Setup::default()
    });
    assert_eq!(h.dev.queue_max_sizes(), vec![QSIZE; 5]);
    let f = h.dev.features();
    assert_ne!(f & F_MQ, 0);
    assert_ne!(f & F_CTRL_VQ, 0);
    let mut pairs = [0u8; 2];
    h.dev.read_config(8, &mut pairs);
    assert_eq!(pairs, [2, 0]);
    assert_eq!(h.dev.host_fds().len(), 2);
    assert_eq!(h.dev.host_fds()[1].1, 1);

    // Until the driver asks for more, only the first pair is used: the second tap
    // queue is detached, so every frame goes to the first.
    assert!(h.dev.taps()[1].set_queue_enabled(false).is_err());
    for _ in 0..4 {
        h.post_rx(0, &[2048]);
        h.post_rx(2, &[2048]);
    }
    h.kick(0);
    h.kick(2);
    for seq in 0..4 {
        h.inject(&frame(100, seq));
    }
    h.wait_used(0, 0, 4);
    h.dev.process_host(1);
    assert_eq!(h.used_idx(2), 0);

    // VQ_PAIRS_SET: 2 is fine; 0, 3, a short command and an unknown class are not.
    let ctrl = 4;
    let cmds: [(&[u8], u8); 5] = [
        (&[4, 0, 2, 0], 0),
        (&[4, 0, 0, 0], 1),
        (&[4, 0, 3, 0], 1),
        (&[4, 0, 2], 1),
        (&[9, 9], 1),
    ];
    let mut acks = Vec::new();
    for (cmd, _) in &cmds {
        acks.push(send_control(&mut h, ctrl, cmd));
    }
    // A command without room for the acknowledgement.
    let c = h.data(&[4, 0, 1, 0]);
    let no_ack = h.chain(ctrl, &[(c, 4, R)]);
    h.publish(ctrl, no_ack);
    h.kick(ctrl);
    assert_eq!(h.used_idx(ctrl), 6);
    for (i, ((head, ack), (_, want))) in acks.iter().zip(&cmds).enumerate() {
        assert_eq!(
            h.used_elem(ctrl, i as u16),
            (u32::from(*head), 1),
            "command {i}"
        );
        assert_eq!(h.read_guest(*ack, 1)[0], *want, "command {i}");
    }
    assert_eq!(h.used_elem(ctrl, 5), (u32::from(no_ack), 0));
    // The device asked to be notified of the next command (EVENT_IDX: avail_event).
    assert_eq!(h.avail_event(ctrl), 6);
    assert!(h.irq.causes().contains(&InterruptCause::Queue(4)));
    // Both tap queues are attached now.
    assert!(h.dev.taps()[1].set_queue_enabled(true).is_err());

    // Transmitting on the second pair reaches the host.
    let f = frame(90, 7);
    let mut bytes = header(0).to_vec();
    bytes.extend_from_slice(&f);
    h.send(3, &bytes, &[12]);
    assert_eq!(h.used_idx(3), 1);
    assert_eq!(h.capture(2000).as_deref(), Some(&f[..]));

    // Back to one pair.
    let (_, ack) = send_control(&mut h, ctrl, &[4, 0, 1, 0]);
    h.kick(ctrl);
    assert_eq!(h.read_guest(ack, 1)[0], 0);
    assert!(h.dev.taps()[1].set_queue_enabled(false).is_err());
}

#[test]
fn without_mq_only_the_first_pair_is_used() {
    let mut h = Harness::new(Setup {
        pairs: 2,
        features: |f| f & !(F_MQ | F_CTRL_VQ),
        ready: Some(vec![0, 1]),
        ..Setup::default()
    });
    assert!(h.dev.taps()[1].set_queue_enabled(false).is_err());
    h.post_rx(0, &[2048]);
    h.kick(0);
    h.inject(&frame(70, 1));
    h.wait_used(0, 0, 1);
    // Queues of the second pair cannot be enabled.
    h.dev.reset();
    let f = h.dev.features() & !F_MQ;
    h.dev.ack_features(f);
    let queues = h.device_rings(None);
    assert!(h
        .dev
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .is_err());
    // With CTRL_VQ but not MQ, the control queue is queue 2.
    h.dev.reset();
    h.dev.ack_features(f);
    let queues = h.device_rings(Some(&[0, 1, 2]));
    h.dev
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .unwrap();
    let (head, ack) = send_control(&mut h, 2, &[4, 0, 2, 0]);
    h.kick(2);
    assert_eq!(h.used_elem(2, 0), (u32::from(head), 1));
    assert_eq!(
        h.read_guest(ack, 1)[0],
        1,
        "VQ_PAIRS_SET without MQ is refused"
    );
}

#[test]
fn reset_and_reactivate() {
    let mut h = Harness::new(Setup {
        pairs: 2,
        ..Setup::default()
    });
    let good = {
        let mut b = header(0).to_vec();
        b.extend_from_slice(&frame(60, 0));
        b
    };
    h.send(1, &good, &[]);
    assert!(h.capture(2000).is_some());
    h.post_rx(0, &[2048]);
    h.kick(0);
    h.dev.reset();
    assert_eq!(h.dev.common.acked_features, 0);
    // Every tap queue is attached again.
    assert!(h.dev.taps()[1].set_queue_enabled(true).is_err());
    // Nothing is served while reset.
    let stale = h.chain(1, &[(h.buf_next, 0, R)]);
    h.publish(1, stale);
    h.dev.process_queue(1);
    h.dev.process_host(0);
    h.inject(&frame(60, 1));
    h.dev.process_host(0);
    assert_eq!(h.used_idx(1), 1);

    let f = h.dev.features();
    h.dev.ack_features(f);
    let queues = h.device_rings(None);
    h.dev
        .activate(h.mem.clone(), h.irq.clone(), queues)
        .unwrap();
    let post = h.post_rx(0, &[2048]);
    h.kick(0);
    // Frames flow again: the one that waited in the tap if the kernel steered it to the
    // first queue (a multi-queue tap picks a queue by flow hash), else a new one.
    h.inject(&frame(60, 2));
    h.wait_used(0, 0, 1);
    let marker = h.received(&post, 27)[26];
    assert!(marker == 1 || marker == 2, "frame {marker} received");
    h.send(1, &good, &[]);
    assert_eq!(h.used_idx(1), 1);
    assert!(h.capture(2000).is_some());
}

#[test]
fn activation_is_validated() {
    let mut h = Harness::new(Setup::default());
    h.dev.reset();
    let f = h.dev.features();
    h.dev.ack_features(f);
    let irq: Arc<dyn VirtioInterrupt> = h.irq.clone();
    // Queue index out of range, or given twice.
    let mut queues = h.device_rings(None);
    queues[1].index = 2;
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    let mut queues = h.device_rings(None);
    queues[1].index = 0;
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    // No queue enabled.
    let queues = h.device_rings(Some(&[]));
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    // A ring outside guest memory.
    let mut queues = h.device_rings(None);
    queues[0]
        .queue
        .try_set_used_ring_address(GuestAddress(OUTSIDE))
        .unwrap();
    assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
    // An inactive device ignores everything.
    h.dev.process_queue(0);
    h.dev.process_queue(1);
    h.dev.process_queue(9);
    h.dev.process_host(0);
    h.dev.process_host(7);
    // Only the transmit queue enabled: transmitting works, receiving is skipped.
    let queues = h.device_rings(Some(&[1]));
    h.dev.activate(h.mem.clone(), irq, queues).unwrap();
    h.dev.process_host(0);
    h.dev.process_queue(0);
    let mut b = header(0).to_vec();
    b.extend_from_slice(&frame(60, 0));
    h.send(1, &b, &[]);
    assert_eq!(h.used_idx(1), 1);
}

#[test]
fn options_are_validated() {
    assert_eq!(
        Net::new(Vec::new(), GUEST_MAC, NetOptions::default())
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    let ns = NetNs::new();
    for (qs, mac) in [
        (100, GUEST_MAC),
        (0, GUEST_MAC),
        (1, GUEST_MAC),
        (256, [1, 2, 3, 4, 5, 6]),
    ] {
        let tap = ns.run(|| Tap::open(None, 1).unwrap().remove(0));
        let o = NetOptions {
            queue_size: qs,
            ..NetOptions::default()
        };
        let err = Net::new(vec![tap], mac, o).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{qs} {mac:?}");
    }
    let tap = ns.run(|| Tap::open(None, 1).unwrap().remove(0));
    let net = Net::new(vec![tap], GUEST_MAC, NetOptions::default()).unwrap();
    assert_eq!(net.queue_max_sizes(), vec![256, 256]);
    assert_eq!(net.mac(), GUEST_MAC);
    assert_eq!(net.queue_pairs(), 1);
}

#[test]
fn mac_addresses() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let mac = random_mac();
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(mac[0] & 2, 2, "locally administered");
        seen.insert(mac);
    }
    assert!(seen.len() > 95);
    assert_eq!(parse_mac("52:54:00:12:34:56"), Ok(GUEST_MAC));
    assert_eq!(
        parse_mac("52:54:00:AB:cd:ef").unwrap()[3..],
        [0xab, 0xcd, 0xef]
    );
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52-54-00-12-34-56",
        "5:54:00:12:34:56",
        "52:54:00:12:34:5g",
        "+2:54:00:12:34:56",
    ] {
        assert!(parse_mac(bad).is_err(), "{bad:?}");
    }
    assert!(parse_mac("01:00:5e:00:00:01")
        .unwrap_err()
        .contains("multicast"));
    assert_eq!(format_mac(&GUEST_MAC), "52:54:00:12:34:56");
    assert_eq!(
        parse_mac(&format_mac(&random_mac())).map(|m| m[0] & 3),
        Ok(2)
    );
}

#[test]
fn counters_are_reported() {
    let h = Harness::new(Setup::default());
    let c = h.dev.counters();
    for name in [
        "rx_bytes",
        "rx_frames",
        "rx_dropped",
        "tx_bytes",
        "tx_frames",
        "tx_dropped",
        "errors",
        "rx_rate_limited",
        "tx_rate_limited",
    ] {
        assert_eq!(c[name], 0, "{name}");
    }
    assert_eq!(c.len(), 9);
}
