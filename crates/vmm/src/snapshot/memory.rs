//! Guest memory in a snapshot's memory file: each region, in address order, back to back.

use std::fs::File;

use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, ReadVolatile, WriteVolatile,
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

/// Writes every region of `mem` into `file`, in [`layout`] order.
pub fn write(file: &mut File, mem: &GuestMemoryMmap) -> std::io::Result<()> {
    for region in mem.iter() {
        let mut done = 0;
        while done < region.len() {
            let n = CHUNK.min(region.len() - done);
            let slice = region
                .get_slice(MemoryRegionAddress(done), n as usize)
                .map_err(|e| std::io::Error::other(format!("guest memory: {e}")))?;
            file.write_all_volatile(&slice)
                .map_err(|e| std::io::Error::other(format!("{e}")))?;
            done += n;
        }
    }
    file.sync_all()
}

/// Reads `file`, laid out as `ranges`, into `mem`, which must have exactly those ranges.
pub fn read(file: &mut File, ranges: &[MemoryRange], mem: &GuestMemoryMmap) -> Result<(), String> {
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
    for r in ranges {
        let mut done = 0;
        while done < r.length {
            let n = CHUNK.min(r.length - done);
            let mut slice = mem
                .get_slice(
                    GuestAddress(r.guest_address).unchecked_add(done),
                    n as usize,
                )
                .map_err(|e| format!("guest memory: {e}"))?;
            file.read_exact_volatile(&mut slice)
                .map_err(|e| format!("memory file: {e}"))?;
            done += n;
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
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10_0000), 0x2000),
        ])
        .unwrap();
        vm_memory::Bytes::write_slice(&mem, b"low", GuestAddress(0x100)).unwrap();
        vm_memory::Bytes::write_slice(&mem, b"high", GuestAddress(0x10_1000)).unwrap();
        let path = std::env::temp_dir().join(format!("palisade-mem-{}", std::process::id()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        write(&mut file, &mem).unwrap();
        let ranges = layout(&mem);
        check_layout(&ranges, file.metadata().unwrap().len()).unwrap();
        let back = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10_0000), 0x2000),
        ])
        .unwrap();
        let mut file = File::open(&path).unwrap();
        read(&mut file, &ranges, &back).unwrap();
        let mut buf = [0u8; 4];
        vm_memory::Bytes::read_slice(&back, &mut buf, GuestAddress(0x10_1000)).unwrap();
        assert_eq!(&buf, b"high");
        let other = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x6000)]).unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(read(&mut file, &ranges, &other)
            .unwrap_err()
            .contains("not laid out"));
        std::fs::remove_file(path).unwrap();
    }
}
