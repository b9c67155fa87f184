//! The memory hot-plug controller: tells the guest's ACPI code where each hot-plugged block
//! of memory is and which were just added.
//!
//! Register contract (little-endian, 32-bit, aligned accesses only; matching the DSDT's
//! `\_SB.MHPC` methods):
//!
//! | offset | name | access | meaning |
//! | --- | --- | --- | --- |
//! | 0x00 | `MSEL` | read/write | the slot the other registers speak of |
//! | 0x04 | `MSTS` | read | bit 0 [`MEMORY_PRESENT`]: the slot holds memory; bit 1 [`MEMORY_INSERTING`]: it was just added and the guest has not been told |
//! | 0x04 | `MSTS` | write | bit 1: the guest was told (clears it) |
//! | 0x08, 0x0C | `MBAL`, `MBAH` | read | guest-physical base of the slot's memory, low and high halves |
//! | 0x10, 0x14 | `MLNL`, `MLNH` | read | its length, low and high halves |
//!
//! To add memory: map it into the guest, call [`MemoryHotplugController::plug`], raise the
//! GED's memory event. Memory added this way stays until the VM goes (Linux offers no eject
//! for boot-time-style memory blocks, and neither does this controller), across reboots: a
//! rebooted guest finds the slots present at boot.

use crate::bus::BusDevice;

/// Selection register offset.
pub const MEMORY_SELECT_OFFSET: u64 = 0x00;
/// Status register offset.
pub const MEMORY_STATUS_OFFSET: u64 = 0x04;
/// Base, low half.
pub const MEMORY_BASE_LOW_OFFSET: u64 = 0x08;
/// Base, high half.
pub const MEMORY_BASE_HIGH_OFFSET: u64 = 0x0c;
/// Length, low half.
pub const MEMORY_LENGTH_LOW_OFFSET: u64 = 0x10;
/// Length, high half.
pub const MEMORY_LENGTH_HIGH_OFFSET: u64 = 0x14;
/// Size of the register block.
pub const MEMORY_HOTPLUG_SIZE: u64 = 0x20;
/// Status bit: the slot holds memory.
pub const MEMORY_PRESENT: u32 = 1 << 0;
/// Status bit: the slot's memory was just added.
pub const MEMORY_INSERTING: u32 = 1 << 1;
/// How many blocks of memory can be hot-plugged into one VM.
pub const MEMORY_SLOTS: usize = 32;

#[derive(Clone, Copy, Default)]
struct Slot {
    base: u64,
    length: u64,
    inserting: bool,
}

/// The memory hot-plug controller.
#[derive(Default)]
pub struct MemoryHotplugController {
    slots: Vec<Slot>,
    selected: u32,
}

impl MemoryHotplugController {
    /// A controller with no memory plugged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Announces `length` bytes of memory at guest address `base`; returns its slot, or
    /// `None` when all [`MEMORY_SLOTS`] are taken.
    pub fn plug(&mut self, base: u64, length: u64) -> Option<usize> {
        if self.slots.len() >= MEMORY_SLOTS {
            return None;
        }
        self.slots.push(Slot {
            base,
            length,
            inserting: true,
        });
        Some(self.slots.len() - 1)
    }

    /// Slots still free.
    pub fn free_slots(&self) -> usize {
        MEMORY_SLOTS - self.slots.len()
    }

    /// Power-on: the memory stays, present from the start; nothing is pending.
    pub fn reset(&mut self) {
        for s in &mut self.slots {
            s.inserting = false;
        }
        self.selected = 0;
    }

    fn register(&self, offset: u64) -> u32 {
        let Some(s) = self.slots.get(self.selected as usize) else {
            return 0;
        };
        match offset {
            MEMORY_SELECT_OFFSET => self.selected,
            MEMORY_STATUS_OFFSET => MEMORY_PRESENT | if s.inserting { MEMORY_INSERTING } else { 0 },
            MEMORY_BASE_LOW_OFFSET => s.base as u32,
            MEMORY_BASE_HIGH_OFFSET => (s.base >> 32) as u32,
            MEMORY_LENGTH_LOW_OFFSET => s.length as u32,
            MEMORY_LENGTH_HIGH_OFFSET => (s.length >> 32) as u32,
            _ => 0,
        }
    }
}

impl BusDevice for MemoryHotplugController {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 4 {
            let value = match offset {
                MEMORY_SELECT_OFFSET => self.selected,
                _ => self.register(offset),
            };
            data.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            MEMORY_SELECT_OFFSET => self.selected = value,
            MEMORY_STATUS_OFFSET if value & MEMORY_INSERTING != 0 => {
                if let Some(s) = self.slots.get_mut(self.selected as usize) {
                    s.inserting = false;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &mut MemoryHotplugController, slot: u32, offset: u64) -> u32 {
        c.write(MEMORY_SELECT_OFFSET, &slot.to_le_bytes());
        let mut b = [0u8; 4];
        c.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn a_plugged_block_is_described_until_acknowledged_and_stays_across_reset() {
        let mut c = MemoryHotplugController::new();
        assert_eq!(read(&mut c, 0, MEMORY_STATUS_OFFSET), 0);
        assert_eq!(c.plug(0x1_4000_0000, 0x2_0000_0000), Some(0));
        assert_eq!(
            read(&mut c, 0, MEMORY_STATUS_OFFSET),
            MEMORY_PRESENT | MEMORY_INSERTING
        );
        assert_eq!(read(&mut c, 0, MEMORY_BASE_LOW_OFFSET), 0x4000_0000);
        assert_eq!(read(&mut c, 0, MEMORY_BASE_HIGH_OFFSET), 1);
        assert_eq!(read(&mut c, 0, MEMORY_LENGTH_LOW_OFFSET), 0);
        assert_eq!(read(&mut c, 0, MEMORY_LENGTH_HIGH_OFFSET), 2);
        assert_eq!(read(&mut c, 1, MEMORY_STATUS_OFFSET), 0, "an empty slot");
        assert_eq!(read(&mut c, 99, MEMORY_BASE_LOW_OFFSET), 0);
        c.write(MEMORY_SELECT_OFFSET, &0u32.to_le_bytes());
        c.write(MEMORY_STATUS_OFFSET, &MEMORY_INSERTING.to_le_bytes());
        assert_eq!(read(&mut c, 0, MEMORY_STATUS_OFFSET), MEMORY_PRESENT);
        c.plug(0x2_0000_0000, 1 << 27);
        c.reset();
        assert_eq!(read(&mut c, 1, MEMORY_STATUS_OFFSET), MEMORY_PRESENT);
        let mut narrow = [0xffu8; 2];
        c.read(MEMORY_STATUS_OFFSET, &mut narrow);
        assert_eq!(narrow, [0, 0]);
    }

    #[test]
    fn slots_run_out() {
        let mut c = MemoryHotplugController::new();
        for i in 0..MEMORY_SLOTS {
            assert_eq!(c.plug(i as u64 * (1 << 27), 1 << 27), Some(i));
        }
        assert_eq!(c.free_slots(), 0);
        assert_eq!(c.plug(0, 1 << 27), None);
    }
}
