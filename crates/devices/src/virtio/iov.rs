//! `iovec` arrays over guest memory, for the devices that move data between a host
//! descriptor and guest buffers with vectored system calls (block, network).

use vm_memory::VolatileSlice;

/// Linux's `UIO_MAXIOV`: the most iovecs one `readv`/`writev`/`preadv`/`pwritev` accepts.
pub(crate) const IOV_MAX: usize = 1024;

/// An `iovec` array reused from request to request.
///
/// It holds pointers only while one request (or frame) is executed, on the thread that owns
/// the device; the device clears it before the request returns. Between requests it holds
/// no pointer at all.
pub(crate) struct IoVecs(pub Vec<libc::iovec>);

// SAFETY: the array only holds pointers while a request is executed on the thread that owns
// the device (the devices clear it before the request returns), and those pointers point
// into guest memory or memory the device itself owns, which any thread may access. Between
// requests it holds no pointer at all, so moving it to another thread moves only a capacity.
unsafe impl Send for IoVecs {}

/// The `iovec` for a guest-memory slice the device writes to (`write`) or reads from.
pub(crate) fn iovec_of(slice: &VolatileSlice<'_, ()>, write: bool) -> libc::iovec {
    // The guards are plain pointers for mmap-backed memory (vm-memory's `xen` feature is off):
    // the mapping stays valid while the `GuestMemoryMmap` the device holds lives, i.e. for the
    // whole request.
    let base = if write {
        slice.ptr_guard_mut().as_ptr()
    } else {
        slice.ptr_guard().as_ptr() as *mut u8
    };
    libc::iovec {
        iov_base: base as *mut libc::c_void,
        iov_len: slice.len(),
    }
}
