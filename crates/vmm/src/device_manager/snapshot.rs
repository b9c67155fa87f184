//! What a snapshot keeps of the machine's own devices (the ACPI event device, the PCI and
//! vCPU hot-plug controllers, the watchdog), and how a restored VM takes it back.

use std::time::Duration;

use devices::cpu_hotplug::CpuHotplugState;
use devices::hotplug::PciHotplugState;
use serde::{Deserialize, Serialize};

use super::DeviceManager;

/// The platform devices' state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlatformState {
    /// ACPI events the guest has not read yet.
    pub ged_pending: u32,
    /// Pending PCI hot-plug announcements.
    pub pci_hotplug: PciHotplugState,
    /// Which vCPUs exist, and those being added or removed.
    pub cpu_hotplug: CpuHotplugState,
    /// Milliseconds left before the watchdog's deadline, if it runs.
    pub watchdog_ms: Option<u64>,
}

impl DeviceManager {
    /// The platform devices' state, for a snapshot.
    pub fn platform_state(&self) -> PlatformState {
        PlatformState {
            ged_pending: self.ged.lock().unwrap_or_else(|e| e.into_inner()).pending(),
            pci_hotplug: self
                .hotplug
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state(),
            cpu_hotplug: self
                .cpu_hotplug
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state(),
            watchdog_ms: self
                .watchdog
                .as_ref()
                .and_then(|w| w.state.remaining())
                .map(|d| d.as_millis() as u64),
        }
    }

    /// Takes a snapshot's platform state back (the watchdog's deadline counts on from now);
    /// refused, before anything changes, when it does not fit this VM's devices.
    pub fn restore_platform(&self, state: &PlatformState) -> Result<(), String> {
        if state.watchdog_ms.is_some() && self.watchdog.is_none() {
            return Err("the snapshot has a running watchdog, the configuration none".into());
        }
        let mut hotplug = self.hotplug.lock().unwrap_or_else(|e| e.into_inner());
        let mut cpus = self.cpu_hotplug.lock().unwrap_or_else(|e| e.into_inner());
        let (saved_hotplug, saved_cpus) = (hotplug.state(), cpus.state());
        hotplug.restore(&state.pci_hotplug)?;
        if let Err(e) = cpus.restore(&state.cpu_hotplug) {
            let _ = hotplug.restore(&saved_hotplug);
            let _ = cpus.restore(&saved_cpus);
            return Err(e);
        }
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_pending(state.ged_pending);
        if let Some(w) = &self.watchdog {
            w.state
                .restore(state.watchdog_ms.map(Duration::from_millis));
            w.arm();
        }
        Ok(())
    }
}
