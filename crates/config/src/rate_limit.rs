//! Rate limiters of disks and network devices: `rate_limiter_config` on one device, or a
//! `rate_limit_groups` entry (`--rate-limit-group`) that disks share through
//! `rate_limit_group`, with Cloud Hypervisor's field names and `bw_*`/`ops_*` keys.

use serde::{Deserialize, Serialize};

use crate::option_parser::{OptionError, Options};

/// A token bucket: `size` tokens, refilled over `refill_time` milliseconds, plus a
/// `one_time_burst` spent first. A size or refill time of 0 limits nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds.
    pub size: u64,
    /// Extra tokens at the start, never refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket.
    pub refill_time: u64,
}

/// Limits in bytes (`bandwidth`) and in operations (`ops`), each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (requests; frames for a network device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// A limiter several disks share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitGroupConfig {
    /// The group's name, which disks give as `rate_limit_group`.
    pub id: String,
    /// Its limits.
    pub rate_limiter_config: RateLimiterConfig,
}

/// The keys of an option string that give a limiter.
pub const RATE_LIMIT_KEYS: &[&str] = &[
    "bw_size",
    "bw_one_time_burst",
    "bw_refill_time",
    "ops_size",
    "ops_one_time_burst",
    "ops_refill_time",
];

/// Longest refill time taken: a day.
const MAX_REFILL_MS: u64 = 24 * 3600 * 1000;

impl TokenBucketConfig {
    /// Checks the refill time; `name` prefixes the field (e.g. `disks[0].rate_limiter_config.ops`).
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.refill_time > MAX_REFILL_MS {
            return Err(format!(
                "{name}.refill_time={}: must be at most {MAX_REFILL_MS} ms (a day)",
                self.refill_time
            ));
        }
        if self.size > 0 && self.refill_time == 0 {
            return Err(format!(
                "{name}.refill_time=0: a bucket of {} tokens needs a refill time in ms",
                self.size
            ));
        }
        Ok(())
    }
}

impl RateLimiterConfig {
    /// From the `bw_*` and `ops_*` keys of `o`; `None` when none is given. `bw_size` and
    /// `bw_refill_time` (`ops_size`, `ops_refill_time`) come together.
    pub fn from_options(o: &Options) -> Result<Option<Self>, OptionError> {
        let bucket = |prefix: &str| -> Result<Option<TokenBucketConfig>, OptionError> {
            let key = |what: &str| format!("{prefix}_{what}");
            let size = o.get_int::<u64>(&key("size"))?;
            let burst = o.get_int::<u64>(&key("one_time_burst"))?;
            let refill = o.get_int::<u64>(&key("refill_time"))?;
            match (size, refill) {
                (None, None) if burst.is_none() => Ok(None),
                (Some(size), Some(refill_time)) => Ok(Some(TokenBucketConfig {
                    size,
                    one_time_burst: burst,
                    refill_time,
                })),
                _ => Err(OptionError::Invalid(format!(
                    "{} and {} must be given together",
                    key("size"),
                    key("refill_time")
                ))),
            }
        };
        let limiter = RateLimiterConfig {
            bandwidth: bucket("bw")?,
            ops: bucket("ops")?,
        };
        Ok((limiter != RateLimiterConfig::default()).then_some(limiter))
    }

    /// Checks both buckets; `name` prefixes the fields.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if let Some(b) = &self.bandwidth {
            b.check(&format!("{name}.bandwidth"))?;
        }
        if let Some(b) = &self.ops {
            b.check(&format!("{name}.ops"))?;
        }
        Ok(())
    }
}

impl RateLimitGroupConfig {
    /// Keys of `--rate-limit-group`.
    pub const KEYS: &'static [&'static str] = &[
        "bw_size",
        "bw_one_time_burst",
        "bw_refill_time",
        "ops_size",
        "ops_one_time_burst",
        "ops_refill_time",
        "id",
    ];

    /// Parses `--rate-limit-group bw_size=B,bw_refill_time=MS[,bw_one_time_burst=B]
    /// [,ops_size=N,ops_refill_time=MS][,ops_one_time_burst=N],id=NAME`.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = crate::option_parser::OptionParser::new(Self::KEYS).parse(input)?;
        let id = match o.get_or_empty("id") {
            Some(id) => id.to_string(),
            None => return Err(OptionError::Invalid("id: required: name the group".into())),
        };
        let rate_limiter_config = RateLimiterConfig::from_options(&o)?.ok_or_else(|| {
            OptionError::Invalid(
                "no limit given: use bw_size= with bw_refill_time=, or ops_size= with ops_refill_time="
                    .into(),
            )
        })?;
        Ok(RateLimitGroupConfig {
            id,
            rate_limiter_config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_parses_from_cloud_hypervisors_keys() {
        let g = RateLimitGroupConfig::parse(
            "bw_size=1048576,bw_refill_time=100,ops_size=50,ops_one_time_burst=10,ops_refill_time=1000,id=group0",
        )
        .unwrap();
        assert_eq!(g.id, "group0");
        let l = g.rate_limiter_config;
        assert_eq!(
            l.bandwidth,
            Some(TokenBucketConfig {
                size: 1 << 20,
                one_time_burst: None,
                refill_time: 100
            })
        );
        assert_eq!(l.ops.unwrap().one_time_burst, Some(10));
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(
            json["rate_limiter_config"]["bandwidth"],
            serde_json::json!({"size": 1048576, "refill_time": 100})
        );
    }

    #[test]
    fn incomplete_or_unnamed_groups_are_refused() {
        let err = |s: &str| RateLimitGroupConfig::parse(s).unwrap_err().to_string();
        assert!(
            err("bw_size=10,id=g").contains("bw_size and bw_refill_time must be given together")
        );
        assert!(err("bw_size=10,bw_refill_time=5").contains("id: required"));
        assert!(err("id=g").contains("no limit given"));
        assert!(err("bw_size=ten,bw_refill_time=5,id=g").starts_with("bw_size=ten"));
        let bucket = TokenBucketConfig {
            size: 5,
            one_time_burst: None,
            refill_time: 0,
        };
        assert!(bucket
            .check("ops")
            .unwrap_err()
            .contains("needs a refill time"));
    }
}
