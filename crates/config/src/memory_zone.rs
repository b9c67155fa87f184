//! Memory zones (`memory.zones`, `--memory-zone`): guest RAM made of parts that each have
//! their own backing — private or shared pages, huge pages, a file — and their own room for
//! memory added later (`vm.resize-zone`). With zones, `memory.size` is 0 and the zones,
//! in order, make up RAM.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::option_parser::{OptionError, OptionParser};
use crate::validate::ValidationError;

/// One zone, with Cloud Hypervisor's field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryZoneConfig {
    /// The zone's name (`vm.resize-zone` names it).
    pub id: String,
    /// Bytes of RAM at boot.
    pub size: u64,
    /// A file the zone's memory lives in (shared with it when `shared`, else copied on write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Compatibility: KSM merging (must be false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mergeable: bool,
    /// In a memfd (or the file) another process can map.
    #[serde(default)]
    pub shared: bool,
    /// In huge pages.
    #[serde(default)]
    pub hugepages: bool,
    /// Their size (2 MiB or 1 GiB; 2 MiB when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    /// Compatibility: host NUMA node (must be absent: Palisade does not bind memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_numa_node: Option<u32>,
    /// Room for memory added to this zone later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    /// Memory added to it so far (by `vm.resize-zone`; added again when a VM is created from
    /// a configuration that has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
    /// Compatibility: populate at start (must be false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefault: bool,
    /// Compatibility: reserve swap (must be false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserve: bool,
}

/// Zones and their RAM are whole 4 KiB pages.
const PAGE: u64 = 4096;
/// At most this much in all, RAM and room.
const MAX_TOTAL: u64 = 1 << 40;

impl MemoryZoneConfig {
    /// Keys of `--memory-zone`.
    pub const KEYS: &'static [&'static str] = &[
        "size",
        "file",
        "shared",
        "hugepages",
        "hugepage_size",
        "host_numa_node",
        "id",
        "hotplug_size",
        "hotplugged_size",
        "prefault",
        "reserve",
        "mergeable",
    ];

    /// Parses `--memory-zone id=NAME,size=SIZE[,file=PATH][,shared=on|off]
    /// [,hugepages=on|off][,hugepage_size=SIZE][,hotplug_size=SIZE][,hotplugged_size=SIZE]`.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let id = o.require("id")?.to_string();
        let size = o
            .get_size("size")?
            .ok_or_else(|| OptionError::Invalid("size: required: give the zone's size".into()))?;
        Ok(MemoryZoneConfig {
            id,
            size,
            file: o.get_nonempty("file")?.map(PathBuf::from),
            shared: o.get_bool("shared")?.unwrap_or(false),
            hugepages: o.get_bool("hugepages")?.unwrap_or(false),
            hugepage_size: o.get_size("hugepage_size")?,
            host_numa_node: o.get_int("host_numa_node")?,
            hotplug_size: o.get_size("hotplug_size")?,
            hotplugged_size: o.get_size("hotplugged_size")?,
            prefault: o.get_bool("prefault")?.unwrap_or(false),
            reserve: o.get_bool("reserve")?.unwrap_or(false),
            mergeable: o.get_bool("mergeable")?.unwrap_or(false),
        })
    }

    /// The zone's huge page size, if it has huge pages.
    pub fn page_size(&self) -> Option<u64> {
        self.hugepages
            .then(|| self.hugepage_size.unwrap_or(2 << 20))
    }

    /// Checks one zone; `name` prefixes the fields (`memory.zones[0]`).
    pub fn check(&self, name: &str) -> Result<(), ValidationError> {
        let invalid = |field: &str, value: String, reason: String| ValidationError::Invalid {
            field: format!("{name}.{field}"),
            value,
            reason,
        };
        let unsupported = |field: &str, hint: &str| ValidationError::NotSupported {
            field: format!("{name}.{field}"),
            hint: hint.into(),
        };
        if self.id.is_empty() {
            return Err(invalid(
                "id",
                String::new(),
                "empty name: name the zone".into(),
            ));
        }
        let page = match (self.hugepages, self.hugepage_size) {
            (false, Some(_)) => {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.hugepage_size"),
                    reason: "given without hugepages: set hugepages to true, or leave the size out"
                        .into(),
                })
            }
            (true, Some(s)) if s != 2 << 20 && s != 1 << 30 => {
                return Err(invalid(
                    "hugepage_size",
                    s.to_string(),
                    "use 2 MiB (2097152) or 1 GiB (1073741824)".into(),
                ))
            }
            _ => self.page_size().unwrap_or(PAGE),
        };
        if self.size == 0 || self.size % page != 0 {
            return Err(invalid(
                "size",
                self.size.to_string(),
                format!(
                    "must be a positive whole number of {} KiB pages",
                    page >> 10
                ),
            ));
        }
        for (field, value) in [
            ("hotplug_size", self.hotplug_size),
            ("hotplugged_size", self.hotplugged_size),
        ] {
            if value.is_some_and(|v| v % page != 0) {
                return Err(invalid(
                    field,
                    value.unwrap_or(0).to_string(),
                    format!("must be a whole number of {} KiB pages", page >> 10),
                ));
            }
        }
        if self.hotplugged_size.unwrap_or(0) > self.hotplug_size.unwrap_or(0) {
            return Err(ValidationError::Conflict {
                field: format!("{name}.hotplugged_size"),
                reason: "is more than the zone's hotplug_size".into(),
            });
        }
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(invalid(
                "file",
                String::new(),
                "empty path: give the file or leave it out".into(),
            ));
        }
        if self.file.is_some() && self.hugepages {
            return Err(ValidationError::Conflict {
                field: format!("{name}.file"),
                reason: "a zone lives in a file or in huge pages, not both".into(),
            });
        }
        if self.host_numa_node.is_some() {
            return Err(unsupported(
                "host_numa_node",
                "remove it: Palisade does not bind guest memory to host NUMA nodes",
            ));
        }
        for (field, on) in [
            ("prefault", self.prefault),
            ("reserve", self.reserve),
            ("mergeable", self.mergeable),
        ] {
            if on {
                return Err(unsupported(field, "remove it or set it to false"));
            }
        }
        Ok(())
    }
}

/// Checks the zones of a memory configuration whose `size` is `size` and whose own room is
/// `hotplug_size`: names unique, `size` 0, no room of its own, and all of it within 1 TiB.
pub fn check_zones(
    zones: &[MemoryZoneConfig],
    size: u64,
    hotplug_size: Option<u64>,
) -> Result<(), ValidationError> {
    if zones.is_empty() {
        return Ok(());
    }
    if size != 0 {
        return Err(ValidationError::Conflict {
            field: "memory.size".into(),
            reason: format!(
                "is {size} with memory.zones given: set it to 0 (the zones make up RAM)"
            ),
        });
    }
    if hotplug_size.unwrap_or(0) != 0 {
        return Err(ValidationError::Conflict {
            field: "memory.hotplug_size".into(),
            reason: "given with memory.zones: give each zone its hotplug_size instead".into(),
        });
    }
    let mut total = 0u64;
    for (i, z) in zones.iter().enumerate() {
        let name = format!("memory.zones[{i}]");
        z.check(&name)?;
        if zones[..i].iter().any(|o| o.id == z.id) {
            return Err(ValidationError::Invalid {
                field: format!("{name}.id"),
                value: z.id.clone(),
                reason: "is given twice".into(),
            });
        }
        total = total
            .saturating_add(z.size)
            .saturating_add(z.hotplug_size.unwrap_or(0));
    }
    if total > MAX_TOTAL {
        return Err(ValidationError::Conflict {
            field: "memory.zones".into(),
            reason: format!("hold {total} bytes with their room: at most 1 TiB"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(id: &str, size: u64) -> MemoryZoneConfig {
        MemoryZoneConfig {
            id: id.into(),
            size,
            ..MemoryZoneConfig::default()
        }
    }

    #[test]
    fn a_zone_parses_from_cloud_hypervisors_keys() {
        let z = MemoryZoneConfig::parse(
            "id=z1,size=256M,shared=on,hugepages=on,hugepage_size=2M,hotplug_size=1G",
        )
        .unwrap();
        assert_eq!(z.id, "z1");
        assert_eq!(z.size, 256 << 20);
        assert!(z.shared && z.hugepages);
        assert_eq!(z.hotplug_size, Some(1 << 30));
        assert_eq!(z.page_size(), Some(2 << 20));
        assert!(MemoryZoneConfig::parse("size=1G")
            .unwrap_err()
            .to_string()
            .contains("id"));
        assert!(MemoryZoneConfig::parse("id=a")
            .unwrap_err()
            .to_string()
            .contains("size: required"));
    }

    #[test]
    fn zones_are_checked_together_and_alone() {
        let two = [zone("a", 64 << 20), zone("b", 32 << 20)];
        assert_eq!(check_zones(&two, 0, None), Ok(()));
        let msg = |r: Result<(), ValidationError>| r.unwrap_err().to_string();
        assert!(msg(check_zones(&two, 1 << 30, None)).contains("set it to 0"));
        assert!(
            msg(check_zones(&two, 0, Some(1 << 30))).contains("give each zone its hotplug_size")
        );
        assert!(msg(check_zones(
            &[zone("a", 1 << 20), zone("a", 1 << 20)],
            0,
            None
        ))
        .contains("memory.zones[1].id=a: is given twice"));
        let huge = MemoryZoneConfig {
            hugepages: true,
            ..zone("h", 3 << 20)
        };
        assert!(msg(check_zones(&[huge], 0, None)).contains("whole number of 2048 KiB pages"));
        let numa = MemoryZoneConfig {
            host_numa_node: Some(1),
            ..zone("n", 1 << 20)
        };
        assert!(msg(check_zones(&[numa], 0, None)).contains("host_numa_node: not supported"));
        let over = MemoryZoneConfig {
            hotplug_size: Some(1 << 20),
            hotplugged_size: Some(2 << 20),
            ..zone("o", 1 << 20)
        };
        assert!(msg(check_zones(&[over], 0, None)).contains("more than the zone's hotplug_size"));
    }
}
