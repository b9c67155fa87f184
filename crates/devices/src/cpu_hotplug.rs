//! The vCPU hot-plug controller: tells the guest's ACPI code which vCPUs were added or should
//! be removed, and takes the guest's eject of a vCPU it has taken offline.
//!
//! Register contract (little-endian, 32-bit, aligned accesses only; matching the DSDT's
//! `\_SB.CPUS` methods):
//!
//! | offset | name | access | meaning |
//! | --- | --- | --- | --- |
//! | 0x0 | `CSEL` | read/write | index of the vCPU the status register speaks of |
//! | 0x4 | `CSTS` | read | bit 0 [`CPU_PRESENT`]: the vCPU exists; bit 1 [`CPU_INSERTING`]: it was just added and the guest has not been told; bit 2 [`CPU_REMOVING`]: the VMM wants it removed and the guest has not been told |
//! | 0x4 | `CSTS` | write | bit 1: the guest was told of the insertion (clears it); bit 2: told of the removal (clears it); bit 3 [`CPU_EJECT`]: the guest has taken the vCPU offline and the VMM may stop it |
//!
//! To add vCPU n: start it, call [`CpuHotplugController::plugged`], raise the GED's vCPU
//! event. To remove it: call [`CpuHotplugController::request_removal`], raise the event; the
//! vCPU is stopped when the guest ejects it. vCPU 0 is never removed, and an eject of a vCPU
//! the VMM did not ask to remove is ignored: a guest cannot make the VMM drop a vCPU it still
//! counts on, nor confuse its bookkeeping.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Selection register offset.
pub const CPU_SELECT_OFFSET: u64 = 0;
/// Status register offset.
pub const CPU_STATUS_OFFSET: u64 = 4;
/// Size of the register block.
pub const CPU_HOTPLUG_SIZE: u64 = 0x10;
/// Status bit: the selected vCPU exists.
pub const CPU_PRESENT: u32 = 1 << 0;
/// Status bit: the selected vCPU was added.
pub const CPU_INSERTING: u32 = 1 << 1;
/// Status bit: the selected vCPU should be removed.
pub const CPU_REMOVING: u32 = 1 << 2;
/// Status write bit: the guest released the selected vCPU.
pub const CPU_EJECT: u32 = 1 << 3;

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
struct Slot {
    present: bool,
    inserting: bool,
    removing: bool,
    // Asked for by the VMM and not yet ejected (outlives `removing`, which the guest clears).
    removal_wanted: bool,
}

/// What a snapshot keeps of the vCPU hot-plug controller: each possible vCPU's slot and the
/// selected one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuHotplugState {
    slots: Vec<Slot>,
    selected: u32,
}

/// The vCPU hot-plug controller of a VM with `max` possible vCPUs.
pub struct CpuHotplugController {
    slots: Vec<Slot>,
    selected: u32,
    ejected: Arc<Mutex<VecDeque<u8>>>,
    eject_evt: EventFd,
}

impl CpuHotplugController {
    /// A controller for `max` vCPUs, the first `boot` present; ejects are queued and
    /// signalled on `eject_evt`.
    pub fn new(max: u8, boot: u8, eject_evt: EventFd) -> Self {
        let mut c = CpuHotplugController {
            slots: vec![Slot::default(); usize::from(max.max(1))],
            selected: 0,
            ejected: Arc::default(),
            eject_evt,
        };
        c.reset(boot);
        c
    }

    /// Every slot, for a snapshot.
    pub fn state(&self) -> CpuHotplugState {
        CpuHotplugState {
            slots: self.slots.clone(),
            selected: self.selected,
        }
    }

    /// Takes a snapshot's slots back; refused if it has another number of vCPUs.
    pub fn restore(&mut self, state: &CpuHotplugState) -> Result<(), String> {
        if state.slots.len() != self.slots.len() {
            return Err(format!(
                "the snapshot's vCPU hot-plug controller has {} vCPUs, this one {}",
                state.slots.len(),
                self.slots.len()
            ));
        }
        self.slots.clone_from(&state.slots);
        self.selected = state.selected;
        Ok(())
    }

    /// The vCPUs the guest ejected, for the VMM to stop.
    pub fn ejected(&self) -> Arc<Mutex<VecDeque<u8>>> {
        self.ejected.clone()
    }

    /// Announces that vCPU `index` was added.
    pub fn plugged(&mut self, index: u8) {
        if let Some(s) = self.slots.get_mut(usize::from(index)) {
            *s = Slot {
                present: true,
                inserting: true,
                ..Slot::default()
            };
        }
    }

    /// Asks the guest to give vCPU `index` up.
    pub fn request_removal(&mut self, index: u8) {
        if index == 0 {
            return;
        }
        if let Some(s) = self.slots.get_mut(usize::from(index)) {
            if s.present {
                s.inserting = false;
                s.removing = true;
                s.removal_wanted = true;
            }
        }
    }

    /// Whether vCPU `index` is present (added and not ejected).
    pub fn is_present(&self, index: u8) -> bool {
        self.slots
            .get(usize::from(index))
            .is_some_and(|s| s.present)
    }

    /// Power-on state: the first `present` vCPUs exist, nothing is pending.
    pub fn reset(&mut self, present: u8) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            *s = Slot {
                present: i < usize::from(present.max(1)),
                ..Slot::default()
            };
        }
        self.selected = 0;
    }

    fn status(&self) -> u32 {
        let Some(s) = self.slots.get(self.selected as usize) else {
            return 0;
        };
        let bit = |on: bool, b: u32| if on { b } else { 0 };
        bit(s.present, CPU_PRESENT)
            | bit(s.inserting, CPU_INSERTING)
            | bit(s.removing, CPU_REMOVING)
    }

    fn write_status(&mut self, value: u32) {
        let index = self.selected;
        let Some(s) = self.slots.get_mut(index as usize) else {
            return;
        };
        if value & CPU_INSERTING != 0 {
            s.inserting = false;
        }
        if value & CPU_REMOVING != 0 {
            s.removing = false;
        }
        if value & CPU_EJECT != 0 && s.removal_wanted && s.present {
            *s = Slot::default();
            self.ejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(index as u8);
            // The queue holds the vCPU even if the wake-up is lost; the next one drains it.
            let _ = self.eject_evt.write(1);
        }
    }
}

impl BusDevice for CpuHotplugController {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let value = match offset {
            CPU_SELECT_OFFSET => self.selected,
            CPU_STATUS_OFFSET => self.status(),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            CPU_SELECT_OFFSET => self.selected = value,
            CPU_STATUS_OFFSET => self.write_status(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn status_of(c: &mut CpuHotplugController, index: u32) -> u32 {
        c.write(CPU_SELECT_OFFSET, &index.to_le_bytes());
        let mut b = [0u8; 4];
        c.read(CPU_STATUS_OFFSET, &mut b);
        u32::from_le_bytes(b)
    }

    fn write_status(c: &mut CpuHotplugController, index: u32, value: u32) {
        c.write(CPU_SELECT_OFFSET, &index.to_le_bytes());
        c.write(CPU_STATUS_OFFSET, &value.to_le_bytes());
    }

    #[test]
    fn boot_vcpus_are_present_and_an_added_one_is_announced_until_acknowledged() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut c = CpuHotplugController::new(4, 2, evt.try_clone().unwrap());
        assert_eq!(status_of(&mut c, 0), CPU_PRESENT);
        assert_eq!(status_of(&mut c, 1), CPU_PRESENT);
        assert_eq!(status_of(&mut c, 2), 0);
        assert_eq!(status_of(&mut c, 9), 0, "beyond the maximum reads 0");
        c.plugged(2);
        assert_eq!(status_of(&mut c, 2), CPU_PRESENT | CPU_INSERTING);
        write_status(&mut c, 2, CPU_INSERTING);
        assert_eq!(status_of(&mut c, 2), CPU_PRESENT);
        let mut narrow = [0xffu8; 2];
        c.read(CPU_STATUS_OFFSET, &mut narrow);
        assert_eq!(narrow, [0, 0], "only aligned 32-bit reads mean anything");
    }

    #[test]
    fn only_a_vcpu_asked_for_is_ejected_and_never_vcpu_0() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut c = CpuHotplugController::new(4, 3, evt.try_clone().unwrap());
        // The guest cannot eject what the VMM did not ask for.
        write_status(&mut c, 1, CPU_EJECT);
        write_status(&mut c, 0, CPU_EJECT);
        c.request_removal(0);
        write_status(&mut c, 0, CPU_EJECT);
        assert!(evt.read().is_err());
        assert!(c.is_present(0) && c.is_present(1));

        c.request_removal(2);
        assert_eq!(status_of(&mut c, 2), CPU_PRESENT | CPU_REMOVING);
        write_status(&mut c, 2, CPU_REMOVING);
        assert_eq!(status_of(&mut c, 2), CPU_PRESENT, "told, still there");
        write_status(&mut c, 2, CPU_EJECT);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(
            c.ejected().lock().unwrap().drain(..).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(status_of(&mut c, 2), 0);
        write_status(&mut c, 2, CPU_EJECT);
        assert!(evt.read().is_err(), "a second eject is ignored");

        c.plugged(2);
        assert_eq!(status_of(&mut c, 2), CPU_PRESENT | CPU_INSERTING);
        c.reset(1);
        assert_eq!(status_of(&mut c, 1), 0);
        assert_eq!(status_of(&mut c, 2), 0);
        assert_eq!(status_of(&mut c, 0), CPU_PRESENT);
    }

    #[test]
    fn slots_survive_a_state_round_trip_and_a_wrong_size_is_refused() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut a = CpuHotplugController::new(4, 1, evt.try_clone().unwrap());
        a.plugged(2);
        let state = a.state();
        let mut b = CpuHotplugController::new(4, 1, evt.try_clone().unwrap());
        b.restore(&state).unwrap();
        assert_eq!(status_of(&mut b, 2), CPU_PRESENT | CPU_INSERTING);
        assert_eq!(status_of(&mut b, 1), 0);
        let mut small = CpuHotplugController::new(2, 1, evt);
        assert!(small.restore(&state).is_err());
        assert_eq!(
            status_of(&mut small, 1),
            0,
            "a refused state changes nothing"
        );
    }
}
