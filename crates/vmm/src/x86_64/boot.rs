//! Loading a kernel and writing what it reads at entry.
//!
//! - An ELF with a PVH note is entered at its 32-bit PVH entry with an `hvm_start_info`
//!   (memory map, command line, the initramfs as module 0).
//! - An ELF without the note, or a bzImage, is entered through the Linux 64-bit boot protocol
//!   with a `boot_params` page (e820 map, command line, initrd).
//!
//! The structures are built by pure functions (unit-tested against the documented layouts)
//! and then written to guest memory.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Error as ElfError, PvhBootCapability};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    self, MemoryKind, CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_RAM_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::regs::EntryMode;

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// "HdrS", the boot protocol header signature.
pub const BOOT_HDR_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` for a loader without an assigned id.
pub const LOADER_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
pub const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// Highest initrd address a kernel accepts when it does not say (`initrd_addr_max`).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
const PAGE_SIZE: u64 = 4096;

/// Errors loading a kernel or writing its boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Neither an ELF nor a bzImage Palisade can load.
    #[error("not a kernel Palisade can boot (ELF vmlinux or bzImage): {0}")]
    KernelFormat(loader::Error),
    /// The kernel did not fit or could not be read.
    #[error("cannot load the kernel: {0}")]
    KernelLoad(loader::Error),
    /// Reading the initramfs failed.
    #[error("cannot read the initramfs: {0}")]
    Initramfs(std::io::Error),
    /// The initramfs does not fit in guest RAM.
    #[error("the initramfs ({size} bytes) does not fit in guest RAM below {limit:#x} above the kernel; give the VM more memory")]
    InitramfsTooLarge {
        /// Size of the initramfs.
        size: u64,
        /// Highest address it could have ended at.
        limit: u64,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing a boot structure failed.
    #[error("cannot write {what} into guest memory: {detail}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Where and how to enter a loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadedKernel {
    /// The entry protocol.
    pub mode: EntryMode,
    /// The entry point.
    pub entry: u64,
    /// First address after the kernel image.
    pub end: u64,
    /// The bzImage's setup header, when the kernel is one.
    pub setup_header: Option<setup_header>,
}

/// Loads an ELF or bzImage kernel from `kernel` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<LoadedKernel, BootError> {
    match Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START))) {
        Ok(result) => {
            let (mode, entry) = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (EntryMode::Pvh, addr.raw_value()),
                _ => (EntryMode::Linux64, result.kernel_load.raw_value()),
            };
            Ok(LoadedKernel {
                mode,
                entry,
                end: result.kernel_end,
                setup_header: None,
            })
        }
        Err(loader::Error::Elf(ElfError::InvalidElfMagicNumber)) => {
            let result = BzImage::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START)))
                .map_err(BootError::KernelFormat)?;
            Ok(LoadedKernel {
                mode: EntryMode::Linux64,
                entry: result.kernel_load.raw_value() + BZIMAGE_ENTRY_64_OFFSET,
                end: result.kernel_end,
                setup_header: result.setup_header,
            })
        }
        Err(e) => Err(BootError::KernelLoad(e)),
    }
}

/// Where the initramfs goes: the highest page-aligned address that keeps it below both the
/// end of low RAM and the kernel's `initrd_addr_max`, and above the kernel.
pub fn initramfs_address(
    size: u64,
    ram_size: u64,
    kernel_end: u64,
    addr_max: u64,
) -> Result<u64, BootError> {
    let limit = layout::low_ram_end(ram_size).min(addr_max.saturating_add(1));
    let too_large = BootError::InitramfsTooLarge { size, limit };
    let start = limit.checked_sub(size).ok_or(too_large)? & !(PAGE_SIZE - 1);
    if start < kernel_end {
        return Err(BootError::InitramfsTooLarge { size, limit });
    }
    Ok(start)
}

/// Reads the whole initramfs into guest memory at `addr`.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    file: &mut File,
    addr: u64,
    size: u64,
) -> Result<(), BootError> {
    file.seek(SeekFrom::Start(0))
        .map_err(BootError::Initramfs)?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize)
        .map_err(|e| BootError::Initramfs(std::io::Error::other(e.to_string())))
}

/// Builds the command line as the kernel will read it.
pub fn build_cmdline(cmdline: &str) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !cmdline.is_empty() {
        c.insert_str(cmdline)
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    Ok(c)
}

/// Writes the command line at [`CMDLINE_START`]; returns its length without the NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, BootError> {
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();
    Ok(len)
}

/// The PVH boot information: the start info, its memory map and module list.
pub fn pvh_start_info(
    ram_size: u64,
    initramfs: Option<(u64, u64)>,
    rsdp: u64,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<hvm_memmap_table_entry> = layout::memory_map(ram_size)
        .iter()
        .map(|r| hvm_memmap_table_entry {
            addr: r.start,
            size: r.len,
            type_: match r.kind {
                MemoryKind::Ram => E820_RAM,
                MemoryKind::Reserved => E820_RESERVED,
            },
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initramfs
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    (info, memmap, modules)
}

/// The Linux `boot_params` page, starting from the bzImage's own header when there is one.
pub fn linux_boot_params(
    ram_size: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    rsdp: u64,
) -> boot_params {
    let mut params = boot_params {
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = BOOT_FLAG;
        params.hdr.header = BOOT_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = layout::memory_map(ram_size);
    for (slot, r) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: r.start,
            size: r.len,
            r#type: match r.kind {
                MemoryKind::Ram => E820_RAM,
                MemoryKind::Reserved => E820_RESERVED,
            },
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

fn write_error(what: &'static str) -> impl Fn(linux_loader::configurator::Error) -> BootError {
    move |e| BootError::Write {
        what,
        detail: e.to_string(),
    }
}

/// Writes the PVH start info, memory map and module list.
pub fn write_pvh(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    initramfs: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), BootError> {
    let (info, memmap, modules) = pvh_start_info(ram_size, initramfs, rsdp);
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(write_error("the PVH start info"))
}

/// Writes the Linux `boot_params` page.
pub fn write_linux(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    let params = BootParams::new(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(write_error("the Linux boot parameters"))
}

/// Reads back a structure (used by tests and diagnostics).
pub fn read_obj<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, addr: u64) -> Option<T> {
    mem.read_obj(GuestAddress(addr)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::ByteValued;

    const MIB: u64 = 1 << 20;

    #[test]
    fn pvh_start_info_has_magic_map_cmdline_and_module() {
        let (info, map, mods) = pvh_start_info(128 * MIB, Some((0x700_0000, 4096)), 0xe_0000);
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        assert_eq!(info.memmap_entries as usize, map.len());
        assert_eq!(
            (info.nr_modules, info.modlist_paddr),
            (1, PVH_MODLIST_START)
        );
        assert_eq!((mods[0].paddr, mods[0].size), (0x700_0000, 4096));
        let ram: u64 = map
            .iter()
            .filter(|e| e.type_ == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 128 * MIB - (HIGH_RAM_START - layout::EBDA_START));
        // Layout of the structure as the PVH ABI documents it (56 bytes, memmap at 0x28).
        assert_eq!(std::mem::size_of::<hvm_start_info>(), 56);
        let bytes = info.as_slice();
        assert_eq!(
            u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()),
            PVH_MEMMAP_START
        );
    }

    #[test]
    fn pvh_without_initramfs_lists_no_module() {
        let (info, _, mods) = pvh_start_info(64 * MIB, None, 0);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert!(mods.is_empty());
    }

    #[test]
    fn boot_params_fields_sit_at_their_documented_offsets() {
        let p = linux_boot_params(256 * MIB, None, 11, Some((0x800_0000, 0x2000)), 0xe_0000);
        let bytes = p.as_slice();
        let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        assert_eq!(bytes.len(), 4096);
        assert_eq!(u64_at(0x70), 0xe_0000); // acpi_rsdp_addr
        assert_eq!(u16_at(0x1fe), BOOT_FLAG);
        assert_eq!(u32_at(0x202), BOOT_HDR_MAGIC);
        assert_eq!(bytes[0x210], LOADER_UNDEFINED);
        assert_eq!(u32_at(0x218), 0x800_0000); // ramdisk_image
        assert_eq!(u32_at(0x21c), 0x2000); // ramdisk_size
        assert_eq!(u32_at(0x228), CMDLINE_START as u32); // cmd_line_ptr
        assert_eq!(u32_at(0x238), 11); // cmdline_size
        assert_eq!(bytes[0x1e8], 3); // e820_entries
                                     // e820 table at 0x2d0, 20 bytes an entry.
        assert_eq!(
            (u64_at(0x2d0), u64_at(0x2d8), u32_at(0x2e0)),
            (0, layout::EBDA_START, E820_RAM)
        );
        assert_eq!(u32_at(0x2d0 + 20 + 16), E820_RESERVED);
        assert_eq!(u64_at(0x2d0 + 40), HIGH_RAM_START);
        assert_eq!(u64_at(0x2d0 + 48), 256 * MIB - HIGH_RAM_START);
    }

    #[test]
    fn boot_params_keep_a_bzimage_header() {
        let mut h = setup_header {
            header: BOOT_HDR_MAGIC,
            version: 0x20f,
            setup_sects: 3,
            initrd_addr_max: 0x3fff_ffff,
            ..Default::default()
        };
        h.loadflags = 1;
        let p = linux_boot_params(64 * MIB, Some(h), 0, None, 0);
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.setup_sects }, 3);
        assert_eq!({ p.hdr.type_of_loader }, LOADER_UNDEFINED);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn initramfs_goes_high_but_below_limits_and_above_the_kernel() {
        let a = initramfs_address(0x1800, 64 * MIB, 0x20_0000, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(a, 64 * MIB - 0x2000);
        assert_eq!(a % PAGE_SIZE, 0);
        // The kernel's own limit wins over RAM size.
        let a = initramfs_address(0x1000, 4 << 30, 0x20_0000, 0x3fff_ffff).unwrap();
        assert_eq!(a, 0x4000_0000 - 0x1000);
        // Too large to fit above the kernel.
        assert!(initramfs_address(63 * MIB, 64 * MIB, 2 * MIB, DEFAULT_INITRD_ADDR_MAX).is_err());
        assert!(initramfs_address(u64::MAX, 64 * MIB, 0, DEFAULT_INITRD_ADDR_MAX).is_err());
    }

    #[test]
    fn cmdline_is_written_nul_terminated_and_length_checked() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let c = build_cmdline("console=ttyS0 quiet").unwrap();
        assert_eq!(write_cmdline(&mem, &c).unwrap(), 19);
        let mut buf = [0u8; 20];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 quiet\0");
        assert!(build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE)).is_err());
    }

    #[test]
    fn structures_land_in_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write_pvh(&mem, 2 << 20, Some((0x18_0000, 16)), 0).unwrap();
        let info: hvm_start_info = read_obj(&mem, PVH_INFO_START).unwrap();
        assert_eq!(info.magic, PVH_MAGIC);
        let first: hvm_memmap_table_entry = read_obj(&mem, PVH_MEMMAP_START).unwrap();
        assert_eq!((first.addr, first.type_), (0, E820_RAM));
        let module: hvm_modlist_entry = read_obj(&mem, PVH_MODLIST_START).unwrap();
        assert_eq!(module.paddr, 0x18_0000);
        write_linux(&mem, &linux_boot_params(2 << 20, None, 0, None, 0)).unwrap();
        let p: boot_params = read_obj(&mem, ZERO_PAGE_START).unwrap();
        assert_eq!({ p.hdr.header }, BOOT_HDR_MAGIC);
    }
}
