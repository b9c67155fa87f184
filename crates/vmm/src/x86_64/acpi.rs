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
    pci_mmio64_start, ACPI_GED_IRQ, ACPI_GED_SIZE, ACPI_GED_START, ACPI_START, APIC_START,
    IOAPIC_START, MPTABLE_START, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_HOTPLUG_SIZE,
    PCI_HOTPLUG_START, PCI_MMIO32_SIZE, PCI_MMIO32_START, PCI_MMIO64_SIZE,
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
    GED_EVENT_OFFSET, GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON,
    HOTPLUG_DOWN_OFFSET as PCI_HOTPLUG_DOWN_OFFSET,
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
    /// Guest RAM size in bytes: places the 64-bit PCI window.
    pub ram_size: u64,
    /// Whether COM1 (0x3F8, IRQ 4) is present.
    pub serial: bool,
    /// PCI slots (device numbers) of bus 0 that may be hot-plugged, each in
    /// [`HOTPLUG_SLOT_RANGE`]; duplicates are ignored.
    pub hotplug_slots: Vec<u8>,
}

impl AcpiLayout {
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
    #[error("ACPI tables end at {end:#x}, past the end of their area at {limit:#x}; use fewer vCPUs or hot-plug slots")]
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

/// Sets the checksum byte (offset 9 of a table header) so that all bytes sum to zero.
fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

/// The ACPI name of the hot-plug slot `slot`: `S` and two hexadecimal digits, padded.
fn slot_name(slot: u8) -> String {
    format!("S{slot:02X}_")
}

/// `\_SB.PCI0`: the host bridge, with one child per hot-plug slot.
fn pci_host_bridge(layout: &AcpiLayout, slots: &BTreeSet<u8>) -> Vec<u8> {
    let mmio64_start = pci_mmio64_start(layout.ram_size);
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let config_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = aml::AddressSpace::new_io(0u16, 0xcf7u16, None);
    let io_high = aml::AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let mmio32 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
        None,
    );
    let mmio64 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64_start,
        mmio64_start + PCI_MMIO64_SIZE - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![
        &bus,
        &config_ports,
        &io_low,
        &io_high,
        &mmio32,
        &mmio64,
    ]);

    let slot_devices: Vec<RawAml> = slots.iter().map(|&s| RawAml(slot_device(s))).collect();
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let mut children: Vec<&dyn Aml> = Vec::new();
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_SEG".into(), &aml::ZERO),
        aml::Name::new("_BBN".into(), &aml::ZERO),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
    ];
    children.extend(names.iter().map(|n| n as &dyn Aml));
    children.extend(slot_devices.iter().map(|d| d as &dyn Aml));
    to_bytes(&aml::Device::new("PCI0".into(), children))
}

/// `\_SB.PCI0.Snn`: a hot-pluggable slot; ejecting it writes its number to `B0EJ`.
fn slot_device(slot: u8) -> Vec<u8> {
    let adr = u32::from(slot) << 16;
    let sun = u32::from(slot);
    let eject_register = aml::Path::new("\\_SB_.PHPR.B0EJ");
    let store = aml::Store::new(&eject_register, &sun);
    let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&store]);
    to_bytes(&aml::Device::new(
        slot_name(slot).as_str().into(),
        vec![
            &aml::Name::new("_ADR".into(), &adr),
            &aml::Name::new("_SUN".into(), &sun),
            &ej0,
        ],
    ))
}

/// `\_SB.PHPR`: the PCI hot-plug controller's registers and the `PSCN` scan method.
fn hotplug_controller(slots: &BTreeSet<u8>) -> Vec<u8> {
    // One `If` per slot and direction; the registers are read once into Local0 and Local1.
    let up = aml::Local(0);
    let down = aml::Local(1);
    let mut checks = Vec::new();
    for &slot in slots {
        let mask = 1u32 << slot;
        let target = aml::Path::new(&format!("\\_SB_.PCI0.{}", slot_name(slot)));
        for (bitmap, event) in [(&up, 1u8), (&down, 3u8)] {
            let bit = aml::And::new(&aml::ZERO, bitmap, &mask);
            let set = aml::NotEqual::new(&bit, &aml::ZERO);
            let notify = aml::Notify::new(&target, &event);
            checks.push(RawAml(to_bytes(&aml::If::new(&set, vec![&notify]))));
        }
    }
    let (pciu, pcid) = (aml::Path::new("PCIU"), aml::Path::new("PCID"));
    let read_up = aml::Store::new(&up, &pciu);
    let read_down = aml::Store::new(&down, &pcid);
    let mut body: Vec<&dyn Aml> = vec![&read_up, &read_down];
    body.extend(checks.iter().map(|c| c as &dyn Aml));
    let pscn = aml::Method::new("PSCN".into(), 0, true, body);

    let hid = aml::EISAName::new("PNP0A06");
    let registers =
        aml::Memory32Fixed::new(true, PCI_HOTPLUG_START as u32, PCI_HOTPLUG_SIZE as u32);
    let crs = aml::ResourceTemplate::new(vec![&registers]);
    let region = aml::OpRegion::new(
        "PCST".into(),
        aml::OpRegionSpace::SystemMemory,
        &PCI_HOTPLUG_START,
        &PCI_HOTPLUG_SIZE,
    );
    let fields = aml::Field::new(
        "PCST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Named(*b"PCIU", 32),
            aml::FieldEntry::Named(*b"PCID", 32),
            aml::FieldEntry::Named(*b"B0EJ", 32),
        ],
    );
    to_bytes(&aml::Device::new(
        "PHPR".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &"PCI hot-plug controller"),
            &aml::Name::new("_CRS".into(), &crs),
            &region,
            &fields,
            &pscn,
        ],
    ))
}

/// `\_SB.GED_`: the generic event device; its interrupt runs `_EVT`.
fn generic_event_device() -> Vec<u8> {
    let irq = aml::Interrupt::new(true, true, false, false, ACPI_GED_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemMemory,
        &ACPI_GED_START,
        &ACPI_GED_SIZE,
    );
    let fields = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 32)],
    );
    let events = aml::Local(0);
    let gdat = aml::Path::new("GDAT");
    let read = aml::Store::new(&events, &gdat);
    let hotplug_bit = aml::And::new(&aml::ZERO, &events, &GED_EVENT_PCI_HOTPLUG);
    let hotplug_set = aml::Equal::new(&hotplug_bit, &GED_EVENT_PCI_HOTPLUG);
    let scan = aml::MethodCall::new("\\_SB_.PHPR.PSCN".into(), vec![]);
    let on_hotplug = aml::If::new(&hotplug_set, vec![&scan]);
    let button_bit = aml::And::new(&aml::ZERO, &events, &GED_EVENT_POWER_BUTTON);
    let button_set = aml::Equal::new(&button_bit, &GED_EVENT_POWER_BUTTON);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let pressed = aml::Notify::new(&pwrb, &POWER_BUTTON_PRESSED);
    let on_button = aml::If::new(&button_set, vec![&pressed]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &on_hotplug, &on_button]);
    to_bytes(&aml::Device::new(
        "GED_".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
            &region,
            &fields,
            &evt,
        ],
    ))
}

/// Notify value of a power button press (ACPI 4.8.2.2.1.3).
const POWER_BUTTON_PRESSED: u8 = 0x80;

/// `\_SB.PWRB`: the power button, a control-method device the GED notifies.
fn power_button() -> Vec<u8> {
    to_bytes(&aml::Device::new(
        "PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    ))
}

/// `\_SB.MBRD`: motherboard resources. Linux uses the MCFG's ECAM window only if it is
/// reserved in the memory map or claimed here.
fn motherboard_resources() -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0C02");
    let ecam = aml::Memory32Fixed::new(true, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let crs = aml::ResourceTemplate::new(vec![&ecam]);
    to_bytes(&aml::Device::new(
        "MBRD".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// `\_SB.COM1`: the 16550 UART at 0x3F8, IRQ 4.
fn com1() -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0501");
    let ports = aml::IO::new(0x3f8, 0x3f8, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, 4);
    let crs = aml::ResourceTemplate::new(vec![&ports, &irq]);
    to_bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// The DSDT's AML body (after the header).
fn dsdt_aml(layout: &AcpiLayout) -> Vec<u8> {
    let slots = layout.slots();
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO]);
    let mut aml = to_bytes(&aml::Name::new("_S5_".into(), &s5));

    let mut devices = vec![
        RawAml(pci_host_bridge(layout, &slots)),
        RawAml(motherboard_resources()),
        RawAml(hotplug_controller(&slots)),
        RawAml(generic_event_device()),
        RawAml(power_button()),
    ];
    if layout.serial {
        devices.push(RawAml(com1()));
    }
    let sb = aml::Scope::new(
        "\\_SB_".into(),
        devices.iter().map(|d| d as &dyn Aml).collect(),
    );
    sb.to_aml_bytes(&mut aml);
    aml
}

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

fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
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
    let mcfg = mcfg();

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
    layout.validate()?;
    let tables = build(layout, ACPI_START);
    if tables.end() > MPTABLE_START {
        return Err(AcpiError::TooLarge {
            end: tables.end(),
            limit: MPTABLE_START,
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(boot: u8, max: u8, slots: std::ops::RangeInclusive<u8>) -> AcpiLayout {
        AcpiLayout {
            boot_vcpus: boot,
            max_vcpus: max,
            apic_ids: (0..max).collect(),
            ioapic_id: max,
            ram_size: 512 << 20,
            serial: true,
            hotplug_slots: slots.collect(),
        }
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// The table whose address is `addr`.
    fn at(tables: &AcpiTables, addr: u64) -> &AcpiTable {
        tables
            .tables
            .iter()
            .find(|t| t.addr == addr)
            .unwrap_or_else(|| panic!("no table at {addr:#x}"))
    }

    #[test]
    fn every_table_has_a_valid_checksum_and_length() {
        let tables = build(&layout(2, 4, 1..=31), ACPI_START);
        let rsdp = &tables.get(b"RSDP").unwrap().bytes;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp.len(), 36);
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(rsdp, 20), 36, "RSDP length");
        for t in &tables.tables[1..] {
            assert_eq!(&t.bytes[..4], &t.signature);
            assert_eq!(u32_at(&t.bytes, 4) as usize, t.bytes.len(), "{}", t.name());
            assert_eq!(sum(&t.bytes), 0, "checksum of {}", t.name());
            assert_eq!(&t.bytes[10..16], &OEM_ID);
            assert_eq!(&t.bytes[16..24], &OEM_TABLE_ID);
        }
    }

    #[test]
    fn rsdp_leads_to_every_table() {
        let base = 0x12_3450;
        let tables = build(&layout(1, 1, 1..=3), base);
        assert_eq!(tables.rsdp_addr(), base);
        assert_eq!(tables.tables[0].signature, *b"RSDP");
        // Tables sit one after the other without overlap, on 16-byte boundaries.
        for pair in tables.tables.windows(2) {
            assert!(pair[0].addr + pair[0].bytes.len() as u64 <= pair[1].addr);
            assert_eq!(pair[1].addr % TABLE_ALIGN, 0);
        }

        let rsdp = &tables.tables[0].bytes;
        let xsdt = at(&tables, u64_at(rsdp, 24));
        assert_eq!(xsdt.signature, *b"XSDT");
        let entries: Vec<u64> = xsdt.bytes[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let signatures: Vec<[u8; 4]> = entries.iter().map(|&a| at(&tables, a).signature).collect();
        assert_eq!(signatures, [*b"FACP", *b"APIC", *b"MCFG"]);

        let fadt = at(&tables, entries[0]);
        assert_eq!(u32_at(&fadt.bytes, 40), 0, "32-bit DSDT pointer unused");
        let dsdt = at(&tables, u64_at(&fadt.bytes, 140));
        assert_eq!(dsdt.signature, *b"DSDT");
        assert_eq!(dsdt.bytes[8], DSDT_REVISION);
        // Every table is reachable.
        assert_eq!(tables.tables.len(), 2 + entries.len() + 1);
    }

    #[test]
    fn madt_lists_boot_and_hotpluggable_vcpus_and_the_ioapic() {
        let mut l = layout(2, 4, 1..=1);
        l.ioapic_id = 9;
        let tables = build(&l, ACPI_START);
        let madt = &tables.get(b"APIC").unwrap().bytes;
        assert_eq!(madt[8], MADT_REVISION);
        assert_eq!(u32_at(madt, 36), APIC_START as u32);
        assert_eq!(u32_at(madt, 40), 0, "no PCAT_COMPAT: there is no 8259");

        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            assert!(len >= 2 && off + len <= madt.len());
            let entry = &madt[off..off + len];
            match kind {
                0 => {
                    assert_eq!(len, 8);
                    lapics.push((entry[2], entry[3], u32_at(entry, 4)));
                }
                1 => {
                    assert_eq!(len, 12);
                    ioapics.push((entry[2], u32_at(entry, 4), u32_at(entry, 8)));
                }
                other => panic!("unexpected MADT entry type {other}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        // (uid, APIC id, flags): enabled (bit 0) for boot vCPUs, online capable (bit 1) after.
        assert_eq!(lapics, [(0, 0, 1), (1, 1, 1), (2, 2, 2), (3, 3, 2)]);
        assert_eq!(ioapics, [(9, IOAPIC_START as u32, 0)]);
    }

    #[test]
    fn mcfg_describes_bus_0_ecam() {
        let tables = build(&layout(1, 1, 1..=1), ACPI_START);
        let mcfg = &tables.get(b"MCFG").unwrap().bytes;
        assert_eq!(mcfg.len(), 36 + 8 + 16);
        let entry = &mcfg[44..];
        assert_eq!(u64_at(entry, 0), PCI_ECAM_START);
        assert_eq!(u16_at(entry, 8), 0, "segment");
        assert_eq!((entry[10], entry[11]), (0, 0), "buses");
        // One bus needs 1 MiB of ECAM.
        const { assert!(PCI_ECAM_SIZE >= 1 << 20) };
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let tables = build(&layout(1, 1, 1..=1), ACPI_START);
        let fadt = &tables.get(b"FACP").unwrap().bytes;
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "FADT major revision");
        assert_eq!(fadt[45], 0, "PM profile");
        let flags = u32_at(fadt, 112);
        assert_eq!(
            flags,
            (1 << 20) | (1 << 10),
            "HW_REDUCED_ACPI | RESET_REG_SUP"
        );
        let boot_arch = u16_at(fadt, 109);
        assert_eq!(boot_arch & 0b11, 0, "no LEGACY_DEVICES, no 8042");
        assert_eq!(boot_arch, IAPC_BOOT_ARCH);

        let gas = |off: usize| {
            (
                fadt[off],
                fadt[off + 1],
                fadt[off + 3],
                u64_at(fadt, off + 4),
            )
        };
        // Reset register: system I/O, 8 bits, byte access, port 0x600; reset value 1.
        assert_eq!(gas(116), (1, 8, 1, 0x600));
        assert_eq!(fadt[128], 1);
        // Sleep control and sleep status registers.
        assert_eq!(gas(244), (1, 8, 1, 0x600));
        assert_eq!(gas(256), (1, 8, 1, 0x601));
        // No FACS (hardware-reduced), no PM1/GPE blocks.
        assert_eq!(u32_at(fadt, 36), 0);
        assert_eq!(u64_at(fadt, 132), 0);
        assert!(fadt[148..244].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_largest_machine_fits_below_the_mp_table() {
        let tables = build(&layout(254, 254, 1..=31), ACPI_START);
        assert!(
            tables.end() <= MPTABLE_START,
            "tables end at {:#x}",
            tables.end()
        );
        let madt = &tables.get(b"APIC").unwrap().bytes;
        assert_eq!(madt.len(), 44 + 254 * 8 + 12);
        // Even 255 vCPUs (APIC ids up to 254, never the broadcast id 255) fit.
        let tables = build(&layout(255, 255, 1..=31), ACPI_START);
        assert!(tables.end() <= MPTABLE_START);
    }

    #[test]
    fn write_places_the_rsdp_where_guests_scan_for_it() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let l = layout(2, 4, 1..=31);
        let rsdp = write(&mem, &l).unwrap();
        assert_eq!(rsdp, 0xe_0000);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        for t in &build(&l, ACPI_START).tables {
            let mut back = vec![0u8; t.bytes.len()];
            mem.read_slice(&mut back, GuestAddress(t.addr)).unwrap();
            assert_eq!(back, t.bytes, "{}", t.name());
        }
    }

    #[test]
    fn write_rejects_what_the_tables_cannot_describe() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let err = |l: AcpiLayout| write(&mem, &l).unwrap_err();
        assert!(matches!(err(layout(0, 1, 1..=1)), AcpiError::NoBootVcpu));
        assert!(matches!(
            err(layout(3, 2, 1..=1)),
            AcpiError::BootAboveMax { boot: 3, max: 2 }
        ));
        assert!(matches!(
            err(layout(1, 1, 0..=1)),
            AcpiError::InvalidSlot(0)
        ));
        assert!(matches!(
            err(layout(1, 1, 31..=32)),
            AcpiError::InvalidSlot(32)
        ));
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let e = write(&small, &layout(1, 1, 1..=1)).unwrap_err();
        assert!(matches!(e, AcpiError::Write { addr: 0xe_0000, .. }), "{e}");
    }

    #[test]
    fn dsdt_has_one_device_per_hotplug_slot_and_the_64bit_window() {
        let mut l = layout(1, 1, 1..=1);
        l.hotplug_slots = vec![3, 1, 3, 0x1f];
        l.ram_size = 6 << 30;
        let dsdt = build(&l, ACPI_START).get(b"DSDT").unwrap().bytes.clone();
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        for name in [&b"S01_"[..], b"S03_", b"S1F_"] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!has(b"S02_"));
        // QWordMemory minimum: the 64-bit window starts above RAM, at 7 GiB.
        assert!(has(&(7u64 << 30).to_le_bytes()));
        // No serial: no COM1.
        l.serial = false;
        let dsdt = build(&l, ACPI_START).get(b"DSDT").unwrap().bytes.clone();
        assert!(!dsdt.windows(4).any(|w| w == b"COM1"));
    }

    /// Runs iasl (`acpica-tools`) on `args` in `dir`; fails on a non-zero exit or an error.
    fn iasl(dir: &std::path::Path, args: &[&str]) -> String {
        let out = match std::process::Command::new("iasl")
            .args(args)
            .current_dir(dir)
            .output()
        {
            Ok(out) => out,
            Err(e) => panic!(
                "cannot run iasl ({e}): install the Debian package acpica-tools \
                 (apt-get install -y acpica-tools) to check the ACPI tables"
            ),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            // The compiler's summary says "0 Errors" on success.
            out.status.success() && !text.replace(" 0 Errors", "").contains("Error"),
            "iasl {args:?} failed ({}):\n{text}",
            out.status
        );
        text
    }

    /// Every table goes through iasl: `iasl -d` disassembles each SDT (named by signature,
    /// e.g. DSDT.dat); the RSDP, which this iasl cannot disassemble from a file, is written as
    /// a data-table source, compiled by iasl (which computes its checksums) and must come out
    /// byte for byte as ours. The DSDT's disassembly must name what the guest uses.
    #[test]
    fn iasl_accepts_every_table() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/palisade-acpi-")
            .expect("temporary directory");
        let dir = dir.as_path();
        let tables = build(&layout(2, 4, 1..=31), ACPI_START);

        let rsdp = &tables.get(b"RSDP").unwrap().bytes;
        let source = format!(
            "[0008] Signature : \"RSD PTR \"\n\
             [0001] Checksum : 00\n\
             [0006] Oem ID : \"{}\"\n\
             [0001] Revision : {:02X}\n\
             [0004] RSDT Address : {:08X}\n\
             [0004] Length : {:08X}\n\
             [0008] XSDT Address : {:016X}\n\
             [0001] Extended Checksum : 00\n\
             [0003] Reserved : 000000\n",
            String::from_utf8_lossy(&rsdp[9..15]),
            rsdp[15],
            u32_at(rsdp, 16),
            u32_at(rsdp, 20),
            u64_at(rsdp, 24),
        );
        std::fs::write(dir.join("RSDP.asl"), source).unwrap();
        iasl(dir, &["RSDP.asl"]);
        assert_eq!(&std::fs::read(dir.join("RSDP.aml")).unwrap(), rsdp);

        let mut summary = Vec::new();
        for t in &tables.tables[1..] {
            let file = format!("{}.dat", t.name());
            std::fs::write(dir.join(&file), &t.bytes).unwrap();
            let text = iasl(dir, &["-d", &file]);
            summary.push(format!(
                "{file}: {}",
                text.lines().last().unwrap_or("").trim()
            ));
            let dsl = std::fs::read_to_string(dir.join(format!("{}.dsl", t.name()))).unwrap();
            // The disassembly names the table, e.g. `Signature : "FACP"` or `"DSDT"`.
            assert!(dsl.contains(&format!("\"{}\"", t.name())), "{dsl}");
        }

        // The disassembled DSDT compiles back.
        let text = iasl(dir, &["-p", "DSDT-again", "DSDT.dsl"]);
        summary.push(format!(
            "DSDT.dsl: {}",
            text.lines().last().unwrap_or("").trim()
        ));
        println!("{}", summary.join("\n"));

        let dsl = std::fs::read_to_string(dir.join("DSDT.dsl")).unwrap();
        // iasl prints names without their trailing `_` padding (GED_ as GED, _S5_ as _S5).
        for name in [
            "PCI0", "PHPR", "PSCN", "GED", "_EVT", "S01", "S1F", "_EJ0", "_S5", "B0EJ", "PCIU",
            "PCID", "GDAT", "COM1", "MBRD", "ACPI0013", "PNP0A08", "PNP0A03", "PNP0C02", "PWRB",
            "PNP0C0C",
        ] {
            assert!(dsl.contains(name), "{name} missing from the DSDT:\n{dsl}");
        }
    }
}
