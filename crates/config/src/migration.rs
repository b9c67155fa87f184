//! The bodies of `vm.send-migration` and `vm.receive-migration` (Cloud Hypervisor's
//! `SendMigrationData` and `ReceiveMigrationData`), and what Palisade takes of them.

use serde::Deserialize;

/// `vm.send-migration`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMigration {
    /// `unix:PATH`: the destination's socket.
    pub destination_url: String,
    /// Both VMMs on one host (the copy goes through the socket all the same).
    #[serde(default)]
    pub local: bool,
    /// Keep the source VM once the destination has it (refused: the VM would run twice).
    #[serde(default)]
    pub preserve_source: bool,
    /// The pause the final copy aims to stay within, in milliseconds.
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// How long the whole migration may take, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// `Cancel` (the migration fails, the VM runs on) or `Ignore` (it goes to the final
    /// copy) when `timeout_s` has passed.
    #[serde(default)]
    pub timeout_strategy: Option<String>,
    /// Connections (one: a Unix socket carries one).
    #[serde(default = "one")]
    pub connections: u64,
    /// TLS (only for TCP, which Palisade does not migrate over).
    #[serde(default)]
    pub tls_dir: Option<String>,
    /// `Precopy` (the only mode).
    #[serde(default)]
    pub memory_mode: Option<String>,
}

/// `vm.receive-migration`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMigration {
    /// `unix:PATH`: the socket to listen on.
    pub receiver_url: String,
    /// TLS (only for TCP).
    #[serde(default)]
    pub tls_dir: Option<String>,
    /// `Precopy` (the only mode).
    #[serde(default)]
    pub memory_mode: Option<String>,
    /// VFIO descriptors (Palisade has no VFIO: refused if given).
    #[serde(default)]
    pub vfio_fds: Option<serde_json::Value>,
    /// An iommufd descriptor (refused if given).
    #[serde(default)]
    pub iommufd_fd: Option<serde_json::Value>,
    /// Memory zone changes (refused unless empty).
    #[serde(default)]
    pub zone_updates: Option<Vec<serde_json::Value>>,
}

fn default_downtime_ms() -> u64 {
    300
}

fn default_timeout_s() -> u64 {
    3600
}

fn one() -> u64 {
    1
}

/// The socket path of a `unix:PATH` URL (absolute or relative, as given).
pub fn unix_socket_path(url: &str) -> Result<std::path::PathBuf, String> {
    match url.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => Ok(path.into()),
        _ if url.starts_with("tcp:") => Err(format!(
            "{url:?}: Palisade migrates over Unix sockets only (unix:PATH)"
        )),
        _ => Err(format!("{url:?} is not unix:PATH")),
    }
}

fn precopy(mode: &Option<String>) -> Result<(), String> {
    match mode.as_deref() {
        None | Some("Precopy") | Some("precopy") => Ok(()),
        Some(other) => Err(format!("memory_mode {other:?}: only Precopy is supported")),
    }
}

impl SendMigration {
    /// What Palisade cannot do of this request, if anything.
    pub fn check(&self) -> Result<(), String> {
        unix_socket_path(&self.destination_url)?;
        if self.preserve_source {
            return Err(
                "preserve_source: the source VM is released once the destination runs it".into(),
            );
        }
        if self.connections != 1 {
            return Err(format!(
                "connections {}: a Unix-socket migration uses one connection",
                self.connections
            ));
        }
        if self.tls_dir.is_some() {
            return Err("tls_dir: TLS is for TCP migrations, which Palisade does not make".into());
        }
        if self.downtime_ms == 0 || self.timeout_s == 0 {
            return Err("downtime_ms and timeout_s must be at least 1".into());
        }
        match self.timeout_strategy.as_deref() {
            None | Some("Cancel") | Some("cancel") | Some("Ignore") | Some("ignore") => {}
            Some(other) => return Err(format!("timeout_strategy {other:?}: Cancel or Ignore")),
        }
        precopy(&self.memory_mode)
    }

    /// Whether the migration goes on to its final copy once `timeout_s` has passed.
    pub fn ignores_timeout(&self) -> bool {
        matches!(
            self.timeout_strategy.as_deref(),
            Some("Ignore") | Some("ignore")
        )
    }
}

impl ReceiveMigration {
    /// What Palisade cannot do of this request, if anything.
    pub fn check(&self) -> Result<(), String> {
        unix_socket_path(&self.receiver_url)?;
        if self.tls_dir.is_some() {
            return Err("tls_dir: TLS is for TCP migrations, which Palisade does not make".into());
        }
        crate::restore::refuse_vfio_and_zones(
            &self.vfio_fds,
            &self.iommufd_fd,
            &self.zone_updates,
        )?;
        precopy(&self.memory_mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_as_ch_remote_sends_them() {
        let send: SendMigration = serde_json::from_str(
            r#"{"destination_url":"unix:/tmp/m.sock","local":true,"preserve_source":false,"downtime_ms":300,"timeout_s":3600,"timeout_strategy":"Cancel","connections":1,"tls_dir":null,"memory_mode":"Precopy"}"#,
        )
        .unwrap();
        send.check().unwrap();
        assert!(!send.ignores_timeout());
        let receive: ReceiveMigration = serde_json::from_str(
            r#"{"receiver_url":"unix:/tmp/m.sock","tls_dir":null,"memory_mode":"Precopy","vfio_fds":null,"iommufd_fd":null,"zone_updates":[]}"#,
        )
        .unwrap();
        receive.check().unwrap();
        let tcp: SendMigration =
            serde_json::from_str(r#"{"destination_url":"tcp:1.2.3.4:6000"}"#).unwrap();
        assert!(tcp.check().unwrap_err().contains("Unix sockets only"));
        let many: SendMigration =
            serde_json::from_str(r#"{"destination_url":"unix:/m","connections":4}"#).unwrap();
        assert!(many.check().is_err());
        assert!(
            serde_json::from_str::<ReceiveMigration>(r#"{"receiver_url":"unix:/m","x":1}"#)
                .is_err()
        );
        assert_eq!(
            unix_socket_path("unix:/a/b").unwrap(),
            std::path::PathBuf::from("/a/b")
        );
        assert!(unix_socket_path("unix:").is_err());
    }
}
