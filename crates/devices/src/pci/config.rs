//! A type-0 PCI configuration space: identity, command/status, BARs (with the sizing
//! protocol) and a capability list.

/// A BAR's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Memory32,
    /// 64-bit memory (takes two BAR slots).
    Memory64,
}

/// One BAR as the device declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Size in bytes (a power of two, at least 16).
    pub size: u64,
    /// Kind.
    pub kind: BarKind,
    /// Where the VMM has the BAR mapped.
    pub address: u64,
}

/// A BAR the guest moved to a new address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// BAR index.
    pub index: usize,
    /// Old address.
    pub from: u64,
    /// New address.
    pub to: u64,
    /// Size.
    pub size: u64,
}

const NUM_REGS: usize = 64;
const REG_COMMAND_STATUS: usize = 1;
const REG_CLASS: usize = 2;
const REG_HEADER: usize = 3;
const REG_BAR0: usize = 4;
const REG_SUBSYSTEM: usize = 11;
const REG_CAP_PTR: usize = 13;
const REG_INTERRUPT: usize = 15;
const STATUS_CAP_LIST: u32 = 1 << 20;
const FIRST_CAP_OFFSET: usize = 0x40;
/// Command register bits a guest may set: I/O and memory decoding, bus mastering, and
/// INTx disable.
const COMMAND_WRITABLE: u32 = 0x1 | 0x2 | 0x4 | 0x400;

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug, Default)]
pub struct PciIdentity {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code.
    pub class: u8,
    /// Subclass.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
}

/// The configuration space of one function.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    regs: [u32; NUM_REGS],
    writable: [u32; NUM_REGS],
    bars: [Option<Bar>; 6],
    next_cap: usize,
    last_cap_next_ptr: Option<usize>,
}

impl ConfigSpace {
    /// A space with `id`, no BARs and no capabilities.
    pub fn new(id: PciIdentity) -> Self {
        let mut regs = [0u32; NUM_REGS];
        let mut writable = [0u32; NUM_REGS];
        regs[0] = (id.device as u32) << 16 | id.vendor as u32;
        regs[REG_CLASS] = (id.class as u32) << 24
            | (id.subclass as u32) << 16
            | (id.prog_if as u32) << 8
            | id.revision as u32;
        regs[REG_SUBSYSTEM] = (id.subsystem as u32) << 16 | id.subsystem_vendor as u32;
        writable[REG_COMMAND_STATUS] = COMMAND_WRITABLE;
        // Interrupt line is scratch space for the guest; pin 0: no INTx.
        writable[REG_INTERRUPT] = 0xff;
        regs[REG_HEADER] = 0; // Type 0, single function.
        ConfigSpace {
            regs,
            writable,
            bars: [None; 6],
            next_cap: FIRST_CAP_OFFSET,
            last_cap_next_ptr: None,
        }
    }

    /// Declares BAR `index` (64-bit BARs also take `index + 1`).
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind) {
        debug_assert!(size.is_power_of_two() && size >= 16);
        let reg = REG_BAR0 + index;
        let mask = !(size - 1);
        match kind {
            BarKind::Memory32 => {
                self.writable[reg] = mask as u32;
                self.regs[reg] = 0;
            }
            BarKind::Memory64 => {
                self.writable[reg] = mask as u32;
                self.writable[reg + 1] = (mask >> 32) as u32;
                self.regs[reg] = 0x4; // 64-bit memory type.
                self.regs[reg + 1] = 0;
            }
        }
        self.bars[index] = Some(Bar {
            size,
            kind,
            address: 0,
        });
    }

    /// Places BAR `index` at `address` (done by the VMM before the guest boots or at
    /// hot-plug, like firmware would).
    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        let Some(bar) = self.bars[index].as_mut() else {
            return;
        };
        bar.address = address;
        let reg = REG_BAR0 + index;
        let low_flags = self.regs[reg] & 0xf;
        self.regs[reg] = (address as u32 & !0xf) | low_flags;
        if bar.kind == BarKind::Memory64 {
            self.regs[reg + 1] = (address >> 32) as u32;
        }
    }

    /// The declared BARs.
    pub fn bars(&self) -> impl Iterator<Item = (usize, Bar)> + '_ {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b)))
    }

    /// Whether memory decoding is on.
    pub fn memory_enabled(&self) -> bool {
        self.regs[REG_COMMAND_STATUS] & 0x2 != 0
    }

    /// Appends a capability (its first byte is the id; the next-pointer byte is filled in)
    /// and returns its offset. `writable` masks the bytes the guest may change.
    pub fn add_capability(&mut self, bytes: &[u8], writable: &[u8]) -> usize {
        let offset = self.next_cap;
        let len = bytes.len().max(2);
        assert!(offset + len <= NUM_REGS * 4, "capabilities overflow");
        for (i, b) in bytes.iter().enumerate() {
            self.set_byte(offset + i, *b);
            let w = writable.get(i).copied().unwrap_or(0);
            self.set_writable_byte(offset + i, w);
        }
        self.set_byte(offset + 1, 0);
        match self.last_cap_next_ptr {
            Some(prev_next) => self.set_byte(prev_next, offset as u8),
            None => {
                self.regs[REG_CAP_PTR] = offset as u32;
                self.regs[REG_COMMAND_STATUS] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap_next_ptr = Some(offset + 1);
        self.next_cap = (offset + len + 3) & !3;
        offset
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        let (reg, shift) = (offset / 4, (offset % 4) * 8);
        self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | ((value as u32) << shift);
    }

    fn set_writable_byte(&mut self, offset: usize, value: u8) {
        let (reg, shift) = (offset / 4, (offset % 4) * 8);
        self.writable[reg] = (self.writable[reg] & !(0xff << shift)) | ((value as u32) << shift);
    }

    /// A byte of the space.
    pub fn byte(&self, offset: usize) -> u8 {
        (self.regs[offset / 4] >> ((offset % 4) * 8)) as u8
    }

    /// Reads register `reg` (a dword index).
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Writes `data` at byte `offset` of register `reg`; reports the BARs that must be
    /// mapped elsewhere as a result.
    ///
    /// A BAR moves only while memory decoding is on: guests turn decoding off while they
    /// size BARs (writing all ones and reading back the mask), so the transient values of
    /// that protocol are never mapped.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Vec<BarMove> {
        if reg >= NUM_REGS || offset + data.len() > 4 || data.is_empty() {
            return Vec::new();
        }
        let mut value = self.regs[reg];
        for (i, b) in data.iter().enumerate() {
            let shift = (offset + i) * 8;
            let w = (self.writable[reg] >> shift) & 0xff;
            let old = (value >> shift) & 0xff;
            let new = (old & !w) | (*b as u32 & w);
            value = (value & !(0xff << shift)) | (new << shift);
        }
        self.regs[reg] = value;
        if !self.memory_enabled() {
            return Vec::new();
        }
        let mut moves = Vec::new();
        for index in 0..6 {
            let Some(bar) = self.bars[index] else {
                continue;
            };
            let now = self.bar_value(index);
            if now != bar.address {
                self.bars[index] = Some(Bar {
                    address: now,
                    ..bar
                });
                moves.push(BarMove {
                    index,
                    from: bar.address,
                    to: now,
                    size: bar.size,
                });
            }
        }
        moves
    }

    fn bar_value(&self, index: usize) -> u64 {
        let reg = REG_BAR0 + index;
        let low = (self.regs[reg] & !0xf) as u64;
        match self.bars[index].map(|b| b.kind) {
            Some(BarKind::Memory64) => low | (self.regs[reg + 1] as u64) << 32,
            _ => low,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        ConfigSpace::new(PciIdentity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 1,
            subclass: 0,
            prog_if: 0,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        })
    }

    fn write32(c: &mut ConfigSpace, reg: usize, v: u32) -> Vec<BarMove> {
        c.write(reg, 0, &v.to_le_bytes())
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = space();
        assert_eq!(c.read(0), 0x1042_1af4);
        write32(&mut c, 0, 0xdead_beef);
        assert_eq!(c.read(0), 0x1042_1af4);
        assert_eq!(c.read(2) >> 24, 1);
        assert_eq!(c.read(11), 0x0040_1af4);
        assert_eq!(c.read(64), 0xffff_ffff, "beyond the space");
    }

    #[test]
    fn bar_sizing_protocol_and_moves() {
        let mut c = space();
        c.add_bar(0, 0x4000, BarKind::Memory64);
        c.set_bar_address(0, 0x1_0000_0000);
        assert_eq!(c.read(4), 0x4);
        assert_eq!(c.read(5), 1);
        // Sizing with decoding off: write all ones, read the mask back; nothing moves.
        assert!(write32(&mut c, 4, 0xffff_ffff).is_empty());
        assert!(write32(&mut c, 5, 0xffff_ffff).is_empty());
        assert_eq!(c.read(4), 0xffff_c004);
        assert_eq!(c.read(5), 0xffff_ffff);
        write32(&mut c, 4, 0x0);
        assert!(write32(&mut c, 5, 0x1).is_empty());
        // Turning decoding on with the address unchanged moves nothing.
        assert!(write32(&mut c, 1, 0x6).is_empty());
        assert!(c.memory_enabled());
        // Moving it with decoding on is reported.
        let m = write32(&mut c, 4, 0xc000_8000);
        assert_eq!(
            m,
            vec![BarMove {
                index: 0,
                from: 0x1_0000_0000,
                to: 0x1_c000_8000,
                size: 0x4000
            }]
        );
        assert_eq!(c.bars().next().unwrap().1.address, 0x1_c000_8000);
        // Re-programmed while decoding was off: reported when decoding comes back.
        write32(&mut c, 1, 0x4);
        assert!(write32(&mut c, 5, 0x2).is_empty());
        let m = write32(&mut c, 1, 0x6);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].to, 0x2_c000_8000);
    }

    #[test]
    fn capabilities_are_chained() {
        let mut c = space();
        let a = c.add_capability(&[0x11, 0, 1, 2], &[0, 0, 0, 0xff]);
        let b = c.add_capability(&[0x09, 0, 16, 1, 2, 3], &[]);
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x44);
        assert_eq!(c.read(13) & 0xff, 0x40);
        assert_ne!(c.read(1) & STATUS_CAP_LIST, 0);
        assert_eq!(c.byte(0x41), 0x44);
        assert_eq!(c.byte(0x45), 0);
        c.write(0x40 / 4, 3, &[0x77]);
        c.write(0x40 / 4, 2, &[0x77]);
        assert_eq!(c.byte(0x43), 0x77);
        assert_eq!(c.byte(0x42), 1, "read-only byte kept");
    }

    #[test]
    fn command_register_takes_only_known_bits() {
        let mut c = space();
        write32(&mut c, 1, 0xffff_ffff);
        assert_eq!(c.read(1) & 0xffff, COMMAND_WRITABLE);
        assert!(c.memory_enabled());
        // Out-of-range writes are ignored.
        assert!(c.write(1, 3, &[1, 2]).is_empty());
        assert!(c.write(80, 0, &[1]).is_empty());
    }
}
