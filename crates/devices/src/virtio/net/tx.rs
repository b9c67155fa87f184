//! Transmit: each chain's header and frame written to the tap with one `writev`.

use super::*;

/// What the transmit path works with.
pub(super) struct TxCtx<'a> {
    pub(super) mem: &'a GuestMemoryMmap,
    pub(super) fd: RawFd,
    pub(super) tap: &'a str,
    pub(super) counters: &'a mut Counters,
    pub(super) iov: &'a mut Vec<libc::iovec>,
    pub(super) host_warned: &'a mut bool,
}

impl TxCtx<'_> {
    /// Writes one transmit chain to the tap, or drops it (logging why with `warned`).
    pub(super) fn transmit(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, warned: &mut bool) {
        self.iov.clear();
        let mut total = 0usize;
        let mut problem = None;
        for d in chain {
            if d.is_write_only() {
                problem = Some("device-writable descriptor in a transmit chain");
                break;
            }
            let len = d.len() as usize;
            if len == 0 {
                continue;
            }
            total += len;
            if total > MAX_BUFFER_SIZE {
                problem = Some("transmit frame larger than 65550 bytes");
                break;
            }
            let iov = &mut *self.iov;
            if !for_each_slice(self.mem, d.addr(), len, |_, s| iov.push(iovec_of(s, false))) {
                problem = Some("transmit buffer outside guest memory");
                break;
            }
            if self.iov.len() > IOV_MAX {
                problem = Some("transmit chain of more than 1024 buffers");
                break;
            }
        }
        if problem.is_none() && total < MIN_TX_LEN {
            problem = Some("transmit chain shorter than a header and an Ethernet header");
        }
        if let Some(why) = problem {
            self.iov.clear();
            self.counters.tx_dropped += 1;
            self.counters.errors += 1;
            guest_error(warned, format_args!("virtio-net: {why}: dropped"));
            return;
        }
        loop {
            // SAFETY: every iovec describes guest memory (checked above) that stays mapped
            // while the device holds `mem`; writev only reads it.
            let ret =
                unsafe { libc::writev(self.fd, self.iov.as_ptr(), self.iov.len() as libc::c_int) };
            if ret >= 0 {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += (total - VNET_HDR_SIZE) as u64;
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            self.counters.tx_dropped += 1;
            self.counters.errors += 1;
            host_error(
                self.host_warned,
                format_args!("virtio-net: tap {}: cannot send a frame: {e}", self.tap),
            );
            break;
        }
        self.iov.clear();
    }
}
