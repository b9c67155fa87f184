//! virtio-fs devices: the backend's socket reached through the connector thread, which also
//! runs the vhost-user handshake and, later, every exchange the device's worker asks for.

use config::FsConfig;
use devices::virtio::fs::VhostUserFs;
use devices::virtio::vhost_user;

use super::{PciDeviceError, PciEntry};
use crate::connector::{self, ConnectError};

impl super::PciDevices {
    /// Connects to the backend `cfg` names and plugs a virtio-fs device for it with id `id`.
    pub fn add_fs(&mut self, id: &str, cfg: &FsConfig) -> Result<&PciEntry, PciDeviceError> {
        let queues = usize::from(cfg.num_queues) + 1;
        let mut backend = connector::connect_and(&cfg.socket, &format!("fs {id}"), move |stream| {
            vhost_user::handshake(stream, queues)
        })
        .map_err(|e| match e {
            ConnectError::Denied(why) => PciDeviceError::Denied(why),
            ConnectError::Failed(why) => PciDeviceError::Backend(why),
        })?;
        backend.set_carrier(std::sync::Arc::new(connector::carry));
        let device = VhostUserFs::new(backend, &cfg.tag, cfg.num_queues, cfg.queue_size)?;
        self.add_virtio(id, Box::new(device), cfg.pci_segment)
    }
}
