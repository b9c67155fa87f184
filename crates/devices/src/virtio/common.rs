//! What every virtio device model shares, kept in one place: its type and name, the sizes of
//! its queues, the features it offers and those the driver accepted, its configuration
//! space, and the checks an activation goes through. A device embeds a [`VirtioCommon`] and
//! hands it out through [`VirtioDevice::common`]; the trait's provided methods answer the
//! transport from it, so a device writes only what is its own.

use vm_memory::GuestMemoryMmap;

use super::queue::enabled_queues;
#[cfg(doc)]
use super::VirtioDevice;
use super::{ActivateError, ActiveQueue, F_RING_EVENT_IDX};

/// The state and plumbing every virtio device has.
#[derive(Clone, Debug)]
pub struct VirtioCommon {
    /// The virtio device type (e.g. [`super::TYPE_BLOCK`]).
    pub device_type: u32,
    /// The name logs and errors use (`virtio-blk`, …).
    pub name: &'static str,
    /// The largest size of each queue; its length is the number of queues.
    pub queue_sizes: Vec<u16>,
    /// The feature bits offered.
    pub avail_features: u64,
    /// The feature bits the driver accepted (a subset of `avail_features`).
    pub acked_features: u64,
    /// The device-specific configuration space.
    pub config: Vec<u8>,
}

impl VirtioCommon {
    /// A device of `device_type` named `name` with queues of `queue_sizes`, offering
    /// `avail_features`, with configuration space `config`.
    pub fn new(
        device_type: u32,
        name: &'static str,
        queue_sizes: Vec<u16>,
        avail_features: u64,
        config: Vec<u8>,
    ) -> Self {
        VirtioCommon {
            device_type,
            name,
            queue_sizes,
            avail_features,
            acked_features: 0,
            config,
        }
    }

    /// Whether the driver accepted every bit of `features`.
    pub fn acked(&self, features: u64) -> bool {
        self.acked_features & features == features
    }

    /// Records the driver's features, keeping only those offered.
    pub fn ack(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Reads the configuration space from `offset`; bytes beyond it read as zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    /// Logs a configuration write the device ignores.
    pub fn ignore_config_write(&self, offset: u64, data: &[u8]) {
        super::log_ignored_config_write(self.name, offset, data);
    }

    /// The queues the driver enabled, checked against the device's queue count and guest
    /// memory, with event-index suppression as negotiated (see [`enabled_queues`]).
    pub fn enabled_queues(
        &self,
        queues: Vec<ActiveQueue>,
        mem: &GuestMemoryMmap,
    ) -> Result<Vec<ActiveQueue>, ActivateError> {
        let event_idx = self.acked(F_RING_EVENT_IDX);
        enabled_queues(self.name, self.queue_sizes.len(), queues, mem, event_idx)
    }

    /// Forgets the driver's features (device reset).
    pub fn reset(&mut self) {
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_config_and_reset() {
        let mut c = VirtioCommon::new(4, "virtio-test", vec![8, 16], 0b1011, vec![1, 2, 3]);
        c.ack(0b1110);
        assert_eq!(c.acked_features, 0b1010, "only offered bits are kept");
        assert!(c.acked(0b1000) && c.acked(0b1010) && !c.acked(0b0100));
        let mut data = [0xee; 4];
        c.read_config(1, &mut data);
        assert_eq!(data, [2, 3, 0, 0]);
        c.read_config(u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
        c.reset();
        assert_eq!(c.acked_features, 0);
    }
}
