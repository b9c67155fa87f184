//! Hot-plugging PCI devices: disks, network devices, persistent memory and file systems, each checked,
//! plugged, recorded in the config and announced to a running guest.

use super::{HotplugError, Vm, VmState};
use crate::pci_devices::PciDeviceError;

impl Vm {
    /// Adds a disk; returns its id and slot. On a running VM the guest is told.
    pub fn add_disk(
        &mut self,
        mut disk: config::DiskConfig,
    ) -> Result<(String, (u16, u8)), HotplugError> {
        disk.validate()
            .map_err(|e| HotplugError::Invalid(e.to_string()))?;
        if let Some(group) = disk.rate_limit_group.as_deref() {
            let groups = self.config.rate_limit_groups.as_deref().unwrap_or_default();
            if !groups.iter().any(|g| g.id == group) {
                return Err(HotplugError::Invalid(format!(
                    "disk.rate_limit_group: no rate limit group {group:?}: the VM's groups are \
                     given at creation (rate_limit_groups, --rate-limit-group)"
                )));
            }
        }
        self.check_segment(disk.pci_segment, "disk")?;
        let id = self.new_device_id(disk.id.as_deref(), "_disk")?;
        let slot = self.devices.pci.add_disk(&id, &disk)?.address();
        disk.id = Some(id.clone());
        self.config.disks.get_or_insert_with(Vec::new).push(disk);
        Ok(self.plugged(id, slot))
    }

    /// Adds a network device; returns its id and slot. On a running VM the guest is told.
    pub fn add_net(
        &mut self,
        mut net: config::NetConfig,
    ) -> Result<(String, (u16, u8)), HotplugError> {
        net.validate()
            .map_err(|e| HotplugError::Invalid(e.to_string()))?;
        self.check_segment(net.pci_segment, "net")?;
        let id = self.new_device_id(net.id.as_deref(), "_net")?;
        let (entry, tap, mac) = self.devices.pci.add_net(&id, &net)?;
        let slot = entry.address();
        net.id = Some(id.clone());
        net.tap = Some(tap);
        net.mac = Some(mac);
        self.config.net.get_or_insert_with(Vec::new).push(net);
        Ok(self.plugged(id, slot))
    }

    /// A device `id` was plugged at `slot`: a running guest is told.
    fn plugged(&self, id: String, slot: (u16, u8)) -> (String, (u16, u8)) {
        if matches!(self.state, VmState::Running | VmState::Paused) {
            self.devices.announce_plugged(slot.0, slot.1);
        }
        (id, slot)
    }

    /// Refuses a device on a PCI segment the VM does not have.
    pub(super) fn check_segment(&self, segment: u16, what: &str) -> Result<(), HotplugError> {
        let segments = self.config.num_pci_segments();
        if segment >= segments {
            return Err(HotplugError::Invalid(format!(
                "{what}.pci_segment={segment}: the VM has {segments} PCI segment(s) \
                 (platform.num_pci_segments, given at creation)"
            )));
        }
        Ok(())
    }

    /// The id a new device gets: the one asked for if free, or the next free `prefixN`.
    pub(super) fn new_device_id(
        &self,
        wanted: Option<&str>,
        prefix: &str,
    ) -> Result<String, HotplugError> {
        let taken = |id: &str| self.config.has_device_id(id) || self.devices.pci.find(id).is_some();
        match wanted {
            Some(id) if taken(id) => Err(HotplugError::Duplicate(id.to_string())),
            Some(id) => Ok(id.to_string()),
            None => Ok((0..)
                .map(|n| format!("{prefix}{n}"))
                .find(|id| !taken(id))
                .unwrap_or_default()),
        }
    }

    /// Adds a persistent memory device; returns its id and slot. On a running VM the
    /// region is guest memory at once and the guest is told of the device.
    pub fn add_pmem(
        &mut self,
        mut pmem: config::PmemConfig,
    ) -> Result<(String, (u16, u8)), HotplugError> {
        pmem.validate()
            .map_err(|e| HotplugError::Invalid(e.to_string()))?;
        self.check_segment(pmem.pci_segment, "pmem")?;
        let id = self.new_device_id(pmem.id.as_deref(), "_pmem")?;
        let slot = self.devices.pci.add_pmem(&id, &pmem)?.address();
        pmem.id = Some(id.clone());
        self.config.pmem.get_or_insert_with(Vec::new).push(pmem);
        Ok(self.plugged(id, slot))
    }

    /// Adds a virtio-fs device served by the backend on its socket; returns its id and
    /// slot. On a running VM the guest is told.
    pub fn add_fs(
        &mut self,
        mut fs: config::FsConfig,
    ) -> Result<(String, (u16, u8)), HotplugError> {
        fs.validate()
            .map_err(|e| HotplugError::Invalid(e.to_string()))?;
        if !self.memory_is_shared() {
            return Err(HotplugError::Invalid(
                "fs: virtio-fs needs guest memory its backend can map: create the VM with \
                 memory.shared (--memory shared=on)"
                    .into(),
            ));
        }
        self.check_segment(fs.pci_segment, "fs")?;
        let id = self.new_device_id(fs.id.as_deref(), "_fs")?;
        let slot = self.devices.pci.add_fs(&id, &fs)?.address();
        fs.id = Some(id.clone());
        self.config.fs.get_or_insert_with(Vec::new).push(fs);
        Ok(self.plugged(id, slot))
    }

    /// Adds the vsock device (a VM has one at most); returns its id and slot. On a running
    /// VM the guest is told.
    pub fn add_vsock(
        &mut self,
        mut vsock: config::VsockConfig,
    ) -> Result<(String, (u16, u8)), HotplugError> {
        vsock
            .validate()
            .map_err(|e| HotplugError::Invalid(e.to_string()))?;
        if let Some(have) = &self.config.vsock {
            return Err(HotplugError::Invalid(format!(
                "vsock: the VM has a vsock device already ({}); remove it first",
                have.id.as_deref().unwrap_or("_vsock0")
            )));
        }
        self.check_segment(vsock.pci_segment, "vsock")?;
        let id = self.new_device_id(vsock.id.as_deref(), "_vsock")?;
        let slot = self.devices.pci.add_vsock(&id, &vsock)?.address();
        vsock.id = Some(id.clone());
        self.config.vsock = Some(vsock);
        Ok(self.plugged(id, slot))
    }

    /// Whether every part of guest RAM is in memory another process can map.
    fn memory_is_shared(&self) -> bool {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.memory.iter().all(|r| r.file_offset().is_some())
    }
}

/// How a device that could not be plugged is answered: a path outside the ruleset is
/// denied; what the request named wrongly (a file that cannot be opened or back a region,
/// a backend that is not there) is its own fault; a locked image is busy; the rest failed.
impl From<PciDeviceError> for HotplugError {
    fn from(e: PciDeviceError) -> Self {
        match e {
            PciDeviceError::Denied(why) => HotplugError::Denied(why),
            PciDeviceError::Backend(why) => HotplugError::Invalid(why),
            e @ (PciDeviceError::Open { .. } | PciDeviceError::Pmem { .. }) => {
                HotplugError::Invalid(e.to_string())
            }
            e @ PciDeviceError::Locked { .. } => HotplugError::Busy(e.to_string()),
            e => HotplugError::Failed(e.to_string()),
        }
    }
}
