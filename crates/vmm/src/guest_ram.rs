//! Guest RAM that other processes can map (`memory.shared`): a memfd, so that a vhost-user
//! backend handed its descriptor sees the guest's memory.
//!
//! The VMM thread's filter forbids `memfd_create` (a way to run code that was never on
//! disk), so the memfd is made once, when the VMM starts, before any filter; a shared VM
//! sizes it with `ftruncate`, and shrinks it back to nothing when the VM goes. Without `memory.shared`, guest RAM stays
//! private anonymous memory.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

static RESERVED: OnceLock<io::Result<File>> = OnceLock::new();

fn reserved() -> &'static io::Result<File> {
    RESERVED.get_or_init(|| {
        // SAFETY: a NUL-terminated name and flags; the kernel returns a new descriptor.
        let fd = unsafe { libc::memfd_create(c"palisade-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    })
}

/// Makes the memfd now (call before the VMM thread is filtered); its number, if it could be
/// made.
pub fn reserve() -> Option<RawFd> {
    match reserved() {
        Ok(f) => Some(f.as_raw_fd()),
        Err(e) => {
            log::debug!("no memfd for shared guest RAM: {e}");
            None
        }
    }
}

/// Guest memory of `ranges` (address and length, in order), backed by the memfd: sized to
/// their total, each range at the next offset.
pub fn map_shared(ranges: &[(GuestAddress, usize)]) -> io::Result<GuestMemoryMmap> {
    let file = reserved()
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("no memfd for shared guest RAM: {e}")))?;
    let total: u64 = ranges.iter().map(|&(_, len)| len as u64).sum();
    let size = libc::off_t::try_from(total).map_err(|_| io::Error::other("guest RAM too large"))?;
    // Emptied first: nothing of a previous VM's RAM may show through.
    for length in [0, size] {
        // SAFETY: ftruncate on the memfd this module owns.
        if unsafe { libc::ftruncate(file.as_raw_fd(), length) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(start, len) in ranges {
        // A descriptor of the same memfd for each region (dup(2): the filter has it).
        // SAFETY: dup of a descriptor this module owns; the copy is owned below.
        let copy = unsafe { libc::dup(file.as_raw_fd()) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `copy` is a fresh descriptor owned by nobody else.
        let copy = File::from(unsafe { OwnedFd::from_raw_fd(copy) });
        regions.push((start, len, Some(FileOffset::new(copy, offset))));
        offset += len as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(|e| io::Error::other(e.to_string()))
}

/// `len` bytes of guest memory at `start` (memory hot-plug of a shared VM), backed by the
/// memfd from `offset`, which the memfd grows to hold; on failure it is left as it was.
pub fn map_shared_region(
    start: GuestAddress,
    len: usize,
    offset: u64,
) -> io::Result<GuestRegionMmap> {
    let file = reserved()
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("no memfd for shared guest RAM: {e}")))?;
    let end = offset
        .checked_add(len as u64)
        .and_then(|end| libc::off_t::try_from(end).ok())
        .ok_or_else(|| io::Error::other("guest RAM too large"))?;
    let shrink_back = || {
        // SAFETY: ftruncate on the memfd this module owns.
        unsafe { libc::ftruncate(file.as_raw_fd(), offset as libc::off_t) };
    };
    // SAFETY: ftruncate on the memfd this module owns.
    if unsafe { libc::ftruncate(file.as_raw_fd(), end) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup of a descriptor this module owns; the copy is owned below.
    let copy = unsafe { libc::dup(file.as_raw_fd()) };
    if copy < 0 {
        let e = io::Error::last_os_error();
        shrink_back();
        return Err(e);
    }
    // SAFETY: `copy` is a fresh descriptor owned by nobody else.
    let copy = File::from(unsafe { OwnedFd::from_raw_fd(copy) });
    GuestRegionMmap::from_range(start, len, Some(FileOffset::new(copy, offset))).map_err(|e| {
        shrink_back();
        io::Error::other(e.to_string())
    })
}

/// Cuts the memfd back to `size` bytes (a hot-plug that failed after growing it).
pub fn shrink(size: u64) {
    if let Ok(file) = reserved() {
        // SAFETY: ftruncate on the memfd this module owns.
        unsafe { libc::ftruncate(file.as_raw_fd(), size as libc::off_t) };
    }
}

/// Gives the shared RAM's pages back (the VM is gone).
pub fn release() {
    if let Ok(file) = reserved() {
        // SAFETY: ftruncate on the memfd this module owns.
        unsafe { libc::ftruncate(file.as_raw_fd(), 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn shared_ram_is_the_memfd_and_is_emptied_again() {
        let fd = reserve().expect("memfd");
        let ranges = [(GuestAddress(0), 1 << 20), (GuestAddress(1 << 32), 1 << 20)];
        let mem = map_shared(&ranges).unwrap();
        mem.write_obj(0xabcd_u32, GuestAddress((1 << 32) + 8))
            .unwrap();
        // The second region is at offset 1 MiB of the memfd.
        let mut word = [0u8; 4];
        let file = reserved().as_ref().unwrap();
        std::os::unix::fs::FileExt::read_exact_at(file, &mut word, (1 << 20) + 8).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xabcd);
        assert_eq!(mem.num_regions(), 2);
        drop(mem);
        release();
        assert_eq!(file.metadata().unwrap().len(), 0);
        assert_eq!(reserve(), Some(fd), "one memfd for the VMM's life");
    }
}
