//! What guest RAM is made of: private anonymous memory by default; a memfd other processes
//! can map with `memory.shared` (a vhost-user backend handed its descriptor sees the guest's
//! memory); huge pages (2 MiB or 1 GiB) with `memory.hugepages`, private or shared.
//!
//! The VMM thread's filter forbids `memfd_create` (a way to run code that was never on
//! disk), so the memfds — one of ordinary pages and one of each huge page size — are made
//! once, when the VMM starts, before any filter. A shared VM sizes its memfd with
//! `ftruncate`, and shrinks it back to nothing when the VM goes.
//!
//! Huge pages are reserved when the memory is mapped (no `MAP_NORESERVE`): a host without
//! enough free ones refuses the VM then, with the count to raise, rather than killing it with
//! `SIGBUS` on a later page fault.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

/// 2 MiB, the default huge page size.
pub const HUGE_2M: u64 = 2 << 20;
/// 1 GiB.
pub const HUGE_1G: u64 = 1 << 30;

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backing {
    /// In a memfd another process may map.
    pub shared: bool,
    /// In huge pages of this size.
    pub hugepage_size: Option<u64>,
}

impl Backing {
    /// What `memory` asks for.
    pub fn of(memory: &config::MemoryConfig) -> Backing {
        Backing {
            shared: memory.shared,
            hugepage_size: memory
                .hugepages
                .then(|| memory.hugepage_size.unwrap_or(HUGE_2M)),
        }
    }

    /// Which reserved memfd: 0 for ordinary pages, 1 for 2 MiB pages, 2 for 1 GiB ones.
    fn memfd_kind(self) -> usize {
        match self.hugepage_size {
            None => 0,
            Some(HUGE_1G) => 2,
            Some(_) => 1,
        }
    }

    /// `mmap` flags choosing the huge page size (none for ordinary pages).
    fn huge_flags(self) -> i32 {
        match self.hugepage_size {
            None => 0,
            Some(size) => {
                libc::MAP_HUGETLB | ((size.trailing_zeros() as i32) << libc::MAP_HUGE_SHIFT)
            }
        }
    }
}

static RESERVED: [OnceLock<io::Result<File>>; 3] =
    [OnceLock::new(), OnceLock::new(), OnceLock::new()];

fn memfd(kind: usize) -> &'static io::Result<File> {
    RESERVED[kind].get_or_init(|| {
        let (name, flags) = match kind {
            0 => (c"palisade-guest-ram", 0),
            1 => (
                c"palisade-huge-guest-ram-2M",
                libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
            ),
            _ => (
                c"palisade-huge-guest-ram-1G",
                libc::MFD_HUGETLB | libc::MFD_HUGE_1GB,
            ),
        };
        // SAFETY: a NUL-terminated name and flags; the kernel returns a new descriptor.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    })
}

fn memfd_of(backing: Backing) -> io::Result<&'static File> {
    memfd(backing.memfd_kind())
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("no memfd for shared guest RAM: {e}")))
}

/// Makes the memfds now (call before the VMM thread is filtered); the number of the one of
/// ordinary pages, if it could be made.
pub fn reserve() -> Option<RawFd> {
    for kind in 1..RESERVED.len() {
        if let Err(e) = memfd(kind) {
            log::debug!("no huge-page memfd for shared guest RAM: {e}");
        }
    }
    match memfd(0) {
        Ok(f) => Some(f.as_raw_fd()),
        Err(e) => {
            log::debug!("no memfd for shared guest RAM: {e}");
            None
        }
    }
}

fn resize_memfd(file: &File, size: u64) -> io::Result<()> {
    let size = libc::off_t::try_from(size).map_err(|_| io::Error::other("guest RAM too large"))?;
    // SAFETY: ftruncate on a memfd this module owns.
    if unsafe { libc::ftruncate(file.as_raw_fd(), size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Explains a failed mapping of huge pages.
fn huge_page_error(e: io::Error, len: usize, backing: Backing) -> io::Error {
    if backing.hugepage_size.is_none() {
        return e;
    }
    let size = backing.hugepage_size.unwrap_or(HUGE_2M);
    io::Error::new(
        e.kind(),
        format!(
            "{e}: {len} bytes need {} free huge pages of {} KiB: reserve them in \
             /sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages",
            len as u64 / size,
            size >> 10,
            size >> 10
        ),
    )
}

/// `len` bytes of guest memory at `start`, backed as `backing` says; shared memory lives in
/// its memfd from `offset` on, which grows to hold it (and is left as it was on failure).
pub fn map_region(
    start: GuestAddress,
    len: usize,
    offset: u64,
    backing: Backing,
) -> io::Result<GuestRegionMmap> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let (region, shrink_to) = if backing.shared {
        let file = memfd_of(backing)?;
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| io::Error::other("guest RAM too large"))?;
        resize_memfd(file, end)?;
        // SAFETY: dup of a descriptor this module owns; the copy is owned below.
        let copy = unsafe { libc::dup(file.as_raw_fd()) };
        if copy < 0 {
            let e = io::Error::last_os_error();
            let _ = resize_memfd(file, offset);
            return Err(e);
        }
        // SAFETY: `copy` is a fresh descriptor owned by nobody else.
        let copy = File::from(unsafe { OwnedFd::from_raw_fd(copy) });
        let fo = FileOffset::new(copy, offset);
        (
            MmapRegion::build(Some(fo), len, prot, libc::MAP_SHARED),
            Some(file),
        )
    } else {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | backing.huge_flags();
        // Ordinary pages are not reserved: the kernel gives them as the guest touches them.
        let flags = if backing.hugepage_size.is_none() {
            flags | libc::MAP_NORESERVE
        } else {
            flags
        };
        (MmapRegion::build(None, len, prot, flags), None)
    };
    let undo = || {
        if let Some(file) = shrink_to {
            let _ = resize_memfd(file, offset);
        }
    };
    let region = region.map_err(|e| {
        undo();
        let e = io::Error::other(e.to_string());
        huge_page_error(e, len, backing)
    })?;
    GuestRegionMmap::new(region, start).ok_or_else(|| {
        undo();
        io::Error::other("guest memory region wraps around the address space")
    })
}

/// `len` bytes of guest memory at `start` in `file` from `offset` on (a memory zone's
/// file): shared with the file when `shared`, else copied on write.
pub fn map_file_region(
    start: GuestAddress,
    len: usize,
    file: &File,
    offset: u64,
    shared: bool,
) -> io::Result<GuestRegionMmap> {
    let flags = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE | libc::MAP_NORESERVE
    };
    let fo = FileOffset::new(file.try_clone()?, offset);
    let region = MmapRegion::build(Some(fo), len, libc::PROT_READ | libc::PROT_WRITE, flags)
        .map_err(|e| io::Error::other(e.to_string()))?;
    GuestRegionMmap::new(region, start)
        .ok_or_else(|| io::Error::other("guest memory region wraps around the address space"))
}

/// Cuts the shared memfd back to `size` bytes (a hot-plug that failed after growing it).
pub fn shrink(backing: Backing, size: u64) {
    if let Ok(file) = memfd_of(backing) {
        let _ = resize_memfd(file, size);
    }
}

/// Gives the shared RAM's pages back (the VM is gone).
pub fn release(backing: Backing) {
    shrink(backing, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn shared_ram_is_the_memfd_and_is_emptied_again() {
        let fd = reserve().expect("memfd");
        let shared = Backing {
            shared: true,
            hugepage_size: None,
        };
        release(shared);
        let low = map_region(GuestAddress(0), 1 << 20, 0, shared).unwrap();
        let high = map_region(GuestAddress(1 << 32), 1 << 20, 1 << 20, shared).unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![low, high]).unwrap();
        mem.write_obj(0xabcd_u32, GuestAddress((1 << 32) + 8))
            .unwrap();
        // The second region is at offset 1 MiB of the memfd.
        let mut word = [0u8; 4];
        let file = memfd_of(shared).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(file, &mut word, (1 << 20) + 8).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xabcd);
        assert_eq!(mem.num_regions(), 2);
        drop(mem);
        release(shared);
        assert_eq!(file.metadata().unwrap().len(), 0);
        assert_eq!(reserve(), Some(fd), "one memfd for the VMM's life");
    }

    #[test]
    fn huge_page_flags_name_the_size() {
        let huge = |size| Backing {
            shared: false,
            hugepage_size: Some(size),
        };
        assert_eq!(
            huge(HUGE_2M).huge_flags(),
            libc::MAP_HUGETLB | libc::MAP_HUGE_2MB
        );
        assert_eq!(
            huge(HUGE_1G).huge_flags(),
            libc::MAP_HUGETLB | libc::MAP_HUGE_1GB
        );
        assert_eq!(Backing::default().huge_flags(), 0);
        assert_eq!(huge(HUGE_1G).memfd_kind(), 2);
    }
}
