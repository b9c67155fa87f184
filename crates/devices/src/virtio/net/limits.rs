//! Rate limiting of a network device (`rate_limiter_config`): one limiter for what the guest
//! sends and one for what it receives, each with its own timer. A transmit chain waits on
//! its ring for the tokens; receiving stops, leaving frames in the tap, until they are back.

use super::*;
use crate::rate_limiter::RateLimiter;

/// Host-descriptor tokens of the two timers (a tap's token is its pair's number).
pub(super) const RX_LIMIT_TOKEN: u32 = u32::MAX - 1;
pub(super) const TX_LIMIT_TOKEN: u32 = u32::MAX;

/// The device's two limiters.
pub(super) struct Limiters {
    pub(super) rx: RateLimiter,
    pub(super) tx: RateLimiter,
}

impl Net {
    /// Limits what the guest receives with `rx` and what it sends with `tx` (bytes, and
    /// one operation per frame).
    pub fn set_rate_limiters(&mut self, rx: RateLimiter, tx: RateLimiter) {
        self.limiters = Some(Limiters { rx, tx });
    }

    pub(super) fn limiter_fds(&self) -> Vec<(RawFd, u32)> {
        self.limiters.as_ref().map_or(Vec::new(), |l| {
            vec![
                (l.rx.timer_fd(), RX_LIMIT_TOKEN),
                (l.tx.timer_fd(), TX_LIMIT_TOKEN),
            ]
        })
    }

    /// If `token` is a limiter's timer: its tokens are back, so what waited goes on, on
    /// every pair; true then.
    pub(super) fn limiter_timer(&mut self, token: u32) -> bool {
        let Some(l) = self.limiters.as_mut() else {
            return false;
        };
        let pairs = self.taps.len();
        match token {
            RX_LIMIT_TOKEN => {
                l.rx.timer_fired();
                (0..pairs).for_each(|pair| self.process_rx(pair));
            }
            TX_LIMIT_TOKEN => {
                l.tx.timer_fired();
                (0..pairs).for_each(|pair| self.process_tx(pair));
            }
            _ => return false,
        }
        true
    }

    /// Frames made to wait: received, sent.
    pub(super) fn limited(&self) -> (u64, u64) {
        self.limiters
            .as_ref()
            .map_or((0, 0), |l| (l.rx.throttled(), l.tx.throttled()))
    }
}
