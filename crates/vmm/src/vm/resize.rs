//! `vm.resize`: vCPU hot-plug and unplug, and memory hot-plug (ACPI memory devices in the
//! room `memory.hotplug_size` keeps above RAM).

use std::sync::Arc;

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use super::{HotplugError, Vm, VmState};
use crate::control::Resize;
use crate::device_manager::BALLOON_ID;
use crate::x86_64::layout::MEMORY_HOTPLUG_ALIGN;

impl Vm {
    /// Applies `resize`. Each part is checked before anything changes; a part that fails
    /// part-way undoes what it did.
    pub fn resize(&mut self, resize: &Resize) -> Result<(), HotplugError> {
        let vcpus = match resize.desired_vcpus {
            Some(n) => Some(self.check_vcpu_count(n)?),
            None => None,
        };
        let memory = match resize.desired_ram {
            Some(bytes) => self.check_memory_growth(bytes)?,
            None => 0,
        };
        if resize.desired_balloon.is_some() && self.devices.pci.find(BALLOON_ID).is_none() {
            return Err(HotplugError::Invalid(
                "desired_balloon: the VM has no balloon device (add one with --balloon)".into(),
            ));
        }
        if memory > 0 {
            self.add_memory(0, memory)?;
        }
        if let Some(n) = vcpus {
            self.resize_vcpus(n)?;
        }
        if let Some(bytes) = resize.desired_balloon {
            self.resize_balloon(bytes)?;
        }
        Ok(())
    }

    /// How many bytes `desired` RAM adds; refuses what hot-plug cannot do.
    fn check_memory_growth(&self, desired: u64) -> Result<u64, HotplugError> {
        if self.ram.zones.iter().any(|z| z.id.is_some()) {
            return Err(HotplugError::Invalid(format!(
                "desired_ram {desired}: the VM's memory is in zones: resize one with vm.resize-zone"
            )));
        }
        self.check_zone_growth(0, desired, "desired_ram")
    }

    /// How many bytes growing zone `index` to `desired` (boot size and hot-plugged memory)
    /// adds; `what` names the request's field.
    fn check_zone_growth(
        &self,
        index: usize,
        desired: u64,
        what: &str,
    ) -> Result<u64, HotplugError> {
        let zone = &self.ram.zones[index];
        let current = zone.size + zone.hotplugged;
        let invalid = |why: String| Err(HotplugError::Invalid(format!("{what} {desired}: {why}")));
        if desired == current {
            return Ok(0);
        }
        if desired < current {
            return invalid(format!(
                "below the {current} bytes it has: memory added through ACPI hot-plug is \
                 never taken back"
            ));
        }
        if zone.room == 0 {
            return invalid(match &zone.id {
                None => {
                    "the VM has no room for more memory: create it with --memory hotplug_size=SIZE"
                        .into()
                }
                Some(id) => {
                    format!("zone {id} has no room for more memory: give it a hotplug_size")
                }
            });
        }
        let more = desired - current;
        // Blocks of 128 MiB, or of the huge page size when larger (1 GiB).
        let block = MEMORY_HOTPLUG_ALIGN.max(zone.backing.hugepage_size.unwrap_or(0));
        if !more.is_multiple_of(block) {
            return invalid(format!(
                "memory is added in blocks of {} MiB, and {more} more bytes is not a whole \
                 number of them",
                block >> 20
            ));
        }
        let left = zone.room - zone.hotplugged;
        if more > left {
            let room = if zone.id.is_some() {
                "the zone's hotplug_size"
            } else {
                "memory.hotplug_size"
            };
            return invalid(format!(
                "{more} more bytes exceed the {left} left of {room}"
            ));
        }
        if self.devices.free_memory_slots() == 0 {
            return invalid("every memory hot-plug slot is taken".into());
        }
        Ok(more)
    }

    /// `vm.resize-zone`: grows zone `id` to `desired` bytes (its boot size and what was
    /// added before).
    pub fn resize_zone(&mut self, id: &str, desired: u64) -> Result<(), HotplugError> {
        let index = self
            .ram
            .zone_index(id)
            .ok_or_else(|| HotplugError::NoZone(id.to_string()))?;
        let more = self.check_zone_growth(index, desired, "desired_ram")?;
        if more > 0 {
            self.add_memory(index, more)?;
        }
        Ok(())
    }

    /// Adds `bytes` of guest memory to zone `index`, after what was hot-plugged into it
    /// before: mapped into the running machine, seen by every device, described to the
    /// guest (told at once when it runs; found at boot otherwise). Nothing changes if a step
    /// fails.
    pub(super) fn add_memory(&mut self, index: usize, bytes: u64) -> Result<(), HotplugError> {
        let failed = |e: String| {
            HotplugError::Failed(format!("cannot add {bytes} bytes of guest memory: {e}"))
        };
        let region = Arc::new(
            self.ram
                .map_hotplug(index, bytes)
                .map_err(|e| failed(e.to_string()))?,
        );
        let start = region.start_addr().raw_value();
        let mapped = self
            .memory
            .insert_region(region.clone())
            .map_err(|e| failed(e.to_string()));
        let memory = match mapped {
            Ok(m) => m,
            Err(e) => {
                self.ram.abandon(index, bytes);
                return Err(e);
            }
        };
        // The machine's KVM slots are 0 to one less than the regions it had: this is the next.
        let slot = self.memory.num_regions() as u32;
        let running = matches!(self.state, VmState::Running | VmState::Paused);
        if let Some(machine) = &self.machine {
            if let Err(e) = machine.map_memory(slot, &region) {
                self.ram.abandon(index, bytes);
                return Err(failed(e.to_string()));
            }
        }
        self.ram.commit(index, bytes);
        self.memory = memory;
        self.devices.set_memory(&self.memory);
        self.devices.announce_memory(start, bytes, running);
        let zone = &self.ram.zones[index];
        match &zone.id {
            None => self.config.memory.size += bytes,
            Some(id) => {
                if let Some(z) = self
                    .config
                    .memory
                    .zones
                    .iter_mut()
                    .flatten()
                    .find(|z| &z.id == id)
                {
                    z.hotplugged_size = Some(zone.hotplugged);
                }
            }
        }
        log::info!("{bytes} bytes of guest memory added at {start:#x}");
        Ok(())
    }

    /// Asks the guest for `bytes` through the balloon (it is told at once when it runs).
    fn resize_balloon(&mut self, bytes: u64) -> Result<(), HotplugError> {
        let ram = self.memory_size();
        if bytes > ram {
            return Err(HotplugError::Invalid(format!(
                "desired_balloon {bytes}: more than the guest's {ram} bytes of memory"
            )));
        }
        let entry = self.devices.pci.find(BALLOON_ID).ok_or_else(|| {
            HotplugError::Invalid("desired_balloon: the VM has no balloon device".into())
        })?;
        let Some(virtio) = &entry.virtio else {
            return Err(HotplugError::Invalid(
                "desired_balloon: the VM has no balloon device".into(),
            ));
        };
        let device = virtio.lock().unwrap_or_else(|e| e.into_inner());
        device
            .device()
            .resize(bytes)
            .map_err(HotplugError::Failed)?;
        drop(device);
        if let Some(b) = &mut self.config.balloon {
            b.size = bytes;
        }
        log::info!("balloon: the guest is asked for {bytes} bytes");
        Ok(())
    }

    fn check_vcpu_count(&self, desired: u32) -> Result<u8, HotplugError> {
        let max = self.config.cpus.max_vcpus.max(self.config.cpus.boot_vcpus);
        match u8::try_from(desired) {
            Ok(n) if n >= 1 && n <= max => Ok(n),
            _ => Err(HotplugError::Invalid(format!(
                "desired_vcpus {desired}: must be between 1 and max_vcpus ({max}); \
                 start the VM with a higher --cpus max= to add more"
            ))),
        }
    }

    /// Sets the vCPU count to `desired`. On a running VM, missing vCPUs start at once (the
    /// guest is told and brings them up) and the extra ones are asked for: they stop when
    /// the guest ejects them. Either way the next boot starts `desired` vCPUs.
    fn resize_vcpus(&mut self, desired: u8) -> Result<(), HotplugError> {
        if let (Some(machine), VmState::Running | VmState::Paused) = (&mut self.machine, self.state)
        {
            let running = machine.vcpus();
            let mut added = Vec::new();
            for index in (0..desired).filter(|i| !running.contains(i)) {
                if let Err(e) = machine.add_vcpu(index) {
                    for &index in &added {
                        machine.retire_vcpu(index);
                    }
                    return Err(HotplugError::Failed(format!(
                        "cannot add vCPU {index}: {e}"
                    )));
                }
                added.push(index);
            }
            for &index in &added {
                self.devices.announce_vcpu(index);
                log::info!("vCPU {index} added");
            }
            for &index in running.iter().filter(|&&i| i >= desired) {
                self.devices.request_vcpu_removal(index);
                log::info!("vCPU {index}: the guest is asked to give it up");
            }
        }
        self.config.cpus.boot_vcpus = desired;
        Ok(())
    }

    /// Stops the vCPUs the guest has ejected.
    pub(super) fn finish_vcpu_ejects(&mut self) {
        for index in self.devices.take_ejected_vcpus() {
            let Some(machine) = &mut self.machine else {
                return;
            };
            // One plugged back in since it was asked for keeps running.
            if index >= self.config.cpus.boot_vcpus && machine.retire_vcpu(index) {
                log::info!("vCPU {index} ejected by the guest and stopped");
            }
        }
    }
}
