//! The vsock device: its socket bound by the connector thread (the one thread that may make
//! sockets), guest connections dialed there too, and a worker allowed to accept and watch
//! the connections it relays.

use std::sync::Arc;

use config::VsockConfig;
use devices::virtio::vsock::muxer::{Dialer, Muxer};
use devices::virtio::vsock::Vsock;

use super::{PciDeviceError, PciEntry};
use crate::connector::{self, ConnectError};

impl super::PciDevices {
    /// Binds the socket `cfg` names and plugs a vsock device for it with id `id`.
    pub fn add_vsock(&mut self, id: &str, cfg: &VsockConfig) -> Result<&PciEntry, PciDeviceError> {
        let what = format!("vsock {id}");
        let setup = crate::thread_policy::vsock_thread_setup().map_err(PciDeviceError::Backend)?;
        let listener = connector::bind(&cfg.socket, &what).map_err(|e| match e {
            ConnectError::Denied(why) => PciDeviceError::Denied(why),
            ConnectError::Failed(why) => PciDeviceError::Backend(why),
        })?;
        let dialer: Dialer = Arc::new(connector::dial);
        let muxer = Muxer::new(listener, cfg.socket.clone(), cfg.cid, dialer)
            .map_err(|e| PciDeviceError::Backend(format!("{what}: {e}")))?;
        let device = Vsock::new(cfg.cid, muxer);
        self.add_virtio_confined(id, Box::new(device), cfg.pci_segment, setup)
    }
}
