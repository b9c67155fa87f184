//! Token-bucket rate limiting of a device's I/O (Cloud Hypervisor's `rate_limiter_config`):
//! a bucket of bytes and one of operations, each holding `size` tokens refilled over
//! `refill_time` ms, with a `one_time_burst` of extra tokens spent first.
//!
//! A request is admitted when every bucket holds its tokens, or, for a request larger than a
//! whole bucket, when that bucket is full: it then leaves the bucket in debt, so that the
//! long-run rate holds whatever the request sizes. A request not admitted stays on its queue,
//! and the device's timer is armed for when the tokens will be there. Devices of one
//! `--rate-limit-group` share their [`Buckets`], each with a timer of its own.
//!
//! Firecracker's and Cloud Hypervisor's limiters live in their own crates, tied to their
//! device models; this one is small enough to own, and works on any clock instant, which
//! lets its arithmetic be tested without waiting.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// One bucket's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketParams {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Extra tokens, spent before the bucket's and never refilled.
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket.
    pub refill_time_ms: u64,
}

/// A token bucket.
#[derive(Debug)]
struct TokenBucket {
    size: u64,
    burst: u64,
    refill_ns: u128,
    // Tokens held; below zero after a request larger than the bucket.
    budget: i128,
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` for parameters that limit nothing (a size or refill time
    /// of 0, as Cloud Hypervisor reads them).
    fn new(p: BucketParams, now: Instant) -> Option<Self> {
        if p.size == 0 || p.refill_time_ms == 0 {
            return None;
        }
        Some(TokenBucket {
            size: p.size,
            burst: p.one_time_burst,
            refill_ns: u128::from(p.refill_time_ms) * 1_000_000,
            budget: i128::from(p.size),
            last_refill: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let size = i128::from(self.size);
        if self.budget >= size {
            self.last_refill = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_refill).as_nanos();
        let tokens = elapsed * u128::from(self.size) / self.refill_ns;
        if tokens == 0 {
            return;
        }
        // Time moves on by what the tokens took to come, so no fraction is lost.
        let used_ns = tokens * self.refill_ns / u128::from(self.size);
        self.last_refill += Duration::from_nanos(used_ns.min(u128::from(u64::MAX)) as u64);
        self.budget = (self.budget + tokens as i128).min(size);
        if self.budget == size {
            self.last_refill = now;
        }
    }

    fn holds(&self, tokens: u64) -> bool {
        let available = self.budget + i128::from(self.burst);
        available >= i128::from(tokens)
            || (tokens > self.size && self.budget >= i128::from(self.size))
    }

    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(tokens - from_burst);
    }

    /// How long until [`TokenBucket::holds`] would say yes for `tokens`.
    fn wait_for(&self, tokens: u64, now: Instant) -> Duration {
        let needed = i128::from(tokens.min(self.size)) - self.budget - i128::from(self.burst);
        if needed <= 0 {
            return Duration::ZERO;
        }
        let size = u128::from(self.size);
        let ns = (needed as u128 * self.refill_ns).div_ceil(size);
        let since = now.saturating_duration_since(self.last_refill).as_nanos();
        let left = ns.saturating_sub(since).max(1);
        Duration::from_nanos(left.min(u128::from(u64::MAX)) as u64)
    }
}

/// The buckets of one limiter (or of one group of devices).
#[derive(Debug, Default)]
pub struct Buckets {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl Buckets {
    /// Full buckets for bytes (`bandwidth`) and operations (`ops`); either may be absent.
    pub fn new(bandwidth: Option<BucketParams>, ops: Option<BucketParams>) -> Self {
        let now = Instant::now();
        Buckets {
            bandwidth: bandwidth.and_then(|p| TokenBucket::new(p, now)),
            ops: ops.and_then(|p| TokenBucket::new(p, now)),
        }
    }

    /// Whether any bucket limits anything.
    pub fn limits(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Takes `bytes` and one operation at `now`; or, leaving every bucket as it was, says
    /// how long until they would be there.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let wanted = [(&mut self.bandwidth, bytes), (&mut self.ops, 1)];
        let mut wait = Duration::ZERO;
        for (bucket, tokens) in wanted {
            if let Some(b) = bucket {
                b.refill(now);
                if !b.holds(tokens) {
                    wait = wait.max(b.wait_for(tokens, now));
                }
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(1);
        }
        Ok(())
    }
}

impl Buckets {
    /// Takes `bytes` already moved (a frame received, whose size was not known before),
    /// whatever the bucket holds: a debt the next requests wait for.
    pub fn charge(&mut self, bytes: u64, now: Instant) {
        if let Some(b) = &mut self.bandwidth {
            b.refill(now);
            b.take(bytes);
        }
    }
}

/// One device's limiter: its (possibly shared) buckets and its own timer.
pub struct RateLimiter {
    buckets: Arc<Mutex<Buckets>>,
    timer: TimerFd,
    blocked: bool,
    throttled: u64,
}

impl RateLimiter {
    /// A limiter over `buckets`, with a non-blocking timer.
    pub fn new(buckets: Arc<Mutex<Buckets>>) -> io::Result<Self> {
        let timer = TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: F_SETFL on the timer's own descriptor; no memory is passed.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RateLimiter {
            buckets,
            timer,
            blocked: false,
            throttled: 0,
        })
    }

    /// Admits a request of `bytes` (and one operation); when it must wait, arms the timer
    /// and says no, and keeps saying no until [`RateLimiter::timer_fired`].
    pub fn admit(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let verdict = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(bytes, Instant::now());
        match verdict {
            Ok(()) => true,
            Err(wait) => {
                self.throttled += 1;
                match self.timer.reset(wait, None) {
                    Ok(()) => self.blocked = true,
                    // Without a timer nothing would wake the queue: let the request through.
                    Err(e) => {
                        log::warn!("rate limiter: cannot arm the timer: {e}");
                        return true;
                    }
                }
                false
            }
        }
    }

    /// Takes `bytes` already moved from the byte bucket (see [`Buckets::charge`]).
    pub fn charge(&mut self, bytes: u64) {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .charge(bytes, Instant::now());
    }

    /// The timer's descriptor, readable when the device should try again.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// The timer fired (or the device wants to try again): consumes the expiry.
    pub fn timer_fired(&mut self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count` from the timer's non-blocking descriptor.
        unsafe {
            libc::read(
                self.timer.as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            )
        };
        self.blocked = false;
    }

    /// Whether requests wait for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Requests made to wait so far.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// Forgets a pending wait (device reset); the buckets keep their tokens. The timer is
    /// left to expire: a reset runs on the vCPU thread whose filter has no timer calls, and a
    /// late expiry only makes the device look at queues it no longer has.
    pub fn reset(&mut self) {
        self.blocked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(size: u64, burst: u64, refill_time_ms: u64) -> BucketParams {
        BucketParams {
            size,
            one_time_burst: burst,
            refill_time_ms,
        }
    }

    #[test]
    fn a_bucket_of_zero_limits_nothing() {
        let b = Buckets::new(Some(params(0, 0, 100)), Some(params(10, 0, 0)));
        assert!(!b.limits());
    }

    #[test]
    fn operations_are_admitted_at_the_refill_rate() {
        let t0 = Instant::now();
        // 10 operations per 100 ms.
        let mut b = Buckets::new(None, Some(params(10, 0, 100)));
        for _ in 0..10 {
            assert!(b.admit(0, t0).is_ok());
        }
        let wait = b.admit(0, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        // 10 ms later one more token has come, and only one.
        let t1 = t0 + Duration::from_millis(10);
        assert!(b.admit(0, t1).is_ok());
        assert!(b.admit(0, t1).is_err());
        // A long pause refills the bucket, never past its size.
        let t2 = t1 + Duration::from_secs(10);
        for _ in 0..10 {
            assert!(b.admit(0, t2).is_ok());
        }
        assert!(b.admit(0, t2).is_err());
    }

    #[test]
    fn the_one_time_burst_goes_first_and_does_not_come_back() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Some(params(1000, 4000, 1000)), None);
        assert!(b.admit(5000, t0).is_ok(), "burst and bucket together");
        assert!(b.admit(1, t0).is_err());
        let t1 = t0 + Duration::from_secs(5);
        assert!(b.admit(1000, t1).is_ok());
        assert!(b.admit(1, t1).is_err(), "the burst is gone for good");
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_when_full_and_leaves_a_debt() {
        let t0 = Instant::now();
        // 1000 bytes per second.
        let mut b = Buckets::new(Some(params(1000, 0, 1000)), None);
        assert!(b.admit(3000, t0).is_ok(), "a full bucket lets it through");
        // 2000 bytes of debt and 1000 to fill: three seconds before the next large one.
        assert!(b.admit(3000, t0 + Duration::from_millis(2900)).is_err());
        assert!(b.admit(3000, t0 + Duration::from_millis(3000)).is_ok());
    }

    #[test]
    fn a_refused_request_takes_nothing_from_any_bucket() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Some(params(100, 0, 1000)), Some(params(5, 0, 1000)));
        assert!(b.admit(60, t0).is_ok());
        assert!(b.admit(60, t0).is_err(), "not enough bytes");
        // The operation the refused request would have used is still there.
        for _ in 0..4 {
            assert!(b.admit(10, t0).is_ok());
        }
        assert!(b.admit(0, t0).is_err());
    }

    #[test]
    fn bytes_charged_after_the_fact_are_a_debt() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Some(params(1000, 0, 1000)), None);
        b.charge(1500, t0);
        assert!(b.admit(0, t0).is_err(), "in debt: nothing passes");
        assert!(b.admit(0, t0 + Duration::from_millis(499)).is_err());
        assert!(b.admit(0, t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn a_limiter_waits_for_its_timer_and_a_group_shares_its_buckets() {
        let shared = Arc::new(Mutex::new(Buckets::new(None, Some(params(2, 0, 50)))));
        let mut a = RateLimiter::new(shared.clone()).unwrap();
        let mut b = RateLimiter::new(shared).unwrap();
        assert!(a.admit(0));
        assert!(b.admit(0));
        assert!(!a.admit(0), "the group's two operations are spent");
        assert!(a.is_blocked() && !b.is_blocked());
        assert_eq!(a.throttled(), 1);
        // The timer becomes readable once a token is back.
        let mut pfd = libc::pollfd {
            fd: a.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 2000) };
        assert_eq!(ready, 1);
        a.timer_fired();
        assert!(!a.is_blocked());
        assert!(a.admit(0));
        a.reset();
        assert!(!a.is_blocked());
    }
}
