//! Persistent memory (`pmem`, `--pmem`, `vm.add-pmem`): a file the guest sees as memory
//! through a virtio-pmem device, with Cloud Hypervisor's field names.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::option_parser::{OptionError, OptionParser};
use crate::validate::ValidationError;

/// A region's size and guest address are whole 2 MiB pages, so the guest can map it in large
/// pages (and Linux's DAX wants no less).
pub const PMEM_ALIGN: u64 = 2 << 20;

/// One virtio-pmem device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemConfig {
    /// The backing file.
    pub file: PathBuf,
    /// The region's size; the file's size when absent. A shorter file is extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Compatibility: behind a virtual IOMMU (must be false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub iommu: bool,
    /// Map the file privately: the guest's writes never reach it (the file is opened
    /// read-only).
    #[serde(default)]
    pub discard_writes: bool,
    /// The PCI segment the device is on.
    #[serde(default, skip_serializing_if = "crate::vm::is_zero")]
    pub pci_segment: u16,
    /// Compatibility: PCI slot (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
    /// Device identifier (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl PmemConfig {
    /// Keys of `--pmem` and `add-pmem`.
    pub const KEYS: &'static [&'static str] = &[
        "file",
        "size",
        "iommu",
        "discard_writes",
        "id",
        "pci_segment",
        "pci_device_id",
    ];

    /// A region backed by `file`, its size the file's.
    pub fn with_file(file: impl Into<PathBuf>) -> Self {
        PmemConfig {
            file: file.into(),
            size: None,
            iommu: false,
            discard_writes: false,
            pci_segment: 0,
            pci_device_id: None,
            id: None,
        }
    }

    /// Parses `file=PATH[,size=SIZE][,discard_writes=on|off][,id=ID][,pci_segment=N]`
    /// (`--pmem` and `add-pmem`).
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        Ok(PmemConfig {
            size: o.get_size("size")?,
            iommu: o.get_bool("iommu")?.unwrap_or(false),
            discard_writes: o.get_bool("discard_writes")?.unwrap_or(false),
            id: o.get_nonempty("id")?.map(str::to_string),
            pci_segment: o.get_int("pci_segment")?.unwrap_or(0),
            pci_device_id: o.get_int("pci_device_id")?,
            ..Self::with_file(o.require("file")?)
        })
    }

    /// Checks one device on its own (as in `vm.add-pmem`); field names start with `pmem.`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_as("pmem")
    }

    /// Checks one device; `name` prefixes the field names (`pmem[0]`).
    pub fn validate_as(&self, name: &str) -> Result<(), ValidationError> {
        let invalid = |field: &str, value: String, reason: &str| ValidationError::Invalid {
            field: format!("{name}.{field}"),
            value,
            reason: reason.into(),
        };
        if self.file.as_os_str().is_empty() {
            return Err(ValidationError::Missing {
                field: format!("{name}.file"),
                hint: "give the file that backs the persistent memory".into(),
            });
        }
        if let Some(size) = self.size {
            if size == 0 || size % PMEM_ALIGN != 0 {
                return Err(invalid(
                    "size",
                    size.to_string(),
                    "must be a non-zero multiple of 2 MiB",
                ));
            }
        }
        if self.iommu {
            return Err(ValidationError::NotSupported {
                field: format!("{name}.iommu"),
                hint: "Palisade has no virtual IOMMU: remove iommu=on".into(),
            });
        }
        crate::validate::check_device_identity(name, &self.id, &self.pci_device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_checks_sizes() {
        let p = PmemConfig::parse("file=/p,size=4M,discard_writes=on,id=pm,pci_segment=1").unwrap();
        assert_eq!(p.file, PathBuf::from("/p"));
        assert_eq!(p.size, Some(4 << 20));
        assert!(p.discard_writes);
        assert_eq!((p.id.as_deref(), p.pci_segment), (Some("pm"), 1));
        p.validate().unwrap();
        let e = PmemConfig::parse("file=/p,size=3M").unwrap().validate();
        assert!(e.unwrap_err().to_string().contains("pmem.size"));
        assert!(PmemConfig::parse("size=2M").is_err(), "file is required");
        assert!(PmemConfig::parse("file=/p,bogus=1").is_err());
        let e = PmemConfig::parse("file=/p,iommu=on").unwrap().validate();
        assert!(e.unwrap_err().to_string().contains("iommu"));
    }

    #[test]
    fn json_round_trip_with_defaults() {
        let p: PmemConfig = serde_json::from_str(r#"{"file": "/p"}"#).unwrap();
        assert_eq!(p, PmemConfig::with_file("/p"));
        let back = serde_json::to_string(&p).unwrap();
        assert_eq!(back, r#"{"file":"/p","discard_writes":false}"#);
        assert!(serde_json::from_str::<PmemConfig>(r#"{"file": "/p", "x": 1}"#).is_err());
    }
}
