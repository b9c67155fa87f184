//! Checks of each device on its own: consoles, disks, network devices, the entropy source and Landlock rules.

use super::*;

impl ConsoleConfig {
    /// Checks one console; `name` is `serial` or `console` and prefixes the field names.
    pub fn validate_as(&self, name: &str) -> Result<(), ValidationError> {
        match self.mode {
            ConsoleOutputMode::File => match &self.file {
                Some(f) if !f.as_os_str().is_empty() => {}
                _ => {
                    return Err(ValidationError::Missing {
                        field: format!("{name}.file"),
                        hint: "mode File needs the path of the file to write to".into(),
                    })
                }
            },
            // A socket for the serial port, as Cloud Hypervisor has (not for the console).
            ConsoleOutputMode::Socket if name == "serial" => match &self.socket {
                Some(s) if !s.as_os_str().is_empty() => {}
                _ => {
                    return Err(ValidationError::Missing {
                        field: format!("{name}.socket"),
                        hint: "mode Socket needs the path of the socket".into(),
                    })
                }
            },
            ConsoleOutputMode::Socket => {
                return Err(unsupported(
                    format!("{name}.mode=Socket"),
                    "use Pty, Tty, File, Null or Off (a socket is for the serial port)",
                ))
            }
            _ => {}
        }
        must_be_false(format!("{name}.iommu"), self.iommu)?;
        must_be_none(format!("{name}.id"), &self.id)?;
        must_be_none(format!("{name}.pci_device_id"), &self.pci_device_id)
    }
}

impl DiskConfig {
    /// Checks a disk on its own (as in `vm.add-disk`); field names start with `disk.`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_as("disk")
    }

    /// Checks a disk; `name` prefixes the field names (e.g. `disks[0]`).
    pub fn validate_as(&self, name: &str) -> Result<(), ValidationError> {
        match &self.path {
            Some(p) if !p.as_os_str().is_empty() => {}
            _ => {
                return Err(ValidationError::Missing {
                    field: format!("{name}.path"),
                    hint: "give the path of the disk image".into(),
                })
            }
        }
        check_disk_num_queues(u64::from(self.num_queues))
            .map_err(|r| invalid(format!("{name}.num_queues"), self.num_queues, r))?;
        check_queue_size(u64::from(self.queue_size))
            .map_err(|r| invalid(format!("{name}.queue_size"), self.queue_size, r))?;
        check_device_identity(name, &self.id, &self.pci_device_id)?;
        must_be_false(format!("{name}.iommu"), self.iommu)?;
        must_be_false(format!("{name}.vhost_user"), self.vhost_user)?;
        must_be_none(format!("{name}.vhost_socket"), &self.vhost_socket)?;
        if let Some(limiter) = &self.rate_limiter_config {
            limiter
                .check(&format!("{name}.rate_limiter_config"))
                .map_err(|reason| ValidationError::Conflict {
                    field: format!("{name}.rate_limiter_config"),
                    reason,
                })?;
            if self.rate_limit_group.is_some() {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.rate_limit_group"),
                    reason: "a disk has its own rate_limiter_config or a rate_limit_group, not both: give one of them".into(),
                });
            }
        }
        if self.rate_limit_group.as_deref() == Some("") {
            return Err(invalid(
                format!("{name}.rate_limit_group"),
                "",
                "empty name: give a group of rate_limit_groups or leave it out".into(),
            ));
        }
        must_be_empty_list(format!("{name}.queue_affinity"), &self.queue_affinity)?;
        must_be_false(format!("{name}.backing_files"), self.backing_files)?;
        must_be_true(format!("{name}.sparse"), self.sparse)?;
        if let Some(t @ (ImageType::FixedVhd | ImageType::Qcow2 | ImageType::Vhdx)) =
            self.image_type
        {
            return Err(unsupported(
                format!("{name}.image_type={t:?}"),
                "Palisade reads raw images only: convert the image to raw",
            ));
        }
        if self.lock_granularity == Some(LockGranularity::Full) {
            return Err(unsupported(
                format!("{name}.lock_granularity=Full"),
                "remove it or set it to ByteRange",
            ));
        }
        Ok(())
    }
}

impl NetConfig {
    /// Checks a network device on its own (as in `vm.add-net`); field names start with
    /// `net.`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_as("net")
    }

    /// Checks a network device; `name` prefixes the field names (e.g. `net[0]`).
    pub fn validate_as(&self, name: &str) -> Result<(), ValidationError> {
        if let Some(mac) = self.mac.as_deref().filter(|m| !m.is_empty()) {
            check_mac(mac).map_err(|r| invalid(format!("{name}.mac"), mac, r))?;
        }
        if let Some(ip) = self.ip.as_deref().filter(|m| !m.is_empty()) {
            check_ipv4(ip).map_err(|r| invalid(format!("{name}.ip"), ip, r))?;
        }
        if let Some(mask) = self.mask.as_deref().filter(|m| !m.is_empty()) {
            check_netmask(mask).map_err(|r| invalid(format!("{name}.mask"), mask, r))?;
        }
        check_net_num_queues(u64::from(self.num_queues))
            .map_err(|r| invalid(format!("{name}.num_queues"), self.num_queues, r))?;
        check_queue_size(u64::from(self.queue_size))
            .map_err(|r| invalid(format!("{name}.queue_size"), self.queue_size, r))?;
        check_device_identity(name, &self.id, &self.pci_device_id)?;
        if let Some(fds) = &self.fds {
            let shown = format!("{fds:?}");
            if fds.is_empty() {
                return Err(invalid(
                    format!("{name}.fds"),
                    shown,
                    "empty list: give at least one tap file descriptor or leave it out".into(),
                ));
            }
            for fd in fds {
                check_fd(*fd).map_err(|r| invalid(format!("{name}.fds"), &shown, r))?;
            }
            if self.tap.as_deref().is_some_and(|t| !t.is_empty()) {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.fds"),
                    reason: "tap and fds cannot both be given: give one of them".into(),
                });
            }
            if usize::from(self.num_queues) != 2 * fds.len() {
                return Err(ValidationError::Conflict {
                    field: format!("{name}.num_queues"),
                    reason: format!(
                        "is {} but {} tap file descriptor(s) need {} queues: set num_queues to twice the number of fds",
                        self.num_queues,
                        fds.len(),
                        2 * fds.len()
                    ),
                });
            }
        }
        must_be_none(format!("{name}.host_mac"), &self.host_mac)?;
        must_be_none(format!("{name}.mtu"), &self.mtu)?;
        must_be_false(format!("{name}.iommu"), self.iommu)?;
        must_be_false(format!("{name}.vhost_user"), self.vhost_user)?;
        must_be_none(format!("{name}.vhost_socket"), &self.vhost_socket)?;
        if self.vhost_mode != VhostMode::Client {
            return Err(unsupported(
                format!("{name}.vhost_mode=Server"),
                "remove it or set it to Client",
            ));
        }
        match &self.rate_limiter_config {
            Some(limiter) => limiter
                .check(&format!("{name}.rate_limiter_config"))
                .map_err(|reason| ValidationError::Conflict {
                    field: format!("{name}.rate_limiter_config"),
                    reason,
                }),
            None => Ok(()),
        }
    }
}

impl RngConfig {
    /// Checks the entropy device.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.src.as_os_str().is_empty() {
            return Err(invalid(
                "rng.src",
                "",
                format!("empty path: give an entropy source such as {DEFAULT_RNG_SOURCE}"),
            ));
        }
        must_be_none("rng.id".into(), &self.id)?;
        must_be_false("rng.iommu".into(), self.iommu)?;
        must_be_none("rng.pci_device_id".into(), &self.pci_device_id)
    }
}

impl LandlockConfig {
    /// Checks the access string and that the path exists.
    pub fn validate_at(&self, index: usize) -> Result<(), ValidationError> {
        check_landlock_rule(self).map_err(|reason| ValidationError::LandlockRule {
            index,
            path: self.path.display().to_string(),
            access: self.access.clone(),
            reason,
        })
    }
}
