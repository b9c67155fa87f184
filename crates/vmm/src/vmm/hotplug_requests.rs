//! The VMM's answers to hot-plug requests: adding disks, network, pmem and fs devices (the reply
//! names their PCI address) and removing devices.

use log::info;
use serde_json::json;

use super::{Response, Vmm};
use crate::control::{ErrorKind, Reply, RequestError};
use crate::vm::{HotplugError, Removal, VmState};

impl Vmm {
    pub(super) fn add_disk(&mut self, disk: config::DiskConfig) -> Response {
        self.require_vm("vm.add-disk")?;
        let Some(vm) = &mut self.vm else {
            return Err(RequestError::new(ErrorKind::NotFound, "vm.add-disk: no VM"));
        };
        let running = matches!(vm.state(), VmState::Running | VmState::Paused);
        let (id, slot) = vm
            .add_disk(disk)
            .map_err(|e| hotplug_error("vm.add-disk", e))?;
        info!("disk {id} added at {}", bdf(slot));
        if running {
            Ok(Reply::Json(json!({ "id": id, "bdf": bdf(slot) })))
        } else {
            // Cold plug: the guest will find it when it boots.
            Ok(Reply::Done)
        }
    }

    pub(super) fn add_pmem(&mut self, pmem: config::PmemConfig) -> Response {
        self.require_vm("vm.add-pmem")?;
        let Some(vm) = &mut self.vm else {
            return Err(RequestError::new(ErrorKind::NotFound, "vm.add-pmem: no VM"));
        };
        let running = matches!(vm.state(), VmState::Running | VmState::Paused);
        let (id, slot) = vm
            .add_pmem(pmem)
            .map_err(|e| hotplug_error("vm.add-pmem", e))?;
        info!("pmem {id} added at {}", bdf(slot));
        if running {
            Ok(Reply::Json(json!({ "id": id, "bdf": bdf(slot) })))
        } else {
            Ok(Reply::Done)
        }
    }

    pub(super) fn add_fs(&mut self, fs: config::FsConfig) -> Response {
        self.require_vm("vm.add-fs")?;
        let Some(vm) = &mut self.vm else {
            return Err(RequestError::new(ErrorKind::NotFound, "vm.add-fs: no VM"));
        };
        let running = matches!(vm.state(), VmState::Running | VmState::Paused);
        let (id, slot) = vm.add_fs(fs).map_err(|e| hotplug_error("vm.add-fs", e))?;
        info!("fs {id} added at {}", bdf(slot));
        if running {
            Ok(Reply::Json(json!({ "id": id, "bdf": bdf(slot) })))
        } else {
            Ok(Reply::Done)
        }
    }

    pub(super) fn add_net(&mut self, net: config::NetConfig) -> Response {
        // Descriptors sent for this device and not adopted are closed, whatever happens.
        let fds = net.fds.clone().unwrap_or_default();
        let answer = self.add_net_inner(net);
        crate::passed_fds::discard(&fds);
        answer
    }

    fn add_net_inner(&mut self, net: config::NetConfig) -> Response {
        self.require_vm("vm.add-net")?;
        let Some(vm) = &mut self.vm else {
            return Err(RequestError::new(ErrorKind::NotFound, "vm.add-net: no VM"));
        };
        let running = matches!(vm.state(), VmState::Running | VmState::Paused);
        let (id, slot) = vm
            .add_net(net)
            .map_err(|e| hotplug_error("vm.add-net", e))?;
        info!("network device {id} added at {}", bdf(slot));
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
