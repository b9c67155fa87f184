//! Rate limiting: frames beyond the tokens wait (a transmit chain on its ring, a received
//! frame in the tap) and go on when the limiter's timer fires.

use super::*;

fn timer_fires(h: &Harness, token: u32) -> bool {
    let fd = h
        .dev
        .host_fds()
        .into_iter()
        .find(|&(_, t)| t == token)
        .expect("the timer is watched")
        .0;
    readable(fd, 3000)
}

#[test]
fn frames_beyond_the_tokens_wait_in_both_directions() {
    let mut h = Harness::new(Setup {
        frames_per_500ms: Some(2),
        ..Setup::default()
    });
    // Transmit: of three frames two leave at once, the third when the timer fires.
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100, i)).collect();
    for f in &frames {
        let mut bytes = header(0).to_vec();
        bytes.extend_from_slice(f);
        h.send(1, &bytes, &[]);
    }
    assert_eq!(h.capture(2000).as_deref(), Some(&frames[0][..]));
    assert_eq!(h.capture(2000).as_deref(), Some(&frames[1][..]));
    assert_eq!(h.used_idx(1), 2, "the third chain waits on the ring");
    assert!(timer_fires(&h, TX_LIMIT_TOKEN));
    h.dev.process_host(TX_LIMIT_TOKEN);
    assert_eq!(h.capture(2000).as_deref(), Some(&frames[2][..]));
    assert_eq!(h.used_idx(1), 3);
    assert_eq!(h.counter("tx_rate_limited"), 1);

    // Receive: three frames arrive, two reach the driver, the third stays in the tap
    // until the timer fires.
    let posts: Vec<RxPost> = (0..3).map(|_| h.post_rx(0, &[2048])).collect();
    let incoming: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let mut f = frame(80, 10 + i);
            f[..6].copy_from_slice(&GUEST_MAC);
            f
        })
        .collect();
    for f in &incoming {
        h.inject(f);
    }
    h.wait_used(0, 0, 2);
    assert_eq!(h.used_idx(0), 2);
    assert!(timer_fires(&h, RX_LIMIT_TOKEN));
    h.dev.process_host(RX_LIMIT_TOKEN);
    assert_eq!(h.used_idx(0), 3);
    let got = h.received(&posts[2], 12 + 80);
    assert_eq!(&got[12..], &incoming[2][..]);
    assert_eq!(h.counter("rx_rate_limited"), 1);
}
