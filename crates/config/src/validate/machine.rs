//! Checks of the machine: vCPUs, memory, the payload and the platform.

use super::*;

impl CpusConfig {
    /// Checks the vCPU counts and the compatibility fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let boot = u64::from(self.boot_vcpus);
        let max = u64::from(self.max_vcpus);
        check_boot_vcpus(boot).map_err(|r| invalid("cpus.boot_vcpus", boot, r))?;
        check_max_vcpus(boot, max).map_err(|r| invalid("cpus.max_vcpus", max, r))?;
        check_max_phys_bits(u64::from(self.max_phys_bits))
            .map_err(|r| invalid("cpus.max_phys_bits", self.max_phys_bits, r))?;
        must_be_false("cpus.kvm_hyperv".into(), self.kvm_hyperv)?;
        if let Some(t) = &self.topology {
            let parts = [
                t.threads_per_core,
                t.cores_per_die,
                t.dies_per_package,
                t.packages,
            ];
            let shown = format!(
                "{}:{}:{}:{}",
                t.threads_per_core, t.cores_per_die, t.dies_per_package, t.packages
            );
            if parts.contains(&0) {
                return Err(invalid("cpus.topology", shown, "no part may be 0".into()));
            }
            if t.vcpus() != u32::from(self.max_vcpus) {
                return Err(invalid(
                    "cpus.topology",
                    shown,
                    format!(
                        "holds {} vCPUs (threads × cores × dies × packages) but max_vcpus is {}",
                        t.vcpus(),
                        self.max_vcpus
                    ),
                ));
            }
            if topology_max_apic_id(t) >= 254 {
                return Err(invalid(
                    "cpus.topology",
                    shown,
                    "needs APIC ids above 253 (each level is rounded up to a power of two); \
                     use fewer packages or dies"
                        .into(),
                ));
            }
        }
        must_be_true("cpus.nested".into(), self.nested)?;
        for (i, a) in self.affinity.iter().flatten().enumerate() {
            let name = format!("cpus.affinity[{i}]");
            if a.vcpu >= self.max_vcpus.max(self.boot_vcpus) {
                return Err(invalid(
                    format!("{name}.vcpu"),
                    a.vcpu,
                    format!("there are {} vCPUs", self.max_vcpus.max(self.boot_vcpus)),
                ));
            }
            if a.host_cpus.is_empty() || a.host_cpus.iter().any(|&c| c >= 1024) {
                return Err(invalid(
                    format!("{name}.host_cpus"),
                    format!("{:?}", a.host_cpus),
                    "give host CPU numbers, at least one, each below 1024".into(),
                ));
            }
            if self
                .affinity
                .iter()
                .flatten()
                .take(i)
                .any(|o| o.vcpu == a.vcpu)
            {
                return Err(invalid(
                    format!("{name}.vcpu"),
                    a.vcpu,
                    "is given twice".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The largest APIC id `t` gives a vCPU: each level of the id is as many bits as its count
/// needs.
pub fn topology_max_apic_id(t: &CpuTopology) -> u32 {
    let bits = |n: u8| u32::from(n.max(1)).next_power_of_two().trailing_zeros();
    let (smt, core, die) = (
        bits(t.threads_per_core),
        bits(t.cores_per_die),
        bits(t.dies_per_package),
    );
    ((u32::from(t.packages) - 1) << (smt + core + die))
        | ((u32::from(t.dies_per_package) - 1) << (smt + core))
        | ((u32::from(t.cores_per_die) - 1) << smt)
        | (u32::from(t.threads_per_core) - 1)
}

impl MemoryConfig {
    /// Checks the size (multiple of 4 KiB, between 1 MiB and 1 TiB) and the compatibility
    /// fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let zones = self.zones.as_deref().unwrap_or_default();
        if zones.is_empty() {
            self.check_size_and_room()?;
            self.check_hugepages()?;
        } else {
            // The zones carry RAM, room and backing; the top-level backing flags are theirs.
            crate::memory_zone::check_zones(zones, self.size, self.hotplug_size)?;
        }
        must_be_none("memory.hotplugged_size".into(), &self.hotplugged_size)?;
        must_be_false("memory.mergeable".into(), self.mergeable)?;
        if self.hotplug_method != HotplugMethod::Acpi {
            return Err(unsupported(
                "memory.hotplug_method=VirtioMem",
                "remove it or set it to Acpi",
            ));
        }
        must_be_false("memory.prefault".into(), self.prefault)?;
        must_be_false("memory.reserve".into(), self.reserve)?;
        must_be_true("memory.thp".into(), self.thp)
    }
}

impl MemoryConfig {
    /// RAM between 1 MiB and 1 TiB, room within 1 TiB with it, both whole pages.
    fn check_size_and_room(&self) -> Result<(), ValidationError> {
        check_memory_size(self.size).map_err(|r| invalid("memory.size", self.size, r))?;
        if let Some(h) = self.hotplug_size {
            if h % MEMORY_SIZE_ALIGNMENT != 0 {
                return Err(invalid(
                    "memory.hotplug_size",
                    h,
                    "must be a multiple of 4 KiB".into(),
                ));
            }
            if self.size.saturating_add(h) > MAX_ADDRESS_SPACE {
                return Err(invalid(
                    "memory.hotplug_size",
                    h,
                    "with memory.size, must stay within 1 TiB".into(),
                ));
            }
        }
        Ok(())
    }

    /// `hugepage_size` only with `hugepages`, 2 MiB or 1 GiB, and RAM made of whole pages.
    fn check_hugepages(&self) -> Result<(), ValidationError> {
        const SIZES: [u64; 2] = [2 << 20, 1 << 30];
        match (self.hugepages, self.hugepage_size) {
            (false, Some(_)) => Err(ValidationError::Conflict {
                field: "memory.hugepage_size".into(),
                reason:
                    "given without memory.hugepages: set hugepages to true, or leave the size out"
                        .into(),
            }),
            (true, Some(size)) if !SIZES.contains(&size) => Err(invalid(
                "memory.hugepage_size",
                size,
                "use 2 MiB (2097152) or 1 GiB (1073741824)".into(),
            )),
            (true, size) => {
                let page = size.unwrap_or(SIZES[0]);
                if self.size % page != 0 {
                    return Err(invalid(
                        "memory.size",
                        self.size,
                        format!("must be a whole number of {} MiB huge pages", page >> 20),
                    ));
                }
                Ok(())
            }
            (false, None) => Ok(()),
        }
    }
}

/// Most PCI segments Palisade builds (each one bus, with its own ECAM region).
pub const MAX_PCI_SEGMENTS: u16 = 16;

/// Longest kernel command line Palisade passes (the guest gets it NUL-terminated).
pub const MAX_CMDLINE_LEN: usize = 4095;

impl PayloadConfig {
    /// Checks that a kernel is given (firmware, IGVM and host data are not supported).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.firmware.is_some() {
            return Err(unsupported(
                "payload.firmware",
                "boot a kernel image with payload.kernel instead",
            ));
        }
        must_be_none("payload.igvm".into(), &self.igvm)?;
        must_be_none("payload.host_data".into(), &self.host_data)?;
        if let Some(cmdline) = &self.cmdline {
            if cmdline.len() > MAX_CMDLINE_LEN {
                return Err(invalid(
                    "payload.cmdline",
                    format!("<{} bytes>", cmdline.len()),
                    format!("a kernel command line holds at most {MAX_CMDLINE_LEN} bytes"),
                ));
            }
        }
        match &self.kernel {
            None => Err(ValidationError::Missing {
                field: "payload.kernel".into(),
                hint: "give the kernel image to boot (Palisade boots a kernel; firmware is not supported)"
                    .into(),
            }),
            Some(k) if k.as_os_str().is_empty() => Err(invalid(
                "payload.kernel",
                "",
                "empty path: give the kernel image to boot".into(),
            )),
            Some(_) => Ok(()),
        }
    }
}

impl PlatformConfig {
    /// Checks what Palisade can build: one PCI segment, no IOMMU, no confidential guest,
    /// SMBIOS strings without NUL bytes, and a UUID in its usual form.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(n) = self.num_pci_segments {
            if n == 0 || n > MAX_PCI_SEGMENTS {
                return Err(invalid(
                    "platform.num_pci_segments",
                    n,
                    format!("must be between 1 and {MAX_PCI_SEGMENTS}"),
                ));
            }
        }
        if self.iommu_segments.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(
                "platform.iommu_segments",
                "remove it: Palisade has no virtual IOMMU",
            ));
        }
        must_be_false("platform.tdx".into(), self.tdx)?;
        must_be_false("platform.sev_snp".into(), self.sev_snp)?;
        must_be_false("platform.iommufd".into(), self.iommufd)?;
        for (name, uuid) in [
            ("platform.system_uuid", &self.system_uuid),
            ("platform.uuid", &self.uuid),
        ] {
            if let Some(u) = uuid {
                if parse_uuid(u).is_none() {
                    return Err(invalid(
                        name,
                        u,
                        "not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)".into(),
                    ));
                }
            }
        }
        let strings = [
            ("system_serial_number", &self.system_serial_number),
            ("serial_number", &self.serial_number),
            ("system_manufacturer", &self.system_manufacturer),
            ("system_product_name", &self.system_product_name),
            ("system_version", &self.system_version),
            ("system_family", &self.system_family),
            ("system_sku_number", &self.system_sku_number),
            ("chassis_asset_tag", &self.chassis_asset_tag),
        ];
        let oem = self
            .oem_strings
            .iter()
            .flatten()
            .map(|s| ("oem_strings", s));
        for (name, value) in strings
            .into_iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
            .chain(oem)
        {
            if value.contains('\0') || value.len() > 255 {
                return Err(invalid(
                    format!("platform.{name}"),
                    value.escape_default(),
                    "an SMBIOS string has no NUL byte and at most 255 bytes".into(),
                ));
            }
        }
        Ok(())
    }
}
