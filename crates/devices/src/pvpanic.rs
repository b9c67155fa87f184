//! The pvpanic PCI device (1b36:0011), which Linux's `pvpanic-pci` drives: a guest that
//! panics writes an event byte to BAR 0, so the host learns of the panic even when the
//! guest's console says nothing. A read of the byte says which events the device knows.
//!
//! The write comes on a vCPU thread, which only records the event and signals an eventfd;
//! the VMM thread then logs it and reports it to the event monitor ([`PvPanic::take`]), so
//! the vCPU's filter needs nothing new and a guest writing in a loop costs one wake-up per
//! batch.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::pci::{Bar, BarKind, BarMove, ConfigSpace, PciDevice, PciIdentity};

/// Red Hat's vendor id, under which QEMU registered the device.
pub const VENDOR: u16 = 0x1b36;
/// The pvpanic device id.
pub const DEVICE: u16 = 0x0011;
/// Event: the guest panicked, and the host should act on it.
pub const PANICKED: u8 = 1 << 0;
/// Event: the guest panicked and loads a crash kernel itself; the host should only record it.
pub const CRASH_LOADED: u8 = 1 << 1;
/// The events the device knows.
pub const EVENTS: u8 = PANICKED | CRASH_LOADED;
/// Size of BAR 0 (one byte is used; a page keeps the guest's mapping simple).
pub const BAR_SIZE: u64 = 0x1000;

/// The events written since the VMM last looked, shared between the device (on vCPU
/// threads) and the VMM thread.
#[derive(Debug)]
pub struct PanicEvents {
    pending: AtomicU8,
    count: std::sync::atomic::AtomicU64,
    /// Signalled on every event write.
    pub evt: EventFd,
}

impl PanicEvents {
    /// The events written since the last call (0 if none), and how many writes there were in
    /// all.
    pub fn take(&self) -> (u8, u64) {
        let _ = self.evt.read();
        (
            self.pending.swap(0, Ordering::AcqRel),
            self.count.load(Ordering::Acquire),
        )
    }
}

/// The pvpanic PCI function.
pub struct PvPanic {
    config: ConfigSpace,
    events: Arc<PanicEvents>,
    initial_bar0: u64,
}

impl PvPanic {
    /// A device signalling `evt` when the guest writes an event.
    pub fn new(evt: EventFd) -> Self {
        let mut config = ConfigSpace::new(PciIdentity {
            vendor: VENDOR,
            device: DEVICE,
            revision: 1,
            class: 0x08,    // Base system peripheral.
            subclass: 0x80, // Other.
            subsystem_vendor: VENDOR,
            subsystem: DEVICE,
            ..Default::default()
        });
        config.add_bar(0, BAR_SIZE, BarKind::Memory64);
        PvPanic {
            config,
            events: Arc::new(PanicEvents {
                pending: AtomicU8::new(0),
                count: std::sync::atomic::AtomicU64::new(0),
                evt,
            }),
            initial_bar0: 0,
        }
    }

    /// What the VMM thread reads the events from.
    pub fn events(&self) -> Arc<PanicEvents> {
        self.events.clone()
    }
}

impl PciDevice for PvPanic {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Vec<BarMove> {
        self.config.write(reg, offset, data)
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar == 0 && offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = EVENTS;
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        // Bits the device does not know are ignored, as the interface says.
        let Some(event) = data.first().map(|b| b & EVENTS) else {
            return;
        };
        if bar != 0 || offset != 0 || event == 0 {
            return;
        }
        self.events.pending.fetch_or(event, Ordering::AcqRel);
        self.events.count.fetch_add(1, Ordering::AcqRel);
        let _ = self.events.evt.write(1);
    }

    fn bars(&self) -> Vec<(usize, Bar)> {
        self.config.bars().collect()
    }

    fn set_bar_address(&mut self, index: usize, address: u64) {
        if index == 0 {
            self.initial_bar0 = address;
        }
        self.config.set_bar_address(index, address);
    }

    fn reset(&mut self) {
        self.config.write(1, 0, &[0, 0]);
        self.config.set_bar_address(0, self.initial_bar0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> PvPanic {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut d = PvPanic::new(evt);
        d.set_bar_address(0, 0x1_0000_0000);
        d
    }

    #[test]
    fn identity_and_bar_are_what_linux_probes() {
        let mut d = device();
        assert_eq!(
            d.config_read(0),
            (u32::from(DEVICE) << 16) | u32::from(VENDOR)
        );
        assert_eq!(
            d.config_read(2) >> 16,
            0x0880,
            "base system peripheral, other"
        );
        let bars = d.bars();
        assert_eq!(bars.len(), 1);
        assert_eq!(
            (bars[0].1.size, bars[0].1.address),
            (BAR_SIZE, 0x1_0000_0000)
        );
        let mut byte = [0xff];
        d.bar_read(0, 0, &mut byte);
        assert_eq!(byte[0], EVENTS);
    }

    #[test]
    fn events_are_recorded_and_signalled_and_unknown_bits_ignored() {
        let mut d = device();
        let events = d.events();
        assert_eq!(events.take(), (0, 0));
        d.bar_write(0, 0, &[0x80]); // Unknown only: nothing.
        d.bar_write(0, 4, &[PANICKED]); // Not the event register.
        assert_eq!(events.evt.read().ok(), None, "not signalled");
        d.bar_write(0, 0, &[PANICKED | 0x80]);
        d.bar_write(0, 0, &[CRASH_LOADED]);
        assert_eq!(events.take(), (PANICKED | CRASH_LOADED, 2));
        assert_eq!(events.take(), (0, 2), "taken once");
    }

    #[test]
    fn reset_puts_the_bar_back_and_turns_decoding_off() {
        let mut d = device();
        d.config_write(1, 0, &[0x2, 0]);
        d.config_write(4, 0, &0xc000_0000u32.to_le_bytes());
        d.config_write(5, 0, &[0, 0, 0, 0]);
        assert_eq!(d.bars()[0].1.address, 0xc000_0000);
        d.reset();
        assert_eq!(d.bars()[0].1.address, 0x1_0000_0000);
        assert_eq!(d.config_read(1) & 0x2, 0);
    }
}
