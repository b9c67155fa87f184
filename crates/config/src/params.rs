//! From the command line's option strings to a [`VmConfig`].
//!
//! Each config part has a `parse` function taking the option string of its flag (`--cpus`,
//! `--disk`, …) with Cloud Hypervisor's keys and defaults; the remote client uses the same
//! functions for `add-disk` and `add-net`. [`VmConfig::from_params`] puts the flags together and
//! names the flag in every error.

use std::path::PathBuf;

use thiserror::Error;

use crate::memory_zone::MemoryZoneConfig;
use crate::option_parser::{parse_int, OptionError, OptionParser, Options, ValueError};
use crate::rate_limit::{RateLimitGroupConfig, RateLimiterConfig};
use crate::validate::*;
use crate::vm::*;

/// Default of `--serial` on Palisade's command line.
pub const DEFAULT_SERIAL_PARAM: &str = "null";
/// Default of `--console` on Palisade's command line.
pub const DEFAULT_CONSOLE_PARAM: &str = "tty";
/// Default of `--cpus`.
pub const DEFAULT_CPUS_PARAM: &str = "boot=1";
/// Default of `--memory`.
pub const DEFAULT_MEMORY_PARAM: &str = "size=512M";
/// Default of `--rng`.
pub const DEFAULT_RNG_PARAM: &str = "src=/dev/urandom";

/// Parses an integer value of `key`, giving the error Palisade prints for it.
fn int_value(key: &str, value: &str) -> Result<u64, OptionError> {
    parse_int::<u64>(value).map_err(|e| match e {
        ValueError::OutOfRange { .. } if value.starts_with('-') => {
            OptionError::invalid(key, value, "must not be negative")
        }
        ValueError::OutOfRange { .. } => OptionError::invalid(key, value, "too large"),
        e => OptionError::invalid(key, value, e),
    })
}

/// Integer `key` of `options`, checked by `check`.
fn checked_int(
    options: &Options,
    key: &str,
    check: impl FnOnce(u64) -> Result<(), String>,
) -> Result<Option<u64>, OptionError> {
    match options.get(key) {
        None => Ok(None),
        Some(value) => {
            let n = int_value(key, value)?;
            check(n).map_err(|reason| OptionError::invalid(key, value, reason))?;
            Ok(Some(n))
        }
    }
}

/// A boolean `key` that Palisade only accepts at `off`.
fn off_only(options: &Options, key: &str) -> Result<(), OptionError> {
    if options.get_bool(key)? == Some(true) {
        let value = options.get(key).unwrap_or("on");
        return Err(OptionError::invalid(
            key,
            value,
            "not supported by Palisade (use off)",
        ));
    }
    Ok(())
}

/// Narrows an integer already checked to fit.
fn narrow<T: TryFrom<u64>>(key: &str, n: u64) -> Result<T, OptionError> {
    T::try_from(n).map_err(|_| OptionError::invalid(key, &n.to_string(), "out of range"))
}

impl CpusConfig {
    /// Keys of `--cpus`.
    pub const KEYS: &'static [&'static str] = &[
        "boot",
        "max",
        "kvm_hyperv",
        "max_phys_bits",
        "topology",
        "affinity",
        "features",
        "core_scheduling",
    ];

    /// Parses `--cpus boot=N[,max=M][,kvm_hyperv=off][,max_phys_bits=B]
    /// [,topology=THREADS:CORES:DIES:PACKAGES][,affinity=[VCPU@[CPU,…],…]][,features=amx]
    /// [,core_scheduling=vm|vcpu|off]`: `boot`
    /// defaults to 1, `max` to `boot`; 1 ≤ boot ≤ max ≤ 254.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let boot = checked_int(&o, "boot", check_boot_vcpus)?.unwrap_or(1);
        let max = checked_int(&o, "max", |max| check_max_vcpus(boot, max))?.unwrap_or(boot);
        off_only(&o, "kvm_hyperv")?;
        let bits = checked_int(&o, "max_phys_bits", check_max_phys_bits)?
            .unwrap_or(u64::from(DEFAULT_MAX_PHYS_BITS));
        let topology = o.convert("topology", |v| {
            let parts: Vec<&str> = v.split(':').collect();
            let numbers: Result<Vec<u8>, _> = parts.iter().map(|p| p.parse::<u8>()).collect();
            match numbers.ok().filter(|n| n.len() == 4) {
                Some(n) => Ok(CpuTopology {
                    threads_per_core: n[0],
                    cores_per_die: n[1],
                    dies_per_package: n[2],
                    packages: n[3],
                }),
                None => Err("expected THREADS:CORES:DIES:PACKAGES, four numbers"),
            }
        })?;
        let affinity = o.convert("affinity", parse_affinity)?;
        let mut features = CpuFeatures::default();
        for feature in o.get("features").unwrap_or_default().split(',') {
            match feature.trim() {
                "" => {}
                "amx" => features.amx = true,
                other => {
                    return Err(OptionError::invalid(
                        "features",
                        other,
                        "unknown CPU feature: Palisade knows amx",
                    ))
                }
            }
        }
        let core_scheduling = match o.get("core_scheduling") {
            None | Some("vm") => CoreScheduling::Vm,
            Some("vcpu") => CoreScheduling::Vcpu,
            Some("off") => CoreScheduling::Off,
            Some(other) => {
                return Err(OptionError::invalid(
                    "core_scheduling",
                    other,
                    "use vm, vcpu or off",
                ))
            }
        };
        Ok(CpusConfig {
            max_phys_bits: narrow("max_phys_bits", bits)?,
            topology,
            affinity,
            features,
            core_scheduling,
            ..CpusConfig::new(narrow("boot", boot)?, narrow("max", max)?)
        })
    }
}

/// `[0@[1,2],1@[3]]`: each vCPU with the host CPUs it may run on.
fn parse_affinity(value: &str) -> Result<Vec<CpuAffinity>, String> {
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or("expected [VCPU@[CPU,…],…]")?;
    let mut out = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (vcpu, after) = rest.split_once('@').ok_or("expected VCPU@[CPU,…]")?;
        let after = after.trim_start();
        let close = after.find(']').ok_or("unterminated host CPU list")?;
        let cpus = after
            .get(1..close)
            .filter(|_| after.starts_with('['))
            .ok_or("expected [CPU,…] after @")?;
        let host_cpus = cpus
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{c:?} is not a CPU"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vcpu = vcpu
            .trim()
            .trim_start_matches(',')
            .trim()
            .parse::<u8>()
            .map_err(|_| format!("{vcpu:?} is not a vCPU"))?;
        out.push(CpuAffinity { vcpu, host_cpus });
        rest = after[close + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Ok(out)
}

impl MemoryConfig {
    /// Keys of `--memory`.
    pub const KEYS: &'static [&'static str] = &[
        "size",
        "shared",
        "hugepages",
        "mergeable",
        "hotplug_size",
        "hotplug_method",
        "hugepage_size",
    ];

    /// Parses `--memory size=SIZE[,shared=on|off][,hotplug_size=SIZE][,hotplug_method=acpi]
    /// [,hugepages=off][,mergeable=off]`: the size takes a K/M/G/T suffix, defaults to 512M,
    /// and must be a multiple of 4 KiB between 1 MiB and 1 TiB; `shared=on` backs guest RAM
    /// with a memfd other processes can map; `hotplug_size` keeps room for memory added later
    /// (`vm.resize`); `hugepages=on` backs it with huge pages of `hugepage_size` (2M, the
    /// default, or 1G); `mergeable` is accepted at `off` only.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let size = o.get_size("size")?.unwrap_or(DEFAULT_MEMORY_SIZE);
        // 0 goes with `--memory-zone`s, which make up RAM (checked with them).
        if let Some(value) = o.get("size").filter(|_| size != 0) {
            check_memory_size(size).map_err(|r| OptionError::invalid("size", value, r))?;
        }
        off_only(&o, "mergeable")?;
        let hotplug_method = match o.get("hotplug_method") {
            None | Some("acpi") => HotplugMethod::Acpi,
            Some("virtio-mem") => HotplugMethod::VirtioMem,
            Some(other) => {
                return Err(OptionError::invalid(
                    "hotplug_method",
                    other,
                    "use acpi or virtio-mem",
                ))
            }
        };
        Ok(MemoryConfig {
            shared: o.get_bool("shared")?.unwrap_or(false),
            hotplug_size: o.get_size("hotplug_size")?,
            hotplug_method,
            hugepages: o.get_bool("hugepages")?.unwrap_or(false),
            hugepage_size: o.get_size("hugepage_size")?,
            ..MemoryConfig::with_size(size)
        })
    }
}

impl ConsoleConfig {
    /// Keys of `--serial` and `--console` besides the bare modes.
    pub const KEYS: &'static [&'static str] = &["file", "socket"];

    /// Parses `--serial` or `--console`: `off`, `null`, `tty`, `pty`, `file=PATH` or
    /// `socket=PATH` (the last parses, but [`VmConfig::validate`] refuses it).
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        const USAGE: &str = "use off, null, tty, pty, file=PATH or socket=PATH";
        let mode = match input.trim() {
            "off" => Some(ConsoleOutputMode::Off),
            "null" => Some(ConsoleOutputMode::Null),
            "tty" => Some(ConsoleOutputMode::Tty),
            "pty" => Some(ConsoleOutputMode::Pty),
            "" => return Err(OptionError::Invalid(format!("empty value: {USAGE}"))),
            _ => None,
        };
        if let Some(mode) = mode {
            return Ok(ConsoleConfig::with_mode(mode));
        }
        if !input.contains('=') {
            return Err(OptionError::Invalid(format!(
                "{input}: unknown mode: {USAGE}"
            )));
        }
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        match (o.get("file"), o.get("socket")) {
            (Some(_), Some(_)) => Err(OptionError::Invalid(format!(
                "file and socket cannot both be given: {USAGE}"
            ))),
            (Some(_), None) => Ok(ConsoleConfig::with_file(o.require("file")?)),
            (None, Some(_)) => Ok(ConsoleConfig {
                socket: Some(PathBuf::from(o.require("socket")?)),
                ..ConsoleConfig::with_mode(ConsoleOutputMode::Socket)
            }),
            (None, None) => Err(OptionError::Invalid(format!("empty value: {USAGE}"))),
        }
    }
}

impl DiskConfig {
    /// Keys of `--disk`.
    pub const KEYS: &'static [&'static str] = &[
        "path",
        "readonly",
        "direct",
        "id",
        "num_queues",
        "queue_size",
        "serial",
        "pci_segment",
        "rate_limit_group",
        "bw_size",
        "bw_one_time_burst",
        "bw_refill_time",
        "ops_size",
        "ops_one_time_burst",
        "ops_refill_time",
    ];

    /// Parses one `--disk path=P[,readonly=on|off][,direct=on|off][,id=ID][,num_queues=N]
    /// [,queue_size=N][,serial=S][,bw_size=B,bw_refill_time=MS[,bw_one_time_burst=B]]
    /// [,ops_size=N,ops_refill_time=MS[,ops_one_time_burst=N]][,rate_limit_group=G]` (also
    /// `add-disk`): `path` is required, `num_queues` ≥ 1, `queue_size` a power of two up to
    /// 32768.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let path = o.require("path")?;
        let num_queues = checked_int(&o, "num_queues", check_disk_num_queues)?
            .unwrap_or(u64::from(DEFAULT_DISK_NUM_QUEUES));
        let queue_size = checked_int(&o, "queue_size", check_queue_size)?
            .unwrap_or(u64::from(DEFAULT_DISK_QUEUE_SIZE));
        Ok(DiskConfig {
            readonly: o.get_bool("readonly")?.unwrap_or(false),
            direct: o.get_bool("direct")?.unwrap_or(false),
            num_queues: narrow("num_queues", num_queues)?,
            queue_size: narrow("queue_size", queue_size)?,
            id: o.get_nonempty("id")?.map(str::to_string),
            serial: o.get_nonempty("serial")?.map(str::to_string),
            rate_limiter_config: RateLimiterConfig::from_options(&o)?,
            rate_limit_group: o.get_nonempty("rate_limit_group")?.map(str::to_string),
            pci_segment: o.get_int("pci_segment")?.unwrap_or(0),
            ..DiskConfig::with_path(path)
        })
    }
}

impl NetConfig {
    /// Keys of `--net`.
    pub const KEYS: &'static [&'static str] = &[
        "tap",
        "mac",
        "ip",
        "mask",
        "id",
        "num_queues",
        "queue_size",
        "fd",
        "offload_tso",
        "offload_ufo",
        "offload_csum",
        "pci_segment",
        "bw_size",
        "bw_one_time_burst",
        "bw_refill_time",
        "ops_size",
        "ops_one_time_burst",
        "ops_refill_time",
    ];

    /// Parses one `--net tap=NAME,mac=MAC,ip=IP,mask=MASK[,id=ID][,num_queues=N]
    /// [,queue_size=N][,fd=[a,b]|fd=a][,offload_tso=on|off][,offload_ufo=on|off]
    /// [,offload_csum=on|off]` (also `add-net`; the offloads default to on). An empty value (`tap=,mac=`) means
    /// the key was not given. `num_queues` is even and ≥ 2, and defaults to twice the number of
    /// `fd`s when those are given; `tap` and `fd` exclude each other.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let text = |key: &str| o.get_or_empty(key).map(str::to_string);
        let checked = |key: &str, check: fn(&str) -> Result<(), String>| match o.get_or_empty(key) {
            None => Ok(None),
            Some(v) => check(v)
                .map(|()| Some(v.to_string()))
                .map_err(|r| OptionError::invalid(key, v, r)),
        };
        let mac = checked("mac", check_mac)?;
        let ip = checked("ip", |v| check_ipv4(v).map(|_| ()))?;
        let mask = checked("mask", check_netmask)?;
        let fds = match o.get_or_empty("fd") {
            None => None,
            Some(value) => {
                let fds = o.get_list::<i32>("fd")?.unwrap_or_default();
                for fd in &fds {
                    check_fd(*fd).map_err(|r| OptionError::invalid("fd", value, r))?;
                }
                Some(fds)
            }
        };
        let tap = text("tap");
        if tap.is_some() && fds.is_some() {
            return Err(OptionError::Invalid(
                "tap and fd cannot both be given: give one of them".into(),
            ));
        }
        let num_queues = match o.get_or_empty("num_queues") {
            Some(value) => {
                let n = int_value("num_queues", value)?;
                check_net_num_queues(n)
                    .map_err(|r| OptionError::invalid("num_queues", value, r))?;
                if let Some(fds) = &fds {
                    if n != 2 * fds.len() as u64 {
                        return Err(OptionError::invalid(
                            "num_queues",
                            value,
                            format!(
                                "{} fd(s) need num_queues={} (two queues per tap file descriptor)",
                                fds.len(),
                                2 * fds.len()
                            ),
                        ));
                    }
                }
                n
            }
            None => match &fds {
                Some(fds) => {
                    let n = 2 * fds.len() as u64;
                    let shown = o.get("fd").unwrap_or_default();
                    check_net_num_queues(n).map_err(|r| OptionError::invalid("fd", shown, r))?;
                    n
                }
                None => u64::from(DEFAULT_NET_NUM_QUEUES),
            },
        };
        let queue_size = match o.get_or_empty("queue_size") {
            Some(value) => {
                let n = int_value("queue_size", value)?;
                check_queue_size(n).map_err(|r| OptionError::invalid("queue_size", value, r))?;
                n
            }
            None => u64::from(DEFAULT_NET_QUEUE_SIZE),
        };
        Ok(NetConfig {
            tap,
            ip,
            mask,
            mac,
            num_queues: narrow("num_queues", num_queues)?,
            queue_size: narrow("queue_size", queue_size)?,
            id: text("id"),
            fds,
            offload_tso: o.get_bool("offload_tso")?.unwrap_or(true),
            offload_ufo: o.get_bool("offload_ufo")?.unwrap_or(true),
            offload_csum: o.get_bool("offload_csum")?.unwrap_or(true),
            rate_limiter_config: RateLimiterConfig::from_options(&o)?,
            pci_segment: o.get_int("pci_segment")?.unwrap_or(0),
            ..NetConfig::default()
        })
    }
}

impl RngConfig {
    /// Keys of `--rng`.
    pub const KEYS: &'static [&'static str] = &["src"];

    /// Parses `--rng src=PATH` (default `/dev/urandom`).
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        Ok(RngConfig::with_src(
            o.get_nonempty("src")?.unwrap_or(DEFAULT_RNG_SOURCE),
        ))
    }
}

impl LandlockConfig {
    /// Keys of `--landlock-rules`.
    pub const KEYS: &'static [&'static str] = &["path", "access"];

    /// Parses one `--landlock-rules path=P,access=r|w|rw` rule. Whether the path exists is
    /// checked by [`VmConfig::validate`] (and [`VmConfig::from_params`]), not here.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let path = o.require("path")?;
        let access = o.require("access")?;
        check_landlock_access(access)
            .map_err(|_| OptionError::invalid("access", access, "must be r, w or rw"))?;
        Ok(LandlockConfig {
            path: PathBuf::from(path),
            access: access.to_string(),
        })
    }
}

/// Where the REST API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiSocketConfig {
    /// A Unix socket to create at this path.
    Path(PathBuf),
    /// An already bound and listening Unix socket, inherited as this file descriptor.
    Fd(i32),
}

impl ApiSocketConfig {
    /// Keys of `--api-socket`.
    pub const KEYS: &'static [&'static str] = &["path", "fd"];

    /// Parses `--api-socket`: `path=P`, `fd=N`, or a bare path `P` (one without `=`; write
    /// `path="..."` for a path that holds `=` or `,`).
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        if input.trim().is_empty() {
            return Err(OptionError::Invalid(
                "empty value: give path=PATH, fd=N or a path".into(),
            ));
        }
        if !input.contains('=') {
            return Ok(ApiSocketConfig::Path(PathBuf::from(input)));
        }
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        match (o.get("path"), o.get("fd")) {
            (Some(_), Some(_)) => Err(OptionError::Invalid(
                "path and fd cannot both be given: give one of them".into(),
            )),
            (Some(_), None) => Ok(ApiSocketConfig::Path(PathBuf::from(o.require("path")?))),
            (None, Some(value)) => {
                let fd = o.get_int::<i32>("fd")?.unwrap_or(-1);
                check_fd(fd).map_err(|r| OptionError::invalid("fd", value, r))?;
                Ok(ApiSocketConfig::Fd(fd))
            }
            (None, None) => Err(OptionError::Invalid(
                "empty value: give path=PATH, fd=N or a path".into(),
            )),
        }
    }
}

mod vm_params;
pub use vm_params::{ParamsError, VmParams};
