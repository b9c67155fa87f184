//! The frontend side of vhost-user, through the rust-vmm `vhost` crate: a device whose
//! queues a backend process serves (virtiofsd for virtio-fs) on guest memory it maps from the
//! descriptors sent to it.
//!
//! The exchange happens in three places, each with only what it needs:
//! - the handshake ([`handshake`]: owner, features, protocol features, queue count) runs on
//!   the VMM's connector thread right after it connects, so that the device knows what it
//!   may offer the driver before the guest looks;
//! - the driver's activation and reset come on a vCPU thread, which only records them and
//!   wakes the device's worker;
//! - the worker then has the backend told (memory table, rings, kick and call eventfds,
//!   enabling) through its [`Carrier`]: the VMM runs the exchange on its connector thread,
//!   the only one whose filter lets it message a backend, so device threads (and the VMM
//!   thread, whose filter every later thread inherits) never message anyone. The worker
//!   relays the backend's call eventfds to the driver as queue interrupts.
//!
//! Every message has a timeout (the socket's), so a backend that stops answering costs an
//! error, never a stuck thread; a backend that closes its socket is noticed and reported.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::ActiveQueue;

/// The vhost-user feature bit saying the backend has protocol features.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// How long a device waits for its carrier to finish one exchange (each message has its
/// own, shorter, socket timeout).
const CARRY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a job where messaging the backend is allowed (the VMM's connector thread).
pub type Carrier = Arc<dyn Fn(Box<dyn FnOnce() + Send>) -> Result<(), String> + Send + Sync>;

/// Runs `job` through `carrier` and waits for its result.
fn carry<R: Send + 'static>(
    carrier: &Carrier,
    job: impl FnOnce() -> Result<R, String> + Send + 'static,
) -> Result<R, String> {
    let (tx, rx) = mpsc::channel();
    carrier(Box::new(move || {
        let _ = tx.send(job());
    }))?;
    rx.recv_timeout(CARRY_TIMEOUT)
        .map_err(|_| "the backend exchange did not finish in time".to_string())?
}

/// One ring as the backend is told of it.
struct Ring {
    index: usize,
    size: u16,
    base: u16,
    addrs: VringConfigData,
    call: Arc<EventFd>,
    kick: Arc<EventFd>,
}

/// A backend after the handshake.
pub struct Backend {
    frontend: Frontend,
    carrier: Option<Carrier>,
    /// The virtio features the backend offers.
    pub features: u64,
    fd: RawFd,
    num_queues: usize,
    started: bool,
}

/// Takes ownership of the backend on `stream` for a device of `num_queues` queues: sets the
/// owner, reads its features, and agrees on protocol features (multiple queues, replies to
/// every request); checks it has enough queues.
pub fn handshake(stream: UnixStream, num_queues: usize) -> Result<Backend, String> {
    let fd = stream.as_raw_fd();
    let mut frontend = Frontend::from_stream(stream, num_queues as u64);
    let err = |what: &'static str| move |e: vhost::Error| format!("{what}: {e}");
    frontend.set_owner().map_err(err("SET_OWNER"))?;
    let features = frontend.get_features().map_err(err("GET_FEATURES"))?;
    if features & F_PROTOCOL_FEATURES != 0 {
        let offered = frontend
            .get_protocol_features()
            .map_err(err("GET_PROTOCOL_FEATURES"))?;
        let protocol =
            offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
        frontend
            .set_protocol_features(protocol)
            .map_err(err("SET_PROTOCOL_FEATURES"))?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every request is acknowledged: a refusal is an error here, not a silent loss.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
            if n < num_queues as u64 {
                return Err(format!(
                    "the backend serves {n} queues, the device needs {num_queues}"
                ));
            }
        }
    }
    if features & super::F_VERSION_1 == 0 {
        return Err("the backend does not offer VIRTIO_F_VERSION_1".into());
    }
    Ok(Backend {
        frontend,
        carrier: None,
        features,
        fd,
        num_queues,
        started: false,
    })
}

impl Backend {
    /// The socket (to watch for the backend going away, and for the worker's filter).
    pub fn socket_fd(&self) -> RawFd {
        self.fd
    }

    /// Sets where the backend exchanges after the handshake run.
    pub fn set_carrier(&mut self, carrier: Carrier) {
        self.carrier = Some(carrier);
    }

    fn carry<R: Send + 'static>(
        &self,
        job: impl FnOnce(Frontend) -> Result<R, String> + Send + 'static,
    ) -> Result<R, String> {
        let carrier = self
            .carrier
            .as_ref()
            .ok_or_else(|| "no way to reach the backend".to_string())?;
        let frontend = self.frontend.clone();
        carry(carrier, move || job(frontend))
    }

    /// Hands the driver's queues to the backend: `acked` features, the memory table, each
    /// ring with its kick (`notify`) and call (`calls[index]`) eventfds; then enables them.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        queues: &[ActiveQueue],
        calls: &[Arc<EventFd>],
        max_size: u16,
    ) -> Result<(), String> {
        let mut rings = Vec::with_capacity(queues.len());
        for q in queues {
            let index = usize::from(q.index);
            let call = calls
                .get(index)
                .ok_or_else(|| format!("queue {index} does not exist"))?
                .clone();
            let host = |addr: u64, what: &str| {
                mem.get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|_| format!("queue {index}: its {what} is outside guest memory"))
            };
            rings.push(Ring {
                index,
                size: q.queue.size(),
                base: q.queue.next_avail(),
                addrs: VringConfigData {
                    queue_max_size: max_size,
                    queue_size: q.queue.size(),
                    flags: 0,
                    desc_table_addr: host(q.queue.desc_table(), "descriptor table")?,
                    used_ring_addr: host(q.queue.used_ring(), "used ring")?,
                    avail_ring_addr: host(q.queue.avail_ring(), "available ring")?,
                    log_addr: None,
                },
                call,
                kick: q.notify.clone(),
            });
        }
        let regions = memory_regions(mem)?;
        let features = acked | (self.features & F_PROTOCOL_FEATURES);
        let enable = self.features & F_PROTOCOL_FEATURES != 0;
        // Marked first: a reset after a start that failed half-way still stops the rings.
        self.started = true;
        self.carry(move |mut f| {
            let err = |what: &'static str| move |e: vhost::Error| format!("{what}: {e}");
            f.set_features(features).map_err(err("SET_FEATURES"))?;
            f.set_mem_table(&regions).map_err(err("SET_MEM_TABLE"))?;
            for r in &rings {
                f.set_vring_num(r.index, r.size)
                    .map_err(err("SET_VRING_NUM"))?;
                f.set_vring_addr(r.index, &r.addrs)
                    .map_err(err("SET_VRING_ADDR"))?;
                f.set_vring_base(r.index, r.base)
                    .map_err(err("SET_VRING_BASE"))?;
                f.set_vring_call(r.index, &r.call)
                    .map_err(err("SET_VRING_CALL"))?;
                f.set_vring_kick(r.index, &r.kick)
                    .map_err(err("SET_VRING_KICK"))?;
                if enable {
                    f.set_vring_enable(r.index, true)
                        .map_err(err("SET_VRING_ENABLE"))?;
                }
            }
            Ok(())
        })
    }

    /// Tells the backend guest memory is now `mem` (memory hot-plug).
    pub fn set_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), String> {
        let regions = memory_regions(mem)?;
        self.carry(move |f| {
            f.set_mem_table(&regions)
                .map(|_| ())
                .map_err(|e| format!("SET_MEM_TABLE: {e}"))
        })
    }

    /// Stops every ring the backend serves (driver reset): it lets go of them before the
    /// driver sets them up again.
    pub fn stop(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.started) {
            return Ok(());
        }
        let (n, enable) = (self.num_queues, self.features & F_PROTOCOL_FEATURES != 0);
        self.carry(move |mut f| {
            for index in 0..n {
                if enable {
                    f.set_vring_enable(index, false)
                        .map_err(|e| format!("SET_VRING_ENABLE: {e}"))?;
                }
                f.get_vring_base(index)
                    .map_err(|e| format!("GET_VRING_BASE: {e}"))?;
            }
            Ok(())
        })
    }
}

/// The memory table of `mem`: each region with the descriptor the backend maps it from.
fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, String> {
    mem.iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("guest memory cannot be shared with the backend: {e}"))
}

/// Whether the backend's socket says it went away (closed or reset), without reading.
pub fn backend_gone(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd that outlives the call; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
}
