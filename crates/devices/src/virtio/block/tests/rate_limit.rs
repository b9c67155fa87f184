//! Requests held back by a rate limiter stay on the ring, untouched, and are served when the
//! limiter's timer fires.
use super::*;
use crate::rate_limiter::{BucketParams, Buckets, RateLimiter};
use std::sync::Mutex;
use std::time::Duration;

fn wait_readable(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 5000) == 1 }
}

#[test]
fn requests_wait_for_tokens_on_the_ring_and_go_on_when_the_timer_fires() {
    let mut h = Harness::new(rw_options(), &disk(64));
    // Two operations per 100 ms, and 4 KiB per 100 ms.
    let ops = BucketParams {
        size: 2,
        one_time_burst: 0,
        refill_time_ms: 100,
    };
    let bytes = BucketParams {
        size: 4096,
        one_time_burst: 0,
        refill_time_ms: 100,
    };
    let buckets = Buckets::new(Some(bytes), Some(ops));
    h.dev
        .set_rate_limiter(RateLimiter::new(Arc::new(Mutex::new(buckets))).unwrap());
    let timer = h
        .dev
        .host_fds()
        .into_iter()
        .find(|&(_, token)| token == LIMIT_TOKEN)
        .expect("the limiter's timer is watched")
        .0;

    let reqs: Vec<Req> = (0..3)
        .map(|i| h.request(0, VIRTIO_BLK_T_IN, i * 8, &[512], W))
        .collect();
    h.kick(0);
    assert_eq!(h.status(&reqs[0]), S_OK);
    assert_eq!(h.status(&reqs[1]), S_OK);
    assert_eq!(h.status(&reqs[2]), 0xff, "the third waits, untouched");
    assert_eq!(h.used_idx(0), 2);
    // A notification meanwhile serves nothing more.
    h.kick(0);
    assert_eq!(h.used_idx(0), 2);

    assert!(wait_readable(timer), "the timer fires once a token is back");
    h.dev.process_host(LIMIT_TOKEN);
    assert_eq!(h.status(&reqs[2]), S_OK);
    assert_eq!(h.used_len(0, reqs[2].head), 513);
    assert_eq!(h.dev.counters()["rate_limited"], 1);
    assert_eq!(h.dev.counters()["read_ops"], 3);

    // 8 KiB in one request is more than the byte bucket holds: it passes once the bucket
    // is full, and the next request waits for the debt to be paid.
    std::thread::sleep(Duration::from_millis(150));
    let big = h.request(0, VIRTIO_BLK_T_IN, 0, &[8192], W);
    let after = h.request(0, VIRTIO_BLK_T_IN, 0, &[512], W);
    h.kick(0);
    assert_eq!(h.status(&big), S_OK);
    assert_eq!(h.status(&after), 0xff);
    assert!(wait_readable(timer));
    h.dev.process_host(LIMIT_TOKEN);
    if h.status(&after) == 0xff {
        // The debt (4 KiB) takes another 100 ms to pay; the timer says when.
        assert!(wait_readable(timer));
        h.dev.process_host(LIMIT_TOKEN);
    }
    assert_eq!(h.status(&after), S_OK);
}
