//! Checks of a [`VmConfig`], whether it came from the command line or as JSON.
//!
//! The individual checks (`check_*`) return the reason as text and are shared with the
//! command-line parsers, so that both say the same thing.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::Value;
use thiserror::Error;

use crate::vm::*;

/// Largest number of vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 254;
/// Smallest guest memory: 1 MiB.
pub const MIN_MEMORY_SIZE: u64 = 1 << 20;
/// Largest guest memory: 1 TiB.
pub const MAX_MEMORY_SIZE: u64 = 1 << 40;
/// Guest memory size must be a multiple of this (one page, 4 KiB).
pub const MEMORY_SIZE_ALIGNMENT: u64 = 4 << 10;
/// Largest virtqueue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Smallest accepted `max_phys_bits`.
pub const MIN_PHYS_BITS: u8 = 36;
/// Largest accepted `max_phys_bits` (the x86_64 architectural limit).
pub const MAX_PHYS_BITS: u8 = 52;
/// The accepted values of a Landlock rule's `access`.
pub const LANDLOCK_ACCESS_VALUES: [&str; 3] = ["r", "w", "rw"];

/// Why a [`VmConfig`] (or one of its devices) cannot be used. Every message is one line that
/// names the field and says what to do.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// A field holds a value Palisade cannot use.
    #[error("{field}={value}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `cpus.boot_vcpus` or `disks[1].queue_size`.
        field: String,
        /// The value, as text.
        value: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A field that must be given is missing.
    #[error("{field}: missing: {hint}")]
    Missing {
        /// Path of the field.
        field: String,
        /// What to give.
        hint: String,
    },
    /// A field (or field value) of Cloud Hypervisor's configuration that Palisade does not
    /// implement.
    #[error("{field}: not supported by Palisade: {hint}")]
    NotSupported {
        /// Path of the field, possibly with its value (`serial.mode=Socket`).
        field: String,
        /// What to do instead.
        hint: String,
    },
    /// Fields that do not go together.
    #[error("{field}: {reason}")]
    Conflict {
        /// Path of the field to change.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Two devices with the same id.
    #[error("id {id:?} is used by both {first} and {second}: give each device its own id")]
    DuplicateId {
        /// The id.
        id: String,
        /// The first device using it, e.g. `disks[0]`.
        first: String,
        /// The second device using it.
        second: String,
    },
    /// A Landlock rule that cannot be enforced.
    #[error("landlock_rules[{index}] (path={path},access={access}): {reason}")]
    LandlockRule {
        /// Position of the rule in `landlock_rules`.
        index: usize,
        /// The rule's path.
        path: String,
        /// The rule's access.
        access: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl ValidationError {
    /// The path of the offending field (for [`ValidationError::DuplicateId`], the second device;
    /// for [`ValidationError::LandlockRule`], `landlock_rules[i]`).
    pub fn field(&self) -> String {
        match self {
            ValidationError::Invalid { field, .. }
            | ValidationError::Missing { field, .. }
            | ValidationError::NotSupported { field, .. }
            | ValidationError::Conflict { field, .. } => field.clone(),
            ValidationError::DuplicateId { second, .. } => second.clone(),
            ValidationError::LandlockRule { index, .. } => format!("landlock_rules[{index}]"),
        }
    }
}

// ---- Shared checks: each returns what is wrong as text. ----

/// Checks a boot vCPU count.
pub(crate) fn check_boot_vcpus(boot: u64) -> Result<(), String> {
    if boot < 1 {
        Err("must be at least 1".into())
    } else if boot > u64::from(MAX_VCPUS) {
        Err(format!("must be at most {MAX_VCPUS}"))
    } else {
        Ok(())
    }
}

/// Checks a maximum vCPU count against the boot count.
pub(crate) fn check_max_vcpus(boot: u64, max: u64) -> Result<(), String> {
    if max < boot {
        Err(format!("must be at least the boot vCPU count ({boot})"))
    } else if max > u64::from(MAX_VCPUS) {
        Err(format!("must be at most {MAX_VCPUS}"))
    } else {
        Ok(())
    }
}

/// Checks a number of physical address bits.
pub(crate) fn check_max_phys_bits(bits: u64) -> Result<(), String> {
    if (u64::from(MIN_PHYS_BITS)..=u64::from(MAX_PHYS_BITS)).contains(&bits) {
        Ok(())
    } else {
        Err(format!(
            "must be between {MIN_PHYS_BITS} and {MAX_PHYS_BITS}"
        ))
    }
}

/// Checks a guest memory size.
pub(crate) fn check_memory_size(size: u64) -> Result<(), String> {
    if size < MIN_MEMORY_SIZE {
        Err("must be at least 1 MiB (e.g. 512M)".into())
    } else if size > MAX_MEMORY_SIZE {
        Err("must be at most 1 TiB".into())
    } else if size % MEMORY_SIZE_ALIGNMENT != 0 {
        Err("must be a multiple of 4 KiB".into())
    } else {
        Ok(())
    }
}

/// Most guest RAM, hot-pluggable room included.
const MAX_ADDRESS_SPACE: u64 = 1 << 40;

/// Checks a block device queue count.
pub(crate) fn check_disk_num_queues(n: u64) -> Result<(), String> {
    if n < 1 {
        Err("must be at least 1".into())
    } else if n > u64::from(u16::MAX) {
        Err(format!("must be at most {}", u16::MAX))
    } else {
        Ok(())
    }
}

/// Checks a network device queue count.
pub(crate) fn check_net_num_queues(n: u64) -> Result<(), String> {
    if n < 2 || n % 2 != 0 {
        Err(
            "must be an even number, at least 2 (one receive and one transmit queue per pair)"
                .into(),
        )
    } else if n > u64::from(u16::MAX) - 1 {
        Err(format!("must be at most {}", u16::MAX - 1))
    } else {
        Ok(())
    }
}

/// Checks a virtqueue size.
pub(crate) fn check_queue_size(n: u64) -> Result<(), String> {
    if n.is_power_of_two() && n <= u64::from(MAX_QUEUE_SIZE) {
        Ok(())
    } else {
        Err(format!(
            "must be a power of two between 1 and {MAX_QUEUE_SIZE}"
        ))
    }
}

/// Checks a MAC address: six pairs of hex digits separated by `:`, not multicast.
pub(crate) fn check_mac(mac: &str) -> Result<(), String> {
    const FORMAT: &str =
        "not a MAC address (write six pairs of hex digits, e.g. 52:54:00:12:34:56)";
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(FORMAT.into());
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|_| FORMAT.to_string())?;
    if first & 1 != 0 {
        return Err("is a multicast address (the lowest bit of the first byte must be 0)".into());
    }
    Ok(())
}

/// Checks an IPv4 address.
pub(crate) fn check_ipv4(ip: &str) -> Result<Ipv4Addr, String> {
    ip.parse::<Ipv4Addr>()
        .map_err(|_| "not an IPv4 address (e.g. 192.168.249.1)".to_string())
}

/// Checks an IPv4 netmask (contiguous ones, then zeros).
pub(crate) fn check_netmask(mask: &str) -> Result<(), String> {
    let bits = u32::from(
        mask.parse::<Ipv4Addr>()
            .map_err(|_| "not an IPv4 netmask (e.g. 255.255.255.0)".to_string())?,
    );
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err(
            "not a valid netmask: its one bits must come first (e.g. 255.255.255.0)".into(),
        );
    }
    Ok(())
}

/// Checks a file descriptor number.
pub(crate) fn check_fd(fd: i32) -> Result<(), String> {
    if fd < 0 {
        Err("file descriptors are not negative".into())
    } else {
        Ok(())
    }
}

/// Checks a Landlock rule's access string.
pub(crate) fn check_landlock_access(access: &str) -> Result<(), String> {
    if LANDLOCK_ACCESS_VALUES.contains(&access) {
        Ok(())
    } else {
        Err("access must be r, w or rw".into())
    }
}

/// Checks that a Landlock rule's path exists.
pub(crate) fn check_landlock_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("path is empty (give a file or directory)".into());
    }
    match path.try_exists() {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "{} does not exist (create it first or fix the path)",
            path.display()
        )),
        Err(e) => Err(format!("{} cannot be checked: {e}", path.display())),
    }
}

/// Checks a whole Landlock rule.
pub(crate) fn check_landlock_rule(rule: &LandlockConfig) -> Result<(), String> {
    check_landlock_access(&rule.access)?;
    check_landlock_path(&rule.path)
}

// ---- Compatibility fields ----

fn unsupported(field: impl Into<String>, hint: &str) -> ValidationError {
    ValidationError::NotSupported {
        field: field.into(),
        hint: hint.into(),
    }
}

fn invalid(field: impl Into<String>, value: impl ToString, reason: String) -> ValidationError {
    ValidationError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason,
    }
}

fn must_be_false(field: String, value: bool) -> Result<(), ValidationError> {
    if value {
        Err(unsupported(field, "remove it or set it to false"))
    } else {
        Ok(())
    }
}

fn must_be_true(field: String, value: bool) -> Result<(), ValidationError> {
    if value {
        Ok(())
    } else {
        Err(unsupported(field, "remove it or set it to true"))
    }
}

fn must_be_none<T>(field: String, value: &Option<T>) -> Result<(), ValidationError> {
    if value.is_some() {
        Err(unsupported(field, "remove it or set it to null"))
    } else {
        Ok(())
    }
}

fn must_be_empty_list(field: String, value: &Option<Vec<Value>>) -> Result<(), ValidationError> {
    match value {
        Some(items) if !items.is_empty() => Err(unsupported(field, "remove it or leave it empty")),
        _ => Ok(()),
    }
}

/// A raw compatibility object counts as absent when null, `{}` or `[]`.
fn must_be_empty_value(field: String, value: &Option<Value>) -> Result<(), ValidationError> {
    let empty = match value {
        None | Some(Value::Null) => true,
        Some(Value::Object(map)) => map.is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    };
    if empty {
        Ok(())
    } else {
        Err(unsupported(field, "remove it or set it to null"))
    }
}

// ---- Per-part validation ----

impl CpusConfig {
    /// Checks the vCPU counts and the compatibility fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let boot = u64::from(self.boot_vcpus);
        let max = u64::from(self.max_vcpus);
        check_boot_vcpus(boot).map_err(|r| invalid("cpus.boot_vcpus", boot, r))?;
        check_max_vcpus(boot, max).map_err(|r| invalid("cpus.max_vcpus", max, r))?;
        check_max_phys_bits(u64::from(self.max_phys_bits))
            .map_err(|r| invalid("cpus.max_phys_bits", self.max_phys_bits, r))?;
        must_be_false("cpus.kvm_hyperv".into(), self.kvm_hyperv)?;
        if let Some(t) = &self.topology {
            let parts = [
                t.threads_per_core,
                t.cores_per_die,
                t.dies_per_package,
                t.packages,
            ];
            let shown = format!(
                "{}:{}:{}:{}",
                t.threads_per_core, t.cores_per_die, t.dies_per_package, t.packages
            );
            if parts.contains(&0) {
                return Err(invalid("cpus.topology", shown, "no part may be 0".into()));
            }
            if t.vcpus() != u32::from(self.max_vcpus) {
                return Err(invalid(
                    "cpus.topology",
                    shown,
                    format!(
                        "holds {} vCPUs (threads × cores × dies × packages) but max_vcpus is {}",
                        t.vcpus(),
                        self.max_vcpus
                    ),
                ));
            }
            if topology_max_apic_id(t) >= 254 {
                return Err(invalid(
                    "cpus.topology",
                    shown,
                    "needs APIC ids above 253 (each level is rounded up to a power of two); \
                     use fewer packages or dies"
                        .into(),
                ));
            }
        }
        must_be_true("cpus.nested".into(), self.nested)?;
        for (i, a) in self.affinity.iter().flatten().enumerate() {
            let name = format!("cpus.affinity[{i}]");
            if a.vcpu >= self.max_vcpus.max(self.boot_vcpus) {
                return Err(invalid(
                    format!("{name}.vcpu"),
                    a.vcpu,
                    format!("there are {} vCPUs", self.max_vcpus.max(self.boot_vcpus)),
                ));
            }
            if a.host_cpus.is_empty() || a.host_cpus.iter().any(|&c| c >= 1024) {
                return Err(invalid(
                    format!("{name}.host_cpus"),
                    format!("{:?}", a.host_cpus),
                    "give host CPU numbers, at least one, each below 1024".into(),
                ));
            }
            if self
                .affinity
                .iter()
                .flatten()
                .take(i)
                .any(|o| o.vcpu == a.vcpu)
            {
                return Err(invalid(
                    format!("{name}.vcpu"),
                    a.vcpu,
                    "is given twice".into(),
                ));
            }
        }
        if self.core_scheduling == CoreScheduling::Vcpu {
            return Err(unsupported(
                "cpus.core_scheduling=Vcpu",
                "remove it or set it to Vm or Off",
            ));
        }
        Ok(())
    }
}

/// The largest APIC id `t` gives a vCPU: each level of the id is as many bits as its count
/// needs.
pub fn topology_max_apic_id(t: &CpuTopology) -> u32 {
    let bits = |n: u8| u32::from(n.max(1)).next_power_of_two().trailing_zeros();
    let (smt, core, die) = (
        bits(t.threads_per_core),
        bits(t.cores_per_die),
        bits(t.dies_per_package),
    );
    ((u32::from(t.packages) - 1) << (smt + core + die))
        | ((u32::from(t.dies_per_package) - 1) << (smt + core))
        | ((u32::from(t.cores_per_die) - 1) << smt)
        | (u32::from(t.threads_per_core) - 1)
}

impl MemoryConfig {
    /// Checks the size (multiple of 4 KiB, between 1 MiB and 1 TiB) and the compatibility
    /// fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let zones = self.zones.as_deref().unwrap_or_default();
        if zones.is_empty() {
            self.check_size_and_room()?;
            self.check_hugepages()?;
        } else {
            // The zones carry RAM, room and backing; the top-level backing flags are theirs.
            crate::memory_zone::check_zones(zones, self.size, self.hotplug_size)?;
        }
        must_be_none("memory.hotplugged_size".into(), &self.hotplugged_size)?;
        must_be_false("memory.mergeable".into(), self.mergeable)?;
        if self.hotplug_method != HotplugMethod::Acpi {
            return Err(unsupported(
                "memory.hotplug_method=VirtioMem",
                "remove it or set it to Acpi",
            ));
        }
        must_be_false("memory.prefault".into(), self.prefault)?;
        must_be_false("memory.reserve".into(), self.reserve)?;
        must_be_true("memory.thp".into(), self.thp)
    }
}

impl MemoryConfig {
    /// RAM between 1 MiB and 1 TiB, room within 1 TiB with it, both whole pages.
    fn check_size_and_room(&self) -> Result<(), ValidationError> {
        check_memory_size(self.size).map_err(|r| invalid("memory.size", self.size, r))?;
        if let Some(h) = self.hotplug_size {
            if h % MEMORY_SIZE_ALIGNMENT != 0 {
                return Err(invalid(
                    "memory.hotplug_size",
                    h,
                    "must be a multiple of 4 KiB".into(),
                ));
            }
            if self.size.saturating_add(h) > MAX_ADDRESS_SPACE {
                return Err(invalid(
                    "memory.hotplug_size",
                    h,
                    "with memory.size, must stay within 1 TiB".into(),
                ));
            }
        }
        Ok(())
    }

    /// `hugepage_size` only with `hugepages`, 2 MiB or 1 GiB, and RAM made of whole pages.
    fn check_hugepages(&self) -> Result<(), ValidationError> {
        const SIZES: [u64; 2] = [2 << 20, 1 << 30];
        match (self.hugepages, self.hugepage_size) {
            (false, Some(_)) => Err(ValidationError::Conflict {
                field: "memory.hugepage_size".into(),
                reason:
                    "given without memory.hugepages: set hugepages to true, or leave the size out"
                        .into(),
            }),
            (true, Some(size)) if !SIZES.contains(&size) => Err(invalid(
                "memory.hugepage_size",
                size,
                "use 2 MiB (2097152) or 1 GiB (1073741824)".into(),
            )),
            (true, size) => {
                let page = size.unwrap_or(SIZES[0]);
                if self.size % page != 0 {
                    return Err(invalid(
                        "memory.size",
                        self.size,
                        format!("must be a whole number of {} MiB huge pages", page >> 20),
                    ));
                }
                Ok(())
            }
            (false, None) => Ok(()),
        }
    }
}

/// Most PCI segments Palisade builds (each one bus, with its own ECAM region).
pub const MAX_PCI_SEGMENTS: u16 = 16;

/// Longest kernel command line Palisade passes (the guest gets it NUL-terminated).
pub const MAX_CMDLINE_LEN: usize = 4095;

impl PayloadConfig {
    /// Checks that a kernel is given (firmware, IGVM and host data are not supported).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.firmware.is_some() {
            return Err(unsupported(
                "payload.firmware",
                "boot a kernel image with payload.kernel instead",
            ));
        }
        must_be_none("payload.igvm".into(), &self.igvm)?;
        must_be_none("payload.host_data".into(), &self.host_data)?;
        if let Some(cmdline) = &self.cmdline {
            if cmdline.len() > MAX_CMDLINE_LEN {
                return Err(invalid(
                    "payload.cmdline",
                    format!("<{} bytes>", cmdline.len()),
                    format!("a kernel command line holds at most {MAX_CMDLINE_LEN} bytes"),
                ));
            }
        }
        match &self.kernel {
            None => Err(ValidationError::Missing {
                field: "payload.kernel".into(),
                hint: "give the kernel image to boot (Palisade boots a kernel; firmware is not supported)"
                    .into(),
            }),
            Some(k) if k.as_os_str().is_empty() => Err(invalid(
                "payload.kernel",
                "",
                "empty path: give the kernel image to boot".into(),
            )),
            Some(_) => Ok(()),
        }
    }
}

impl ConsoleConfig {
    /// Checks one console; `name` is `serial` or `console` and prefixes the field names.
    pub fn validate_as(&self, name: &str) -> Result<(), ValidationError> {
        match self.mode {
            ConsoleOutputMode::File => match &self.file {
                Some(f) if !f.as_os_str().is_empty() => {}
                _ => {
                    return Err(ValidationError::Missing {
                        field: format!("{name}.file"),
                        hint: "mode File needs the path of the file to write to".into(),
                    })
                }
            },
            // A socket for the serial port, as Cloud Hypervisor has (not for the console).
            ConsoleOutputMode::Socket if name == "serial" => match &self.socket {
                Some(s) if !s.as_os_str().is_empty() => {}
                _ => {
                    return Err(ValidationError::Missing {
                        field: format!("{name}.socket"),
                        hint: "mode Socket needs the path of the socket".into(),
                    })
                }
            },
            ConsoleOutputMode::Socket => {
                return Err(unsupported(
                    format!("{name}.mode=Socket"),
                    "use Pty, Tty, File, Null or Off (a socket is for the serial port)",
                ))
            }
            _ => {}
        }
        must_be_false(format!("{name}.iommu"), self.iommu)?;
        must_be_none(format!("{name}.id"), &self.id)?;
        must_be_none(format!("{name}.pci_device_id"), &self.pci_device_id)
    }
}

impl DiskConfig {
    /// Checks a disk on its own (as in `vm.add-disk`); field names start with `disk.`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_as("disk")
    }

    /// Checks a disk; `name` prefixes the field names (e.g. `disks[0]`).
    pub fn validate_as(&self, name: &str) -> Result<(), ValidationError> {
        match &self.path {
            Some(p) if !p.as_os_str().is_empty() => {}
            _ => {
                return Err(ValidationError::Missing {
                    field: format!("{name}.path"),
                    hint: "give the path of the disk image".into(),
                })
            }
        }
        check_disk_num_queues(u64::from(self.num_queues))
            .map_err(|r| invalid(format!("{name}.num_queues"), self.num_queues, r))?;
        check_queue_size(u64::from(self.queue_size))
            .map_err(|r| invalid(format!("{name}.queue_size"), self.queue_size, r))?;
        if self.id.as_deref() == Some("") {
            return Err(invalid(
                format!("{name}.id"),
                "",
                "empty id: give a name or leave it out".into(),
            ));
        }
        must_be_false(format!("{name}.iommu"), self.iommu)?;
        must_be_false(format!("{name}.vhost_user"), self.vhost_user)?;
        must_be_none(format!("{name}.vhost_socket"), &self.vhost_socket)?;
        if let Some(limiter) = &self.rate_limiter_config {
            limiter
                .check(&format!("{name}.rate_limiter_config"))
                .map_err(|reason| ValidationError::Conflict {
                    field: format!("{name}.rate_limiter_config"),
                    reason,
                })?;
            if self.rate_limit_group.is_some() {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.rate_limit_group"),
                    reason: "a disk has its own rate_limiter_config or a rate_limit_group, not both: give one of them".into(),
                });
            }
        }
        if self.rate_limit_group.as_deref() == Some("") {
            return Err(invalid(
                format!("{name}.rate_limit_group"),
                "",
                "empty name: give a group of rate_limit_groups or leave it out".into(),
            ));
        }
        must_be_none(format!("{name}.pci_device_id"), &self.pci_device_id)?;
        must_be_empty_list(format!("{name}.queue_affinity"), &self.queue_affinity)?;
        must_be_false(format!("{name}.backing_files"), self.backing_files)?;
        must_be_true(format!("{name}.sparse"), self.sparse)?;
        if let Some(t @ (ImageType::FixedVhd | ImageType::Qcow2 | ImageType::Vhdx)) =
            self.image_type
        {
            return Err(unsupported(
                format!("{name}.image_type={t:?}"),
                "Palisade reads raw images only: convert the image to raw",
            ));
        }
        if self.lock_granularity == Some(LockGranularity::Full) {
            return Err(unsupported(
                format!("{name}.lock_granularity=Full"),
                "remove it or set it to ByteRange",
            ));
        }
        Ok(())
    }
}

impl NetConfig {
    /// Checks a network device on its own (as in `vm.add-net`); field names start with
    /// `net.`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_as("net")
    }

    /// Checks a network device; `name` prefixes the field names (e.g. `net[0]`).
    pub fn validate_as(&self, name: &str) -> Result<(), ValidationError> {
        if let Some(mac) = self.mac.as_deref().filter(|m| !m.is_empty()) {
            check_mac(mac).map_err(|r| invalid(format!("{name}.mac"), mac, r))?;
        }
        if let Some(ip) = self.ip.as_deref().filter(|m| !m.is_empty()) {
            check_ipv4(ip).map_err(|r| invalid(format!("{name}.ip"), ip, r))?;
        }
        if let Some(mask) = self.mask.as_deref().filter(|m| !m.is_empty()) {
            check_netmask(mask).map_err(|r| invalid(format!("{name}.mask"), mask, r))?;
        }
        check_net_num_queues(u64::from(self.num_queues))
            .map_err(|r| invalid(format!("{name}.num_queues"), self.num_queues, r))?;
        check_queue_size(u64::from(self.queue_size))
            .map_err(|r| invalid(format!("{name}.queue_size"), self.queue_size, r))?;
        if self.id.as_deref() == Some("") {
            return Err(invalid(
                format!("{name}.id"),
                "",
                "empty id: give a name or leave it out".into(),
            ));
        }
        if let Some(fds) = &self.fds {
            let shown = format!("{fds:?}");
            if fds.is_empty() {
                return Err(invalid(
                    format!("{name}.fds"),
                    shown,
                    "empty list: give at least one tap file descriptor or leave it out".into(),
                ));
            }
            for fd in fds {
                check_fd(*fd).map_err(|r| invalid(format!("{name}.fds"), &shown, r))?;
            }
            if self.tap.as_deref().is_some_and(|t| !t.is_empty()) {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.fds"),
                    reason: "tap and fds cannot both be given: give one of them".into(),
                });
            }
            if usize::from(self.num_queues) != 2 * fds.len() {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.num_queues"),
                    reason: format!(
                        "is {} but {} tap file descriptor(s) need {} queues: set num_queues to twice the number of fds",
                        self.num_queues,
                        fds.len(),
                        2 * fds.len()
                    ),
                });
            }
        }
        must_be_none(format!("{name}.host_mac"), &self.host_mac)?;
        must_be_none(format!("{name}.mtu"), &self.mtu)?;
        must_be_false(format!("{name}.iommu"), self.iommu)?;
        must_be_false(format!("{name}.vhost_user"), self.vhost_user)?;
        must_be_none(format!("{name}.vhost_socket"), &self.vhost_socket)?;
        if self.vhost_mode != VhostMode::Client {
            return Err(unsupported(
                format!("{name}.vhost_mode=Server"),
                "remove it or set it to Client",
            ));
        }
        must_be_none(format!("{name}.pci_device_id"), &self.pci_device_id)?;
        match &self.rate_limiter_config {
            Some(limiter) => limiter
                .check(&format!("{name}.rate_limiter_config"))
                .map_err(|reason| ValidationError::Conflict {
                    field: format!("{name}.rate_limiter_config"),
                    reason,
                }),
            None => Ok(()),
        }
    }
}

impl RngConfig {
    /// Checks the entropy device.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.src.as_os_str().is_empty() {
            return Err(invalid(
                "rng.src",
                "",
                format!("empty path: give an entropy source such as {DEFAULT_RNG_SOURCE}"),
            ));
        }
        must_be_none("rng.id".into(), &self.id)?;
        must_be_false("rng.iommu".into(), self.iommu)?;
        must_be_none("rng.pci_device_id".into(), &self.pci_device_id)
    }
}

impl LandlockConfig {
    /// Checks the access string and that the path exists.
    pub fn validate_at(&self, index: usize) -> Result<(), ValidationError> {
        check_landlock_rule(self).map_err(|reason| ValidationError::LandlockRule {
            index,
            path: self.path.display().to_string(),
            access: self.access.clone(),
            reason,
        })
    }
}

impl VmConfig {
    /// Checks the whole configuration: what Palisade cannot run is refused here, before any
    /// resource is taken, with an error naming the field. Used for configs built from the
    /// command line and for those arriving as JSON.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.payload.validate()?;
        self.cpus.validate()?;
        self.memory.validate()?;
        self.serial.validate_as("serial")?;
        self.console.validate_as("console")?;
        for (i, disk) in self.disks.iter().flatten().enumerate() {
            disk.validate_as(&format!("disks[{i}]"))?;
        }
        for (i, net) in self.net.iter().flatten().enumerate() {
            net.validate_as(&format!("net[{i}]"))?;
        }
        self.rng.validate()?;
        self.check_device_ids()?;
        self.check_pci_segments()?;
        if let Some(rules) = &self.landlock_rules {
            if !rules.is_empty() && !self.landlock_enable {
                return Err(ValidationError::Conflict {
                    field: "landlock_rules".into(),
                    reason: "given but landlock_enable is false: set landlock_enable to true or remove the rules"
                        .into(),
                });
            }
            for (i, rule) in rules.iter().enumerate() {
                rule.validate_at(i)?;
            }
        }
        self.validate_compat()
    }

    /// Every device, and every `pci_segments` entry, on a PCI segment the VM has.
    fn check_pci_segments(&self) -> Result<(), ValidationError> {
        let n = self.num_pci_segments();
        let entries = self.pci_segments.as_deref().unwrap_or_default();
        for (i, p) in entries.iter().enumerate() {
            let name = format!("pci_segments[{i}]");
            if p.pci_segment >= n {
                return Err(invalid(
                    format!("{name}.pci_segment"),
                    p.pci_segment,
                    format!("the VM has {n} PCI segment(s) (platform.num_pci_segments)"),
                ));
            }
            if entries[..i].iter().any(|o| o.pci_segment == p.pci_segment) {
                return Err(invalid(
                    format!("{name}.pci_segment"),
                    p.pci_segment,
                    "is given twice".into(),
                ));
            }
            for (field, w) in [
                ("mmio32_aperture_weight", p.mmio32_aperture_weight),
                ("mmio64_aperture_weight", p.mmio64_aperture_weight),
            ] {
                if w == Some(0) || w.is_some_and(|w| w > 1024) {
                    return Err(invalid(
                        format!("{name}.{field}"),
                        w.unwrap_or(0),
                        "must be between 1 and 1024".into(),
                    ));
                }
            }
        }
        let disks = self.disks.iter().flatten().enumerate();
        let disks = disks.map(|(i, d)| (format!("disks[{i}]"), d.pci_segment));
        let nets = self.net.iter().flatten().enumerate();
        let nets = nets.map(|(i, d)| (format!("net[{i}]"), d.pci_segment));
        let others = [
            ("rng".to_string(), self.rng.pci_segment),
            ("console".to_string(), self.console.pci_segment),
            ("serial".to_string(), self.serial.pci_segment),
        ];
        for (name, segment) in disks.chain(nets).chain(others) {
            if segment >= n {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.pci_segment"),
                    reason: format!(
                        "is {segment}, but the VM has {n} PCI segment(s): raise platform.num_pci_segments or use a lower segment"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Each group named once, with valid limits; each disk's group one of them.
    fn check_rate_limit_groups(&self) -> Result<(), ValidationError> {
        let groups = self.rate_limit_groups.as_deref().unwrap_or_default();
        for (i, g) in groups.iter().enumerate() {
            let name = format!("rate_limit_groups[{i}]");
            if g.id.is_empty() {
                return Err(invalid(
                    format!("{name}.id"),
                    "",
                    "empty name: name the group".into(),
                ));
            }
            if groups[..i].iter().any(|o| o.id == g.id) {
                return Err(invalid(
                    format!("{name}.id"),
                    &g.id,
                    "is given twice".into(),
                ));
            }
            g.rate_limiter_config
                .check(&format!("{name}.rate_limiter_config"))
                .map_err(|reason| ValidationError::Conflict {
                    field: format!("{name}.rate_limiter_config"),
                    reason,
                })?;
        }
        for (i, disk) in self.disks.iter().flatten().enumerate() {
            if let Some(group) = disk.rate_limit_group.as_deref() {
                if !groups.iter().any(|g| g.id == group) {
                    return Err(ValidationError::Conflict {
                        field: format!("disks[{i}].rate_limit_group"),
                        reason: format!(
                            "no rate limit group {group:?}: define it in rate_limit_groups (--rate-limit-group id={group},...)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Rejects two disk or network devices with the same id.
    fn check_device_ids(&self) -> Result<(), ValidationError> {
        let mut seen: HashMap<&str, String> = HashMap::new();
        let disks = self.disks.iter().flatten().enumerate();
        let disk_ids = disks.filter_map(|(i, d)| Some((d.id.as_deref()?, format!("disks[{i}]"))));
        let nets = self.net.iter().flatten().enumerate();
        let net_ids = nets.filter_map(|(i, n)| Some((n.id.as_deref()?, format!("net[{i}]"))));
        for (id, place) in disk_ids.chain(net_ids) {
            if let Some(first) = seen.get(id) {
                return Err(ValidationError::DuplicateId {
                    id: id.to_string(),
                    first: first.clone(),
                    second: place,
                });
            }
            seen.insert(id, place);
        }
        Ok(())
    }

    /// Rejects top-level Cloud Hypervisor fields that are not at their default.
    fn validate_compat(&self) -> Result<(), ValidationError> {
        self.check_rate_limit_groups()?;
        must_be_empty_value("balloon".into(), &self.balloon)?;
        must_be_empty_list("fs".into(), &self.fs)?;
        must_be_empty_list("generic_vhost_user".into(), &self.generic_vhost_user)?;
        must_be_empty_list("pmem".into(), &self.pmem)?;
        if let Some(debug) = &self.debug_console {
            if debug.mode != ConsoleOutputMode::Off {
                return Err(unsupported(
                    format!("debug_console.mode={:?}", debug.mode),
                    "remove debug_console or set its mode to Off",
                ));
            }
        }
        must_be_empty_list("devices".into(), &self.devices)?;
        must_be_empty_list("user_devices".into(), &self.user_devices)?;
        must_be_empty_list("vdpa".into(), &self.vdpa)?;
        must_be_empty_value("vsock".into(), &self.vsock)?;
        must_be_empty_list("numa".into(), &self.numa)?;
        must_be_false("iommu".into(), self.iommu)?;
        must_be_false("watchdog".into(), self.watchdog)?;
        must_be_empty_value("rtc".into(), &self.rtc)?;
        must_be_false("pvpanic".into(), self.pvpanic)?;
        if let Some(p) = &self.platform {
            p.validate()?;
        }
        must_be_empty_value("tpm".into(), &self.tpm)
    }
}

impl PlatformConfig {
    /// Checks what Palisade can build: one PCI segment, no IOMMU, no confidential guest,
    /// SMBIOS strings without NUL bytes, and a UUID in its usual form.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(n) = self.num_pci_segments {
            if n == 0 || n > MAX_PCI_SEGMENTS {
                return Err(invalid(
                    "platform.num_pci_segments",
                    n,
                    format!("must be between 1 and {MAX_PCI_SEGMENTS}"),
                ));
            }
        }
        if self.iommu_segments.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(
                "platform.iommu_segments",
                "remove it: Palisade has no virtual IOMMU",
            ));
        }
        must_be_false("platform.tdx".into(), self.tdx)?;
        must_be_false("platform.sev_snp".into(), self.sev_snp)?;
        must_be_false("platform.iommufd".into(), self.iommufd)?;
        for (name, uuid) in [
            ("platform.system_uuid", &self.system_uuid),
            ("platform.uuid", &self.uuid),
        ] {
            if let Some(u) = uuid {
                if parse_uuid(u).is_none() {
                    return Err(invalid(
                        name,
                        u,
                        "not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)".into(),
                    ));
                }
            }
        }
        let strings = [
            ("system_serial_number", &self.system_serial_number),
            ("serial_number", &self.serial_number),
            ("system_manufacturer", &self.system_manufacturer),
            ("system_product_name", &self.system_product_name),
            ("system_version", &self.system_version),
            ("system_family", &self.system_family),
            ("system_sku_number", &self.system_sku_number),
            ("chassis_asset_tag", &self.chassis_asset_tag),
        ];
        let oem = self
            .oem_strings
            .iter()
            .flatten()
            .map(|s| ("oem_strings", s));
        for (name, value) in strings
            .into_iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
            .chain(oem)
        {
            if value.contains('\0') || value.len() > 255 {
                return Err(invalid(
                    format!("platform.{name}"),
                    value.escape_default(),
                    "an SMBIOS string has no NUL byte and at most 255 bytes".into(),
                ));
            }
        }
        Ok(())
    }
}
