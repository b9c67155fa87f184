//! The rate limiters of a VM's devices: a device's own (`rate_limiter_config`), or the
//! buckets its disk group shares (`rate_limit_groups`, `--rate-limit-group`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use config::{RateLimiterConfig, TokenBucketConfig, VmConfig};
use devices::rate_limiter::{BucketParams, Buckets, RateLimiter};

/// The groups of a VM, each with its shared buckets.
#[derive(Default)]
pub struct RateLimits {
    groups: HashMap<String, Arc<Mutex<Buckets>>>,
}

fn params(b: &TokenBucketConfig) -> BucketParams {
    BucketParams {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    }
}

fn buckets(c: &RateLimiterConfig) -> Buckets {
    Buckets::new(c.bandwidth.as_ref().map(params), c.ops.as_ref().map(params))
}

/// A limiter of its own over `c`, unless `c` limits nothing.
pub fn own_limiter(c: Option<&RateLimiterConfig>) -> std::io::Result<Option<RateLimiter>> {
    let Some(b) = c.map(buckets).filter(Buckets::limits) else {
        return Ok(None);
    };
    RateLimiter::new(Arc::new(Mutex::new(b))).map(Some)
}

impl RateLimits {
    /// The groups `cfg` defines, with full buckets.
    pub fn new(cfg: &VmConfig) -> Self {
        let groups = cfg
            .rate_limit_groups
            .iter()
            .flatten()
            .map(|g| {
                let b = Arc::new(Mutex::new(buckets(&g.rate_limiter_config)));
                (g.id.clone(), b)
            })
            .collect();
        RateLimits { groups }
    }

    /// The limiter of a disk with `own` limits or in `group`: a timer of its own over the
    /// group's buckets when it is in one.
    pub fn for_disk(
        &self,
        own: Option<&RateLimiterConfig>,
        group: Option<&str>,
    ) -> std::io::Result<Option<RateLimiter>> {
        match group {
            Some(name) => {
                let shared = self.groups.get(name).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "no rate limit group {name:?}: the VM defines {}",
                        self.names()
                    ))
                })?;
                if !shared.lock().unwrap_or_else(|e| e.into_inner()).limits() {
                    return Ok(None);
                }
                RateLimiter::new(shared.clone()).map(Some)
            }
            None => own_limiter(own),
        }
    }

    fn names(&self) -> String {
        if self.groups.is_empty() {
            return "none (add one with --rate-limit-group)".into();
        }
        let mut names: Vec<&str> = self.groups.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}
