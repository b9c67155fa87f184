//! Register state of a vCPU at the kernel's entry point.
//!
//! Two entries are supported:
//! - **PVH**: 32-bit protected mode, paging off, flat 4 GiB segments, `ebx` pointing at the
//!   `hvm_start_info` (the Xen PVH boot ABI, which Linux implements).
//! - **Linux 64-bit boot protocol**: long mode with the first 1 GiB identity-mapped, flat
//!   segments, `rsi` pointing at `boot_params`.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

/// The protocol the kernel is entered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit PVH entry.
    Pvh,
    /// Linux 64-bit entry (ELF without a PVH note, or bzImage).
    Linux64,
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// GDT slots; a selector is the slot times 8.
const GDT_CODE64: usize = 1;
const GDT_CODE32: usize = 2;
const GDT_DATA: usize = 3;
const GDT_TSS: usize = 4;

/// Encodes one GDT descriptor from its access/flags word, base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT: null, 64-bit code, 32-bit code, data, TSS.
pub const BOOT_GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // Code, long mode, 4 KiB granularity.
    gdt_entry(0xc09b, 0, 0xfffff), // Code, 32-bit.
    gdt_entry(0xc093, 0, 0xfffff), // Data, read/write.
    gdt_entry(0x008b, 0, 0x67),    // 32-bit TSS, busy.
];

/// The KVM segment register value described by GDT slot `index`.
pub fn segment(index: usize) -> kvm_segment {
    let e = BOOT_GDT[index];
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = (((e >> 32) & 0x000f_0000) | (e & 0xffff)) as u32;
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base: ((e >> 32) & 0xff00_0000) | ((e >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: if present == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and (for the 64-bit entry) identity page tables.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD maps the first 1 GiB with 2 MiB pages.
    mem.write_obj(PDPTE_START | 0x3, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | 0x3, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))?;
    }
    Ok(())
}

/// Special registers for `mode`, starting from the vCPU's current ones.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let code = match mode {
        EntryMode::Pvh => segment(GDT_CODE32),
        EntryMode::Linux64 => segment(GDT_CODE64),
    };
    let data = segment(GDT_DATA);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT_TSS);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// General registers at the entry point `entry`.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // Bit 1 is reserved and always set.
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// FPU state after reset: x87 control word and MXCSR at their power-on values.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRITE_BACK: u64 = 6;

/// Model-specific registers a kernel expects to find initialised.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        // Memory is write-back unless a range says otherwise.
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK),
    ]
}

/// The boot MSRs as the KVM ioctl wants them.
pub fn boot_msrs_fam() -> Result<Msrs, vmm_sys_util::fam::Error> {
    Msrs::from_entries(&boot_msrs())
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn apic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_apic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires the local APIC's LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a BIOS would.
pub fn set_lint(lapic: &mut kvm_bindings::kvm_lapic_state) {
    let lint0 = apic_reg(&lapic.regs, APIC_LVT_LINT0);
    set_apic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = apic_reg(&lapic.regs, APIC_LVT_LINT1);
    set_apic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment(GDT_CODE64);
        assert_eq!((code.base, code.limit, code.selector), (0, 0xffff_ffff, 8));
        assert_eq!((code.l, code.db, code.type_, code.present), (1, 0, 0xb, 1));
        let code32 = segment(GDT_CODE32);
        assert_eq!((code32.l, code32.db, code32.g), (0, 1, 1));
        let data = segment(GDT_DATA);
        assert_eq!((data.type_, data.s, data.limit), (3, 1, 0xffff_ffff));
        let tss = segment(GDT_TSS);
        assert_eq!((tss.type_, tss.s, tss.limit, tss.g), (0xb, 0, 0x67, 0));
        assert_eq!(segment(0).unusable, 1);
    }

    #[test]
    fn gdt_entry_places_fields_as_the_manual_says() {
        let e = gdt_entry(0xc093, 0x1234_5678, 0xabcde);
        assert_eq!(e & 0xffff, 0xbcde); // Limit 15:0.
        assert_eq!((e >> 16) & 0xff_ffff, 0x34_5678); // Base 23:0.
        assert_eq!((e >> 40) & 0xff, 0x93); // Access byte.
        assert_eq!((e >> 48) & 0xf, 0xa); // Limit 19:16.
        assert_eq!((e >> 52) & 0xf, 0xc); // Flags.
        assert_eq!((e >> 56) & 0xff, 0x12); // Base 31:24.
    }

    #[test]
    fn entry_modes_set_the_right_control_registers() {
        let pvh = boot_sregs(kvm_sregs::default(), EntryMode::Pvh);
        assert_eq!(pvh.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!((pvh.efer, pvh.cs.selector, pvh.cs.db), (0, 16, 1));
        let long = boot_sregs(kvm_sregs::default(), EntryMode::Linux64);
        assert_eq!(long.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!((long.cr3, long.cr4 & CR4_PAE), (PML4_START, CR4_PAE));
        assert_eq!(long.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((long.cs.l, long.cs.selector), (1, 8));
        let r = boot_regs(EntryMode::Pvh, 0x10_0000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0000, PVH_INFO_START, 2));
        let r = boot_regs(EntryMode::Linux64, 0x20_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp),
            (0x20_0000, ZERO_PAGE_START, BOOT_STACK_POINTER)
        );
    }

    #[test]
    fn page_tables_identity_map_the_first_gigabyte() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpt & !0xfff, PDE_START);
        for i in [0u64, 1, 511] {
            let pde: u64 = mem.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "2 MiB page {i}");
        }
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_bindings::kvm_lapic_state::default();
        set_apic_reg(&mut lapic.regs, APIC_LVT_LINT0, 0x0001_0000);
        set_lint(&mut lapic);
        assert_eq!(apic_reg(&lapic.regs, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(apic_reg(&lapic.regs, APIC_LVT_LINT1), 0x400);
    }

    #[test]
    fn msrs_include_mtrr_default_write_back() {
        let msrs = boot_msrs();
        let mtrr = msrs.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(mtrr.data, (1 << 11) | 6);
        assert!(boot_msrs_fam().is_ok());
    }
}
