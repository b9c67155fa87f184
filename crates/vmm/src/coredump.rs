//! `vm.coredump`: the paused guest as an ELF core file — one `PT_LOAD` segment per RAM
//! region at its guest-physical address, and an `NT_PRSTATUS` note per vCPU with the
//! registers it had when it parked — which `crash`, `gdb` and `readelf` read.

use std::fs::File;
use std::io::{self, Write};

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const PRSTATUS_LEN: usize = 336;
const NT_PRSTATUS: u32 = 1;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_RWX: u32 = 7;
const PAGE: u64 = 4096;

/// One vCPU's registers at the time of the dump.
#[derive(Clone, Copy, Default)]
pub struct VcpuRegisters {
    /// General-purpose registers, flags and instruction pointer.
    pub regs: kvm_regs,
    /// Segments (their selectors go into the note).
    pub sregs: kvm_sregs,
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// `struct elf_prstatus` for vCPU `index`, as Linux lays it out on x86_64.
fn prstatus(index: usize, r: &VcpuRegisters) -> Vec<u8> {
    let mut b = Vec::with_capacity(PRSTATUS_LEN);
    b.resize(32, 0); // signal info, current signal, pending and held sets
    put32(&mut b, index as u32 + 1); // pid: one "thread" per vCPU
    b.resize(112, 0); // ppid, pgrp, sid, times
    let (g, s) = (&r.regs, &r.sregs);
    for v in [
        g.r15, g.r14, g.r13, g.r12, g.rbp, g.rbx, g.r11, g.r10, g.r9, g.r8, g.rax, g.rcx, g.rdx,
        g.rsi, g.rdi, g.rax, g.rip,
    ] {
        put64(&mut b, v);
    }
    put64(&mut b, u64::from(s.cs.selector));
    put64(&mut b, g.rflags);
    put64(&mut b, g.rsp);
    put64(&mut b, u64::from(s.ss.selector));
    put64(&mut b, s.fs.base);
    put64(&mut b, s.gs.base);
    for seg in [&s.ds, &s.es, &s.fs, &s.gs] {
        put64(&mut b, u64::from(seg.selector));
    }
    b.resize(PRSTATUS_LEN, 0); // pr_fpvalid and padding
    b
}

/// The notes segment: one `NT_PRSTATUS` per vCPU, named `CORE`.
fn notes(vcpus: &[VcpuRegisters]) -> Vec<u8> {
    let mut b = Vec::new();
    for (i, r) in vcpus.iter().enumerate() {
        put32(&mut b, 5);
        put32(&mut b, PRSTATUS_LEN as u32);
        put32(&mut b, NT_PRSTATUS);
        b.extend_from_slice(b"CORE\0\0\0\0");
        b.extend_from_slice(&prstatus(i, r));
    }
    b
}

fn program_header(b: &mut Vec<u8>, kind: u32, offset: u64, addr: u64, size: u64, align: u64) {
    put32(b, kind);
    put32(b, if kind == PT_LOAD { PF_RWX } else { 0 });
    put64(b, offset);
    put64(b, addr); // virtual: the guest-physical address too
    put64(b, addr);
    put64(b, size);
    put64(b, size);
    put64(b, align);
}

/// The ELF header and program headers for `mem` and a notes segment of `notes_len` bytes;
/// returns them and the file offset of each region's contents.
fn headers(mem: &GuestMemoryMmap, notes_len: usize) -> (Vec<u8>, Vec<u64>) {
    let regions = mem.num_regions();
    let phnum = 1 + regions;
    let notes_at = (EHDR_LEN + PHDR_LEN * phnum) as u64;
    let mut offset = (notes_at + notes_len as u64).div_ceil(PAGE) * PAGE;
    let mut b = Vec::with_capacity(notes_at as usize);
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LE, version 1
    b.resize(16, 0);
    put16(&mut b, 4); // ET_CORE
    put16(&mut b, 62); // EM_X86_64
    put32(&mut b, 1);
    put64(&mut b, 0); // entry
    put64(&mut b, EHDR_LEN as u64); // program headers
    put64(&mut b, 0); // no section headers
    put32(&mut b, 0);
    put16(&mut b, EHDR_LEN as u16);
    put16(&mut b, PHDR_LEN as u16);
    put16(&mut b, phnum as u16);
    put16(&mut b, 0);
    put16(&mut b, 0);
    put16(&mut b, 0);
    program_header(&mut b, PT_NOTE, notes_at, 0, notes_len as u64, 1);
    let mut offsets = Vec::with_capacity(regions);
    for region in mem.iter() {
        program_header(
            &mut b,
            PT_LOAD,
            offset,
            region.start_addr().0,
            region.len(),
            PAGE,
        );
        offsets.push(offset);
        offset += region.len();
    }
    (b, offsets)
}

/// Writes the core of `mem` with `vcpus`' registers to `file`.
pub fn write(file: &mut File, mem: &GuestMemoryMmap, vcpus: &[VcpuRegisters]) -> io::Result<()> {
    let notes = notes(vcpus);
    let (head, offsets) = headers(mem, notes.len());
    file.write_all(&head)?;
    file.write_all(&notes)?;
    let mut chunk = vec![0u8; 1 << 20];
    for (region, &at) in mem.iter().zip(&offsets) {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(at))?;
        let mut done = 0u64;
        while done < region.len() {
            let n = (region.len() - done).min(chunk.len() as u64) as usize;
            let addr = region.start_addr().unchecked_add(done);
            mem.read_slice(&mut chunk[..n], addr)
                .map_err(|e| io::Error::other(e.to_string()))?;
            file.write_all(&chunk[..n])?;
            done += n as u64;
        }
    }
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn the_core_holds_memory_and_registers() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 64 << 10),
            (GuestAddress(1 << 32), 8 << 10),
        ])
        .unwrap();
        mem.write_slice(b"guest bytes", GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(b"high", GuestAddress((1 << 32) + 16))
            .unwrap();
        let mut regs = VcpuRegisters::default();
        regs.regs.rip = 0x10_0123;
        regs.regs.rsp = 0x8ff0;
        regs.sregs.cs.selector = 0x10;
        let tmp = TempFile::new().unwrap();
        let mut file = tmp.as_file().try_clone().unwrap();
        write(&mut file, &mem, &[regs, VcpuRegisters::default()]).unwrap();
        let core = std::fs::read(tmp.as_path()).unwrap();
        let u16_at = |o: usize| u16::from_le_bytes(core[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(core[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(core[o..o + 8].try_into().unwrap());
        assert_eq!(&core[..4], b"\x7fELF");
        assert_eq!((u16_at(16), u16_at(18), u16_at(56)), (4, 62, 3));
        // The notes: two CORE/NT_PRSTATUS, the first with rip and rsp where Linux puts them.
        let note_at = u64_at(EHDR_LEN + 8) as usize;
        assert_eq!(u32_at(note_at + 8), NT_PRSTATUS);
        assert_eq!(&core[note_at + 12..note_at + 16], b"CORE");
        let desc = note_at + 20;
        assert_eq!(u64_at(desc + 112 + 16 * 8), 0x10_0123, "rip");
        assert_eq!(u64_at(desc + 112 + 17 * 8), 0x10, "cs");
        assert_eq!(u64_at(desc + 112 + 19 * 8), 0x8ff0, "rsp");
        // The loads: each region at its address, its bytes at its offset.
        let ph = |i: usize| EHDR_LEN + PHDR_LEN * i;
        assert_eq!(u32_at(ph(1)), PT_LOAD);
        let (off0, addr0) = (u64_at(ph(1) + 8) as usize, u64_at(ph(1) + 16));
        assert_eq!(addr0, 0);
        assert_eq!(&core[off0 + 0x1000..off0 + 0x1000 + 11], b"guest bytes");
        let (off1, addr1) = (u64_at(ph(2) + 8) as usize, u64_at(ph(2) + 16));
        assert_eq!(addr1, 1 << 32);
        assert_eq!(u64_at(ph(2) + 32), 8 << 10, "filesz");
        assert_eq!(&core[off1 + 16..off1 + 20], b"high");
        assert_eq!(core.len(), off1 + (8 << 10));
        assert_eq!(off0 % PAGE as usize, 0);
    }
}
