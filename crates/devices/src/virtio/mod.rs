//! Virtio devices and the contract between a device model and its PCI transport.
//!
//! A device model implements [`VirtioDevice`]: it advertises its type, features, queues and
//! configuration space; once the driver sets DRIVER_OK the transport hands it the guest
//! memory, its queues with their notification eventfds, and a [`VirtioInterrupt`] to signal
//! used buffers. The device's own worker thread ([`worker`]) then calls
//! [`VirtioDevice::process_queue`] whenever a queue's eventfd fires. Everything a guest controls (descriptor chains, addresses, lengths) is
//! untrusted: a malformed request fails that request, never the device or the VMM.

pub mod balloon;
pub mod block;
pub mod common;
pub mod console;
pub mod fs;
mod iov;
pub mod net;
pub mod pci;
pub mod pmem;
mod queue;
pub mod rng;
#[cfg(test)]
mod test_driver;
pub mod vhost_user;
pub mod vsock;
pub mod worker;

use std::sync::Arc;

pub use common::VirtioCommon;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Virtio device type: block.
pub const TYPE_BLOCK: u32 = 2;
/// Virtio device type: network.
pub const TYPE_NET: u32 = 1;
/// Virtio device type: console.
pub const TYPE_CONSOLE: u32 = 3;
/// Virtio device type: entropy source.
pub const TYPE_RNG: u32 = 4;

/// Feature bit: virtio 1.0 or later (mandatory for modern devices).
pub const F_VERSION_1: u64 = 1 << 32;
/// Feature bit: the device may access only memory the driver gives it (no IOMMU bypass).
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Feature bit: descriptors may be indirect tables.
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit: used/avail event index suppression.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;

/// Largest queue size of a split virtqueue.
const MAX_QUEUE_SIZE: u16 = 32768;

/// Whether `size` can be a device's largest queue size: a power of two from 2 to 32768.
fn queue_size_is_valid(size: u16) -> bool {
    (2..=MAX_QUEUE_SIZE).contains(&size) && size.is_power_of_two()
}

/// Reads `data.len()` bytes of a configuration space held in `config`, from `offset`; bytes
/// beyond its end (and at offsets that overflow) read as zero.
fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// Logs (at debug level) a configuration write the device `device` ignores.
fn log_ignored_config_write(device: &str, offset: u64, data: &[u8]) {
    log::debug!(
        "{device}: ignoring a {}-byte configuration write at {offset:#x}",
        data.len()
    );
}

/// The counters a device reports through [`VirtioDevice::counters`], by name.
fn counters_map(counters: &[(&str, u64)]) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    for &(name, value) in counters {
        m.insert(name.into(), value.into());
    }
    m
}

/// What an interrupt is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptCause {
    /// Queue `n` has new used buffers.
    Queue(u16),
    /// The configuration space changed.
    Config,
}

/// Raises the device's interrupts (the transport routes them to MSI-X vectors).
pub trait VirtioInterrupt: Send + Sync {
    /// Signals the driver.
    fn trigger(&self, cause: InterruptCause);
}

/// A queue handed to an activated device.
pub struct ActiveQueue {
    /// The queue's index.
    pub index: u16,
    /// The queue (addresses and size as the driver set them).
    pub queue: Queue,
    /// Written by KVM (ioeventfd) or the transport when the driver notifies the queue.
    pub notify: Arc<EventFd>,
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set the device up in a way it cannot work with.
    #[error("virtio device cannot be activated: {0}")]
    Invalid(String),
    /// A host resource failed.
    #[error("virtio device cannot be activated: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// What the device shares with every other ([`VirtioCommon`]).
    fn common(&self) -> &VirtioCommon;
    /// The same, to change.
    fn common_mut(&mut self) -> &mut VirtioCommon;
    /// The virtio device type (e.g. [`TYPE_BLOCK`]).
    fn device_type(&self) -> u32 {
        self.common().device_type
    }
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16> {
        self.common().queue_sizes.clone()
    }
    /// The feature bits the device offers.
    fn features(&self) -> u64 {
        self.common().avail_features
    }
    /// The feature bits the driver accepted (kept: those of [`VirtioDevice::features`]).
    fn ack_features(&mut self, features: u64) {
        self.common_mut().ack(features);
    }
    /// Reads the device-specific configuration space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.common().read_config(offset, data);
    }
    /// Writes the device-specific configuration space; by default writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.common().ignore_config_write(offset, data);
    }
    /// Takes back what the driver had written into the configuration space, from a
    /// snapshot's copy of the whole space (`config`); most devices have nothing the driver
    /// writes, and keep what their host side says.
    fn restore_config(&mut self, _config: &[u8]) {}
    /// The device was just activated from a snapshot (its driver was live when it was
    /// taken): host state the snapshot could not carry (connections) is reported lost.
    fn resumed(&mut self) {}
    /// Starts the device with the driver's queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// Guest memory grew (memory hot-plug): an active device reaches the driver's buffers
    /// through `mem` from then on. Required, so that no device keeps a view of guest memory
    /// without the hot-plugged part.
    fn set_memory(&mut self, mem: GuestMemoryMmap);
    /// Stops the device and forgets its queues (driver reset). Host resources stay open.
    fn reset(&mut self);
    /// Handles the driver's notification of queue `index` (called on the device's worker thread).
    fn process_queue(&mut self, index: u16);
    /// Host descriptors the device wants watched once active (a tap, a console's input),
    /// each with a token. They are watched edge-triggered: when called, the device must
    /// consume everything it can, and come back to the rest on its own (for example when
    /// the driver adds receive buffers).
    fn host_fds(&self) -> Vec<(std::os::fd::RawFd, u32)> {
        Vec::new()
    }
    /// The host descriptor with `token` is ready (called on the device's worker thread).
    fn process_host(&mut self, _token: u32) {}
    /// The host descriptor with `token` is ready while the driver has not activated the
    /// device (or since it reset it): most devices have nothing to do then.
    fn process_host_idle(&mut self, _token: u32) {}
    /// Whether the device's worker serves its queues (false when a vhost-user backend
    /// does, and reads their notifications itself).
    fn serves_queues(&self) -> bool {
        true
    }
    /// Requests taken from the driver whose I/O has not finished (a snapshot waits for
    /// none to be left, so that guest memory holds every answer).
    fn in_flight(&self) -> usize {
        0
    }
    /// Counters for `vm.counters`, by name.
    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
    /// Changes the size of what backs the device to `bytes` (`vm.resize-disk`), telling a
    /// live driver; devices without a size refuse.
    fn resize(&mut self, _bytes: u64) -> Result<(), String> {
        Err("it is not a disk: only disks can be resized".into())
    }
}
