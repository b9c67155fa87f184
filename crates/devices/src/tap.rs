//! Host tap devices: the host side of a virtio-net device.
//!
//! A [`Tap`] is one file descriptor on `/dev/net/tun` attached to a layer-2 tap interface,
//! set up the way the network device needs it: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a
//! 12-byte virtio-net header in front of every frame (`TUNSETVNETHDRSZ`), non-blocking.
//! A multi-queue tap (`IFF_MULTI_QUEUE`) has one descriptor per queue pair, each a `Tap`
//! with the same name.
//!
//! Creating a tap, attaching to one, and configuring its address or flags need
//! `CAP_NET_ADMIN` in the network namespace of the calling thread (attaching to a persistent
//! tap owned by the caller's user does not). What the device does with an open tap —
//! reading, writing, [`Tap::set_offload`], [`Tap::set_queue_enabled`] — needs no privilege,
//! and neither does adopting a tap handed over by a supervisor ([`Tap::from_fd`]). Every
//! error names the tap (or the descriptor) and the operation that failed.
//!
//! Interface configuration ([`Tap::configure`], [`Tap::up`], [`Tap::host_mac`]) goes through
//! an `AF_INET` socket, which acts in the network namespace of the calling thread: call them
//! from the namespace the tap lives in. A VMM whose threads may create no socket once they
//! are filtered takes one such socket at start-up ([`hold_control_socket`]) and every later
//! configuration goes through it.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of the virtio-net header in front of each frame (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_SIZE: usize = 12;

/// Where the tun/tap driver is opened.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Longest interface name (`IFNAMSIZ` less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// One file descriptor on a tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Builds an error that names the tap and the operation, keeping the kind of `e`.
fn tap_error(tap: &str, op: &str, e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (this needs CAP_NET_ADMIN)",
        _ => "",
    };
    io::Error::new(e.kind(), format!("tap {tap}: cannot {op}: {e}{hint}"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// A zeroed `ifreq` carrying `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain data (a name array and a union of integers, addresses, arrays
    // and a pointer), for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // At most IFNAMSIZ - 1 bytes: the last stays NUL.
    for (dst, &src) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.as_bytes().iter().take(MAX_NAME_LEN))
    {
        *dst = src as libc::c_char;
    }
    ifr
}

/// The name an `ifreq` carries.
fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Checks a tap name given by a user.
fn check_name(name: &str) -> io::Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "tap name {name:?} is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
        || name == "."
        || name == ".."
    {
        return Err(invalid(format!(
            "tap name {name:?} is not a valid interface name"
        )));
    }
    Ok(())
}

/// `sockaddr` holding an IPv4 address (as `SIOCSIFADDR` and `SIOCSIFNETMASK` expect).
fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` are both 16-byte plain-data structures; the kernel
    // reads this `sockaddr` as the `sockaddr_in` it is.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The socket held for interface ioctls, once [`hold_control_socket`] was called.
static CONTROL_SOCKET: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

fn new_inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the returned descriptor is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens, once, the `AF_INET` socket through which every later interface ioctl of the
/// process goes (in the calling thread's network namespace), so that no socket has to be
/// created after the threads' system-call filters forbid it. The socket is never bound
/// nor connected.
pub fn hold_control_socket() -> io::Result<()> {
    if CONTROL_SOCKET.get().is_none() {
        let _ = CONTROL_SOCKET.set(new_inet_socket()?);
    }
    Ok(())
}

/// An `AF_INET` datagram socket for interface ioctls: the held one, or a new one in the
/// caller's network namespace.
enum InetSocket {
    Held(BorrowedFd<'static>),
    Own(OwnedFd),
}

impl AsRawFd for InetSocket {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            InetSocket::Held(fd) => fd.as_raw_fd(),
            InetSocket::Own(fd) => fd.as_raw_fd(),
        }
    }
}

fn inet_socket() -> io::Result<InetSocket> {
    match CONTROL_SOCKET.get() {
        Some(fd) => Ok(InetSocket::Held(fd.as_fd())),
        None => new_inet_socket().map(InetSocket::Own),
    }
}

/// Runs an interface ioctl (`SIOC*`) on `ifr` through `sock`.
fn ifreq_ioctl(sock: &InetSocket, request: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `ifr` is a valid, initialized `ifreq` that the kernel reads and may fill in;
    // it outlives the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request, ifr as *mut libc::ifreq) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Creates a tap (or attaches to the existing one called `name`) with `queues` file
    /// descriptors, one per queue pair (`IFF_MULTI_QUEUE` when there are several). With no
    /// name (or an empty one) the kernel picks a free `tapN`. Each descriptor is
    /// non-blocking, has a 12-byte virtio-net header, and no offloads enabled yet.
    ///
    /// A tap created here disappears when its last descriptor is closed; an existing
    /// (persistent) tap stays. Needs `CAP_NET_ADMIN` unless attaching to a persistent tap
    /// the caller owns.
    pub fn open(name: Option<&str>, queues: usize) -> io::Result<Vec<Tap>> {
        let name = name.filter(|n| !n.is_empty());
        if let Some(n) = name {
            check_name(n)?;
        }
        if queues == 0 {
            return Err(invalid("a tap needs at least one queue".into()));
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut ifname = name.unwrap_or("").to_string();
        let mut taps = Vec::with_capacity(queues);
        for i in 0..queues {
            let label = if ifname.is_empty() {
                "(new)".to_string()
            } else {
                ifname.clone()
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(TUN_DEVICE)
                .map_err(|e| tap_error(&label, &format!("open {TUN_DEVICE}"), e))?;
            let mut ifr = ifreq(&ifname);
            ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
            // SAFETY: `ifr` is a valid `ifreq` that TUNSETIFF reads and fills in (with the
            // name the kernel picked); it outlives the call.
            let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
            if ret < 0 {
                let e = io::Error::last_os_error();
                let einval = e.raw_os_error() == Some(libc::EINVAL);
                let op = match (i, name) {
                    (0, None) => "create a tap".to_string(),
                    (0, Some(_)) => "create or attach to the tap".to_string(),
                    _ => format!("attach queue {i}"),
                };
                let err = tap_error(&label, &op, e);
                if einval && name.is_some() {
                    let with = if queues > 1 { "with" } else { "without" };
                    return Err(io::Error::new(
                        err.kind(),
                        format!(
                            "{err} (an existing interface of that name must be a tap created \
                             {with} multi_queue)"
                        ),
                    ));
                }
                return Err(err);
            }
            ifname = ifreq_name(&ifr);
            let tap = Tap {
                file,
                name: ifname.clone(),
            };
            tap.set_vnet_hdr_size(VNET_HDR_SIZE)?;
            taps.push(tap);
        }
        Ok(taps)
    }

    /// Adopts a tap descriptor opened by someone else (a supervisor passing `fd=`). It must
    /// be attached to a tap (checked with `TUNGETIFF`) opened with `IFF_NO_PI` and
    /// `IFF_VNET_HDR`; it is made non-blocking and given a 12-byte virtio-net header.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Tap> {
        let raw = fd.as_raw_fd();
        let mut ifr = ifreq("");
        // SAFETY: `ifr` is a valid `ifreq` that TUNGETIFF fills in; it outlives the call. On a
        // descriptor that is not a tun/tap, the ioctl fails without touching it.
        let ret = unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut ifr) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            return Err(invalid(format!(
                "fd {raw} is not attached to a tap device (TUNGETIFF failed: {e})"
            )));
        }
        // SAFETY: TUNGETIFF succeeded, so the kernel wrote the flags member of the union.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff;
        let name = ifreq_name(&ifr);
        let label = format!("{name} (fd {raw})");
        if flags & libc::IFF_TAP == 0 {
            return Err(invalid(format!(
                "tap {label}: is a tun (layer 3) device; a tap (layer 2) is needed"
            )));
        }
        for (flag, flag_name) in [
            (libc::IFF_NO_PI, "IFF_NO_PI"),
            (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
        ] {
            if flags & flag == 0 {
                return Err(invalid(format!(
                    "tap {label}: was opened without {flag_name}; open it with \
                     IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"
                )));
            }
        }
        // SAFETY: plain fcntl on a descriptor we own.
        let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(tap_error(
                &label,
                "make it non-blocking",
                io::Error::last_os_error(),
            ));
        }
        let tap = Tap {
            file: File::from(fd),
            name,
        };
        tap.set_vnet_hdr_size(VNET_HDR_SIZE)?;
        Ok(tap)
    }

    /// The interface name (e.g. `tap0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the size of the virtio-net header in front of each frame (`TUNSETVNETHDRSZ`).
    pub fn set_vnet_hdr_size(&self, size: usize) -> io::Result<()> {
        let size = libc::c_int::try_from(size)
            .map_err(|_| invalid(format!("vnet header size {size} is too large")))?;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &size as *const libc::c_int,
            )
        };
        if ret < 0 {
            return Err(tap_error(
                &self.name,
                &format!("set the vnet header size to {size}"),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Tells the kernel which offloads the reader handles (`TUNSETOFFLOAD` with `TUN_F_*`
    /// flags): with `TUN_F_CSUM` it may hand over frames with a partial checksum, with
    /// `TUN_F_TSO4`/`TSO6` (which need `TUN_F_CSUM`) large TCP segments. The setting is the
    /// device's, shared by all its queues.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(tap_error(
                &self.name,
                &format!("set offloads {flags:#x}"),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Attaches (`true`) or detaches this queue of a multi-queue tap (`TUNSETQUEUE`): the
    /// kernel steers frames only to attached queues. Fails on a single-queue tap.
    pub fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        let mut ifr = ifreq("");
        let flag = if enabled {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        ifr.ifr_ifru.ifru_flags = flag as libc::c_short;
        // SAFETY: TUNSETQUEUE reads an `ifreq`, valid for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETQUEUE, &mut ifr) };
        if ret < 0 {
            let op = if enabled {
                "attach the queue"
            } else {
                "detach the queue"
            };
            return Err(tap_error(&self.name, op, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Gives the host side of the tap an IPv4 address and netmask (`SIOCSIFADDR`,
    /// `SIOCSIFNETMASK`), in the calling thread's network namespace.
    pub fn configure(&self, ip: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
        let sock = inet_socket().map_err(|e| tap_error(&self.name, "open an AF_INET socket", e))?;
        let mut ifr = ifreq(&self.name);
        ifr.ifr_ifru.ifru_addr = sockaddr_v4(ip);
        ifreq_ioctl(&sock, libc::SIOCSIFADDR, &mut ifr)
            .map_err(|e| tap_error(&self.name, &format!("set address {ip}"), e))?;
        let mut ifr = ifreq(&self.name);
        ifr.ifr_ifru.ifru_netmask = sockaddr_v4(netmask);
        ifreq_ioctl(&sock, libc::SIOCSIFNETMASK, &mut ifr)
            .map_err(|e| tap_error(&self.name, &format!("set netmask {netmask}"), e))?;
        Ok(())
    }

    /// Brings the host side of the tap up (`IFF_UP`), in the calling thread's network
    /// namespace.
    pub fn up(&self) -> io::Result<()> {
        let sock = inet_socket().map_err(|e| tap_error(&self.name, "open an AF_INET socket", e))?;
        let mut ifr = ifreq(&self.name);
        ifreq_ioctl(&sock, libc::SIOCGIFFLAGS, &mut ifr)
            .map_err(|e| tap_error(&self.name, "read the interface flags", e))?;
        // SAFETY: SIOCGIFFLAGS succeeded, so the kernel wrote the flags member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        if flags & libc::IFF_UP as libc::c_short != 0 {
            // Already up (a tap made beforehand for an unprivileged user): nothing to change,
            // and nothing that needs CAP_NET_ADMIN.
            return Ok(());
        }
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        ifreq_ioctl(&sock, libc::SIOCSIFFLAGS, &mut ifr)
            .map_err(|e| tap_error(&self.name, "bring the interface up", e))?;
        Ok(())
    }

    /// The MAC address of the host side of the tap (`SIOCGIFHWADDR`), in the calling
    /// thread's network namespace.
    pub fn host_mac(&self) -> io::Result<[u8; 6]> {
        let sock = inet_socket().map_err(|e| tap_error(&self.name, "open an AF_INET socket", e))?;
        let mut ifr = ifreq(&self.name);
        ifreq_ioctl(&sock, libc::SIOCGIFHWADDR, &mut ifr)
            .map_err(|e| tap_error(&self.name, "read the MAC address", e))?;
        // SAFETY: SIOCGIFHWADDR succeeded, so the kernel wrote the hwaddr member.
        let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, &d) in mac.iter_mut().zip(data.iter()) {
            *m = d as u8;
        }
        Ok(mac)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Reads one frame (with its virtio-net header) per call; `WouldBlock` when none is queued.
impl Read for &Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }
}

/// Writes one frame (with its virtio-net header) per call.
impl Write for &Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::NetNs;

    fn raw_tun(flags: libc::c_int, name: &str) -> io::Result<OwnedFd> {
        let file = OpenOptions::new().read(true).write(true).open(TUN_DEVICE)?;
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: valid `ifreq`, outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from(file))
    }

    #[test]
    fn open_named_tap_and_configure_it() {
        let ns = NetNs::new();
        let taps = ns.run(|| {
            let taps = Tap::open(Some("pal0"), 1).unwrap();
            assert_eq!(taps.len(), 1);
            assert_eq!(taps[0].name(), "pal0");
            taps[0]
                .configure(Ipv4Addr::new(10, 9, 8, 1), Ipv4Addr::new(255, 255, 255, 0))
                .unwrap();
            taps[0].up().unwrap();
            let mac = taps[0].host_mac().unwrap();
            assert_ne!(mac, [0; 6]);
            taps
        });
        let addr = ns.ip(&["-4", "-o", "addr", "show", "dev", "pal0"]);
        assert!(addr.contains("inet 10.9.8.1/24"), "{addr}");
        let link = ns.ip(&["-o", "link", "show", "dev", "pal0"]);
        assert!(link.contains(",UP"), "{link}");
        // The fd is non-blocking: reading an empty tap does not hang.
        let mut buf = [0u8; 64];
        let err = (&taps[0]).read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // A tap created here disappears with its last descriptor (the kernel unregisters
        // the device a moment later, so this waits a bounded time for it).
        drop(taps);
        let gone = || {
            !std::process::Command::new("ip")
                .args(["-n", ns.name(), "link", "show", "dev", "pal0"])
                .output()
                .unwrap()
                .status
                .success()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "pal0 outlived its descriptors"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn kernel_picks_a_name() {
        let ns = NetNs::new();
        ns.run(|| {
            for name in [None, Some("")] {
                let taps = Tap::open(name, 1).unwrap();
                assert!(taps[0].name().starts_with("tap"), "{}", taps[0].name());
            }
        });
    }

    #[test]
    fn multi_queue_tap_has_one_fd_per_queue() {
        let ns = NetNs::new();
        ns.run(|| {
            let taps = Tap::open(None, 3).unwrap();
            assert_eq!(taps.len(), 3);
            assert!(taps.iter().all(|t| t.name() == taps[0].name()));
            let fds: Vec<RawFd> = taps.iter().map(|t| t.as_raw_fd()).collect();
            assert!(fds[0] != fds[1] && fds[1] != fds[2]);
            // Queues can be detached and attached again; detaching twice fails.
            taps[2].set_queue_enabled(false).unwrap();
            assert!(taps[2].set_queue_enabled(false).is_err());
            taps[2].set_queue_enabled(true).unwrap();
            // A single-queue tap cannot be attached with several queues.
            let single = Tap::open(Some("single0"), 1).unwrap();
            let err = Tap::open(Some("single0"), 2).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("tap single0"), "{msg}");
            assert!(msg.contains("multi_queue"), "{msg}");
            drop(single);
        });
    }

    #[test]
    fn names_and_queue_counts_are_validated() {
        for name in ["a-name-that-is-too-long", "a/b", "a b", "x\0y", "a:1", ".."] {
            let err = Tap::open(Some(name), 1).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
        let err = Tap::open(Some("ok0"), 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn offloads() {
        let ns = NetNs::new();
        ns.run(|| {
            let tap = Tap::open(None, 1).unwrap().remove(0);
            tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
                .unwrap();
            tap.set_offload(0).unwrap();
            // TSO without checksum offload, or an unknown flag, is refused; the error names
            // the tap and the operation.
            let err = tap.set_offload(1 << 30).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(tap.name()) && msg.contains("set offloads"),
                "{msg}"
            );
        });
    }

    #[test]
    fn from_fd_accepts_a_tap_and_rejects_the_rest() {
        let ns = NetNs::new();
        ns.run(|| {
            let tap = Tap::open(Some("given0"), 1).unwrap().remove(0);
            // SAFETY: dup of a descriptor we own; the copy is owned by the OwnedFd.
            let dup = unsafe { libc::dup(tap.as_raw_fd()) };
            assert!(dup >= 0);
            // SAFETY: `dup` is a fresh descriptor owned by nobody else.
            let adopted = Tap::from_fd(unsafe { OwnedFd::from_raw_fd(dup) }).unwrap();
            assert_eq!(adopted.name(), "given0");

            // A blocking descriptor opened by a "supervisor" becomes non-blocking.
            let fd = raw_tun(
                libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
                "given1",
            )
            .unwrap();
            let adopted = Tap::from_fd(fd).unwrap();
            assert_eq!(adopted.name(), "given1");
            let mut buf = [0u8; 64];
            assert_eq!(
                (&adopted).read(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );

            // Not a tun/tap at all.
            let not_tap = OwnedFd::from(File::open("/dev/null").unwrap());
            let msg = Tap::from_fd(not_tap).unwrap_err().to_string();
            assert!(msg.contains("not attached to a tap"), "{msg}");
            // /dev/net/tun opened but never attached.
            let unattached = OwnedFd::from(File::open(TUN_DEVICE).unwrap());
            assert!(Tap::from_fd(unattached).is_err());
            // A tun (layer 3) device.
            let tun = raw_tun(libc::IFF_TUN | libc::IFF_NO_PI, "tun9").unwrap();
            let msg = Tap::from_fd(tun).unwrap_err().to_string();
            assert!(
                msg.contains("tun9") && msg.contains("tun (layer 3)"),
                "{msg}"
            );
            // A tap without the virtio-net header.
            let plain = raw_tun(libc::IFF_TAP | libc::IFF_NO_PI, "plain0").unwrap();
            let msg = Tap::from_fd(plain).unwrap_err().to_string();
            assert!(
                msg.contains("plain0") && msg.contains("IFF_VNET_HDR"),
                "{msg}"
            );
        });
    }

    /// Drops CAP_NET_ADMIN from the calling thread's effective capabilities.
    fn drop_net_admin() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        const CAP_NET_ADMIN: u32 = 12;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget fills two `Data` for version 3; both pointers are valid.
        let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        assert_eq!(ret, 0, "capget: {}", io::Error::last_os_error());
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        // SAFETY: capset reads the header and two `Data`; it affects only this thread.
        let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        assert_eq!(ret, 0, "capset: {}", io::Error::last_os_error());
    }

    #[test]
    fn without_cap_net_admin_the_error_says_so() {
        let ns = NetNs::new();
        ns.run(|| {
            drop_net_admin();
            let msg = Tap::open(Some("nocap0"), 1).unwrap_err().to_string();
            assert!(
                msg.contains("tap nocap0") && msg.contains("CAP_NET_ADMIN"),
                "{msg}"
            );
        });
    }

    #[test]
    fn errors_name_the_tap_and_operation() {
        let ns = NetNs::new();
        ns.run(|| {
            let tap = Tap::open(Some("err0"), 1).unwrap().remove(0);
            let err = tap
                .configure(Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(255, 0, 255, 0))
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("tap err0") && msg.contains("netmask 255.0.255.0"),
                "{msg}"
            );
        });
    }
}
