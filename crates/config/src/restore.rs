//! `--restore` and the body of `vm.restore`: which snapshot to restore, and how.

use serde::Deserialize;

use crate::option_parser::{OptionError, OptionParser};

/// The body of `vm.restore` (Cloud Hypervisor's `RestoreConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// `file:///DIR`, the snapshot's directory.
    pub source_url: String,
    /// Populate every page of guest memory at restore (otherwise only pages the snapshot
    /// holds data for are read in; the rest are zero until the guest touches them).
    #[serde(default)]
    pub prefault: bool,
    /// `Copy` (the only mode: guest memory is read from the snapshot at restore).
    #[serde(default)]
    pub memory_restore_mode: Option<String>,
    /// Resume the VM once restored, rather than leaving it paused.
    #[serde(default)]
    pub resume: bool,
    /// Taps to use instead of the configuration's (not taken: refused if any are given).
    #[serde(default)]
    pub net_fds: Option<serde_json::Value>,
    /// VFIO descriptors (Palisade has no VFIO: refused if any are given).
    #[serde(default)]
    pub vfio_fds: Option<serde_json::Value>,
    /// An iommufd descriptor (refused if given).
    #[serde(default)]
    pub iommufd_fd: Option<serde_json::Value>,
    /// Memory zone changes (refused unless empty).
    #[serde(default)]
    pub zone_updates: Option<Vec<serde_json::Value>>,
}

impl RestoreConfig {
    /// The keys `--restore` takes (Cloud Hypervisor's).
    pub const KEYS: &'static [&'static str] = &[
        "source_url",
        "prefault",
        "memory_restore_mode",
        "resume",
        "net_fds",
        "vfio_fds",
        "iommufd_fd",
        "zone_updates",
    ];

    /// Parses `--restore source_url=…,prefault=on|off,memory_restore_mode=copy,resume=…`.
    pub fn parse(input: &str) -> Result<Self, OptionError> {
        let o = OptionParser::new(Self::KEYS).parse(input)?;
        let text = |key: &str| o.get(key).map(|v| serde_json::Value::String(v.to_string()));
        Ok(RestoreConfig {
            source_url: o.require("source_url")?.to_string(),
            prefault: o.get_bool("prefault")?.unwrap_or(false),
            memory_restore_mode: o.get("memory_restore_mode").map(str::to_string),
            resume: o.get_bool("resume")?.unwrap_or(false),
            net_fds: text("net_fds"),
            vfio_fds: text("vfio_fds"),
            iommufd_fd: text("iommufd_fd"),
            zone_updates: o
                .get("zone_updates")
                .map(|v| vec![serde_json::Value::String(v.to_string())]),
        })
    }
}

/// Refuses what Palisade has no use for in a restore or an incoming migration: VFIO
/// descriptors, an iommufd, memory zone changes.
pub(crate) fn refuse_vfio_and_zones(
    vfio_fds: &Option<serde_json::Value>,
    iommufd_fd: &Option<serde_json::Value>,
    zone_updates: &Option<Vec<serde_json::Value>>,
) -> Result<(), String> {
    let given = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if given(vfio_fds) || given(iommufd_fd) {
        return Err("vfio_fds/iommufd_fd: Palisade has no VFIO devices".into());
    }
    if zone_updates.as_ref().is_some_and(|z| !z.is_empty()) {
        return Err("zone_updates: memory zones come back as they were".into());
    }
    Ok(())
}

impl RestoreConfig {
    /// What Palisade cannot do of this restore, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.net_fds.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("net_fds: taps are reopened from the snapshot's configuration; passing new ones is not supported".into());
        }
        refuse_vfio_and_zones(&self.vfio_fds, &self.iommufd_fd, &self.zone_updates)?;
        match self.memory_restore_mode.as_deref() {
            None | Some("Copy") | Some("copy") => Ok(()),
            Some(other) => Err(format!(
                "memory_restore_mode {other:?}: only Copy is supported (memory is read in before the VM runs)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_options_and_bodies() {
        let r = RestoreConfig::parse("source_url=file:///snap,prefault=on,resume=true").unwrap();
        assert_eq!(r.source_url, "file:///snap");
        assert!(r.prefault && r.resume);
        assert!(
            RestoreConfig::parse("prefault=on").is_err(),
            "source_url is required"
        );
        assert!(RestoreConfig::parse("source_url=file:///s,bogus=1").is_err());
        let body: RestoreConfig = serde_json::from_str(
            r#"{"source_url":"file:///s","prefault":false,"memory_restore_mode":"Copy","net_fds":null,"vfio_fds":null,"iommufd_fd":null,"resume":false,"zone_updates":[]}"#,
        )
        .unwrap();
        assert_eq!(body.memory_restore_mode.as_deref(), Some("Copy"));
        assert!(serde_json::from_str::<RestoreConfig>(r#"{"source_url":"x","y":1}"#).is_err());
    }
}
