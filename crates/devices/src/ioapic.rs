//! The I/O APIC, emulated in userspace (KVM's split irqchip: local APICs in the kernel, the
//! I/O APIC here).
//!
//! Legacy devices (the serial port) raise a pin; the I/O APIC turns the pin's redirection
//! entry into a message-signalled interrupt and hands it to an [`MsiSink`] (KVM_SIGNAL_MSI in
//! the VMM). Keeping the I/O APIC out of the kernel keeps KVM's VM teardown cheap: the
//! in-kernel PIC, I/O APIC and PIT cost tens of milliseconds to destroy, on every exit and
//! every reboot.

use std::sync::{Arc, Mutex};

use log::{debug, warn};

use crate::bus::BusDevice;

/// Where the I/O APIC's registers live.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the register window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of interrupt pins.
pub const NUM_PINS: usize = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIRECTION_BASE: u32 = 0x10;
// Version 0x20 has the EOI register; bits 16-23 hold the highest pin number.
const VERSION: u32 = 0x20 | (((NUM_PINS as u32) - 1) << 16);

// Redirection entry fields.
const RTE_VECTOR: u64 = 0xff;
const RTE_DELIVERY_MODE_SHIFT: u64 = 8;
const RTE_DEST_MODE: u64 = 1 << 11;
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
const RTE_DEST_SHIFT: u64 = 56;
// Bits the guest may not write.
const RTE_READ_ONLY: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;

/// Delivers a message-signalled interrupt to the local APICs.
pub trait MsiSink: Send + Sync {
    /// Sends the MSI with this address and data.
    fn send_msi(&self, address: u64, data: u32) -> std::io::Result<()>;
}

/// A wire that a device pulls to interrupt the guest.
pub trait InterruptLine: Send + Sync {
    /// Signals an edge-triggered interrupt.
    fn trigger(&self);
}

/// The MSI address and data that deliver a redirection entry, as an I/O APIC would put
/// them on the bus.
pub fn msi_message(entry: u64) -> (u64, u32) {
    let dest = (entry >> RTE_DEST_SHIFT) & 0xff;
    let logical = entry & RTE_DEST_MODE != 0;
    let address = 0xfee0_0000 | (dest << 12) | if logical { 1 << 2 } else { 0 };
    let mode = (entry >> RTE_DELIVERY_MODE_SHIFT) & 0x7;
    let level = entry & RTE_LEVEL != 0;
    // Data: vector, delivery mode, assert, trigger mode.
    let data = (entry & RTE_VECTOR) | (mode << 8) | (1 << 14) | if level { 1 << 15 } else { 0 };
    (address, data as u32)
}

/// What a snapshot keeps of the I/O APIC: its registers and the level of each pin.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoApicState {
    /// The id register.
    pub id: u32,
    /// The selected register.
    pub selected: u32,
    /// One redirection entry per pin.
    pub entries: Vec<u64>,
    /// Whether each pin is asserted.
    pub asserted: Vec<bool>,
}

/// The I/O APIC's registers and pin states.
pub struct IoApic {
    id: u32,
    selected: u32,
    entries: [u64; NUM_PINS],
    // Current level of each pin, for level-triggered re-delivery.
    asserted: [bool; NUM_PINS],
    sink: Arc<dyn MsiSink>,
}

impl IoApic {
    /// An I/O APIC with id `id`, delivering through `sink`; every pin starts masked.
    pub fn new(id: u8, sink: Arc<dyn MsiSink>) -> Self {
        IoApic {
            id: id as u32,
            selected: 0,
            entries: [RTE_MASKED; NUM_PINS],
            asserted: [false; NUM_PINS],
            sink,
        }
    }

    /// Back to power-on state: all pins masked.
    pub fn reset(&mut self) {
        self.selected = 0;
        self.entries = [RTE_MASKED; NUM_PINS];
        self.asserted = [false; NUM_PINS];
    }

    /// The registers and pin levels, for a snapshot.
    pub fn state(&self) -> IoApicState {
        IoApicState {
            id: self.id,
            selected: self.selected,
            entries: self.entries.to_vec(),
            asserted: self.asserted.to_vec(),
        }
    }

    /// Takes the registers and pin levels of `state` (a snapshot's); refused, changing
    /// nothing, when it does not describe this I/O APIC's pins.
    pub fn restore(&mut self, state: &IoApicState) -> Result<(), String> {
        let entries: [u64; NUM_PINS] = state.entries.as_slice().try_into().map_err(|_| {
            format!(
                "I/O APIC state has {} redirection entries, not {NUM_PINS}",
                state.entries.len()
            )
        })?;
        let asserted: [bool; NUM_PINS] = state
            .asserted
            .as_slice()
            .try_into()
            .map_err(|_| format!("I/O APIC state has {} pin levels", state.asserted.len()))?;
        self.id = state.id & 0xf;
        self.selected = state.selected;
        self.entries = entries;
        self.asserted = asserted;
        Ok(())
    }

    /// The redirection entry of `pin`.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.entries.get(pin).copied()
    }

    fn deliver(&mut self, pin: usize) {
        let entry = self.entries[pin];
        if entry & RTE_MASKED != 0 {
            return;
        }
        if entry & RTE_LEVEL != 0 {
            if entry & RTE_REMOTE_IRR != 0 {
                // Still being serviced; re-delivered at EOI if the line stays high.
                return;
            }
            self.entries[pin] |= RTE_REMOTE_IRR;
        }
        let (address, data) = msi_message(entry);
        if let Err(e) = self.sink.send_msi(address, data) {
            warn!(
                "I/O APIC pin {pin}: cannot deliver vector {}: {e}",
                entry & RTE_VECTOR
            );
        }
    }

    /// An edge on `pin`.
    pub fn pulse(&mut self, pin: usize) {
        if pin < NUM_PINS {
            self.deliver(pin);
        }
    }

    /// Sets the level of `pin` (for level-triggered sources).
    pub fn set_level(&mut self, pin: usize, high: bool) {
        if pin >= NUM_PINS {
            return;
        }
        let rising = high && !self.asserted[pin];
        self.asserted[pin] = high;
        let level = self.entries[pin] & RTE_LEVEL != 0;
        if (level && high) || rising {
            self.deliver(pin);
        }
    }

    /// The local APIC finished servicing `vector`: clear remote IRR of the level-triggered
    /// pins using it, and deliver again those still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..NUM_PINS {
            let entry = self.entries[pin];
            if entry & RTE_LEVEL != 0
                && entry & RTE_REMOTE_IRR != 0
                && (entry & RTE_VECTOR) as u8 == vector
            {
                self.entries[pin] &= !RTE_REMOTE_IRR;
                if self.asserted[pin] {
                    self.deliver(pin);
                }
            }
        }
    }

    fn read_register(&self) -> u32 {
        match self.selected {
            REG_ID | REG_ARBITRATION => (self.id & 0xf) << 24,
            REG_VERSION => VERSION,
            r if r >= REG_REDIRECTION_BASE => {
                let index = ((r - REG_REDIRECTION_BASE) / 2) as usize;
                match self.entries.get(index) {
                    Some(&e) if r % 2 == 0 => e as u32,
                    Some(&e) => (e >> 32) as u32,
                    None => 0,
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.selected {
            REG_ID => self.id = (value >> 24) & 0xf,
            r if r >= REG_REDIRECTION_BASE => {
                let index = ((r - REG_REDIRECTION_BASE) / 2) as usize;
                let Some(entry) = self.entries.get_mut(index) else {
                    debug!("I/O APIC: write to missing redirection entry {index}");
                    return;
                };
                let writable = if r % 2 == 0 {
                    0x0000_0000_ffff_ffffu64 & !RTE_READ_ONLY
                } else {
                    0xffff_ffff_0000_0000u64
                };
                let shifted = if r % 2 == 0 {
                    value as u64
                } else {
                    (value as u64) << 32
                };
                *entry = (*entry & !writable) | (shifted & writable);
                // Unmasking a level-triggered pin that is high delivers it.
                let (level, masked) = (*entry & RTE_LEVEL != 0, *entry & RTE_MASKED != 0);
                if level && !masked && self.asserted[index] {
                    self.deliver(index);
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => self.selected,
            IOWIN => self.read_register(),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        for (i, b) in data.iter().take(4).enumerate() {
            bytes[i] = *b;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.selected = value & 0xff,
            IOWIN => self.write_register(value),
            EOI => self.end_of_interrupt(value as u8),
            _ => {}
        }
    }
}

/// One pin of a shared I/O APIC, as an [`InterruptLine`] for a device.
pub struct IoApicPin {
    ioapic: Arc<Mutex<IoApic>>,
    pin: usize,
}

impl IoApicPin {
    /// Pin `pin` of `ioapic`.
    pub fn new(ioapic: Arc<Mutex<IoApic>>, pin: usize) -> Self {
        IoApicPin { ioapic, pin }
    }
}

impl InterruptLine for IoApicPin {
    fn trigger(&self) {
        self.ioapic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pulse(self.pin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::MsiRecorder as Recorder;

    fn ioapic() -> (IoApic, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        (IoApic::new(2, rec.clone()), rec)
    }

    fn write_reg(io: &mut IoApic, reg: u32, value: u32) {
        io.write(IOREGSEL, &reg.to_le_bytes());
        io.write(IOWIN, &value.to_le_bytes());
    }

    fn read_reg(io: &mut IoApic, reg: u32) -> u32 {
        io.write(IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identifies_itself_and_starts_masked() {
        let (mut io, rec) = ioapic();
        assert_eq!(read_reg(&mut io, REG_ID) >> 24, 2);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x17_0020);
        assert_eq!(
            read_reg(&mut io, 0x10 + 8) & RTE_MASKED as u32,
            RTE_MASKED as u32
        );
        io.pulse(4);
        assert!(
            rec.0.lock().unwrap().is_empty(),
            "masked pins deliver nothing"
        );
    }

    #[test]
    fn an_unmasked_edge_pin_sends_the_programmed_msi() {
        let (mut io, rec) = ioapic();
        // Pin 4: vector 0x24, fixed, physical destination APIC 3.
        write_reg(&mut io, 0x10 + 8, 0x24);
        write_reg(&mut io, 0x10 + 9, 3 << 24);
        io.pulse(4);
        io.pulse(4);
        let sent = rec.0.lock().unwrap().clone();
        assert_eq!(sent, vec![(0xfee0_3000, 0x4024), (0xfee0_3000, 0x4024)]);
        assert_eq!(io.entry(4), Some((3u64 << 56) | 0x24));
    }

    #[test]
    fn level_pins_wait_for_eoi_and_redeliver_while_high() {
        let (mut io, rec) = ioapic();
        write_reg(&mut io, 0x10 + 2 * 5, 0x31 | RTE_LEVEL as u32);
        io.set_level(5, true);
        io.set_level(5, true);
        assert_eq!(
            rec.0.lock().unwrap().len(),
            1,
            "remote IRR holds the second one"
        );
        assert_ne!(read_reg(&mut io, 0x10 + 10) & RTE_REMOTE_IRR as u32, 0);
        io.end_of_interrupt(0x31);
        assert_eq!(
            rec.0.lock().unwrap().len(),
            2,
            "still high: delivered again"
        );
        io.set_level(5, false);
        io.end_of_interrupt(0x31);
        assert_eq!(rec.0.lock().unwrap().len(), 2);
        assert_eq!(read_reg(&mut io, 0x10 + 10) & RTE_REMOTE_IRR as u32, 0);
        let (_, data) = rec.0.lock().unwrap()[0];
        assert_ne!(data & (1 << 15), 0, "trigger mode bit set for level");
    }

    #[test]
    fn read_only_bits_and_bad_indices_are_ignored() {
        let (mut io, rec) = ioapic();
        write_reg(
            &mut io,
            0x10,
            0x40 | RTE_REMOTE_IRR as u32 | RTE_DELIVERY_STATUS as u32,
        );
        assert_eq!(read_reg(&mut io, 0x10), 0x40);
        write_reg(&mut io, 0x10 + 2 * NUM_PINS as u32, 0x55);
        assert_eq!(read_reg(&mut io, 0x10 + 2 * NUM_PINS as u32), 0);
        io.pulse(NUM_PINS + 3);
        io.set_level(99, true);
        assert!(rec.0.lock().unwrap().is_empty());
        io.reset();
        assert_eq!(io.entry(0), Some(RTE_MASKED));
    }

    #[test]
    fn logical_destination_sets_the_address_mode_bit() {
        let entry = 0x41 | RTE_DEST_MODE | (1u64 << 8) | (0x0fu64 << 56);
        let (address, data) = msi_message(entry);
        assert_eq!(address, 0xfee0_f004);
        assert_eq!(data, 0x4141);
    }

    #[test]
    fn state_goes_out_and_comes_back_checked() {
        let (mut a, _) = ioapic();
        a.write(IOREGSEL, &0x12u32.to_le_bytes());
        a.write(IOWIN, &0x31u32.to_le_bytes());
        let state = a.state();
        let (mut b, _) = ioapic();
        b.restore(&state).unwrap();
        assert_eq!(b.entry(1), a.entry(1));
        assert_eq!(b.state(), state);
        let mut short = state.clone();
        short.entries.pop();
        assert!(b.restore(&short).is_err());
        assert_eq!(b.state(), state, "a refused state changes nothing");
    }
}
