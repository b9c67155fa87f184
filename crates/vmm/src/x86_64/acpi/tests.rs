//! Tests of the ACPI tables, checked by hand and by iasl.

use super::*;

fn layout(boot: u8, max: u8, slots: std::ops::RangeInclusive<u8>) -> AcpiLayout {
    AcpiLayout {
        boot_vcpus: boot,
        max_vcpus: max,
        apic_ids: (0..max).collect(),
        ioapic_id: max,
        ram_size: 512 << 20,
        hotplug_size: 0,
        pci_weights: vec![(1, 1)],
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
    // With memory hot-plug and 255 vCPUs, 7 PCI segments fit; 16 are refused by `checked`
    // (a VM is refused so at creation), with the way out in the message.
    let mut all = layout(255, 255, 1..=31);
    all.hotplug_size = 1 << 30;
    for (n, fits) in [(7u16, true), (16, false)] {
        all.pci_weights = vec![(1, 1); usize::from(n)];
        match checked(&all) {
            Ok(t) => assert!(fits && t.end() <= MPTABLE_START, "{n} segments"),
            Err(e) => {
                assert!(!fits, "{n} segments: {e}");
                assert!(
                    e.to_string().contains("use fewer vCPUs or PCI segments"),
                    "{e}"
                );
            }
        }
    }
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
    let mut with_memory_hotplug = layout(2, 4, 1..=31);
    with_memory_hotplug.hotplug_size = 1 << 30;
    with_memory_hotplug.pci_weights = vec![(1, 1), (1, 3)];
    let tables = build(&with_memory_hotplug, ACPI_START);

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
        "PCI0",
        "PHPR",
        "PSCN",
        "GED",
        "_EVT",
        "S01",
        "S1F",
        "_EJ0",
        "_S5",
        "B0EJ",
        "PCIU",
        "PCID",
        "GDAT",
        "COM1",
        "MBRD",
        "ACPI0013",
        "PNP0A08",
        "PNP0A03",
        "PNP0C02",
        "PWRB",
        "PNP0C0C",
        "CPUS",
        "ACPI0010",
        "ACPI0007",
        "CSCN",
        "CSTA",
        "CEJ0",
        "C000",
        "C003",
        "\\_SB.CPUS.CSCN ()",
        "MHPC",
        "PNP0C80",
        "M000",
        "M01F",
        "MSCN",
        "MCRS",
        "MSTA",
        "\\_SB.MHPC.MSCN ()",
        "Device (PC01)",
        "PSEG",
        "PLCK",
        "PEJ0 (One, 0x1F)",
        "Notify (\\_SB.PC01.S1F, 0x03)", // iasl names the fields the offsets fall on: the base, end and length.
        "CreateQWordField (MR64, \\_SB.MHPC.MCRS._Y00._MIN, MINL)",
        "CreateQWordField (MR64, \\_SB.MHPC.MCRS._Y00._MAX, MAXL)",
        "CreateQWordField (MR64, \\_SB.MHPC.MCRS._Y00._LEN, LENL)",
    ] {
        assert!(dsl.contains(name), "{name} missing from the DSDT:\n{dsl}");
    }
    // One processor per possible vCPU, each with its MADT entry; all but vCPU 0 ejectable.
    assert_eq!(
        dsl.matches("Device (M0").count(),
        32,
        "one device per memory slot"
    );
    let processors = dsl.matches("Device (C0").count();
    assert_eq!(processors, 4, "{dsl}");
    let cpu0 = &dsl[dsl.find("Device (C000)").unwrap()..dsl.find("Device (C001)").unwrap()];
    assert!(!cpu0.contains("_EJ0") && cpu0.contains("_MAT"), "{cpu0}");
    let cpu3 = &dsl[dsl.find("Device (C003)").unwrap()..];
    assert!(
        cpu3.contains("_EJ0") && cpu3.contains("0x00, 0x08, 0x03, 0x03, 0x01"),
        "{cpu3}"
    );
}
