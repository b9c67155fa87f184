//! The ACPI tables of a Palisade VM, built with the `acpi_tables` crate.
//!
//! The machine is *hardware-reduced* ACPI: there is no SCI, no PM1 event/control blocks and no
//! GPE blocks. Power-off and reset go through the sleep-control register at I/O port 0x600
//! (see [`devices::legacy`]); run-time events (PCI hot-plug) reach the guest through a Generic
//! Event Device (GED) whose interrupt makes the guest run the DSDT's `\_SB.GED._EVT` method.
//!
//! # Table placement
//!
//! [`write`] places the tables from [`ACPI_START`] (0xE0000), each on a 16-byte boundary, in
//! this order: RSDP (so a guest scanning the BIOS area for `"RSD PTR "` finds it), XSDT, FADT,
//! DSDT, MADT, MCFG. All of them end below [`MPTABLE_START`]. The RSDP's address must also be
//! handed to the kernel: `hvm_start_info.rsdp_paddr` for PVH, `boot_params.acpi_rsdp_addr` for
//! the Linux boot protocol (2.14+).
//!
//! # Register contract (implemented by the VMM's devices, used by the DSDT's AML)
//!
//! All registers below are little-endian, 32 bits wide, and the AML only ever accesses them
//! with aligned 32-bit loads and stores (`DWordAcc`). A device should answer any other access
//! (other width, unaligned, unused offset) with zeros on read and ignore it on write, without
//! side effects.
//!
//! ## Generic event device, at [`ACPI_GED_START`] ([`ACPI_GED_SIZE`] bytes), interrupt GSI [`ACPI_GED_IRQ`]
//!
//! | offset | name | access | meaning |
//! | --- | --- | --- | --- |
//! | 0x0 | `GDAT` | read, clears | pending events; bit 0 ([`GED_EVENT_PCI_HOTPLUG`]) = look at the PCI hot-plug controller; bit 1 ([`GED_EVENT_POWER_BUTTON`]) = the power button was pressed (`_EVT` notifies `\_SB.PWRB`, a `PNP0C0C` device, with 0x80). Reading returns the pending bits and clears them all. Writes are ignored. |
//! | 0x4 - 0xF | | | reserved: read 0, writes ignored |
//!
//! To signal an event the VMM first updates the registers of the source (for example the hot-plug
//! controller's `PCIU`/`PCID`), then ORs the event bit into `GDAT`, then raises an edge on the
//! I/O APIC pin [`ACPI_GED_IRQ`] (edge-triggered, active high: e.g. an irqfd write, or
//! `KVM_IRQ_LINE` 1 then 0). The guest's GED driver runs `_EVT`, which reads `GDAT` once and
//! calls `\_SB.PHPR.PSCN` if bit 0 is set. An event raised while `_EVT` runs is seen on the next
//! interrupt, so no event is lost as long as the bits are set before the edge.
//!
//! ## PCI hot-plug controller, at [`PCI_HOTPLUG_START`] ([`PCI_HOTPLUG_SIZE`] bytes), bus 0
//!
//! Bit *n* of a bitmap stands for PCI slot (device number) *n* of bus 0.
//!
//! | offset | name | access | meaning |
//! | --- | --- | --- | --- |
//! | 0x0 | `PCIU` | read, clears | slots where a device was just plugged in: the guest sends the slot a *device check* (Notify 1) and scans it. Reading returns the bitmap and clears it. Writes are ignored. |
//! | 0x4 | `PCID` | read, clears | slots whose device the VMM wants removed: the guest sends the slot an *eject request* (Notify 3), releases the device, then writes `B0EJ`. Reading returns the bitmap and clears it. Writes are ignored. |
//! | 0x8 | `B0EJ` | write | the guest has released the device in slot *value* (0-31, the slot number, not a bitmap) and the VMM may now remove it from the bus. Reads return 0. |
//! | 0xC | | | reserved: read 0, writes ignored |
//!
//! Hot-add: put the device on the bus in slot *n*, set bit *n* of `PCIU`, set bit 0 of `GDAT`,
//! raise the GED interrupt. Hot-remove: set bit *n* of `PCID`, set bit 0 of `GDAT`, raise the GED
//! interrupt, and take the device off the bus when the guest writes *n* to `B0EJ` (the guest may
//! also refuse, in which case nothing is written). Only the slots listed in
//! [`AcpiLayout::hotplug_slots`] have an ACPI object (`\_SB.PCI0.Snn`, `nn` the slot number in
//! two hexadecimal digits) and so can be notified; bits of other slots are ignored by the guest.
//!
//! ## Power control (I/O ports, from [`devices::legacy`])
//!
//! | port | access | meaning |
//! | --- | --- | --- |
//! | 0x600 | write, 8 bits | sleep control: `0x34` (SLP_TYP 5 in bits 2-4, SLP_EN bit 5) is S5, power off; `1` is the FADT reset value: reset |
//! | 0x601 | read/write, 8 bits | sleep status: reads 0 (the guest writes 0x80, WAK_STS, before sleeping; ignored) |

use std::collections::BTreeSet;

use acpi_tables::aml::{self, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use devices::legacy::{ACPI_PM_BASE, ACPI_RESET_VALUE, S5_SLEEP_VALUE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{
    pci_ecam_start, pci_mmio64_start, pci_segment_windows, ACPI_GED_IRQ, ACPI_GED_SIZE,
    ACPI_GED_START, ACPI_START, APIC_START, IOAPIC_START, MPTABLE_START, PCI_ECAM_SIZE,
    PCI_ECAM_START, PCI_HOTPLUG_SIZE, PCI_HOTPLUG_START, PCI_MMIO32_SIZE, PCI_MMIO32_START,
};

/// OEM id written in every table header.
pub const OEM_ID: [u8; 6] = *b"PLSADE";
/// OEM table id written in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"PALISADE";
/// OEM revision written in every table header.
pub const OEM_REVISION: u32 = 1;

// The register contract of the GED and the hot-plug controller is the devices' own
// (`devices::hotplug`); the AML below reads and writes exactly those registers.
pub use devices::hotplug::{
    GED_EVENT_CPU_HOTPLUG, GED_EVENT_MEMORY_HOTPLUG, GED_EVENT_OFFSET, GED_EVENT_PCI_HOTPLUG,
    GED_EVENT_POWER_BUTTON, HOTPLUG_DOWN_OFFSET as PCI_HOTPLUG_DOWN_OFFSET,
    HOTPLUG_EJECT_OFFSET as PCI_HOTPLUG_EJECT_OFFSET, HOTPLUG_UP_OFFSET as PCI_HOTPLUG_UP_OFFSET,
};
/// The PCI slots that can be hot-plugged: device 0 of bus 0 is the host bridge.
pub const HOTPLUG_SLOT_RANGE: std::ops::RangeInclusive<u8> = 1..=31;

/// Port of the sleep-control register (and of the reset register).
pub const SLEEP_CONTROL_PORT: u16 = ACPI_PM_BASE as u16;
/// Port of the sleep-status register.
pub const SLEEP_STATUS_PORT: u16 = SLEEP_CONTROL_PORT + 1;
/// The SLP_TYP value of S5 (soft off) in the `_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;

// What the power-control device expects must be what the tables tell the guest to write.
const _: () = assert!(ACPI_PM_BASE <= 0xfffe);
const _: () = assert!(S5_SLEEP_VALUE == (S5_SLEEP_TYPE << 2) | (1 << 5));
// The 32-bit window and the fixed registers must be expressible in 32-bit descriptors.
const _: () = assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= 1 << 32);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= 1 << 32);
const _: () = assert!(PCI_HOTPLUG_START + PCI_HOTPLUG_SIZE <= 1 << 32);
const _: () = assert!(APIC_START < 1 << 32 && IOAPIC_START < 1 << 32);
// The AML reads three 32-bit registers from each device.
const _: () = assert!(PCI_HOTPLUG_EJECT_OFFSET + 4 <= PCI_HOTPLUG_SIZE);
const _: () = assert!(GED_EVENT_OFFSET + 4 <= ACPI_GED_SIZE);

/// IA-PC boot architecture flags (FADT `IAPC_BOOT_ARCH`): no VGA (bit 2), the OS must not
/// enable PCIe ASPM (bit 4), no CMOS RTC (bit 5). LEGACY_DEVICES (bit 0) and 8042 (bit 1) are
/// clear: the VM's i8042 is a reset port, not a keyboard controller worth probing.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 4) | (1 << 5);
/// MADT revision that defines the "online capable" flag (ACPI 6.3).
const MADT_REVISION: u8 = 5;
/// DSDT revision: 2 and above mean 64-bit AML integers (the 64-bit PCI window needs them).
const DSDT_REVISION: u8 = 2;
/// Length of the standard table header.
const HEADER_LEN: u64 = 36;
/// Alignment of each table in guest memory.
const TABLE_ALIGN: u64 = 16;
/// Tables referenced by the XSDT: FADT, MADT, MCFG.
const XSDT_ENTRIES: u64 = 3;

/// What the ACPI tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiLayout {
    /// vCPUs running at boot (the first ones), at least 1.
    pub boot_vcpus: u8,
    /// vCPUs the guest may ever have, at least `boot_vcpus`.
    pub max_vcpus: u8,
    /// The APIC id of each of them, by index (missing ones: the index).
    pub apic_ids: Vec<u8>,
    /// The I/O APIC's id (as in the MP table, see `mptable::ioapic_id`).
    pub ioapic_id: u8,
    /// Guest RAM at boot, in bytes: places the hot-plug area and the 64-bit PCI window.
    pub ram_size: u64,
    /// Room for hot-plugged memory (`memory.hotplug_size`); with none, there are no memory
    /// devices.
    pub hotplug_size: u64,
    /// Each PCI segment's (32-bit, 64-bit) share of the BAR windows; each segment is a host
    /// bridge with its ECAM region (none listed: one segment).
    pub pci_weights: Vec<(u32, u32)>,
    /// Whether COM1 (0x3F8, IRQ 4) is present.
    pub serial: bool,
    /// PCI slots (device numbers) of bus 0 that may be hot-plugged, each in
    /// [`HOTPLUG_SLOT_RANGE`]; duplicates are ignored.
    pub hotplug_slots: Vec<u8>,
}

impl AcpiLayout {
    /// The number of PCI segments (at least 1).
    pub fn pci_segments(&self) -> u16 {
        self.pci_weights.len().max(1) as u16
    }

    /// Checks what [`build`] cannot express.
    pub fn validate(&self) -> Result<(), AcpiError> {
        if self.boot_vcpus == 0 {
            return Err(AcpiError::NoBootVcpu);
        }
        if self.boot_vcpus > self.max_vcpus {
            return Err(AcpiError::BootAboveMax {
                boot: self.boot_vcpus,
                max: self.max_vcpus,
            });
        }
        if let Some(&slot) = self
            .hotplug_slots
            .iter()
            .find(|s| !HOTPLUG_SLOT_RANGE.contains(s))
        {
            return Err(AcpiError::InvalidSlot(slot));
        }
        Ok(())
    }

    /// The hot-plug slots, sorted, without duplicates or invalid numbers.
    fn slots(&self) -> BTreeSet<u8> {
        self.hotplug_slots
            .iter()
            .copied()
            .filter(|s| HOTPLUG_SLOT_RANGE.contains(s))
            .collect()
    }
}

/// Why the ACPI tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// No vCPU at boot.
    #[error("ACPI tables need at least one boot vCPU")]
    NoBootVcpu,
    /// More boot vCPUs than the maximum.
    #[error("ACPI tables: {boot} boot vCPUs exceed the maximum of {max}; raise max_vcpus")]
    BootAboveMax {
        /// Boot vCPUs asked for.
        boot: u8,
        /// The maximum asked for.
        max: u8,
    },
    /// A hot-plug slot outside 1..=31.
    #[error("PCI slot {0} cannot be hot-plugged: only slots 1 to 31 of bus 0 can (0 is the host bridge)")]
    InvalidSlot(u8),
    /// The tables do not fit in the ACPI area.
    #[error("ACPI tables end at {end:#x}, past the end of their area at {limit:#x}; use fewer vCPUs or PCI segments")]
    TooLarge {
        /// First byte past the tables.
        end: u64,
        /// First byte past the area.
        limit: u64,
    },
    /// Guest memory does not take a table.
    #[error("cannot write the ACPI table {signature} at {addr:#x} into guest memory: {source}")]
    Write {
        /// The table's signature.
        signature: String,
        /// Where it was to go.
        addr: u64,
        /// What guest memory said.
        source: GuestMemoryError,
    },
}

/// One table (or the RSDP) with the address it is built for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTable {
    /// Table signature (`*b"RSDP"` stands for the RSDP, whose own signature is `"RSD PTR "`).
    pub signature: [u8; 4],
    /// Guest physical address.
    pub addr: u64,
    /// The table's bytes, checksum included.
    pub bytes: Vec<u8>,
}

impl AcpiTable {
    /// The signature as text.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.signature).into_owned()
    }
}

/// The tables of a VM in placement order, RSDP first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// RSDP, XSDT, FADT, DSDT, MADT, MCFG, at increasing addresses.
    pub tables: Vec<AcpiTable>,
}

impl AcpiTables {
    /// The RSDP's address (the base the tables were built for).
    pub fn rsdp_addr(&self) -> u64 {
        self.tables.first().map_or(0, |t| t.addr)
    }

    /// First address past the last table.
    pub fn end(&self) -> u64 {
        self.tables
            .iter()
            .map(|t| t.addr + t.bytes.len() as u64)
            .max()
            .unwrap_or(0)
    }

    /// The table with this signature (`b"RSDP"` for the RSDP).
    pub fn get(&self, signature: &[u8; 4]) -> Option<&AcpiTable> {
        self.tables.iter().find(|t| &t.signature == signature)
    }
}

/// AML bytes already serialized, to nest inside other AML objects.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn to_bytes(obj: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    obj.to_aml_bytes(&mut bytes);
    bytes
}

/// `_STA` of a present, enabled, shown and working device.
const STA_PRESENT: u8 = 0xf;

/// The `_STA` helper of a hot-plug controller with a selection register: method
/// `name(index)` stores the index in `select` and reads `status` (both under mutex `lock`),
/// and answers 0xF if bit `present` is set, else 0.
fn presence_method(name: &str, lock: &str, select: &str, status: &str, present: u32) -> Vec<u8> {
    let acquire = aml::Acquire::new(lock.into(), 0xffff);
    let release = aml::Release::new(lock.into());
    let (select, status_register) = (aml::Path::new(select), aml::Path::new(status));
    let value = aml::Local(0);
    let select_arg = aml::Store::new(&select, &aml::Arg(0));
    let read_status = aml::Store::new(&value, &status_register);
    let present_bit = aml::And::new(&aml::ZERO, &value, &present);
    let is_present = aml::NotEqual::new(&present_bit, &aml::ZERO);
    let return_present = aml::Return::new(&STA_PRESENT);
    let if_present = aml::If::new(&is_present, vec![&return_present]);
    let return_absent = aml::Return::new(&aml::ZERO);
    to_bytes(&aml::Method::new(
        name.into(),
        1,
        true,
        vec![
            &acquire,
            &select_arg,
            &read_status,
            &release,
            &if_present,
            &return_absent,
        ],
    ))
}

/// Sets the checksum byte (offset 9 of a table header) so that all bytes sum to zero.
fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

mod cpus;
mod dsdt;
mod memory;
use dsdt::dsdt_aml;

fn dsdt(layout: &AcpiLayout) -> Vec<u8> {
    let mut sdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN as u32,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.append_slice(&dsdt_aml(layout));
    sdt.as_slice().to_vec()
}

fn madt(layout: &AcpiLayout) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for index in 0..layout.max_vcpus.max(layout.boot_vcpus) {
        let status = if index < layout.boot_vcpus {
            EnabledStatus::Enabled
        } else {
            EnabledStatus::DisabledOnlineCapable
        };
        let apic_id = layout
            .apic_ids
            .get(usize::from(index))
            .copied()
            .unwrap_or(index);
        madt.add_structure(ProcessorLocalApic::new(index, apic_id, status));
    }
    madt.add_structure(IoApic::new(layout.ioapic_id, IOAPIC_START as u32, 0));
    let mut bytes = to_bytes(&madt);
    // The crate writes revision 1, whose processors have no "online capable" flag: a guest
    // would read the flag of the hot-pluggable vCPUs as reserved bits.
    bytes[8] = MADT_REVISION;
    fix_checksum(&mut bytes);
    bytes
}

fn mcfg(segments: u16) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for segment in 0..segments.max(1) {
        mcfg.add_ecam(pci_ecam_start(segment), segment, 0, 0);
    }
    to_bytes(&mcfg)
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .preferred_pm_profile(PmProfile::Unspecified);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    to_bytes(&fadt.finalize())
}

/// Builds the tables of `layout` for placement from `base` (the RSDP at `base`, then each
/// table on the next 16-byte boundary). Hot-plug slots outside [`HOTPLUG_SLOT_RANGE`] are
/// left out and `max_vcpus` is raised to `boot_vcpus` if below; [`AcpiLayout::validate`]
/// reports both as errors instead.
pub fn build(layout: &AcpiLayout, base: u64) -> AcpiTables {
    let dsdt = dsdt(layout);
    let madt = madt(layout);
    let mcfg = mcfg(layout.pci_segments());

    let mut next = base;
    let mut place = |len: u64| {
        let addr = next;
        next = (addr + len).next_multiple_of(TABLE_ALIGN);
        addr
    };
    let rsdp_addr = place(Rsdp::len() as u64);
    let xsdt_addr = place(HEADER_LEN + 8 * XSDT_ENTRIES);
    let fadt_addr = place(acpi_tables::fadt::FADT::len() as u64);
    let dsdt_addr = place(dsdt.len() as u64);
    let madt_addr = place(madt.len() as u64);
    let mcfg_addr = place(mcfg.len() as u64);

    let fadt = fadt(dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(addr);
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);

    let table = |signature: &[u8; 4], addr, bytes| AcpiTable {
        signature: *signature,
        addr,
        bytes,
    };
    AcpiTables {
        tables: vec![
            table(b"RSDP", rsdp_addr, to_bytes(&rsdp)),
            table(b"XSDT", xsdt_addr, to_bytes(&xsdt)),
            table(b"FACP", fadt_addr, fadt),
            table(b"DSDT", dsdt_addr, dsdt),
            table(b"APIC", madt_addr, madt),
            table(b"MCFG", mcfg_addr, mcfg),
        ],
    }
}

/// Writes the tables of `layout` into guest memory from [`ACPI_START`] and returns the RSDP's
/// address, to be passed to the kernel (`hvm_start_info.rsdp_paddr`,
/// `boot_params.acpi_rsdp_addr`).
pub fn write(mem: &GuestMemoryMmap, layout: &AcpiLayout) -> Result<u64, AcpiError> {
    let tables = checked(layout)?;
    for t in &tables.tables {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(|source| AcpiError::Write {
                signature: t.name(),
                addr: t.addr,
                source,
            })?;
    }
    Ok(tables.rsdp_addr())
}

/// The tables of `layout`, if they can be built and fit in their area (checked when a VM is
/// created, so that one they cannot describe is refused then rather than at boot).
pub fn checked(layout: &AcpiLayout) -> Result<AcpiTables, AcpiError> {
    layout.validate()?;
    let tables = build(layout, ACPI_START);
    if tables.end() > MPTABLE_START {
        return Err(AcpiError::TooLarge {
            end: tables.end(),
            limit: MPTABLE_START,
        });
    }
    Ok(tables)
}

#[cfg(test)]
mod tests;
