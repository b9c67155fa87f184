//! The two devices behind ACPI hot-plug: the generic event device (GED), which interrupts
//! the guest and says what happened, and the PCI hot-plug controller, which says which slots
//! were added or should be ejected and takes the guest's eject.
//!
//! Register contract (little-endian, 32-bit, matching the DSDT Palisade builds):
//!
//! | device | offset | access | meaning |
//! | --- | --- | --- | --- |
//! | GED | 0x0 | read, clears | pending events; bit 0: PCI hot-plug; bit 1: power button; bit 2: vCPU hot-plug; bit 3: memory hot-plug |
//! | hot-plug | 0x0 | read, clears | bitmap of slots just plugged in |
//! | hot-plug | 0x4 | read, clears | bitmap of slots the guest should eject |
//! | hot-plug | 0x8 | write | the slot number the guest has released (eject it now) |
//!
//! To add slot n: plug the device, set bit n of "plugged", set the GED's hot-plug event, raise
//! the GED interrupt. To remove it: set bit n of "eject", raise the event; the device goes
//! when the guest writes n to the eject register.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::ioapic::InterruptLine;

/// GED event register offset.
pub const GED_EVENT_OFFSET: u64 = 0;
/// GED event bit: look at the PCI hot-plug controller.
pub const GED_EVENT_PCI_HOTPLUG: u32 = 1 << 0;
/// GED event bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 1;
/// GED event bit: look at the vCPU hot-plug controller.
pub const GED_EVENT_CPU_HOTPLUG: u32 = 1 << 2;
/// GED event bit: look at the memory hot-plug controller.
pub const GED_EVENT_MEMORY_HOTPLUG: u32 = 1 << 3;
/// Hot-plug controller: slots just plugged in.
pub const HOTPLUG_UP_OFFSET: u64 = 0;
/// Hot-plug controller: slots to eject.
pub const HOTPLUG_DOWN_OFFSET: u64 = 4;
/// Hot-plug controller: the slot the guest released.
pub const HOTPLUG_EJECT_OFFSET: u64 = 8;

fn read_u32(value: u32, data: &mut [u8]) {
    data.fill(0);
    if data.len() == 4 {
        data.copy_from_slice(&value.to_le_bytes());
    }
}

/// The ACPI generic event device.
pub struct GenericEventDevice {
    events: u32,
    irq: Arc<dyn InterruptLine>,
}

impl GenericEventDevice {
    /// A GED raising `irq`.
    pub fn new(irq: Arc<dyn InterruptLine>) -> Self {
        GenericEventDevice { events: 0, irq }
    }

    /// Records `events` and interrupts the guest.
    pub fn notify(&mut self, events: u32) {
        self.events |= events;
        self.irq.trigger();
    }
}

impl BusDevice for GenericEventDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == GED_EVENT_OFFSET && data.len() == 4 {
            read_u32(std::mem::take(&mut self.events), data);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The PCI hot-plug controller.
pub struct PciHotplugController {
    up: u32,
    down: u32,
    ejected: Arc<Mutex<VecDeque<u8>>>,
    eject_evt: EventFd,
}

impl PciHotplugController {
    /// A controller that queues the guest's ejects and signals `eject_evt`.
    pub fn new(eject_evt: EventFd) -> Self {
        PciHotplugController {
            up: 0,
            down: 0,
            ejected: Arc::default(),
            eject_evt,
        }
    }

    /// The slots the guest ejected, for the VMM to take.
    pub fn ejected(&self) -> Arc<Mutex<VecDeque<u8>>> {
        self.ejected.clone()
    }

    /// Announces that `slot` was plugged in.
    pub fn plugged(&mut self, slot: u8) {
        if slot < 32 {
            self.up |= 1 << slot;
            self.down &= !(1 << slot);
        }
    }

    /// Asks the guest to eject `slot`.
    pub fn request_eject(&mut self, slot: u8) {
        if slot < 32 {
            self.down |= 1 << slot;
            self.up &= !(1 << slot);
        }
    }

    /// Forgets pending announcements (VM reset).
    pub fn reset(&mut self) {
        self.up = 0;
        self.down = 0;
    }
}

impl BusDevice for PciHotplugController {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            HOTPLUG_UP_OFFSET if data.len() == 4 => read_u32(std::mem::take(&mut self.up), data),
            HOTPLUG_DOWN_OFFSET if data.len() == 4 => {
                read_u32(std::mem::take(&mut self.down), data)
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != HOTPLUG_EJECT_OFFSET || data.len() != 4 {
            return;
        }
        let slot = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        if slot == 0 || slot >= 32 {
            return;
        }
        self.ejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(slot as u8);
        // The queue holds the slot even if the wake-up is lost; the next one drains it.
        let _ = self.eject_evt.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl InterruptLine for Count {
        fn trigger(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn read32(d: &mut dyn BusDevice, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ged_reports_and_clears_events_and_interrupts() {
        let irq = Arc::new(Count::default());
        let mut ged = GenericEventDevice::new(irq.clone());
        ged.notify(GED_EVENT_PCI_HOTPLUG);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        assert_eq!(read32(&mut ged, 0), 1);
        assert_eq!(read32(&mut ged, 0), 0, "reading clears");
        let mut b = [0xffu8; 2];
        ged.read(0, &mut b);
        assert_eq!(b, [0, 0], "only aligned 32-bit reads mean anything");
    }

    #[test]
    fn controller_announces_and_takes_ejects() {
        let evt = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
        let mut hp = PciHotplugController::new(evt.try_clone().unwrap());
        hp.plugged(3);
        hp.plugged(5);
        assert_eq!(read32(&mut hp, HOTPLUG_UP_OFFSET), (1 << 3) | (1 << 5));
        assert_eq!(read32(&mut hp, HOTPLUG_UP_OFFSET), 0);
        hp.request_eject(3);
        assert_eq!(read32(&mut hp, HOTPLUG_DOWN_OFFSET), 1 << 3);
        hp.write(HOTPLUG_EJECT_OFFSET, &3u32.to_le_bytes());
        hp.write(HOTPLUG_EJECT_OFFSET, &0u32.to_le_bytes());
        hp.write(HOTPLUG_EJECT_OFFSET, &99u32.to_le_bytes());
        hp.write(HOTPLUG_EJECT_OFFSET, &[3]);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(
            hp.ejected().lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(read32(&mut hp, HOTPLUG_EJECT_OFFSET), 0);
    }
}
