//! What a snapshot keeps of the PCI devices, and how a restored VM's devices take it back.
//!
//! Each function's configuration space is written back through its bus as the guest would
//! write it (so BARs move, with their ioeventfds, exactly as a guest's reprogramming moves
//! them); a virtio function's transport takes its own state first.

use devices::virtio::pci::VirtioPciState;
use serde::{Deserialize, Serialize};

use super::PciDevices;

/// Registers of a function's configuration space.
const CONFIG_REGISTERS: usize = 64;
/// The BAR registers (dword indices), written back before decoding is turned on.
const BAR_REGISTERS: std::ops::Range<usize> = 4..10;
/// The command and status register.
const COMMAND_REGISTER: usize = 1;

/// One plugged PCI function.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PciDeviceState {
    /// The device's id.
    pub id: String,
    /// Its segment.
    pub segment: u16,
    /// Its slot on bus 0.
    pub slot: u8,
    /// Its configuration space, as 64 dwords.
    pub config: Vec<u32>,
    /// Its virtio transport, for a virtio device.
    pub virtio: Option<VirtioPciState>,
}

impl PciDevices {
    /// Every plugged function's state (devices held still by the caller).
    pub fn state(&self) -> Vec<PciDeviceState> {
        self.entries
            .iter()
            .map(|e| {
                let config = {
                    let mut pci = e.pci.lock().unwrap_or_else(|p| p.into_inner());
                    (0..CONFIG_REGISTERS).map(|r| pci.config_read(r)).collect()
                };
                PciDeviceState {
                    id: e.id.clone(),
                    segment: e.segment,
                    slot: e.slot,
                    config,
                    virtio: e
                        .virtio
                        .as_ref()
                        .map(|v| v.lock().unwrap_or_else(|p| p.into_inner()).state()),
                }
            })
            .collect()
    }

    /// Each plugged device's slot, by id (what a migration's destination places them by).
    pub fn slots(&self) -> std::collections::BTreeMap<String, u8> {
        self.entries
            .iter()
            .map(|e| (e.id.clone(), e.slot))
            .collect()
    }

    /// Where each device of `states` must be plugged, by id.
    pub fn slots_of(states: &[PciDeviceState]) -> std::collections::BTreeMap<String, u8> {
        states.iter().map(|s| (s.id.clone(), s.slot)).collect()
    }

    /// Checks that the freshly built devices are those of `states`, each in its slot.
    pub fn check_state(&self, states: &[PciDeviceState]) -> Result<(), String> {
        if states.len() != self.entries.len() {
            return Err(format!(
                "the snapshot has {} PCI devices, the VM its configuration describes {}",
                states.len(),
                self.entries.len()
            ));
        }
        for s in states {
            let e = self.find(&s.id).ok_or_else(|| {
                format!("the snapshot's device {} is not in its configuration", s.id)
            })?;
            if (e.segment, e.slot) != (s.segment, s.slot) {
                return Err(format!(
                    "device {} is at {:04x}:00:{:02x}.0 in the snapshot, {} here",
                    s.id,
                    s.segment,
                    s.slot,
                    e.bdf()
                ));
            }
            if s.config.len() != CONFIG_REGISTERS {
                return Err(format!(
                    "device {}: {} configuration registers in the snapshot, not {CONFIG_REGISTERS}",
                    s.id,
                    s.config.len()
                ));
            }
            if s.virtio.is_some() != e.virtio.is_some() {
                return Err(format!(
                    "device {}: a virtio device in one of the snapshot and the configuration only",
                    s.id
                ));
            }
        }
        Ok(())
    }

    /// Gives the freshly built devices (attached to the new machine) the state of `states`,
    /// checked with [`PciDevices::check_state`] first.
    pub fn restore(&self, states: &[PciDeviceState]) -> Result<(), String> {
        self.check_state(states)?;
        for s in states {
            let Some(e) = self.find(&s.id) else {
                continue;
            };
            if let (Some(virtio), Some(state)) = (&e.virtio, &s.virtio) {
                virtio
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restore(state)
                    .map_err(|why| format!("device {}: {why}", s.id))?;
            }
            let root = &self.segments[usize::from(e.segment)].root;
            let mut root = root.lock().unwrap_or_else(|p| p.into_inner());
            // BARs first, while decoding is still off, then the rest: turning decoding on
            // moves each BAR once, straight to where the guest had put it.
            let order = BAR_REGISTERS
                .chain(
                    (0..CONFIG_REGISTERS)
                        .filter(|r| !BAR_REGISTERS.contains(r) && *r != COMMAND_REGISTER),
                )
                .chain(std::iter::once(COMMAND_REGISTER));
            for reg in order {
                root.config_write(0, e.slot, 0, reg, 0, &s.config[reg].to_le_bytes());
            }
        }
        Ok(())
    }
}
