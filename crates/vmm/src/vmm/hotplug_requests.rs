//! The VMM's answers to hot-plug requests: adding disks, network, pmem, fs and vsock devices (the reply
//! names their PCI address) and removing devices.

use log::info;
use serde_json::json;

use super::{Response, Vmm};
use crate::control::{ErrorKind, Reply, RequestError};
use crate::vm::{HotplugError, Removal, VmState};

impl Vmm {
    pub(super) fn add_disk(&mut self, disk: config::DiskConfig) -> Response {
        self.plug("vm.add-disk", "disk", |vm| vm.add_disk(disk))
    }

    pub(super) fn add_pmem(&mut self, pmem: config::PmemConfig) -> Response {
        self.plug("vm.add-pmem", "pmem", |vm| vm.add_pmem(pmem))
    }

    pub(super) fn add_fs(&mut self, fs: config::FsConfig) -> Response {
        self.plug("vm.add-fs", "fs", |vm| vm.add_fs(fs))
    }

    pub(super) fn add_vsock(&mut self, vsock: config::VsockConfig) -> Response {
        self.plug("vm.add-vsock", "vsock device", |vm| vm.add_vsock(vsock))
    }

    pub(super) fn add_net(&mut self, net: config::NetConfig) -> Response {
        // Descriptors sent for this device and not adopted are closed, whatever happens.
        let fds = net.fds.clone().unwrap_or_default();
        let answer = self.plug("vm.add-net", "network device", |vm| vm.add_net(net));
        crate::passed_fds::discard(&fds);
        answer
    }

    /// Answers `action`, which plugs a `what` with `add`: its id and PCI address for a
    /// running guest; nothing for a cold plug (the guest finds it when it boots).
    fn plug(
        &mut self,
        action: &str,
        what: &str,
        add: impl FnOnce(&mut crate::vm::Vm) -> Result<(String, (u16, u8)), HotplugError>,
    ) -> Response {
        self.require_vm(action)?;
        let Some(vm) = &mut self.vm else {
            return Err(RequestError::new(
                ErrorKind::NotFound,
                format!("{action}: no VM"),
            ));
        };
        let running = matches!(vm.state(), VmState::Running | VmState::Paused);
        let (id, slot) = add(vm).map_err(|e| hotplug_error(action, e))?;
        info!("{what} {id} added at {}", bdf(slot));
        if running {
            Ok(Reply::Json(json!({ "id": id, "bdf": bdf(slot) })))
        } else {
            Ok(Reply::Done)
        }
    }

    pub(super) fn remove_device(&mut self, id: &str) -> Response {
        self.require_vm("vm.remove-device")?;
        let Some(vm) = &mut self.vm else {
            return Err(RequestError::new(
                ErrorKind::NotFound,
                "vm.remove-device: no VM",
            ));
        };
        match vm
            .remove_device(id)
            .map_err(|e| hotplug_error("vm.remove-device", e))?
        {
            Removal::Done => {
                info!("device {id} removed");
            }
            Removal::Requested => info!("device {id}: the guest was asked to eject it"),
        }
        Ok(Reply::Done)
    }
}

fn bdf((segment, slot): (u16, u8)) -> String {
    format!("{segment:04x}:00:{slot:02x}.0")
}

pub(super) fn hotplug_error(action: &str, e: HotplugError) -> RequestError {
    let kind = match &e {
        HotplugError::Invalid(_) => ErrorKind::BadRequest,
        HotplugError::Duplicate(_) | HotplugError::Busy(_) => ErrorKind::Conflict,
        HotplugError::NotFound(_) | HotplugError::NoZone(_) => ErrorKind::NotFound,
        HotplugError::Denied(_) => ErrorKind::Forbidden,
        HotplugError::Failed(_) => ErrorKind::Internal,
    };
    RequestError::new(kind, format!("{action}: {e}"))
}
