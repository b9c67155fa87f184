//! A PCI bus: segment 0, bus 0, a host bridge at 00:00.0 and up to 31 devices, reached
//! through the legacy configuration mechanism (ports 0xCF8/0xCFC) and through ECAM.
//!
//! Devices implement [`PciDevice`]. Their BARs are placed by the VMM when they are plugged
//! (as firmware would); if the guest moves a BAR, the bus tells a [`BarMapper`] so the MMIO
//! mapping (and any ioeventfd inside it) follows.

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
pub use config::{Bar, BarKind, BarMove, ConfigSpace, PciIdentity};

/// Number of device slots on bus 0 (slot 0 is the host bridge).
pub const NUM_SLOTS: usize = 32;
/// First port of the legacy configuration mechanism (address at 0xCF8, data at 0xCFC).
pub const CONFIG_IO_BASE: u64 = 0xcf8;
/// Length of the legacy configuration ports.
pub const CONFIG_IO_LEN: u64 = 8;

/// A PCI function.
pub trait PciDevice: Send {
    /// Reads configuration register `reg` (a dword index).
    fn config_read(&mut self, reg: usize) -> u32;
    /// Writes configuration bytes; returns the BARs the guest moved.
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Vec<BarMove>;
    /// Reads from BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes to BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The device's BARs and where they are mapped.
    fn bars(&self) -> Vec<(usize, Bar)>;
    /// Places BAR `index` at `address` (before the guest sees the device).
    fn set_bar_address(&mut self, index: usize, address: u64);
    /// Eventfds KVM should signal on a write at (BAR, offset): queue notifications.
    fn ioeventfds(&self) -> Vec<(usize, u64, Arc<EventFd>)> {
        Vec::new()
    }
    /// Back to the power-on state (on VM reset); BARs return to where the VMM placed them.
    fn reset(&mut self);
}

/// A shared PCI device.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Follows BAR moves: remaps the BAR on the MMIO bus and moves its ioeventfds.
pub trait BarMapper: Send + Sync {
    /// `device`'s BAR moved as described.
    fn bar_moved(&self, device: &SharedPciDevice, moved: BarMove);
}

/// Errors plugging devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// Every slot is taken.
    #[error("no free PCI slot on bus 0 (31 devices at most)")]
    NoFreeSlot,
    /// The requested slot is taken or reserved.
    #[error("PCI slot {0} is not available")]
    SlotTaken(u8),
}

/// Bus 0 of segment 0.
pub struct PciRoot {
    host_bridge: ConfigSpace,
    slots: Vec<Option<SharedPciDevice>>,
    mapper: Arc<dyn BarMapper>,
}

/// Intel's vendor id, for the host bridge.
const VENDOR_INTEL: u16 = 0x8086;
/// A generic host bridge device id (Q35's).
const DEVICE_HOST_BRIDGE: u16 = 0x29c0;

impl PciRoot {
    /// An empty bus with a host bridge; BAR moves are reported to `mapper`.
    pub fn new(mapper: Arc<dyn BarMapper>) -> Self {
        PciRoot {
            host_bridge: ConfigSpace::new(PciIdentity {
                vendor: VENDOR_INTEL,
                device: DEVICE_HOST_BRIDGE,
                class: 0x06,    // Bridge.
                subclass: 0x00, // Host bridge.
                ..Default::default()
            }),
            slots: vec![None; NUM_SLOTS],
            mapper,
        }
    }

    /// Plugs `device` into `slot`, or the first free slot; returns the slot.
    pub fn add(&mut self, slot: Option<u8>, device: SharedPciDevice) -> Result<u8, PciError> {
        let slot = match slot {
            Some(s) if s == 0 || s as usize >= NUM_SLOTS || self.slots[s as usize].is_some() => {
                return Err(PciError::SlotTaken(s))
            }
            Some(s) => s,
            None => (1..NUM_SLOTS as u8)
                .find(|s| self.slots[*s as usize].is_none())
                .ok_or(PciError::NoFreeSlot)?,
        };
        self.slots[slot as usize] = Some(device);
        Ok(slot)
    }

    /// Unplugs the device in `slot`.
    pub fn remove(&mut self, slot: u8) -> Option<SharedPciDevice> {
        self.slots.get_mut(slot as usize)?.take()
    }

    /// The device in `slot`.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots.get(slot as usize)?.clone()
    }

    /// Every plugged device with its slot.
    pub fn devices(&self) -> Vec<(u8, SharedPciDevice)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.clone().map(|d| (i as u8, d)))
            .collect()
    }

    /// Reads a configuration register of bus 0.
    pub fn config_read(&mut self, bus: u8, slot: u8, function: u8, reg: usize) -> u32 {
        if bus != 0 || function != 0 {
            return 0xffff_ffff;
        }
        if slot == 0 {
            return self.host_bridge.read(reg);
        }
        match self.slots.get(slot as usize).and_then(|d| d.clone()) {
            Some(d) => d.lock().unwrap_or_else(|e| e.into_inner()).config_read(reg),
            None => 0xffff_ffff,
        }
    }

    /// Writes a configuration register of bus 0.
    pub fn config_write(
        &mut self,
        bus: u8,
        slot: u8,
        function: u8,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) {
        if bus != 0 || function != 0 {
            return;
        }
        if slot == 0 {
            self.host_bridge.write(reg, offset, data);
            return;
        }
        let Some(device) = self.slots.get(slot as usize).and_then(|d| d.clone()) else {
            return;
        };
        let moves = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(reg, offset, data);
        // The device lock is released: the mapper may take the bus's locks.
        for m in moves {
            self.mapper.bar_moved(&device, m);
        }
    }
}

/// The legacy configuration mechanism: an address register at 0xCF8, data at 0xCFC-0xCFF.
pub struct PioConfigAccess {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PioConfigAccess {
    /// Access to `root` through ports 0xCF8-0xCFF.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PioConfigAccess { root, address: 0 }
    }

    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let slot = ((self.address >> 11) & 0x1f) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        let reg = ((self.address >> 2) & 0x3f) as usize;
        Some((bus, slot, function, reg))
    }
}

impl BusDevice for PioConfigAccess {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            let bytes = self.address.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
            }
            return;
        }
        let value = match self.target() {
            Some((bus, slot, f, reg)) => self
                .root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(bus, slot, f, reg),
            None => 0xffff_ffff,
        };
        let bytes = value.to_le_bytes();
        let start = (offset - 4) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(start + i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return;
        }
        if offset < 4 {
            return;
        }
        let start = (offset - 4) as usize;
        if start + data.len() > 4 {
            return;
        }
        if let Some((bus, slot, f, reg)) = self.target() {
            self.root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(bus, slot, f, reg, start, data);
        }
    }
}

/// PCI Express enhanced configuration access: a memory window where bus/device/function/
/// register are address bits.
pub struct EcamAccess {
    root: Arc<Mutex<PciRoot>>,
}

impl EcamAccess {
    /// Access to `root` through an ECAM window.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        EcamAccess { root }
    }

    fn decode(offset: u64) -> (u8, u8, u8, usize, usize) {
        let bus = ((offset >> 20) & 0xff) as u8;
        let slot = ((offset >> 15) & 0x1f) as u8;
        let function = ((offset >> 12) & 0x7) as u8;
        let reg = ((offset >> 2) & 0x3ff) as usize;
        (bus, slot, function, reg, (offset & 3) as usize)
    }
}

impl BusDevice for EcamAccess {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, slot, f, reg, byte) = Self::decode(offset);
        // Only the first 256 bytes (conventional configuration space) exist.
        let value = if reg < 64 {
            self.root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(bus, slot, f, reg)
        } else if slot == 0 || bus != 0 {
            0xffff_ffff
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(byte + i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, slot, f, reg, byte) = Self::decode(offset);
        if reg >= 64 || byte + data.len() > 4 {
            return;
        }
        self.root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(bus, slot, f, reg, byte, data);
    }
}

/// One BAR of a device, as placed on the MMIO bus.
pub struct BarRegion {
    device: SharedPciDevice,
    bar: usize,
}

impl BarRegion {
    /// BAR `bar` of `device`.
    pub fn new(device: SharedPciDevice, bar: usize) -> Self {
        BarRegion { device, bar }
    }
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_write(self.bar, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy {
        config: ConfigSpace,
        bar_data: Vec<u8>,
    }

    impl PciDevice for Dummy {
        fn config_read(&mut self, reg: usize) -> u32 {
            self.config.read(reg)
        }
        fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Vec<BarMove> {
            self.config.write(reg, offset, data)
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.bar_data[o..o + data.len()]);
        }
        fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.bar_data[o..o + data.len()].copy_from_slice(data);
        }
        fn bars(&self) -> Vec<(usize, Bar)> {
            self.config.bars().collect()
        }
        fn set_bar_address(&mut self, index: usize, address: u64) {
            self.config.set_bar_address(index, address);
        }
        fn reset(&mut self) {}
    }

    #[derive(Default)]
    struct Moves(Mutex<Vec<BarMove>>);

    impl BarMapper for Moves {
        fn bar_moved(&self, _device: &SharedPciDevice, moved: BarMove) {
            self.0.lock().unwrap().push(moved);
        }
    }

    fn dummy() -> SharedPciDevice {
        let mut config = ConfigSpace::new(PciIdentity {
            vendor: 0x1af4,
            device: 0x1042,
            ..Default::default()
        });
        config.add_bar(0, 0x1000, BarKind::Memory32);
        config.set_bar_address(0, 0xc000_0000);
        Arc::new(Mutex::new(Dummy {
            config,
            bar_data: vec![0; 0x1000],
        }))
    }

    fn pio_address(bus: u32, slot: u32, reg: u32) -> [u8; 4] {
        (0x8000_0000 | bus << 16 | slot << 11 | reg << 2).to_le_bytes()
    }

    #[test]
    fn enumerates_through_both_mechanisms() {
        let moves = Arc::new(Moves::default());
        let root = Arc::new(Mutex::new(PciRoot::new(moves)));
        let slot = root.lock().unwrap().add(None, dummy()).unwrap();
        assert_eq!(slot, 1);
        let mut pio = PioConfigAccess::new(root.clone());
        let mut ecam = EcamAccess::new(root.clone());
        let mut b = [0u8; 4];
        pio.write(0, &pio_address(0, 0, 0));
        pio.read(4, &mut b);
        assert_eq!(
            u32::from_le_bytes(b),
            (DEVICE_HOST_BRIDGE as u32) << 16 | 0x8086
        );
        pio.write(0, &pio_address(0, 1, 0));
        pio.read(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1042_1af4);
        let mut half = [0u8; 2];
        pio.read(6, &mut half);
        assert_eq!(u16::from_le_bytes(half), 0x1042);
        pio.write(0, &pio_address(0, 2, 0));
        pio.read(4, &mut b);
        assert_eq!(b, [0xff; 4], "empty slot");
        pio.write(0, &pio_address(1, 1, 0));
        pio.read(4, &mut b);
        assert_eq!(b, [0xff; 4], "no bus 1");
        ecam.read(1 << 15, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1042_1af4);
        ecam.read((1 << 15) | (4 << 2), &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xc000_0000);
        ecam.read((2 << 15) | 8, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn bar_moves_reach_the_mapper_and_slots_are_managed() {
        let moves = Arc::new(Moves::default());
        let root = Arc::new(Mutex::new(PciRoot::new(moves.clone())));
        root.lock().unwrap().add(Some(3), dummy()).unwrap();
        assert_eq!(
            root.lock().unwrap().add(Some(3), dummy()),
            Err(PciError::SlotTaken(3))
        );
        assert_eq!(
            root.lock().unwrap().add(Some(0), dummy()),
            Err(PciError::SlotTaken(0))
        );
        let mut ecam = EcamAccess::new(root.clone());
        ecam.write((3 << 15) | (1 << 2), &6u32.to_le_bytes());
        ecam.write((3 << 15) | (4 << 2), &0xd000_0000u32.to_le_bytes());
        let m = moves.0.lock().unwrap().clone();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].from, m[0].to), (0xc000_0000, 0xd000_0000));
        assert!(root.lock().unwrap().remove(3).is_some());
        assert!(root.lock().unwrap().remove(3).is_none());
        for _ in 1..NUM_SLOTS {
            root.lock().unwrap().add(None, dummy()).unwrap();
        }
        assert_eq!(
            root.lock().unwrap().add(None, dummy()),
            Err(PciError::NoFreeSlot)
        );
    }

    #[test]
    fn bar_region_forwards_to_the_device() {
        let d = dummy();
        let mut region = BarRegion::new(d.clone(), 0);
        region.write(8, &[1, 2, 3]);
        let mut b = [0u8; 3];
        region.read(8, &mut b);
        assert_eq!(b, [1, 2, 3]);
    }
}
