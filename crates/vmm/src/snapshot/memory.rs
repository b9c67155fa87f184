//! Guest memory in a snapshot's memory file: each region, in address order, back to back.

use std::fs::File;

use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, ReadVolatile,
};

use super::MemoryRange;

/// How much is copied per call (keeps each read or write of a huge region bounded).
const CHUNK: u64 = 64 << 20;

/// The ranges `mem` has, laid out one after another in a file.
pub fn layout(mem: &GuestMemoryMmap) -> Vec<MemoryRange> {
    let mut offset = 0;
    mem.iter()
        .map(|r| {
            let range = MemoryRange {
                guest_address: r.start_addr().raw_value(),
                length: r.len(),
                file_offset: offset,
            };
            offset += r.len();
            range
        })
        .collect()
}

/// Checks that `ranges` tile a memory file of `size` bytes exactly, in order, without
/// overlapping in the guest either.
pub fn check_layout(ranges: &[MemoryRange], size: u64) -> Result<(), String> {
    let mut offset = 0u64;
    let mut guest_end = 0u64;
    for r in ranges {
        if r.file_offset != offset {
            return Err(format!(
                "the memory range at guest address {:#x} is at offset {:#x} of the file, not {offset:#x}",
                r.guest_address, r.file_offset
            ));
        }
        if r.guest_address < guest_end || r.length == 0 {
            return Err(format!(
                "the memory range at guest address {:#x} overlaps another or is empty",
                r.guest_address
            ));
        }
        guest_end = r
            .guest_address
            .checked_add(r.length)
            .ok_or("a memory range ends past the address space")?;
        offset = offset
            .checked_add(r.length)
            .ok_or("the memory ranges add up to more than a file can hold")?;
    }
    if offset != size {
        return Err(format!(
            "holds {size} bytes, but the snapshot's memory ranges add up to {offset}: the file is truncated or not this snapshot's"
        ));
    }
    Ok(())
}

/// Bytes looked at at once when writing: a block of zeros is left as a hole in the file.
const BLOCK: usize = 1 << 20;

/// Writes every region of `mem` into `file` (new and empty), in [`layout`] order. Blocks of
/// zeros — most of a guest's untouched memory — are left as holes, so the file takes the
/// room of what the guest wrote and a restore reads only that.
pub fn write(file: &mut File, mem: &GuestMemoryMmap) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut buffer = vec![0u8; BLOCK];
    let mut offset = 0u64;
    for region in mem.iter() {
        let mut done = 0u64;
        while done < region.len() {
            let n = (BLOCK as u64).min(region.len() - done) as usize;
            let block = &mut buffer[..n];
            vm_memory::Bytes::read_slice(region, block, MemoryRegionAddress(done))
                .map_err(|e| std::io::Error::other(format!("guest memory: {e}")))?;
            if block.iter().any(|&b| b != 0) {
                file.seek(SeekFrom::Start(offset + done))?;
                file.write_all(block)?;
            }
            done += n as u64;
        }
        offset += region.len();
    }
    file.set_len(offset)?;
    file.sync_all()
}

/// The data (not hole) extents of `file` within `[start, end)`; all of it where the file
/// system cannot tell.
fn data_extents(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut at = start;
    while at < end {
        // SAFETY: lseek on a descriptor this function borrows; no memory is passed.
        let data = unsafe { libc::lseek(fd, at as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // Only a hole is left.
            }
            return vec![(start, end)];
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        extents.push((data, hole));
        at = hole;
    }
    extents
}

/// Reads `file`, laid out as `ranges`, into `mem`, which must have exactly those ranges and
/// be fresh. Holes are skipped where the region is anonymous memory, which is zero already,
/// unless `prefault` asks for every page to be populated now; file-backed regions get every
/// byte.
pub fn read(
    file: &mut File,
    ranges: &[MemoryRange],
    mem: &GuestMemoryMmap,
    prefault: bool,
) -> Result<(), String> {
    let have = layout(mem);
    let same = have.len() == ranges.len()
        && have
            .iter()
            .zip(ranges)
            .all(|(a, b)| (a.guest_address, a.length) == (b.guest_address, b.length));
    if !same {
        let describe = |rs: &[MemoryRange]| {
            rs.iter()
                .map(|r| format!("{:#x}+{:#x}", r.guest_address, r.length))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "the snapshot's guest memory ({}) is not laid out as its configuration's ({})",
            describe(ranges),
            describe(&have)
        ));
    }
    for (r, region) in ranges.iter().zip(mem.iter()) {
        let end = r.file_offset + r.length;
        let extents = if prefault || region.file_offset().is_some() {
            vec![(r.file_offset, end)]
        } else {
            data_extents(file, r.file_offset, end)
        };
        for (from, to) in extents {
            let mut done = from;
            while done < to {
                let n = CHUNK.min(to - done);
                let guest = GuestAddress(r.guest_address).unchecked_add(done - r.file_offset);
                let mut slice = mem
                    .get_slice(guest, n as usize)
                    .map_err(|e| format!("guest memory: {e}"))?;
                std::io::Seek::seek(file, std::io::SeekFrom::Start(done))
                    .map_err(|e| format!("memory file: {e}"))?;
                file.read_exact_volatile(&mut slice)
                    .map_err(|e| format!("memory file: {e}"))?;
                done += n;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_must_tile_the_file() {
        let r = |g, l, o| MemoryRange {
            guest_address: g,
            length: l,
            file_offset: o,
        };
        assert!(check_layout(&[r(0, 4096, 0), r(1 << 32, 8192, 4096)], 12288).is_ok());
        let short = check_layout(&[r(0, 4096, 0)], 100).unwrap_err();
        assert!(short.contains("truncated"), "{short}");
        assert!(check_layout(&[r(0, 4096, 0), r(0, 4096, 4096)], 8192).is_err());
        assert!(check_layout(&[r(0, 4096, 8)], 4104).is_err());
        assert!(check_layout(&[r(u64::MAX, 2, 0)], 2).is_err());
        assert!(check_layout(&[r(0, 0, 0)], 0).is_err());
    }

    #[test]
    fn memory_goes_out_and_comes_back() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x100_0000), 0x20_0000),
        ])
        .unwrap();
        vm_memory::Bytes::write_slice(&mem, b"low", GuestAddress(0x100)).unwrap();
        vm_memory::Bytes::write_slice(&mem, b"high", GuestAddress(0x100_1000)).unwrap();
        let path = std::env::temp_dir().join(format!("palisade-mem-{}", std::process::id()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        write(&mut file, &mem).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 0x40_0000);
        assert!(meta.blocks() * 512 <= 0x20_0000, "zero blocks are holes");
        let ranges = layout(&mem);
        check_layout(&ranges, file.metadata().unwrap().len()).unwrap();
        let back = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x100_0000), 0x20_0000),
        ])
        .unwrap();
        let mut file = File::open(&path).unwrap();
        read(&mut file, &ranges, &back, false).unwrap();
        let mut buf = [0u8; 4];
        vm_memory::Bytes::read_slice(&back, &mut buf, GuestAddress(0x100_1000)).unwrap();
        assert_eq!(&buf, b"high");
        vm_memory::Bytes::read_slice(&back, &mut buf[..3], GuestAddress(0x100)).unwrap();
        assert_eq!(&buf[..3], b"low");
        let again = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x100_0000), 0x20_0000),
        ])
        .unwrap();
        read(&mut File::open(&path).unwrap(), &ranges, &again, true).unwrap();
        vm_memory::Bytes::read_slice(&again, &mut buf, GuestAddress(0x100_1000)).unwrap();
        assert_eq!(&buf, b"high", "prefault reads every byte");
        let other = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(read(&mut file, &ranges, &other, true)
            .unwrap_err()
            .contains("not laid out"));
        std::fs::remove_file(path).unwrap();
    }
}
