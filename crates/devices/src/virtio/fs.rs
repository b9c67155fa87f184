//! The virtio file system device (virtio 1.2, 5.11) with its queues served by a vhost-user
//! backend (virtiofsd): the device model owns the configuration space (the tag the guest
//! mounts by and the number of request queues), the features the backend offers, and the
//! plumbing of [`super::vhost_user`]; the FUSE requests never pass through Palisade.
//!
//! Host descriptors the worker watches: its wake-up eventfd (an activation, reset or new
//! memory to pass on), the backend's socket (to notice it going away) and one call eventfd
//! per queue, which the backend signals and the worker turns into that queue's interrupt.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vhost_user::{backend_gone, Backend};
use super::{
    counters_map, ActivateError, ActiveQueue, InterruptCause, VirtioCommon, VirtioDevice,
    VirtioInterrupt, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
};

/// The virtio device type of a file system.
pub const TYPE_FS: u32 = 26;
/// Bytes of the tag in the configuration space.
pub const TAG_LEN: usize = 36;
/// Features passed through from the backend to the driver.
const PASSED_FEATURES: u64 = F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX;
const WAKE: u32 = 0;
const SOCKET: u32 = 1;
const FIRST_CALL: u32 = 2;

struct Pending {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<ActiveQueue>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    interrupts: u64,
    errors: u64,
    backend_gone: u64,
}

/// A virtio-fs device whose queues a vhost-user backend serves.
pub struct VhostUserFs {
    common: VirtioCommon,
    backend: Backend,
    tag: String,
    calls: Vec<Arc<EventFd>>,
    wake: EventFd,
    pending: Option<Pending>,
    reset_pending: bool,
    memory_pending: Option<GuestMemoryMmap>,
    // The driver's interrupts while the backend serves its queues (the worker relays the
    // backend's calls to them).
    running: Option<Arc<dyn VirtioInterrupt>>,
    counters: Counters,
}

impl VhostUserFs {
    /// A device mounted as `tag` with `num_queues` request queues of `queue_size`, served by
    /// `backend` (after its handshake).
    pub fn new(
        backend: Backend,
        tag: &str,
        num_queues: u16,
        queue_size: u16,
    ) -> std::io::Result<Self> {
        let mut config = vec![0u8; TAG_LEN];
        let bytes = tag.as_bytes();
        let n = bytes.len().min(TAG_LEN);
        config[..n].copy_from_slice(&bytes[..n]);
        config.extend_from_slice(&u32::from(num_queues).to_le_bytes());
        // The high-priority queue, then the request queues.
        let total = usize::from(num_queues) + 1;
        let calls = (0..total)
            .map(|_| EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(VhostUserFs {
            common: VirtioCommon::new(
                TYPE_FS,
                "virtio-fs",
                vec![queue_size; total],
                backend.features & PASSED_FEATURES,
                config,
            ),
            backend,
            tag: tag.to_string(),
            calls,
            wake: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            pending: None,
            reset_pending: false,
            memory_pending: None,
            running: None,
            counters: Counters::default(),
        })
    }

    fn wake_worker(&self) {
        if let Err(e) = self.wake.write(1) {
            log::warn!("virtio-fs {}: cannot wake the device thread: {e}", self.tag);
        }
    }

    fn failed(&mut self, what: &str, e: String) {
        self.counters.errors += 1;
        log::error!("virtio-fs {}: {what}: {e}", self.tag);
    }

    /// What the vCPU threads asked for, told to the backend (on the worker).
    fn on_wake(&mut self) {
        let _ = self.wake.read();
        if std::mem::take(&mut self.reset_pending) {
            self.running = None;
            if let Err(e) = self.backend.stop() {
                self.failed("stopping the backend's queues", e);
            }
        }
        if let Some(p) = self.pending.take() {
            let acked = self.common.acked_features;
            let max = self.common.queue_sizes.first().copied().unwrap_or(0);
            match self
                .backend
                .start(acked, &p.mem, &p.queues, &self.calls, max)
            {
                Ok(()) => {
                    log::debug!("virtio-fs {}: the backend serves the queues", self.tag);
                    self.running = Some(p.interrupt);
                }
                Err(e) => self.failed("handing the queues to the backend", e),
            }
        }
        if let Some(mem) = self.memory_pending.take() {
            if self.running.is_some() {
                if let Err(e) = self.backend.set_memory(&mem) {
                    self.failed("passing the new memory on", e);
                }
            }
        }
    }
}

impl VirtioDevice for VhostUserFs {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if self.counters.backend_gone > 0 {
            return Err(ActivateError::Invalid(format!(
                "virtio-fs {}: its backend is gone",
                self.tag
            )));
        }
        let queues = self.common.enabled_queues(queues, &mem)?;
        self.pending = Some(Pending {
            mem,
            interrupt,
            queues,
        });
        self.wake_worker();
        Ok(())
    }

    fn set_memory(&mut self, mem: GuestMemoryMmap) {
        if let Some(p) = &mut self.pending {
            p.mem = mem.clone();
        }
        self.memory_pending = Some(mem);
        self.wake_worker();
    }

    fn reset(&mut self) {
        self.pending = None;
        self.reset_pending = true;
        self.common.reset();
        self.wake_worker();
    }

    fn process_queue(&mut self, _index: u16) {
        // The backend serves the queues (see `serves_queues`).
    }

    fn serves_queues(&self) -> bool {
        false
    }

    fn host_fds(&self) -> Vec<(std::os::fd::RawFd, u32)> {
        use std::os::fd::AsRawFd;
        let mut fds = vec![
            (self.wake.as_raw_fd(), WAKE),
            (self.backend.socket_fd(), SOCKET),
        ];
        for (i, call) in self.calls.iter().enumerate() {
            fds.push((call.as_raw_fd(), FIRST_CALL + i as u32));
        }
        fds
    }

    fn process_host(&mut self, token: u32) {
        match token {
            WAKE => self.on_wake(),
            SOCKET => {
                if self.counters.backend_gone == 0 && backend_gone(self.backend.socket_fd()) {
                    self.counters.backend_gone = 1;
                    self.running = None;
                    log::error!(
                        "virtio-fs {}: the backend closed its socket: the guest's file system \
                         stops answering; restart the backend and add the device again",
                        self.tag
                    );
                }
            }
            call => {
                let index = call - FIRST_CALL;
                let Some(evt) = self.calls.get(index as usize) else {
                    return;
                };
                // Drained even when nothing runs, so that it does not stay readable.
                if evt.read().is_ok() {
                    if let Some(interrupt) = &self.running {
                        self.counters.interrupts += 1;
                        interrupt.trigger(InterruptCause::Queue(index as u16));
                    }
                }
            }
        }
    }

    fn process_host_idle(&mut self, token: u32) {
        // A reset to pass on, or the backend going away, matter with no driver too.
        self.process_host(token);
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.counters;
        counters_map(&[
            ("backend_interrupts", c.interrupts),
            ("backend_errors", c.errors),
            ("backend_gone", c.backend_gone),
        ])
    }
}
