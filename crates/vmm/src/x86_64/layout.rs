//! Where things live in guest physical memory and in the port space.
//!
//! ```text
//! 0x0000_0500  GDT                       0x0000_9000  PML4 (identity map for 64-bit entry)
//! 0x0000_0520  IDT (empty)               0x0000_a000  PDPT
//! 0x0000_6000  PVH hvm_start_info        0x0000_b000  PD (2 MiB pages, first 1 GiB)
//! 0x0000_6040  PVH module list           0x0002_0000  kernel command line
//! 0x0000_6100  PVH memory map            0x0009_fc00  EBDA .. 1 MiB: reserved (BIOS area)
//! 0x0000_7000  Linux boot_params         0x000f_0000  MP tables
//! 0x0000_8ff0  boot stack top            0x0010_0000  kernel (high memory)
//! RAM up to 3 GiB, then a 1 GiB hole for MMIO (IOAPIC, LAPIC, later PCI), then the rest of RAM.
//! ```

/// Global descriptor table used at entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty) used at entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line Palisade passes (including the terminating NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area: RAM below it is usable by the guest.
pub const EBDA_START: u64 = 0x9_fc00;
/// The MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = 0xf_0000;
/// Start of high memory, where kernels are loaded.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// First address of the 32-bit MMIO hole.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO hole.
pub const MEM_32BIT_GAP_SIZE: u64 = 0x4000_0000;
/// RAM resumes here when the guest has more than fits below the hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// Where the 32-bit PCI BAR window starts (the bottom of the MMIO hole).
pub const PCI_MMIO32_START: u64 = MEM_32BIT_GAP_START;
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration access (ECAM) window, bus 0 only.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window: 1 MiB covers the 32 devices x 8 functions of bus 0.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// The ACPI generic event device's event register (hot-plug notifications).
pub const ACPI_GED_START: u64 = 0xfe00_0000;
/// Size of the generic event device's registers.
pub const ACPI_GED_SIZE: u64 = 0x10;
/// The PCI hot-plug controller's registers (slots up, slots down, eject).
pub const PCI_HOTPLUG_START: u64 = 0xfe00_1000;
/// Size of the PCI hot-plug controller's registers.
pub const PCI_HOTPLUG_SIZE: u64 = 0x10;
/// The vCPU hot-plug controller's registers (selection, status).
pub const CPU_HOTPLUG_START: u64 = 0xfe00_2000;
/// Size of the vCPU hot-plug controller's registers.
pub const CPU_HOTPLUG_SIZE: u64 = devices::cpu_hotplug::CPU_HOTPLUG_SIZE;
/// The memory hot-plug controller's registers (selection, status, base, length).
pub const MEMORY_HOTPLUG_START: u64 = 0xfe00_3000;
/// Size of the memory hot-plug controller's registers.
pub const MEMORY_HOTPLUG_SIZE: u64 = devices::memory_hotplug::MEMORY_HOTPLUG_SIZE;
/// The I/O APIC pin of the generic event device's interrupt (edge, active high).
pub const ACPI_GED_IRQ: u32 = 5;
/// Where ACPI tables live: the RSDP at the start, where a guest scanning for it looks.
pub const ACPI_START: u64 = 0xe_0000;
/// Size of the ACPI table area (up to the MP tables).
pub const ACPI_SIZE: u64 = MPTABLE_START - ACPI_START;
/// Alignment and minimum start of the 64-bit PCI BAR window, above RAM.
pub const PCI_MMIO64_ALIGN: u64 = 1 << 30;
/// Size of the 64-bit PCI BAR window.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// The I/O APIC's registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the task state segment (inside the MMIO hole).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// One page KVM needs for the identity map (just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

// The PCI windows, ECAM and device registers must not overlap each other or the APICs.
const _: () = assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= ACPI_GED_START);
const _: () = assert!(ACPI_GED_START + ACPI_GED_SIZE <= PCI_HOTPLUG_START);
const _: () = assert!(PCI_HOTPLUG_START + PCI_HOTPLUG_SIZE <= IOAPIC_START);
// The interrupt controllers and KVM's private pages must sit inside the MMIO hole.
const _: () = assert!(IOAPIC_START >= MEM_32BIT_GAP_START && APIC_START < RAM_64BIT_START);
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS >= MEM_32BIT_GAP_START);
const _: () = assert!(KVM_TSS_ADDRESS + 3 * 4096 <= RAM_64BIT_START);

/// What a range of guest physical memory is, as the guest's memory map reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram,
    /// Present but reserved (BIOS area).
    Reserved,
}

/// A range of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it is.
    pub kind: MemoryKind,
}

/// The RAM regions backing `ram_size` bytes of guest memory: below the 32-bit hole, and the
/// rest above 4 GiB.
pub fn ram_regions(ram_size: u64) -> Vec<(u64, u64)> {
    if ram_size <= MEM_32BIT_GAP_START {
        vec![(0, ram_size)]
    } else {
        vec![
            (0, MEM_32BIT_GAP_START),
            (RAM_64BIT_START, ram_size - MEM_32BIT_GAP_START),
        ]
    }
}

/// The memory map the guest is told about (e820 for Linux boot, the PVH memory map): low RAM,
/// the reserved BIOS area, and the RAM regions above 1 MiB.
pub fn memory_map(ram_size: u64) -> Vec<MemoryRange> {
    let mut map = vec![
        MemoryRange {
            start: 0,
            len: EBDA_START,
            kind: MemoryKind::Ram,
        },
        MemoryRange {
            start: EBDA_START,
            len: HIGH_RAM_START - EBDA_START,
            kind: MemoryKind::Reserved,
        },
    ];
    for (start, len) in ram_regions(ram_size) {
        let start_high = start.max(HIGH_RAM_START);
        let end = start + len;
        if end > start_high {
            map.push(MemoryRange {
                start: start_high,
                len: end - start_high,
                kind: MemoryKind::Ram,
            });
        }
    }
    map
}

/// Granule of memory hot-plug: Linux adds memory in blocks of this size (a memory section on
/// x86_64), so hot-plugged regions start and end on it.
pub const MEMORY_HOTPLUG_ALIGN: u64 = 128 << 20;

fn ram_end(ram_size: u64) -> u64 {
    ram_regions(ram_size)
        .last()
        .map_or(0, |(start, len)| start + len)
}

/// Where hot-plugged memory begins for a guest booted with `ram_size` bytes of RAM: the
/// first block boundary above both 4 GiB and the end of RAM. It runs for
/// `memory.hotplug_size` bytes.
pub fn hotplug_memory_start(ram_size: u64) -> u64 {
    ram_end(ram_size)
        .max(RAM_64BIT_START)
        .next_multiple_of(MEMORY_HOTPLUG_ALIGN)
}

/// The 64-bit PCI BAR window for a guest with `ram_size` bytes of RAM and room for
/// `hotplug_size` more: the first aligned address above 4 GiB, the end of RAM and the end of
/// the hot-plug area.
pub fn pci_mmio64_start(ram_size: u64, hotplug_size: u64) -> u64 {
    let end = match hotplug_size {
        0 => ram_end(ram_size),
        n => hotplug_memory_start(ram_size) + n,
    };
    end.max(RAM_64BIT_START).next_multiple_of(PCI_MMIO64_ALIGN)
}

/// Most PCI segments Palisade builds (each one bus, with a 1 MiB ECAM region).
pub const MAX_PCI_SEGMENTS: u16 = config::MAX_PCI_SEGMENTS;

/// Where segment `segment`'s ECAM region starts: segment 0's at [`PCI_ECAM_START`], the
/// others' one after the other.
pub fn pci_ecam_start(segment: u16) -> u64 {
    PCI_ECAM_START + u64::from(segment) * PCI_ECAM_SIZE
}

/// The BAR windows of one PCI segment: (start, size) below and above 4 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// The 32-bit window.
    pub mmio32: (u64, u64),
    /// The 64-bit window.
    pub mmio64: (u64, u64),
}

/// The windows of the PCI segments whose (32-bit, 64-bit) weights are `weights`: each window
/// cut in proportion to them (whole MiB below 4 GiB, whole GiB above), in segment order.
pub fn pci_segment_windows(weights: &[(u32, u32)], mmio64_start: u64) -> Vec<PciWindows> {
    let one = [(1, 1)];
    let weights = if weights.is_empty() {
        &one[..]
    } else {
        weights
    };
    let total32: u64 = weights.iter().map(|w| u64::from(w.0.max(1))).sum();
    let total64: u64 = weights.iter().map(|w| u64::from(w.1.max(1))).sum();
    let (mut at32, mut at64) = (PCI_MMIO32_START, mmio64_start);
    weights
        .iter()
        .map(|&(w32, w64)| {
            let size32 = (PCI_MMIO32_SIZE * u64::from(w32.max(1)) / total32) & !((1 << 20) - 1);
            let size64 = (PCI_MMIO64_SIZE * u64::from(w64.max(1)) / total64) & !((1 << 30) - 1);
            let windows = PciWindows {
                mmio32: (at32, size32),
                mmio64: (at64, size64),
            };
            at32 += size32;
            at64 += size64;
            windows
        })
        .collect()
}

/// The highest guest address (exclusive) of RAM below the 32-bit hole.
pub fn low_ram_end(ram_size: u64) -> u64 {
    ram_size.min(MEM_32BIT_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region_and_a_bios_hole_in_its_map() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        let map = memory_map(128 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!((map[0].start, map[0].len), (0, EBDA_START));
        assert_eq!(map[1].kind, MemoryKind::Reserved);
        assert_eq!(map[1].start + map[1].len, HIGH_RAM_START);
        assert_eq!(
            (map[2].start, map[2].len),
            (HIGH_RAM_START, (128 << 20) - HIGH_RAM_START)
        );
    }

    #[test]
    fn the_64bit_pci_window_sits_above_ram() {
        assert_eq!(pci_mmio64_start(128 << 20, 0), RAM_64BIT_START);
        assert_eq!(pci_mmio64_start(4 << 30, 0), 5 << 30);
        assert_eq!(pci_mmio64_start((3 << 30) + (1 << 20), 0), 5 << 30);
    }

    #[test]
    fn pci_segments_share_the_windows_and_have_ecam_regions_of_their_own() {
        let one = pci_segment_windows(&[(1, 1)], 1 << 32);
        assert_eq!(one[0].mmio32, (PCI_MMIO32_START, PCI_MMIO32_SIZE));
        assert_eq!(one[0].mmio64, (1 << 32, PCI_MMIO64_SIZE));
        let three = pci_segment_windows(&[(1, 1); 3], 1 << 32);
        assert_eq!(three.len(), 3);
        for pair in three.windows(2) {
            assert_eq!(pair[0].mmio32.0 + pair[0].mmio32.1, pair[1].mmio32.0);
            assert!(pair[0].mmio64.0 + pair[0].mmio64.1 <= pair[1].mmio64.0);
        }
        let last = three[2];
        assert!(last.mmio32.0 + last.mmio32.1 <= PCI_MMIO32_START + PCI_MMIO32_SIZE);
        assert!(last.mmio64.0 + last.mmio64.1 <= (1 << 32) + PCI_MMIO64_SIZE);
        assert_eq!(pci_ecam_start(2), PCI_ECAM_START + 2 * PCI_ECAM_SIZE);
        // Weights share the windows out: 3 to 1 above 4 GiB.
        let weighted = pci_segment_windows(&[(1, 3), (1, 1)], 1 << 32);
        assert_eq!(weighted[0].mmio64.1, 48 << 30);
        assert_eq!(weighted[1].mmio64, ((1 << 32) + (48 << 30), 16 << 30));
        assert_eq!(weighted[0].mmio32.1, weighted[1].mmio32.1);
        // Every segment's ECAM region ends below the devices above it.
        assert!(pci_ecam_start(MAX_PCI_SEGMENTS) <= ACPI_GED_START);
    }

    #[test]
    fn hot_plugged_memory_goes_above_4_gib_and_ram_and_below_the_pci_window() {
        assert_eq!(hotplug_memory_start(64 << 20), RAM_64BIT_START);
        assert_eq!(pci_mmio64_start(64 << 20, 1 << 30), 5 << 30);
        // 4 GiB of RAM + 64 MiB ends at 5 GiB + 64 MiB: the next 128 MiB boundary.
        let ram = (4 << 30) + (64 << 20);
        assert_eq!(hotplug_memory_start(ram), (5 << 30) + (128 << 20));
        assert_eq!(hotplug_memory_start(ram) % MEMORY_HOTPLUG_ALIGN, 0);
        assert_eq!(pci_mmio64_start(ram, 512 << 20), 6 << 30);
        assert_eq!(pci_mmio64_start(ram, 1 << 30), 7 << 30);
    }

    #[test]
    fn large_guest_splits_around_the_mmio_hole() {
        let size = 4u64 << 30;
        let regions = ram_regions(size);
        assert_eq!(
            regions,
            vec![(0, MEM_32BIT_GAP_START), (RAM_64BIT_START, 1 << 30)]
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, size);
        let map = memory_map(size);
        assert_eq!(map.last().unwrap().start, RAM_64BIT_START);
        // Nothing in the map reaches into the hole.
        for r in &map {
            assert!(r.start + r.len <= MEM_32BIT_GAP_START || r.start >= RAM_64BIT_START);
        }
    }
}
