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
//! | hot-plug | 0xC | read/write | the PCI segment the three registers above speak of |
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
/// Hot-plug controller: the PCI segment the other registers speak of.
pub const HOTPLUG_SEGMENT_OFFSET: u64 = 0xc;

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

    /// The events not yet read by the guest (a snapshot's).
    pub fn pending(&self) -> u32 {
        self.events
    }

    /// Takes a snapshot's pending events back, without interrupting: the guest's local
    /// APIC, restored too, has the interrupt if it was not taken yet.
    pub fn restore_pending(&mut self, events: u32) {
        self.events = events;
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

/// What a snapshot keeps of the PCI hot-plug controller.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciHotplugState {
    /// Per segment, the slots announced as plugged in.
    pub up: Vec<u32>,
    /// Per segment, the slots to eject.
    pub down: Vec<u32>,
    /// The segment the guest selected.
    pub segment: u32,
}

/// The PCI hot-plug controller, for every segment's bus 0.
pub struct PciHotplugController {
    // Per segment: slots just plugged in, slots to eject.
    up: Vec<u32>,
    down: Vec<u32>,
    segment: u32,
    ejected: Arc<Mutex<VecDeque<(u16, u8)>>>,
    eject_evt: EventFd,
}

impl PciHotplugController {
    /// A controller for `segments` PCI segments that queues the guest's ejects (segment,
    /// slot) and signals `eject_evt`.
    pub fn new(segments: u16, eject_evt: EventFd) -> Self {
        let n = usize::from(segments.max(1));
        PciHotplugController {
            up: vec![0; n],
            down: vec![0; n],
            segment: 0,
            ejected: Arc::default(),
            eject_evt,
        }
    }

    /// The slots the guest ejected, for the VMM to take.
    pub fn ejected(&self) -> Arc<Mutex<VecDeque<(u16, u8)>>> {
        self.ejected.clone()
    }

    /// Announces that `slot` of `segment` was plugged in.
    pub fn plugged(&mut self, segment: u16, slot: u8) {
        let s = usize::from(segment);
        if slot < 32 && s < self.up.len() {
            self.up[s] |= 1 << slot;
            self.down[s] &= !(1 << slot);
        }
    }

    /// Asks the guest to eject `slot` of `segment`.
    pub fn request_eject(&mut self, segment: u16, slot: u8) {
        let s = usize::from(segment);
        if slot < 32 && s < self.up.len() {
            self.down[s] |= 1 << slot;
            self.up[s] &= !(1 << slot);
        }
    }

    /// The pending announcements, for a snapshot: per segment, the slots plugged in and
    /// those to eject, and the selected segment.
    pub fn state(&self) -> PciHotplugState {
        PciHotplugState {
            up: self.up.clone(),
            down: self.down.clone(),
            segment: self.segment,
        }
    }

    /// Takes a snapshot's announcements back; refused if it has another number of segments.
    pub fn restore(&mut self, state: &PciHotplugState) -> Result<(), String> {
        if state.up.len() != self.up.len() || state.down.len() != self.down.len() {
            return Err(format!(
                "the snapshot's PCI hot-plug controller has {} segments, this one {}",
                state.up.len(),
                self.up.len()
            ));
        }
        self.up.clone_from(&state.up);
        self.down.clone_from(&state.down);
        self.segment = state.segment;
        Ok(())
    }

    /// Forgets pending announcements (VM reset).
    pub fn reset(&mut self) {
        self.up.iter_mut().for_each(|b| *b = 0);
        self.down.iter_mut().for_each(|b| *b = 0);
        self.segment = 0;
    }
}

impl BusDevice for PciHotplugController {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let s = self.segment as usize;
        match offset {
            HOTPLUG_UP_OFFSET if data.len() == 4 && s < self.up.len() => {
                read_u32(std::mem::take(&mut self.up[s]), data)
            }
            HOTPLUG_DOWN_OFFSET if data.len() == 4 && s < self.down.len() => {
                read_u32(std::mem::take(&mut self.down[s]), data)
            }
            HOTPLUG_SEGMENT_OFFSET if data.len() == 4 => read_u32(self.segment, data),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            HOTPLUG_SEGMENT_OFFSET => self.segment = value,
            HOTPLUG_EJECT_OFFSET => {
                let segment = self.segment;
                if value == 0 || value >= 32 || segment as usize >= self.up.len() {
                    return;
                }
                self.ejected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((segment as u16, value as u8));
                // The queue holds the slot even if the wake-up is lost; the next one drains it.
                let _ = self.eject_evt.write(1);
            }
            _ => {}
        }
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
        let mut hp = PciHotplugController::new(2, evt.try_clone().unwrap());
        hp.plugged(0, 3);
        hp.plugged(0, 5);
        assert_eq!(read32(&mut hp, HOTPLUG_UP_OFFSET), (1 << 3) | (1 << 5));
        assert_eq!(read32(&mut hp, HOTPLUG_UP_OFFSET), 0);
        hp.request_eject(0, 3);
        assert_eq!(read32(&mut hp, HOTPLUG_DOWN_OFFSET), 1 << 3);
        hp.write(HOTPLUG_EJECT_OFFSET, &3u32.to_le_bytes());
        hp.write(HOTPLUG_EJECT_OFFSET, &0u32.to_le_bytes());
        hp.write(HOTPLUG_EJECT_OFFSET, &99u32.to_le_bytes());
        hp.write(HOTPLUG_EJECT_OFFSET, &[3]);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(
            hp.ejected().lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![(0, 3)]
        );
        assert_eq!(read32(&mut hp, HOTPLUG_EJECT_OFFSET), 0);

        // Segment 1 has bitmaps of its own, picked by the segment register.
        hp.plugged(1, 2);
        hp.plugged(0, 7);
        hp.write(HOTPLUG_SEGMENT_OFFSET, &1u32.to_le_bytes());
        assert_eq!(read32(&mut hp, HOTPLUG_SEGMENT_OFFSET), 1);
        assert_eq!(read32(&mut hp, HOTPLUG_UP_OFFSET), 1 << 2);
        hp.write(HOTPLUG_EJECT_OFFSET, &2u32.to_le_bytes());
        hp.write(HOTPLUG_SEGMENT_OFFSET, &9u32.to_le_bytes());
        assert_eq!(read32(&mut hp, HOTPLUG_UP_OFFSET), 0, "no such segment");
        hp.write(HOTPLUG_EJECT_OFFSET, &2u32.to_le_bytes());
        hp.write(HOTPLUG_SEGMENT_OFFSET, &0u32.to_le_bytes());
        assert_eq!(read32(&mut hp, HOTPLUG_UP_OFFSET), 1 << 7);
        assert_eq!(
            hp.ejected().lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![(1, 2)]
        );
    }

    #[test]
    fn announcements_and_events_survive_a_state_round_trip() {
        let evt = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
        let mut a = PciHotplugController::new(2, evt.try_clone().unwrap());
        a.plugged(1, 4);
        let mut b = PciHotplugController::new(2, evt.try_clone().unwrap());
        b.restore(&a.state()).unwrap();
        assert_eq!(b.state(), a.state());
        assert!(PciHotplugController::new(1, evt)
            .restore(&a.state())
            .is_err());
        let irq = Arc::new(Count::default());
        let mut ged = GenericEventDevice::new(irq.clone());
        ged.restore_pending(GED_EVENT_PCI_HOTPLUG);
        assert_eq!(irq.0.load(Ordering::SeqCst), 0, "no new interrupt");
        assert_eq!(read32(&mut ged, 0), GED_EVENT_PCI_HOTPLUG);
    }
}
