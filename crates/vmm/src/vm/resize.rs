//! `vm.resize`: vCPU hot-plug and unplug, and memory hot-plug (ACPI memory devices in the
//! room `memory.hotplug_size` keeps above RAM).

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{HotplugError, Vm, VmState};
use crate::control::Resize;
use crate::guest_ram::Backing;
use crate::x86_64::layout::{hotplug_memory_start, MEMORY_HOTPLUG_ALIGN};

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
        if resize.desired_balloon.is_some() {
            return Err(HotplugError::Invalid(
                "desired_balloon: the VM has no balloon device (add one with --balloon)".into(),
            ));
        }
        if memory > 0 {
            self.add_memory(memory)?;
        }
        if let Some(n) = vcpus {
            self.resize_vcpus(n)?;
        }
        Ok(())
    }

    /// How many bytes `desired` RAM adds; refuses what hot-plug cannot do.
    fn check_memory_growth(&self, desired: u64) -> Result<u64, HotplugError> {
        let current = self.memory_size();
        let invalid = |why: String| {
            Err(HotplugError::Invalid(format!(
                "desired_ram {desired}: {why}"
            )))
        };
        if desired == current {
            return Ok(0);
        }
        if desired < current {
            return invalid(format!(
                "below the {current} bytes the guest has: memory added through ACPI hot-plug \
                 is never taken back"
            ));
        }
        let room = self.config.memory.hotplug_size.unwrap_or(0);
        if room == 0 {
            return invalid(
                "the VM has no room for more memory: create it with --memory hotplug_size=SIZE"
                    .into(),
            );
        }
        let more = desired - current;
        // Blocks of 128 MiB, or of the huge page size when larger (1 GiB).
        let block =
            MEMORY_HOTPLUG_ALIGN.max(Backing::of(&self.config.memory).hugepage_size.unwrap_or(0));
        if !more.is_multiple_of(block) {
            return invalid(format!(
                "memory is added in blocks of {} MiB, and {more} more bytes is not a whole \
                 number of them",
                block >> 20
            ));
        }
        let left = room - (current - self.boot_ram);
        if more > left {
            return invalid(format!(
                "{more} more bytes exceed the {left} left of memory.hotplug_size"
            ));
        }
        if self.devices.free_memory_slots() == 0 {
            return invalid("every memory hot-plug slot is taken".into());
        }
        Ok(more)
    }

    /// Adds `bytes` of guest memory after what was hot-plugged before: mapped into the
    /// running machine, seen by every device, described to the guest (told at once when it
    /// runs; found at boot otherwise). Nothing changes if a step fails.
    fn add_memory(&mut self, bytes: u64) -> Result<(), HotplugError> {
        let current = self.memory_size();
        let start = hotplug_memory_start(self.boot_ram) + (current - self.boot_ram);
        let len = usize::try_from(bytes)
            .map_err(|_| HotplugError::Invalid(format!("desired_ram: {bytes} bytes too many")))?;
        let failed = |e: String| {
            HotplugError::Failed(format!("cannot add {bytes} bytes of guest memory: {e}"))
        };
        let backing = Backing::of(&self.config.memory);
        let region = crate::guest_ram::map_region(GuestAddress(start), len, current, backing)
            .map_err(|e| failed(e.to_string()))?;
        let region = Arc::new(region);
        let undo = |e: HotplugError| {
            if backing.shared {
                crate::guest_ram::shrink(backing, current);
            }
            e
        };
        let memory = self
            .memory
            .insert_region(region.clone())
            .map_err(|e| undo(failed(e.to_string())))?;
        // Regions are kept in address order, and this one is the highest.
        let slot = (memory.num_regions() - 1) as u32;
        let running = matches!(self.state, VmState::Running | VmState::Paused);
        if let Some(machine) = &self.machine {
            machine
                .map_memory(slot, &region)
                .map_err(|e| undo(failed(e.to_string())))?;
        }
        self.memory = memory;
        self.devices.set_memory(&self.memory);
        self.devices.announce_memory(start, bytes, running);
        self.config.memory.size = current + bytes;
        log::info!("{bytes} bytes of guest memory added at {start:#x}");
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
