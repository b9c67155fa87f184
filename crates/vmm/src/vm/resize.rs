//! `vm.resize`: vCPU hot-plug and unplug (and, on a VM that is not running, the sizes the
//! next boot uses).

use super::{HotplugError, Vm, VmState};
use crate::control::Resize;

impl Vm {
    /// Applies `resize`. Each part is checked before anything changes; a part that fails
    /// part-way undoes what it did.
    pub fn resize(&mut self, resize: &Resize) -> Result<(), HotplugError> {
        let vcpus = match resize.desired_vcpus {
            Some(n) => Some(self.check_vcpu_count(n)?),
            None => None,
        };
        if let Some(ram) = resize.desired_ram {
            if ram != self.config.memory.size {
                return Err(HotplugError::Invalid(format!(
                    "desired_ram {ram}: memory hot-plug is not available on this VM"
                )));
            }
        }
        if resize.desired_balloon.is_some() {
            return Err(HotplugError::Invalid(
                "desired_balloon: the VM has no balloon device (add one with --balloon)".into(),
            ));
        }
        if let Some(n) = vcpus {
            self.resize_vcpus(n)?;
        }
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
