//! `--platform`: the machine's PCI segments and SMBIOS identity, with Cloud Hypervisor's
//! keys (those of features Palisade has no use for — an IOMMU, iommufd — accepted when off).

use serde::{Deserialize, Serialize};

use crate::option_parser::{split_list, OptionError, OptionParser};
use crate::vm::PlatformConfig;

/// How a PCI segment shares the BAR windows (`pci_segments`, `--pci-segment`): in
/// proportion to its weights against the other segments'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciSegmentConfig {
    /// The segment.
    pub pci_segment: u16,
    /// Its weight in the 32-bit window (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmio32_aperture_weight: Option<u32>,
    /// Its weight in the 64-bit window (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmio64_aperture_weight: Option<u32>,
}

impl PciSegmentConfig {
    /// Keys of `--pci-segment`.
    pub const KEYS: &'static [&'static str] = &[
        "pci_segment",
        "mmio32_aperture_weight",
        "mmio64_aperture_weight",
    ];

    /// Parses `--pci-segment pci_segment=N[,mmio32_aperture_weight=W]
    /// [,mmio64_aperture_weight=W]`.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        Ok(PciSegmentConfig {
            pci_segment: o
                .get_int("pci_segment")?
                .ok_or_else(|| OptionError::Invalid("pci_segment: required".into()))?,
            mmio32_aperture_weight: o.get_int("mmio32_aperture_weight")?,
            mmio64_aperture_weight: o.get_int("mmio64_aperture_weight")?,
        })
    }
}

impl PlatformConfig {
    /// Keys of `--platform`.
    pub const KEYS: &'static [&'static str] = &[
        "num_pci_segments",
        "iommu_segments",
        "iommu_address_width",
        "iommufd",
        "iommufd_fd",
        "vfio_p2p_dma",
        "system_manufacturer",
        "system_product_name",
        "system_version",
        "system_serial_number",
        "system_uuid",
        "system_sku_number",
        "system_family",
        "oem_strings",
        "chassis_asset_tag",
    ];

    /// Parses `--platform num_pci_segments=N[,system_serial_number=S][,system_uuid=U]
    /// [,oem_strings=[a,b]][,system_manufacturer=…]…`; what it holds is checked by
    /// [`PlatformConfig::validate`].
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let text = |key: &str| o.get_or_empty(key).map(str::to_string);
        let iommu_segments = o.get_list::<u16>("iommu_segments")?;
        if o.get("iommufd_fd").is_some() {
            return Err(OptionError::invalid(
                "iommufd_fd",
                o.get("iommufd_fd").unwrap_or_default(),
                "not supported by Palisade (it has no VFIO)",
            ));
        }
        let oem_strings = match o.get_or_empty("oem_strings") {
            Some(v) => Some(
                split_list(v)
                    .map_err(|e| OptionError::invalid("oem_strings", v, e))?
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            ),
            None => None,
        };
        Ok(PlatformConfig {
            num_pci_segments: o.get_int("num_pci_segments")?,
            iommu_segments,
            iommu_address_width_bits: o.get_int("iommu_address_width")?,
            system_serial_number: text("system_serial_number"),
            system_uuid: text("system_uuid"),
            oem_strings,
            system_manufacturer: text("system_manufacturer"),
            system_product_name: text("system_product_name"),
            system_version: text("system_version"),
            system_family: text("system_family"),
            system_sku_number: text("system_sku_number"),
            chassis_asset_tag: text("chassis_asset_tag"),
            iommufd: o.get_bool("iommufd")?.unwrap_or(false),
            vfio_p2p_dma: o.get_bool("vfio_p2p_dma")?,
            ..PlatformConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_weight_parses() {
        let p = PciSegmentConfig::parse("pci_segment=1,mmio64_aperture_weight=3").unwrap();
        assert_eq!(p.pci_segment, 1);
        assert_eq!(p.mmio64_aperture_weight, Some(3));
        assert_eq!(p.mmio32_aperture_weight, None);
        assert!(PciSegmentConfig::parse("mmio32_aperture_weight=2").is_err());
    }

    #[test]
    fn platform_parses_from_cloud_hypervisors_keys() {
        let p = PlatformConfig::parse(
            "num_pci_segments=2,system_serial_number=abc,system_uuid=7f2b1c9e-4d3a-4b5c-8e6f-0a1b2c3d4e5f,oem_strings=[one,two]",
        )
        .unwrap();
        assert_eq!(p.num_pci_segments, Some(2));
        assert_eq!(p.serial(), Some("abc"));
        assert_eq!(
            p.oem_strings.as_deref(),
            Some(&["one".to_string(), "two".to_string()][..])
        );
        assert_eq!(p.validate(), Ok(()));
        assert!(PlatformConfig::parse("num_pci_segments=x").is_err());
        assert!(PlatformConfig::parse("iommufd_fd=3")
            .unwrap_err()
            .to_string()
            .contains("no VFIO"));
        let iommu = PlatformConfig::parse("iommu_segments=[1]").unwrap();
        assert!(iommu
            .validate()
            .unwrap_err()
            .to_string()
            .contains("iommu_segments"));
    }
}
