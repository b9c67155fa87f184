//! An API connection that also receives file descriptors: the bytes of the HTTP stream come
//! with `recvmsg(2)`, and descriptors sent alongside them as `SCM_RIGHTS` ancillary data
//! (how Kata Containers and ch-remote hand over tap devices) are kept for the request they
//! came with. The standard library and tokio read without ancillary data, which the kernel
//! would discard — closing the descriptors — so the read is done here. (vmm-sys-util's
//! `ScmSocket`, which sends them, receives without `MSG_CMSG_CLOEXEC` and does not say when
//! the kernel had to drop some, both of which this reader needs.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// Descriptors one `recvmsg` takes at most; more in one message are closed by the kernel
/// (and the request they came with is refused).
const MAX_FDS_PER_MESSAGE: usize = 32;
/// Descriptors a connection holds at most before a request takes them.
const MAX_PENDING_FDS: usize = 64;

/// Descriptors received on a connection and not yet taken by a request.
#[derive(Default)]
pub(crate) struct ReceivedFds {
    fds: Vec<OwnedFd>,
    /// Some were lost (too many at once): the next request is refused.
    lost: bool,
}

impl ReceivedFds {
    /// Everything received so far, and whether some descriptors were lost.
    pub fn take(&mut self) -> (Vec<OwnedFd>, bool) {
        (
            std::mem::take(&mut self.fds),
            std::mem::replace(&mut self.lost, false),
        )
    }
}

/// A Unix stream whose reads collect the descriptors sent with the data.
pub(crate) struct FdStream {
    inner: UnixStream,
    received: Arc<Mutex<ReceivedFds>>,
}

impl FdStream {
    /// Wraps `inner`; descriptors go to `received`.
    pub fn new(inner: UnixStream, received: Arc<Mutex<ReceivedFds>>) -> Self {
        FdStream { inner, received }
    }
}

/// One `recvmsg` into `buf`, keeping the descriptors that come with it.
fn recv_with_fds(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    received: &Mutex<ReceivedFds>,
) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * 4) as u32) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` describes `buf` and `control`, both valid and writable for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`, within
    // `msg_controllen`, with the libc macros made for it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header) / 4;
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    // The kernel installed it in this process for us: we own it now.
                    got.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    if !got.is_empty() || truncated {
        let mut r = received.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_PENDING_FDS.saturating_sub(r.fds.len());
        if got.len() > room || truncated {
            r.lost = true;
        }
        // Those beyond the limit are closed here, as they drop.
        r.fds.extend(got.into_iter().take(room));
    }
    Ok(n as usize)
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.inner.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let fd = this.inner.as_raw_fd();
            let received = &this.received;
            let unfilled = buf.initialize_unfilled();
            match this
                .inner
                .try_io(Interest::READABLE, || recv_with_fds(fd, unfilled, received))
            {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
