//! The DSDT's AML: the PCI host bridge and its hot-plug slots, the hot-plug controllers,
//! the generic event device, the power button and COM1.

use super::*;

/// The ACPI name of the hot-plug slot `slot`: `S` and two hexadecimal digits, padded.
fn slot_name(slot: u8) -> String {
    format!("S{slot:02X}_")
}

/// The ACPI name of segment `segment`'s host bridge: `PCI0`, then `PC01`, `PC02`...
fn bridge_name(segment: u16) -> String {
    if segment == 0 {
        "PCI0".into()
    } else {
        format!("PC{segment:02X}")
    }
}

/// `\_SB.PCI0` (and `\_SB.PCnn` for the other segments): a host bridge, with one child per
/// hot-plug slot. Segment 0 also decodes the I/O ports; each segment has its part of the BAR
/// windows.
fn pci_host_bridge(layout: &AcpiLayout, segment: u16, slots: &BTreeSet<u8>) -> Vec<u8> {
    let mmio64_start = pci_mmio64_start(layout.ram_size, layout.hotplug_size);
    let windows = pci_segment_windows(&layout.pci_weights, mmio64_start)
        .get(usize::from(segment))
        .copied()
        .unwrap_or(pci_segment_windows(&[], mmio64_start)[0]);
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let config_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = aml::AddressSpace::new_io(0u16, 0xcf7u16, None);
    let io_high = aml::AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let (start32, size32) = windows.mmio32;
    let mmio32 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        start32 as u32,
        (start32 + size32 - 1) as u32,
        None,
    );
    let (start64, size64) = windows.mmio64;
    let mmio64 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        start64,
        start64 + size64 - 1,
        None,
    );
    let mut resources: Vec<&dyn Aml> = vec![&bus];
    if segment == 0 {
        resources.extend([&config_ports as &dyn Aml, &io_low, &io_high]);
    }
    resources.extend([&mmio32 as &dyn Aml, &mmio64]);
    let crs = aml::ResourceTemplate::new(resources);

    let slot_devices: Vec<RawAml> = slots
        .iter()
        .map(|&s| RawAml(slot_device(segment, s)))
        .collect();
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let seg = u32::from(segment);
    let mut children: Vec<&dyn Aml> = Vec::new();
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_SEG".into(), &seg),
        aml::Name::new("_BBN".into(), &aml::ZERO),
        aml::Name::new("_UID".into(), &seg),
        aml::Name::new("_CRS".into(), &crs),
    ];
    children.extend(names.iter().map(|n| n as &dyn Aml));
    children.extend(slot_devices.iter().map(|d| d as &dyn Aml));
    to_bytes(&aml::Device::new(
        bridge_name(segment).as_str().into(),
        children,
    ))
}

/// `Snn` under a host bridge: a hot-pluggable slot; ejecting it tells the controller the
/// segment and the slot.
fn slot_device(segment: u16, slot: u8) -> Vec<u8> {
    let adr = u32::from(slot) << 16;
    let sun = u32::from(slot);
    let seg = u32::from(segment);
    let eject = aml::MethodCall::new("\\_SB_.PHPR.PEJ0".into(), vec![&seg, &sun]);
    let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&eject]);
    to_bytes(&aml::Device::new(
        slot_name(slot).as_str().into(),
        vec![
            &aml::Name::new("_ADR".into(), &adr),
            &aml::Name::new("_SUN".into(), &sun),
            &ej0,
        ],
    ))
}

/// The part of `PSCN` for `segment` (the mutex held): select it, read its bitmaps once,
/// notify each slot.
fn scan_segment(segment: u16, slots: &BTreeSet<u8>) -> Vec<u8> {
    let (up, down) = (aml::Local(0), aml::Local(1));
    let seg = u32::from(segment);
    let pseg = aml::Path::new("PSEG");
    let select = aml::Store::new(&pseg, &seg);
    let (pciu, pcid) = (aml::Path::new("PCIU"), aml::Path::new("PCID"));
    let read_up = aml::Store::new(&up, &pciu);
    let read_down = aml::Store::new(&down, &pcid);
    let mut out = to_bytes(&select);
    out.extend(to_bytes(&read_up));
    out.extend(to_bytes(&read_down));
    for &slot in slots {
        let mask = 1u32 << slot;
        let target = aml::Path::new(&format!(
            "\\_SB_.{}.{}",
            bridge_name(segment),
            slot_name(slot)
        ));
        for (bitmap, event) in [(&up, 1u8), (&down, 3u8)] {
            let bit = aml::And::new(&aml::ZERO, bitmap, &mask);
            let set = aml::NotEqual::new(&bit, &aml::ZERO);
            let notify = aml::Notify::new(&target, &event);
            out.extend(to_bytes(&aml::If::new(&set, vec![&notify])));
        }
    }
    out
}

/// `\_SB.PHPR`: the PCI hot-plug controller's registers, `PSCN` (scan every segment) and
/// `PEJ0` (eject a slot of a segment). A mutex keeps the segment selection and the register
/// it picks together.
fn hotplug_controller(segments: u16, slots: &BTreeSet<u8>) -> Vec<u8> {
    let lock = aml::Mutex::new("PLCK".into(), 0);
    let acquire = aml::Acquire::new("PLCK".into(), 0xffff);
    let release = aml::Release::new("PLCK".into());
    let scans: Vec<RawAml> = (0..segments.max(1))
        .map(|s| RawAml(scan_segment(s, slots)))
        .collect();
    let mut body: Vec<&dyn Aml> = vec![&acquire];
    body.extend(scans.iter().map(|c| c as &dyn Aml));
    body.push(&release);
    let pscn = aml::Method::new("PSCN".into(), 0, true, body);
    let (pseg, b0ej) = (aml::Path::new("PSEG"), aml::Path::new("B0EJ"));
    let select_arg = aml::Store::new(&pseg, &aml::Arg(0));
    let eject_arg = aml::Store::new(&b0ej, &aml::Arg(1));
    let pej0 = aml::Method::new(
        "PEJ0".into(),
        2,
        true,
        vec![&acquire, &select_arg, &eject_arg, &release],
    );

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
            aml::FieldEntry::Named(*b"PSEG", 32),
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
            &lock,
            &pscn,
            &pej0,
        ],
    ))
}

/// `\_SB.GED_`: the generic event device; its interrupt runs `_EVT`.
fn generic_event_device(memory_hotplug: bool) -> Vec<u8> {
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
    let cpu_bit = aml::And::new(&aml::ZERO, &events, &GED_EVENT_CPU_HOTPLUG);
    let cpu_set = aml::Equal::new(&cpu_bit, &GED_EVENT_CPU_HOTPLUG);
    let cpu_scan = aml::MethodCall::new("\\_SB_.CPUS.CSCN".into(), vec![]);
    let on_cpu = aml::If::new(&cpu_set, vec![&cpu_scan]);
    let memory_bit = aml::And::new(&aml::ZERO, &events, &GED_EVENT_MEMORY_HOTPLUG);
    let memory_set = aml::Equal::new(&memory_bit, &GED_EVENT_MEMORY_HOTPLUG);
    let memory_scan = aml::MethodCall::new("\\_SB_.MHPC.MSCN".into(), vec![]);
    let on_memory = aml::If::new(&memory_set, vec![&memory_scan]);
    let mut events_handled: Vec<&dyn Aml> = vec![&read, &on_hotplug, &on_button, &on_cpu];
    if memory_hotplug {
        events_handled.push(&on_memory);
    }
    let evt = aml::Method::new("_EVT".into(), 1, true, events_handled);
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
fn motherboard_resources(segments: u16) -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0C02");
    // Every segment's ECAM region, one after the other.
    let ecam = aml::Memory32Fixed::new(
        true,
        PCI_ECAM_START as u32,
        (PCI_ECAM_SIZE * u64::from(segments.max(1))) as u32,
    );
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
pub(super) fn dsdt_aml(layout: &AcpiLayout) -> Vec<u8> {
    let slots = layout.slots();
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO]);
    let mut aml = to_bytes(&aml::Name::new("_S5_".into(), &s5));

    let mut devices: Vec<RawAml> = (0..layout.pci_segments())
        .map(|segment| RawAml(pci_host_bridge(layout, segment, &slots)))
        .collect();
    devices.extend([
        RawAml(motherboard_resources(layout.pci_segments())),
        RawAml(hotplug_controller(layout.pci_segments(), &slots)),
        RawAml(generic_event_device(layout.hotplug_size > 0)),
        RawAml(power_button()),
        RawAml(super::cpus::processor_container(layout)),
    ]);
    if layout.hotplug_size > 0 {
        devices.push(RawAml(super::memory::memory_container()));
    }
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
