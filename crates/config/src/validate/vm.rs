//! Checks of a whole VM configuration: its parts, and what holds between them.

use super::*;

impl VmConfig {
    /// Checks the whole configuration: what Palisade cannot run is refused here, before any
    /// resource is taken, with an error naming the field. Used for configs built from the
    /// command line and for those arriving as JSON.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.payload.validate()?;
        self.cpus.validate()?;
        self.memory.validate()?;
        self.serial.validate_as("serial")?;
        self.console.validate_as("console")?;
        for (i, disk) in self.disks.iter().flatten().enumerate() {
            disk.validate_as(&format!("disks[{i}]"))?;
        }
        for (i, net) in self.net.iter().flatten().enumerate() {
            net.validate_as(&format!("net[{i}]"))?;
        }
        for (i, pmem) in self.pmem.iter().flatten().enumerate() {
            pmem.validate_as(&format!("pmem[{i}]"))?;
        }
        for (i, fs) in self.fs.iter().flatten().enumerate() {
            fs.validate_as(&format!("fs[{i}]"))?;
            let shared = match self.memory.zones.as_deref() {
                Some(zones) if !zones.is_empty() => zones.iter().all(|z| z.shared),
                _ => self.memory.shared,
            };
            if !shared {
                return Err(ValidationError::Conflict {
                    field: format!("fs[{i}]"),
                    reason: "virtio-fs needs guest memory its backend can map: set memory.shared (--memory shared=on, or shared=on on every zone)".into(),
                });
            }
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        self.rng.validate()?;
        self.check_device_ids()?;
        self.check_pci_segments()?;
        if let Some(rules) = &self.landlock_rules {
            if !rules.is_empty() && !self.landlock_enable {
                return Err(ValidationError::Conflict {
                    field: "landlock_rules".into(),
                    reason: "given but landlock_enable is false: set landlock_enable to true or remove the rules"
                        .into(),
                });
            }
            for (i, rule) in rules.iter().enumerate() {
                rule.validate_at(i)?;
            }
        }
        self.validate_compat()
    }

    /// Every device, and every `pci_segments` entry, on a PCI segment the VM has.
    fn check_pci_segments(&self) -> Result<(), ValidationError> {
        let n = self.num_pci_segments();
        let entries = self.pci_segments.as_deref().unwrap_or_default();
        for (i, p) in entries.iter().enumerate() {
            let name = format!("pci_segments[{i}]");
            if p.pci_segment >= n {
                return Err(invalid(
                    format!("{name}.pci_segment"),
                    p.pci_segment,
                    format!("the VM has {n} PCI segment(s) (platform.num_pci_segments)"),
                ));
            }
            if entries[..i].iter().any(|o| o.pci_segment == p.pci_segment) {
                return Err(invalid(
                    format!("{name}.pci_segment"),
                    p.pci_segment,
                    "is given twice".into(),
                ));
            }
            for (field, w) in [
                ("mmio32_aperture_weight", p.mmio32_aperture_weight),
                ("mmio64_aperture_weight", p.mmio64_aperture_weight),
            ] {
                if w == Some(0) || w.is_some_and(|w| w > 1024) {
                    return Err(invalid(
                        format!("{name}.{field}"),
                        w.unwrap_or(0),
                        "must be between 1 and 1024".into(),
                    ));
                }
            }
        }
        let disks = self.disks.iter().flatten().enumerate();
        let disks = disks.map(|(i, d)| (format!("disks[{i}]"), d.pci_segment));
        let nets = self.net.iter().flatten().enumerate();
        let nets = nets.map(|(i, d)| (format!("net[{i}]"), d.pci_segment));
        let pmems = self.pmem.iter().flatten().enumerate();
        let pmems = pmems.map(|(i, d)| (format!("pmem[{i}]"), d.pci_segment));
        let fss = self.fs.iter().flatten().enumerate();
        let pmems = pmems.chain(fss.map(|(i, d)| (format!("fs[{i}]"), d.pci_segment)));
        let vsocks = self
            .vsock
            .iter()
            .map(|d| ("vsock".to_string(), d.pci_segment));
        let pmems = pmems.chain(vsocks);
        let others = [
            ("rng".to_string(), self.rng.pci_segment),
            ("console".to_string(), self.console.pci_segment),
            ("serial".to_string(), self.serial.pci_segment),
        ];
        for (name, segment) in disks.chain(nets).chain(pmems).chain(others) {
            if segment >= n {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.pci_segment"),
                    reason: format!(
                        "is {segment}, but the VM has {n} PCI segment(s): raise platform.num_pci_segments or use a lower segment"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Each group named once, with valid limits; each disk's group one of them.
    fn check_rate_limit_groups(&self) -> Result<(), ValidationError> {
        let groups = self.rate_limit_groups.as_deref().unwrap_or_default();
        for (i, g) in groups.iter().enumerate() {
            let name = format!("rate_limit_groups[{i}]");
            if g.id.is_empty() {
                return Err(invalid(
                    format!("{name}.id"),
                    "",
                    "empty name: name the group".into(),
                ));
            }
            if groups[..i].iter().any(|o| o.id == g.id) {
                return Err(invalid(
                    format!("{name}.id"),
                    &g.id,
                    "is given twice".into(),
                ));
            }
            g.rate_limiter_config
                .check(&format!("{name}.rate_limiter_config"))
                .map_err(|reason| ValidationError::Conflict {
                    field: format!("{name}.rate_limiter_config"),
                    reason,
                })?;
        }
        for (i, disk) in self.disks.iter().flatten().enumerate() {
            if let Some(group) = disk.rate_limit_group.as_deref() {
                if !groups.iter().any(|g| g.id == group) {
                    return Err(ValidationError::Conflict {
                        field: format!("disks[{i}].rate_limit_group"),
                        reason: format!(
                            "no rate limit group {group:?}: define it in rate_limit_groups (--rate-limit-group id={group},...)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Rejects two disk, network or pmem devices with the same id.
    fn check_device_ids(&self) -> Result<(), ValidationError> {
        let mut seen: HashMap<&str, String> = HashMap::new();
        let disks = self.disks.iter().flatten().enumerate();
        let disk_ids = disks.filter_map(|(i, d)| Some((d.id.as_deref()?, format!("disks[{i}]"))));
        let nets = self.net.iter().flatten().enumerate();
        let net_ids = nets.filter_map(|(i, n)| Some((n.id.as_deref()?, format!("net[{i}]"))));
        let pmems = self.pmem.iter().flatten().enumerate();
        let pmem_ids = pmems.filter_map(|(i, p)| Some((p.id.as_deref()?, format!("pmem[{i}]"))));
        let fss = self.fs.iter().flatten().enumerate();
        let fs_ids = fss.filter_map(|(i, f)| Some((f.id.as_deref()?, format!("fs[{i}]"))));
        let vsock_id = self
            .vsock
            .iter()
            .filter_map(|v| Some((v.id.as_deref()?, "vsock".into())));
        let pmem_ids = pmem_ids.chain(fs_ids).chain(vsock_id);
        for (id, place) in disk_ids.chain(net_ids).chain(pmem_ids) {
            if let Some(first) = seen.get(id) {
                return Err(ValidationError::DuplicateId {
                    id: id.to_string(),
                    first: first.clone(),
                    second: place,
                });
            }
            seen.insert(id, place);
        }
        Ok(())
    }

    /// Rejects top-level Cloud Hypervisor fields that are not at their default.
    fn validate_compat(&self) -> Result<(), ValidationError> {
        self.check_rate_limit_groups()?;
        if let Some(b) = &self.balloon {
            if b.size % 4096 != 0 {
                return Err(invalid(
                    "balloon.size",
                    b.size,
                    "must be a whole number of 4 KiB pages".into(),
                ));
            }
        }
        must_be_empty_list("generic_vhost_user".into(), &self.generic_vhost_user)?;
        if let Some(debug) = &self.debug_console {
            if debug.mode != ConsoleOutputMode::Off {
                return Err(unsupported(
                    format!("debug_console.mode={:?}", debug.mode),
                    "remove debug_console or set its mode to Off",
                ));
            }
        }
        must_be_empty_list("devices".into(), &self.devices)?;
        must_be_empty_list("user_devices".into(), &self.user_devices)?;
        must_be_empty_list("vdpa".into(), &self.vdpa)?;
        must_be_empty_list("numa".into(), &self.numa)?;
        must_be_false("iommu".into(), self.iommu)?;
        must_be_empty_value("rtc".into(), &self.rtc)?;
        if let Some(p) = &self.platform {
            p.validate()?;
        }
        must_be_empty_value("tpm".into(), &self.tpm)
    }
}
