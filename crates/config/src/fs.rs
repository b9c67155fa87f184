//! virtio-fs (`fs`, `--fs`, `vm.add-fs`): a directory shared with the guest by a vhost-user
//! backend such as virtiofsd, reached on its Unix socket, with Cloud Hypervisor's field
//! names.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::option_parser::{OptionError, OptionParser};
use crate::validate::ValidationError;

/// Request queues when not said.
pub const DEFAULT_FS_NUM_QUEUES: u16 = 1;
/// Queue size when not said.
pub const DEFAULT_FS_QUEUE_SIZE: u16 = 1024;
/// Most bytes of a tag (the guest mounts the file system by it).
pub const MAX_TAG_LEN: usize = 36;

/// One virtio-fs device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The name the guest mounts it by (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    /// The backend's Unix socket.
    pub socket: PathBuf,
    /// Request queues (besides the high-priority queue).
    #[serde(default = "FsConfig::default_num_queues")]
    pub num_queues: u16,
    /// Size of each queue.
    #[serde(default = "FsConfig::default_queue_size")]
    pub queue_size: u16,
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

impl FsConfig {
    fn default_num_queues() -> u16 {
        DEFAULT_FS_NUM_QUEUES
    }
    fn default_queue_size() -> u16 {
        DEFAULT_FS_QUEUE_SIZE
    }

    /// Keys of `--fs` and `add-fs`.
    pub const KEYS: &'static [&'static str] = &[
        "tag",
        "socket",
        "num_queues",
        "queue_size",
        "id",
        "pci_segment",
        "pci_device_id",
    ];

    /// A device for `tag` served on `socket`, with the default queues.
    pub fn new(tag: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        FsConfig {
            tag: tag.into(),
            socket: socket.into(),
            num_queues: DEFAULT_FS_NUM_QUEUES,
            queue_size: DEFAULT_FS_QUEUE_SIZE,
            pci_segment: 0,
            pci_device_id: None,
            id: None,
        }
    }

    /// Parses `tag=TAG,socket=PATH[,num_queues=N][,queue_size=N][,id=ID][,pci_segment=N]`
    /// (`--fs` and `add-fs`).
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        Ok(FsConfig {
            num_queues: o.get_int("num_queues")?.unwrap_or(DEFAULT_FS_NUM_QUEUES),
            queue_size: o.get_int("queue_size")?.unwrap_or(DEFAULT_FS_QUEUE_SIZE),
            id: o.get_nonempty("id")?.map(str::to_string),
            pci_segment: o.get_int("pci_segment")?.unwrap_or(0),
            pci_device_id: o.get_int("pci_device_id")?,
            ..Self::new(o.require("tag")?, o.require("socket")?)
        })
    }

    /// Checks one device on its own (as in `vm.add-fs`); field names start with `fs.`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_as("fs")
    }

    /// Checks one device; `name` prefixes the field names (`fs[0]`).
    pub fn validate_as(&self, name: &str) -> Result<(), ValidationError> {
        let invalid = |field: &str, value: String, reason: &str| ValidationError::Invalid {
            field: format!("{name}.{field}"),
            value,
            reason: reason.into(),
        };
        if self.tag.is_empty() || self.tag.len() > MAX_TAG_LEN {
            return Err(invalid(
                "tag",
                self.tag.clone(),
                "must be 1 to 36 bytes: the guest mounts the file system by it",
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(ValidationError::Missing {
                field: format!("{name}.socket"),
                hint: "give the backend's socket (virtiofsd --socket-path)".into(),
            });
        }
        if self.num_queues == 0 || self.num_queues > 16 {
            return Err(invalid(
                "num_queues",
                self.num_queues.to_string(),
                "must be between 1 and 16",
            ));
        }
        crate::validate::check_queue_size(u64::from(self.queue_size)).map_err(|reason| {
            ValidationError::Invalid {
                field: format!("{name}.queue_size"),
                value: self.queue_size.to_string(),
                reason,
            }
        })?;
        crate::validate::check_device_identity(name, &self.id, &self.pci_device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_checks_values() {
        let f = FsConfig::parse("tag=myfs,socket=/run/fs.sock,num_queues=2,queue_size=512,id=f0")
            .unwrap();
        assert_eq!(
            (f.tag.as_str(), f.num_queues, f.queue_size),
            ("myfs", 2, 512)
        );
        assert_eq!(f.socket, PathBuf::from("/run/fs.sock"));
        f.validate().unwrap();
        assert!(FsConfig::parse("socket=/s").is_err(), "tag is required");
        assert!(FsConfig::parse("tag=t").is_err(), "socket is required");
        let long = format!("tag={},socket=/s", "x".repeat(37));
        let e = FsConfig::parse(&long).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("fs.tag"), "{e}");
        let e = FsConfig::parse("tag=t,socket=/s,queue_size=1000")
            .unwrap()
            .validate();
        assert!(e.unwrap_err().to_string().contains("queue_size"));
    }

    #[test]
    fn json_defaults_are_cloud_hypervisors() {
        let f: FsConfig = serde_json::from_str(r#"{"tag": "t", "socket": "/s"}"#).unwrap();
        assert_eq!(f, FsConfig::new("t", "/s"));
        assert_eq!((f.num_queues, f.queue_size), (1, 1024));
        assert!(
            serde_json::from_str::<FsConfig>(r#"{"tag": "t", "socket": "/s", "dax": true}"#)
                .is_err()
        );
    }
}
