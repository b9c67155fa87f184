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

/// A hot-pluggable device's id (absent or not empty) and slot (Palisade's to choose);
/// `name` prefixes the fields (`pmem[0]`).
pub(crate) fn check_device_identity(
    name: &str,
    id: &Option<String>,
    pci_device_id: &Option<u8>,
) -> Result<(), ValidationError> {
    if id.as_deref() == Some("") {
        return Err(invalid(
            format!("{name}.id"),
            "",
            "empty id: give a name or leave it out".into(),
        ));
    }
    must_be_none(format!("{name}.pci_device_id"), pci_device_id)
}

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

mod devices;
mod machine;
mod vm;

pub use machine::{topology_max_apic_id, MAX_CMDLINE_LEN, MAX_PCI_SEGMENTS};
