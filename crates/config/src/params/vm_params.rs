//! The command line as a whole: the flags describing a VM (`VmParams`), put together into a
//! checked [`VmConfig`], with errors that name the flag.

use super::*;

/// The raw values of the VM flags of Palisade's command line, as clap collects them. `None`
/// (or an empty list) means the flag was not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmParams {
    /// `--kernel PATH`.
    pub kernel: Option<String>,
    /// `--firmware PATH` (refused with an explanation: Palisade boots kernels only).
    pub firmware: Option<String>,
    /// `--initramfs PATH`.
    pub initramfs: Option<String>,
    /// `--cmdline TEXT`.
    pub cmdline: Option<String>,
    /// `--cpus boot=N,...`.
    pub cpus: Option<String>,
    /// `--memory size=SIZE,...`.
    pub memory: Option<String>,
    /// `--serial MODE`.
    pub serial: Option<String>,
    /// `--console MODE`.
    pub console: Option<String>,
    /// Each `--disk` value.
    pub disks: Vec<String>,
    /// Each `--net` value.
    pub net: Vec<String>,
    /// `--rng src=PATH`.
    pub rng: Option<String>,
    /// `--landlock`.
    pub landlock: bool,
    /// Each `--landlock-rules` value (one rule each).
    pub landlock_rules: Vec<String>,
    /// Each `--rate-limit-group` value.
    pub rate_limit_groups: Vec<String>,
    /// Each `--memory-zone` value.
    pub memory_zones: Vec<String>,
    /// `--platform`.
    pub platform: Option<String>,
    /// Each `--pci-segment` value.
    pub pci_segments: Vec<String>,
    /// `--balloon`.
    pub balloon: Option<String>,
    /// Each `--pmem` value.
    pub pmem: Vec<String>,
    /// Each `--fs` value.
    pub fs: Vec<String>,
    /// `--vsock`.
    pub vsock: Option<String>,
    /// `--watchdog`.
    pub watchdog: bool,
    /// `--pvpanic`.
    pub pvpanic: bool,
}

/// A command-line error: one line naming the flag.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParamsError {
    /// A flag's option string is malformed or holds a bad value.
    #[error("--{flag}: {error}")]
    Option {
        /// The flag, without the leading dashes.
        flag: &'static str,
        /// What is wrong.
        error: OptionError,
    },
    /// A flag that is wrong given the others, or whose value cannot be used.
    #[error("--{flag}: {message}")]
    Invalid {
        /// The flag, without the leading dashes.
        flag: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The assembled configuration failed [`VmConfig::validate`].
    #[error("--{flag}: {error}")]
    Validation {
        /// The flag the failing field comes from.
        flag: &'static str,
        /// What is wrong.
        error: ValidationError,
    },
}

impl ParamsError {
    /// The flag (without the leading dashes) the error is about.
    pub fn flag(&self) -> &'static str {
        match self {
            ParamsError::Option { flag, .. }
            | ParamsError::Invalid { flag, .. }
            | ParamsError::Validation { flag, .. } => flag,
        }
    }
}

/// The command-line flag a config field comes from.
fn flag_of_field(field: &str) -> &'static str {
    const FLAGS: [(&str, &str); 18] = [
        ("payload.firmware", "firmware"),
        ("payload.initramfs", "initramfs"),
        ("payload.cmdline", "cmdline"),
        ("payload", "kernel"),
        ("cpus", "cpus"),
        ("memory", "memory"),
        ("serial", "serial"),
        ("console", "console"),
        ("disks", "disk"),
        ("net", "net"),
        ("rng", "rng"),
        ("pmem", "pmem"),
        ("fs", "fs"),
        ("vsock", "vsock"),
        ("balloon", "balloon"),
        ("platform", "platform"),
        ("pci_segments", "pci-segment"),
        ("rate_limit_groups", "rate-limit-group"),
    ];
    FLAGS
        .iter()
        .find(|(prefix, _)| field.starts_with(prefix))
        .map(|(_, flag)| *flag)
        .unwrap_or("landlock-rules")
}

fn option_err(flag: &'static str) -> impl Fn(OptionError) -> ParamsError {
    move |error| ParamsError::Option { flag, error }
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ParamsError {
    ParamsError::Invalid {
        flag,
        message: message.into(),
    }
}

impl VmConfig {
    /// Builds and validates a VM configuration from the command line's VM flags.
    ///
    /// Defaults are Cloud Hypervisor's (`boot=1`, `size=512M`, `src=/dev/urandom`, the serial
    /// port `null` and the virtio console `tty`; see [`DEFAULT_SERIAL_PARAM`] and
    /// [`DEFAULT_CONSOLE_PARAM`]).
    ///
    /// Every error is one line starting with the flag, e.g.
    /// `--cpus: boot=0: must be at least 1`.
    pub fn from_params(params: &VmParams) -> Result<VmConfig, ParamsError> {
        if params.firmware.is_some() {
            return Err(invalid(
                "firmware",
                "not supported by Palisade: boot a kernel image with --kernel instead",
            ));
        }
        let kernel = match params.kernel.as_deref() {
            None => {
                return Err(invalid(
                    "kernel",
                    "required: give the kernel image to boot (Palisade boots a kernel; firmware is not supported)",
                ))
            }
            Some("") => return Err(invalid("kernel", "empty path: give the kernel image to boot")),
            Some(k) => PathBuf::from(k),
        };
        let initramfs = match params.initramfs.as_deref() {
            Some("") => {
                return Err(invalid(
                    "initramfs",
                    "empty path: give the initramfs image or leave the flag out",
                ))
            }
            other => other.map(PathBuf::from),
        };
        let payload = PayloadConfig {
            kernel: Some(kernel),
            initramfs,
            cmdline: params.cmdline.clone(),
            ..PayloadConfig::default()
        };

        let cpus = CpusConfig::parse(params.cpus.as_deref().unwrap_or(DEFAULT_CPUS_PARAM))
            .map_err(option_err("cpus"))?;
        let mut memory =
            MemoryConfig::parse(params.memory.as_deref().unwrap_or(DEFAULT_MEMORY_PARAM))
                .map_err(option_err("memory"))?;
        let zones = params
            .memory_zones
            .iter()
            .map(|z| MemoryZoneConfig::parse(z).map_err(option_err("memory-zone")))
            .collect::<Result<Vec<_>, _>>()?;
        memory.zones = (!zones.is_empty()).then_some(zones);
        let serial = parse_console(
            "serial",
            params.serial.as_deref().unwrap_or(DEFAULT_SERIAL_PARAM),
        )?;
        let console = parse_console(
            "console",
            params.console.as_deref().unwrap_or(DEFAULT_CONSOLE_PARAM),
        )?;

        let disks = params
            .disks
            .iter()
            .map(|d| DiskConfig::parse(d).map_err(option_err("disk")))
            .collect::<Result<Vec<_>, _>>()?;
        let net = params
            .net
            .iter()
            .map(|n| NetConfig::parse(n).map_err(option_err("net")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids: Vec<&str> = Vec::new();
        let disk_ids = disks
            .iter()
            .filter_map(|d| d.id.as_deref().map(|i| ("disk", i)));
        let net_ids = net
            .iter()
            .filter_map(|n| n.id.as_deref().map(|i| ("net", i)));
        for (flag, id) in disk_ids.chain(net_ids) {
            if ids.contains(&id) {
                return Err(invalid(
                    flag,
                    format!("id={id}: already used by another --disk or --net (give each device its own id)"),
                ));
            }
            ids.push(id);
        }

        let rng = RngConfig::parse(params.rng.as_deref().unwrap_or(DEFAULT_RNG_PARAM))
            .map_err(option_err("rng"))?;
        let rate_limit_groups = params
            .rate_limit_groups
            .iter()
            .map(|g| RateLimitGroupConfig::parse(g).map_err(option_err("rate-limit-group")))
            .collect::<Result<Vec<_>, _>>()?;

        if !params.landlock_rules.is_empty() && !params.landlock {
            return Err(invalid(
                "landlock-rules",
                "needs --landlock (the rules only apply when Landlock is enabled)",
            ));
        }
        let mut rules = Vec::new();
        for text in &params.landlock_rules {
            let rule = LandlockConfig::parse(text).map_err(option_err("landlock-rules"))?;
            check_landlock_rule(&rule)
                .map_err(|reason| invalid("landlock-rules", format!("{text}: {reason}")))?;
            rules.push(rule);
        }

        let config = VmConfig {
            cpus,
            memory,
            payload,
            serial,
            console,
            disks: (!disks.is_empty()).then_some(disks),
            net: (!net.is_empty()).then_some(net),
            rng,
            landlock_enable: params.landlock,
            landlock_rules: (!rules.is_empty()).then_some(rules),
            rate_limit_groups: (!rate_limit_groups.is_empty()).then_some(rate_limit_groups),
            pci_segments: {
                let segments = params
                    .pci_segments
                    .iter()
                    .map(|p| crate::PciSegmentConfig::parse(p).map_err(option_err("pci-segment")))
                    .collect::<Result<Vec<_>, _>>()?;
                (!segments.is_empty()).then_some(segments)
            },
            watchdog: params.watchdog,
            pvpanic: params.pvpanic,
            fs: {
                let fs = params
                    .fs
                    .iter()
                    .map(|f| crate::FsConfig::parse(f).map_err(option_err("fs")))
                    .collect::<Result<Vec<_>, _>>()?;
                (!fs.is_empty()).then_some(fs)
            },
            pmem: {
                let pmem = params
                    .pmem
                    .iter()
                    .map(|p| crate::PmemConfig::parse(p).map_err(option_err("pmem")))
                    .collect::<Result<Vec<_>, _>>()?;
                (!pmem.is_empty()).then_some(pmem)
            },
            vsock: match &params.vsock {
                Some(v) => Some(crate::VsockConfig::parse(v).map_err(option_err("vsock"))?),
                None => None,
            },
            balloon: match &params.balloon {
                Some(b) => Some(BalloonConfig::parse(b).map_err(option_err("balloon"))?),
                None => None,
            },
            platform: match &params.platform {
                Some(p) => Some(PlatformConfig::parse(p).map_err(option_err("platform"))?),
                None => None,
            },
            ..VmConfig::default()
        };
        config.validate().map_err(|error| ParamsError::Validation {
            flag: flag_of_field(&error.field()),
            error,
        })?;
        Ok(config)
    }
}

/// Parses `--serial` or `--console`; the socket mode is the serial port's only.
fn parse_console(flag: &'static str, input: &str) -> Result<ConsoleConfig, ParamsError> {
    let console = ConsoleConfig::parse(input).map_err(option_err(flag))?;
    if console.mode == ConsoleOutputMode::Socket && flag != "serial" {
        return Err(invalid(
            flag,
            format!("{input}: the socket mode is the serial port's (--serial socket=PATH); use off, null, tty, pty or file=PATH"),
        ));
    }
    Ok(console)
}
