//! What a snapshot keeps of a virtio PCI device, and how a fresh device takes it back.
//!
//! The transport's registers (feature negotiation, each queue's set-up, vectors, status),
//! the MSI-X table and the device's configuration space are kept; the queues' positions are
//! not, since guest memory holds them (the used index), and a device whose driver was live
//! is activated again from there. Everything is checked as guest input is: a state that does
//! not fit the device is refused before anything changes.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{status, QueueSetup, VirtioPci, NO_VECTOR};
use crate::pci::msix::MsixState;

/// One queue's set-up as the driver wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSetupState {
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver enabled it.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available (driver) ring address.
    pub driver: u64,
    /// Used (device) ring address.
    pub device: u64,
    /// Its MSI-X vector.
    pub vector: u16,
}

/// The transport registers, MSI-X and device configuration of one virtio PCI device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// The virtio device type (checked on restore).
    pub device_type: u32,
    /// Device status byte.
    pub status: u8,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// Feature select registers (device, driver).
    pub feature_select: (u32, u32),
    /// Selected queue.
    pub queue_select: u16,
    /// Configuration generation.
    pub config_generation: u8,
    /// The configuration-change vector.
    pub config_vector: u16,
    /// Interrupt status bits not yet read.
    pub isr: u8,
    /// Each queue's set-up.
    pub queues: Vec<QueueSetupState>,
    /// The MSI-X table and control.
    pub msix: MsixState,
    /// The device-specific configuration space as the guest reads it.
    pub device_config: Vec<u8>,
}

impl VirtioPci {
    /// The device's transport state, for a snapshot (the caller holds the device still).
    pub fn state(&self) -> VirtioPciState {
        let device = self.device.lock();
        let mut device_config = vec![0u8; device.common().config.len()];
        device.read_config(0, &mut device_config);
        VirtioPciState {
            device_type: device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            feature_select: (self.device_feature_select, self.driver_feature_select),
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            config_vector: self.interrupts.config_vector.load(Ordering::Acquire),
            isr: self.interrupts.isr.load(Ordering::Acquire),
            queues: self
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| QueueSetupState {
                    size: q.size,
                    enabled: q.enabled,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                    vector: self.interrupts.queue_vector(i),
                })
                .collect(),
            msix: self.msix.state(),
            device_config,
        }
    }

    /// Why `state` cannot be this device's, if it cannot.
    fn check_state(&self, state: &VirtioPciState) -> Result<(), String> {
        let device_type = self.device.lock().device_type();
        if state.device_type != device_type {
            return Err(format!(
                "the snapshot has a device of virtio type {} here, the VM one of type {device_type}",
                state.device_type
            ));
        }
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "the snapshot's device has {} queues, this one {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        for (i, (q, setup)) in state.queues.iter().zip(&self.queues).enumerate() {
            if !q.size.is_power_of_two() || q.size > setup.max_size {
                return Err(format!(
                    "queue {i} has size {} in the snapshot; at most {} here",
                    q.size, setup.max_size
                ));
            }
        }
        let vectors =
            std::iter::once(state.config_vector).chain(state.queues.iter().map(|q| q.vector));
        if let Some(v) = vectors
            .into_iter()
            .find(|&v| v != NO_VECTOR && v >= self.msix.count())
        {
            return Err(format!("MSI-X vector {v} does not exist on this device"));
        }
        self.msix.check_state(&state.msix)
    }

    /// Takes `state` (a snapshot's) into this freshly built device: the transport's
    /// registers, MSI-X routed as the table says, the configuration space written back as
    /// the driver would, and, if the driver was live, the device activated where its queues
    /// stood. The PCI configuration space (BARs, command, MSI-X enable) is the caller's,
    /// through the bus. Refused, changing nothing, when the state does not fit the device.
    pub fn restore(&mut self, state: &VirtioPciState) -> Result<(), String> {
        if self.activated || self.status != 0 {
            return Err(
                "the device is in use: only a fresh device takes a snapshot's state".into(),
            );
        }
        self.check_state(state)?;
        self.msix.restore(&state.msix)?;
        (self.device_feature_select, self.driver_feature_select) = state.feature_select;
        self.driver_features = state.driver_features;
        self.queue_select = state.queue_select;
        self.config_generation = state.config_generation;
        self.interrupts
            .config_vector
            .store(state.config_vector, Ordering::Release);
        self.interrupts.isr.store(state.isr, Ordering::Release);
        for (i, (q, setup)) in state.queues.iter().zip(self.queues.iter_mut()).enumerate() {
            *setup = QueueSetup {
                max_size: setup.max_size,
                size: q.size,
                enabled: q.enabled,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
            };
            self.interrupts.queue_vectors[i].store(q.vector, Ordering::Release);
        }
        let features_ok = state.status & status::FEATURES_OK != 0;
        {
            let mut device = self.device.lock();
            if features_ok {
                device.ack_features(self.driver_features);
            }
            device.restore_config(&state.device_config);
        }
        self.status = state.status;
        let live = features_ok
            && state.status & status::DRIVER_OK != 0
            && state.status & status::DEVICE_NEEDS_RESET == 0;
        if live {
            self.activate(true);
            if !self.activated {
                return Err("the device could not be activated with the snapshot's queues".into());
            }
            self.device.lock().resumed();
            // Whatever the driver made available while the snapshot was taken is looked at.
            for evt in self.device.notify_eventfds() {
                let _ = evt.write(1);
            }
        }
        Ok(())
    }
}
