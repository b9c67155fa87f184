//! The vsock device (`vsock`, `--vsock`, `vm.add-vsock`) in its hybrid form: guest sockets
//! reach host programs through a Unix socket, with Cloud Hypervisor's field names.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::option_parser::{OptionError, OptionParser};
use crate::validate::ValidationError;

/// The lowest context id a guest may have (0 to 2 are the hypervisor's and the host's).
pub const MIN_GUEST_CID: u64 = 3;
/// The highest: context ids are 32 bits on the wire to Linux's vsock core (`u32`).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// The vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id.
    pub cid: u64,
    /// The Unix socket host programs connect to (`CONNECT <port>`); guest connections to
    /// host port P go to the socket at this path followed by `_P`.
    pub socket: PathBuf,
    /// Compatibility: behind a virtual IOMMU (must be false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub iommu: bool,
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

impl VsockConfig {
    /// Keys of `--vsock` and `add-vsock`.
    pub const KEYS: &'static [&'static str] = &[
        "cid",
        "socket",
        "iommu",
        "id",
        "pci_segment",
        "pci_device_id",
    ];

    /// A device for guest `cid` whose host side is `socket`.
    pub fn new(cid: u64, socket: impl Into<PathBuf>) -> Self {
        VsockConfig {
            cid,
            socket: socket.into(),
            iommu: false,
            pci_segment: 0,
            pci_device_id: None,
            id: None,
        }
    }

    /// Parses `cid=N,socket=PATH[,iommu=on|off][,id=ID][,pci_segment=N]`.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let cid = o
            .get_int("cid")?
            .ok_or_else(|| OptionError::MissingKey { key: "cid".into() })?;
        Ok(VsockConfig {
            iommu: o.get_bool("iommu")?.unwrap_or(false),
            id: o.get_nonempty("id")?.map(str::to_string),
            pci_segment: o.get_int("pci_segment")?.unwrap_or(0),
            pci_device_id: o.get_int("pci_device_id")?,
            ..Self::new(cid, o.require("socket")?)
        })
    }

    /// Checks the device (field names start with `vsock.`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.cid) {
            return Err(ValidationError::Invalid {
                field: "vsock.cid".into(),
                value: self.cid.to_string(),
                reason: format!("must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}"),
            });
        }
        if self.socket.as_os_str().is_empty() || self.socket.file_name().is_none() {
            return Err(ValidationError::Missing {
                field: "vsock.socket".into(),
                hint: "give the path of the Unix socket to bind (host programs connect to it)"
                    .into(),
            });
        }
        if self.iommu {
            return Err(ValidationError::NotSupported {
                field: "vsock.iommu".into(),
                hint: "Palisade has no virtual IOMMU: set iommu=off".into(),
            });
        }
        crate::validate::check_device_identity("vsock", &self.id, &self.pci_device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_checks_values() {
        let v = VsockConfig::parse("cid=3,socket=/run/v.sock,id=v0,pci_segment=0").unwrap();
        assert_eq!((v.cid, v.id.as_deref()), (3, Some("v0")));
        assert_eq!(v.socket, PathBuf::from("/run/v.sock"));
        v.validate().unwrap();
        assert!(VsockConfig::parse("socket=/s").is_err(), "cid is required");
        assert!(VsockConfig::parse("cid=3").is_err(), "socket is required");
        assert!(VsockConfig::parse("cid=3,socket=/s,port=1").is_err());
        for (bad, field) in [
            ("cid=2,socket=/s", "vsock.cid"),
            ("cid=4294967295,socket=/s", "vsock.cid"),
            ("cid=3,socket=/s,iommu=on", "vsock.iommu"),
            ("cid=3,socket=/s,pci_device_id=3", "vsock.pci_device_id"),
        ] {
            let e = VsockConfig::parse(bad).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
        let v: VsockConfig = serde_json::from_str(r#"{"cid": 3, "socket": "/s"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"cid":3,"socket":"/s"}"#
        );
        assert!(serde_json::from_str::<VsockConfig>(r#"{"cid": 3}"#).is_err());
    }
}
