//! The Intel MultiProcessor Specification 1.4 tables, through which a guest finds its CPUs,
//! its I/O APIC and how ISA interrupts are wired, before (or without) ACPI.
//!
//! Layout written at [`MPTABLE_START`]: the 16-byte floating pointer, then the configuration
//! table header, one processor entry per vCPU, the ISA bus, the I/O APIC, one I/O interrupt
//! entry per ISA line and the two local interrupt entries (ExtINT on LINT0, NMI on LINT1).

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, IOAPIC_START, MPTABLE_START};

const MPC_SPEC_REV: u8 = 4; // 1.4
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
/// ISA interrupt lines routed to the I/O APIC.
pub const ISA_IRQ_COUNT: u8 = 16;
const ISA_BUS_ID: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct FloatingPointer {
    signature: [u8; 4],
    config_table: u32,
    length_paragraphs: u8,
    spec_rev: u8,
    checksum: u8,
    features: [u8; 5],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct ConfigHeader {
    signature: [u8; 4],
    base_table_length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_address: u32,
    extended_table_length: u16,
    extended_checksum: u8,
    reserved: u8,
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct ProcessorEntry {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    signature: u32,
    features: u32,
    reserved: [u32; 2],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct BusEntry {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct IoApicEntry {
    entry_type: u8,
    apic_id: u8,
    version: u8,
    flags: u8,
    address: u32,
}

/// Both the I/O interrupt and the local interrupt entries have this shape.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct InterruptEntry {
    entry_type: u8,
    interrupt_type: u8,
    flags: u16,
    source_bus: u8,
    source_irq: u8,
    destination_apic: u8,
    destination_pin: u8,
}

// SAFETY: plain packed structs of integers: every byte pattern is a valid value, no padding.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for ConfigHeader {}
// SAFETY: as above.
unsafe impl ByteValued for ProcessorEntry {}
// SAFETY: as above.
unsafe impl ByteValued for BusEntry {}
// SAFETY: as above.
unsafe impl ByteValued for IoApicEntry {}
// SAFETY: as above.
unsafe impl ByteValued for InterruptEntry {}

/// Errors building the MP tables.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than APIC ids below the I/O APIC's.
    #[error("{0} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus(u8),
    /// Guest memory does not cover the table.
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// The I/O APIC's id: the first id after the vCPUs' (`apic_ids`, of every vCPU the guest
/// may have).
pub fn ioapic_id(apic_ids: &[u8]) -> u8 {
    apic_ids.iter().max().map_or(0, |m| m.saturating_add(1))
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The table bytes for the vCPUs with `apic_ids` (the first boots) and the I/O APIC with
/// `ioapic`, to be placed at `base`.
pub fn build(apic_ids: &[u8], ioapic: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    let num_cpus = u8::try_from(apic_ids.len()).unwrap_or(u8::MAX);
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for (index, &id) in apic_ids.iter().enumerate() {
        let flags = CPU_ENABLED | if index == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        push(
            ProcessorEntry {
                entry_type: ENTRY_PROCESSOR,
                apic_id: id,
                apic_version: APIC_VERSION,
                flags,
                signature: CPU_STEPPING,
                features: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        BusEntry {
            entry_type: ENTRY_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: *b"ISA   ",
        }
        .as_slice(),
    );
    push(
        IoApicEntry {
            entry_type: ENTRY_IOAPIC,
            apic_id: ioapic,
            version: IOAPIC_VERSION,
            flags: 1,
            address: IOAPIC_START as u32,
        }
        .as_slice(),
    );
    for irq in 0..ISA_IRQ_COUNT {
        push(
            InterruptEntry {
                entry_type: ENTRY_IO_INTERRUPT,
                interrupt_type: INT_TYPE_INT,
                flags: 0, // Polarity and trigger mode conform to the bus (ISA: edge, high).
                source_bus: ISA_BUS_ID,
                source_irq: irq,
                destination_apic: ioapic,
                destination_pin: irq,
            }
            .as_slice(),
        );
    }
    for (kind, pin) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        push(
            InterruptEntry {
                entry_type: ENTRY_LOCAL_INTERRUPT,
                interrupt_type: kind,
                flags: 0,
                source_bus: ISA_BUS_ID,
                source_irq: 0,
                destination_apic: 0xff, // Every local APIC.
                destination_pin: pin,
            }
            .as_slice(),
        );
    }

    let pointer_len = std::mem::size_of::<FloatingPointer>();
    let header_len = std::mem::size_of::<ConfigHeader>();
    let mut header = ConfigHeader {
        signature: *b"PCMP",
        base_table_length: (header_len + entries.len()) as u16,
        spec_rev: MPC_SPEC_REV,
        oem_id: *b"PALISADE",
        product_id: *b"KVM VM      ",
        entry_count: count,
        lapic_address: APIC_START as u32,
        ..Default::default()
    };
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);
    table[..header_len].copy_from_slice(header.as_slice());

    let mut pointer = FloatingPointer {
        signature: *b"_MP_",
        config_table: (base + pointer_len as u64) as u32,
        length_paragraphs: 1,
        spec_rev: MPC_SPEC_REV,
        ..Default::default()
    };
    pointer.checksum = checksum(pointer.as_slice());

    let mut out = pointer.as_slice().to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP tables for `num_cpus` vCPUs into guest memory.
pub fn setup(mem: &GuestMemoryMmap, apic_ids: &[u8], ioapic: u8) -> Result<(), MptableError> {
    let bytes = build(apic_ids, ioapic, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn ids(n: u8) -> Vec<u8> {
        (0..n).collect()
    }

    #[test]
    fn pointer_and_table_checksums_are_zero() {
        for cpus in [1u8, 2, 4, 64, 254] {
            let bytes = build(&ids(cpus), cpus, MPTABLE_START).unwrap();
            assert_eq!(&bytes[0..4], b"_MP_");
            assert_eq!(sum(&bytes[0..16]), 0, "floating pointer, {cpus} cpus");
            let table = &bytes[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table, {cpus} cpus");
        }
    }

    #[test]
    fn pointer_points_at_the_table_and_entries_are_counted() {
        let cpus = 3u8;
        let bytes = build(&ids(cpus), cpus, MPTABLE_START).unwrap();
        let ptr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, MPTABLE_START + 16);
        let table = &bytes[16..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        // CPUs, bus, I/O APIC, 16 ISA lines, 2 local interrupts.
        assert_eq!(count as usize, cpus as usize + 1 + 1 + 16 + 2);
        let lapic = u32::from_le_bytes(table[36..40].try_into().unwrap()) as u64;
        assert_eq!(lapic, APIC_START);
    }

    #[test]
    fn processors_have_sequential_apic_ids_and_one_boot_cpu() {
        let cpus = 4u8;
        let bytes = build(&ids(cpus), cpus, MPTABLE_START).unwrap();
        let entries = &bytes[16 + 44..];
        for id in 0..cpus as usize {
            let e = &entries[id * 20..id * 20 + 20];
            assert_eq!(e[0], ENTRY_PROCESSOR);
            assert_eq!(e[1] as usize, id);
            assert_eq!(e[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(e[3] & CPU_BOOT_PROCESSOR != 0, id == 0);
        }
        // The I/O APIC follows the bus entry and takes the next id.
        let ioapic = &entries[cpus as usize * 20 + 8..];
        assert_eq!(ioapic[0], ENTRY_IOAPIC);
        assert_eq!(ioapic[1], cpus);
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()) as u64,
            IOAPIC_START
        );
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert!(build(&[], 0, MPTABLE_START).is_err());
        assert!(build(&ids(255), 255, MPTABLE_START).is_err());
    }
}
