//! The virtio PCI transport (virtio 1.x "modern" interface, spec section 4.1).
//!
//! BAR 0 (64-bit, 32 KiB) holds, at fixed offsets:
//!
//! | offset | region |
//! | --- | --- |
//! | 0x0000 | common configuration (features, status, queue set-up) |
//! | 0x1000 | ISR status |
//! | 0x2000 | device-specific configuration |
//! | 0x3000 | queue notifications, 4 bytes per queue (`notify_off_multiplier` = 4) |
//! | 0x4000 | MSI-X table |
//! | 0x6000 | MSI-X pending-bit array |
//!
//! Each region is announced by a vendor-specific capability; the PCI configuration access
//! capability is present too, as the specification requires. The transport owns the device
//! status state machine and feature negotiation, and builds the queues it hands to the
//! device at DRIVER_OK.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::DeviceHandle;
use super::{ActiveQueue, InterruptCause, VirtioDevice, VirtioInterrupt, F_VERSION_1};
use crate::pci::msix::{MsiRouting, Msix, MsixVectors};
use crate::pci::{Bar, BarKind, BarMove, ConfigSpace, PciDevice, PciIdentity};

/// Size of BAR 0.
pub const BAR0_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x40;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_SIZE: u64 = 0x1000;
/// Where queue notifications start in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;

const VIRTIO_VENDOR: u16 = 0x1af4;
const DEVICE_ID_BASE: u16 = 0x1040;
/// "No vector" in msix_config and queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;

const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: queues are live.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an unrecoverable error.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// What the driver set up for one queue.
#[derive(Clone, Copy, Debug)]
struct QueueSetup {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueSetup {
    fn new(max_size: u16) -> Self {
        QueueSetup {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// Routes a device's interrupts to its MSI-X vectors (and the ISR for INTx-less drivers).
/// Device threads raise them without a lock: the vector numbers and the ISR are atomics,
/// and a vector is an irqfd write behind its mask gate.
struct Interrupts {
    vectors: Arc<MsixVectors>,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    isr: AtomicU8,
}

impl Interrupts {
    fn queue_vector(&self, index: usize) -> u16 {
        self.queue_vectors
            .get(index)
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }
}

impl VirtioInterrupt for Interrupts {
    fn trigger(&self, cause: InterruptCause) {
        let (vector, isr_bit) = match cause {
            InterruptCause::Queue(q) => (self.queue_vector(usize::from(q)), 1),
            InterruptCause::Config => (self.config_vector.load(Ordering::Acquire), 2),
        };
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        if vector != NO_VECTOR {
            self.vectors.trigger(vector);
        }
    }
}

/// A virtio device on PCI.
pub struct VirtioPci {
    config: ConfigSpace,
    msix_cap_offset: usize,
    msix: Msix,
    device: DeviceHandle,
    interrupts: Arc<Interrupts>,
    mem: GuestMemoryMmap,
    queues: Vec<QueueSetup>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    status: u8,
    config_generation: u8,
    activated: bool,
    initial_bar0: u64,
}

fn le_bytes(value: u64, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(i).copied().unwrap_or(0);
    }
}

fn from_le(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, b) in data.iter().take(8).enumerate() {
        bytes[i] = *b;
    }
    u64::from_le_bytes(bytes)
}

impl VirtioPci {
    /// Wraps `device`, whose MSI-X vectors get routes in `routing` and whose queues live in
    /// `mem`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        routing: Arc<dyn MsiRouting>,
    ) -> std::io::Result<Self> {
        let max_sizes = device.queue_max_sizes();
        let num_queues = max_sizes.len();
        // One vector per queue plus one for configuration changes.
        let msix = Msix::new(num_queues as u16 + 1, routing)?;
        let device_type = device.device_type();
        let mut config = ConfigSpace::new(PciIdentity {
            vendor: VIRTIO_VENDOR,
            device: DEVICE_ID_BASE + device_type as u16,
            revision: 1,
            class: class_of(device_type).0,
            subclass: class_of(device_type).1,
            prog_if: 0,
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x40,
        });
        config.add_bar(0, BAR0_SIZE, BarKind::Memory64);
        let vendor_cap = |cfg_type: u8, offset: u64, length: u64, extra: &[u8]| -> Vec<u8> {
            let mut cap = vec![
                CAP_VENDOR,
                0,
                (16 + extra.len()) as u8,
                cfg_type,
                0,
                0,
                0,
                0,
            ];
            cap.extend_from_slice(&(offset as u32).to_le_bytes());
            cap.extend_from_slice(&(length as u32).to_le_bytes());
            cap.extend_from_slice(extra);
            cap
        };
        config.add_capability(
            &vendor_cap(CFG_COMMON, COMMON_OFFSET, COMMON_SIZE, &[]),
            &[],
        );
        config.add_capability(&vendor_cap(CFG_ISR, ISR_OFFSET, 4, &[]), &[]);
        config.add_capability(
            &vendor_cap(CFG_DEVICE, DEVICE_OFFSET, DEVICE_SIZE, &[]),
            &[],
        );
        config.add_capability(
            &vendor_cap(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                num_queues as u64 * NOTIFY_MULTIPLIER as u64,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        );
        // The PCI configuration access capability: a window onto the BARs through
        // configuration space. Palisade exposes it, as required; its data is not wired.
        config.add_capability(&vendor_cap(CFG_PCI, 0, 0, &[0, 0, 0, 0]), &[0; 20]);
        let (cap, writable) = msix.capability(0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap_offset = config.add_capability(&cap, &writable);
        let notify = (0..num_queues)
            .map(|_| EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        let interrupts = Arc::new(Interrupts {
            vectors: msix.vectors(),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..num_queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            isr: AtomicU8::new(0),
        });
        Ok(VirtioPci {
            config,
            msix_cap_offset,
            msix,
            device: DeviceHandle::new(device, notify),
            interrupts,
            mem,
            queues: max_sizes.into_iter().map(QueueSetup::new).collect(),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            initial_bar0: 0,
        })
    }

    /// Guest memory grew: the next activation, and the device if active, use `mem`.
    pub fn set_memory(&mut self, mem: GuestMemoryMmap) {
        self.mem = mem.clone();
        self.device().set_memory(mem);
    }

    /// The queue notification eventfds, one per queue, in queue order.
    pub fn notify_eventfds(&self) -> &[Arc<EventFd>] {
        self.device.notify_eventfds()
    }

    /// The device model, locked (its worker thread waits meanwhile).
    pub fn device(&self) -> MutexGuard<'_, Box<dyn VirtioDevice>> {
        self.device.lock()
    }

    /// The device model as its worker thread shares it.
    pub fn handle(&self) -> DeviceHandle {
        self.device.clone()
    }

    /// Interrupts delivered to the guest so far.
    pub fn interrupts_delivered(&self) -> u64 {
        self.interrupts.vectors.delivered()
    }

    /// The driver status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Runs the device on queue `index` if it is live (what its worker does when the
    /// queue's eventfd fires).
    pub fn process_queue(&self, index: u16) {
        self.device.process_queue(index);
    }

    /// Runs the device on its host descriptor `token`, if it is live.
    pub fn process_host(&self, token: u32) {
        self.device.process_host(token);
    }

    fn device_reset(&mut self) {
        if self.activated {
            self.device.set_live(false);
            self.device.lock().reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        let max: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        self.queues = max.into_iter().map(QueueSetup::new).collect();
        self.interrupts
            .config_vector
            .store(NO_VECTOR, Ordering::Release);
        for v in &self.interrupts.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.interrupts.isr.store(0, Ordering::Release);
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.device_reset();
            return;
        }
        let mut value = value;
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            // Accept the features only if they are a subset of what we offer and include
            // VERSION_1; otherwise FEATURES_OK does not stick and the driver gives up.
            let offered = self.device.lock().features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                value &= !status::FEATURES_OK;
            } else {
                self.device.lock().ack_features(self.driver_features);
            }
        }
        self.status = value;
        if value & status::DRIVER_OK != 0 && value & status::FEATURES_OK != 0 && !self.activated {
            self.activate(false);
        }
    }

    /// Hands the driver's queues to the device. `resumed`: the queues were live in a
    /// snapshot, so each carries on from the used index the guest memory holds (chains the
    /// device had taken but not finished are taken again) rather than from zero.
    fn activate(&mut self, resumed: bool) {
        let mut active = Vec::new();
        for (i, setup) in self.queues.iter().enumerate() {
            if !setup.enabled {
                continue;
            }
            let mut queue = match Queue::new(setup.max_size) {
                Ok(q) => q,
                Err(e) => return self.fail(&format!("queue {i}: {e:?}")),
            };
            queue.set_size(setup.size);
            queue.set_desc_table_address(Some(setup.desc as u32), Some((setup.desc >> 32) as u32));
            queue.set_avail_ring_address(
                Some(setup.driver as u32),
                Some((setup.driver >> 32) as u32),
            );
            queue.set_used_ring_address(
                Some(setup.device as u32),
                Some((setup.device >> 32) as u32),
            );
            queue.set_event_idx(self.driver_features & super::F_RING_EVENT_IDX != 0);
            queue.set_ready(true);
            if !queue.is_valid(&self.mem) {
                return self.fail(&format!(
                    "queue {i} lies outside guest memory or is misaligned"
                ));
            }
            if resumed {
                match queue.used_idx(&self.mem, std::sync::atomic::Ordering::Acquire) {
                    Ok(used) => {
                        queue.set_next_avail(used.0);
                        queue.set_next_used(used.0);
                    }
                    Err(e) => return self.fail(&format!("queue {i}: used ring: {e:?}")),
                }
            }
            active.push(ActiveQueue {
                index: i as u16,
                queue,
                notify: self.device.notify_eventfds()[i].clone(),
            });
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupts.clone();
        let activated = self
            .device
            .lock()
            .activate(self.mem.clone(), interrupt, active);
        match activated {
            Ok(()) => {
                self.activated = true;
                self.device.set_live(true);
            }
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn fail(&mut self, why: &str) {
        log::warn!(
            "virtio device type {}: {why}",
            self.device.lock().device_type()
        );
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupts.trigger(InterruptCause::Config);
    }

    fn selected(&mut self) -> Option<&mut QueueSetup> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let features = self.device.lock().features();
        let q = self.queues.get(self.queue_select as usize).copied();
        let value: u64 = match offset {
            0x00 => self.device_feature_select as u64,
            0x04 => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            0x08 => self.driver_feature_select as u64,
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => self.interrupts.config_vector.load(Ordering::Acquire) as u64,
            0x12 => self.queues.len() as u64,
            0x14 => self.status as u64,
            0x15 => self.config_generation as u64,
            0x16 => self.queue_select as u64,
            0x18 => q.map_or(0, |q| q.size as u64),
            0x1a => q.map_or(NO_VECTOR as u64, |_| {
                self.interrupts
                    .queue_vector(self.queue_select as usize)
                    .into()
            }),
            0x1c => q.map_or(0, |q| q.enabled as u64),
            0x1e => self.queue_select as u64, // queue_notify_off: the queue's own index.
            0x20 => q.map_or(0, |q| q.desc),
            0x24 => q.map_or(0, |q| q.desc >> 32),
            0x28 => q.map_or(0, |q| q.driver),
            0x2c => q.map_or(0, |q| q.driver >> 32),
            0x30 => q.map_or(0, |q| q.device),
            0x34 => q.map_or(0, |q| q.device >> 32),
            _ => 0,
        };
        le_bytes(value, data);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let value = from_le(data);
        // Queue set-up is frozen once the driver is live.
        let live = self.status & status::DRIVER_OK != 0;
        let set_u64_half = |field: &mut u64, high: bool, v: u64| {
            *field = if high {
                (*field & 0xffff_ffff) | (v << 32)
            } else if data.len() == 8 {
                v
            } else {
                (*field & !0xffff_ffff) | (v & 0xffff_ffff)
            };
        };
        match offset {
            0x00 => self.device_feature_select = value as u32,
            0x08 => self.driver_feature_select = value as u32,
            0x0c if self.status & status::FEATURES_OK == 0 => match self.driver_feature_select {
                0 => {
                    self.driver_features =
                        (self.driver_features & !0xffff_ffff) | (value & 0xffff_ffff)
                }
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
                _ => {}
            },
            0x10 => {
                let vector = self.valid_vector(value as u16);
                self.interrupts
                    .config_vector
                    .store(vector, Ordering::Release)
            }
            0x14 => self.set_status(value as u8),
            0x16 => self.queue_select = value as u16,
            0x18 if !live => {
                if let Some(q) = self.selected() {
                    // A queue size must be a power of two no larger than the maximum.
                    let size = value as u16;
                    if size.is_power_of_two() && size <= q.max_size {
                        q.size = size;
                    }
                }
            }
            0x1a => {
                let vector = self.valid_vector(value as u16);
                let index = self.queue_select as usize;
                if let Some(v) = self.interrupts.queue_vectors.get(index) {
                    v.store(vector, Ordering::Release);
                }
            }
            0x1c if !live => {
                if let Some(q) = self.selected() {
                    q.enabled = value == 1;
                }
            }
            0x20 | 0x24 if !live => {
                if let Some(q) = self.selected() {
                    set_u64_half(&mut q.desc, offset == 0x24, value)
                }
            }
            0x28 | 0x2c if !live => {
                if let Some(q) = self.selected() {
                    set_u64_half(&mut q.driver, offset == 0x2c, value)
                }
            }
            0x30 | 0x34 if !live => {
                if let Some(q) = self.selected() {
                    set_u64_half(&mut q.device, offset == 0x34, value)
                }
            }
            _ => {}
        }
    }

    /// A vector the driver may use, or NO_VECTOR (which it then reads back, and knows).
    fn valid_vector(&self, vector: u16) -> u16 {
        let count = self.msix.count();
        if vector < count {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn msix_control_offset(&self) -> usize {
        self.msix_cap_offset + 2
    }
}

/// PCI class and subclass of a virtio device type.
fn class_of(device_type: u32) -> (u8, u8) {
    match device_type {
        super::TYPE_BLOCK => (0x01, 0x80),   // Mass storage, other.
        super::TYPE_NET => (0x02, 0x00),     // Network, Ethernet.
        super::TYPE_CONSOLE => (0x07, 0x80), // Communication, other.
        _ => (0xff, 0x00),
    }
}

impl PciDevice for VirtioPci {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Vec<BarMove> {
        let moves = self.config.write(reg, offset, data);
        // MSI-X enable and function mask live in the capability's message control word.
        let ctrl = self.msix_control_offset();
        if reg == ctrl / 4 {
            let word = u16::from_le_bytes([self.config.byte(ctrl), self.config.byte(ctrl + 1)]);
            self.msix.set_control(word);
        }
        moves
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != 0 {
            data.fill(0);
            return;
        }
        match offset {
            o if o < COMMON_SIZE => self.read_common(o, data),
            o if (ISR_OFFSET..ISR_OFFSET + 4).contains(&o) => {
                // Reading the ISR clears it.
                let isr = self.interrupts.isr.swap(0, Ordering::AcqRel);
                le_bytes(isr as u64, data);
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.lock().read_config(o - DEVICE_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..BAR0_SIZE).contains(&o) => {
                self.msix.read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_SIZE => self.write_common(o, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.lock().write_config(o - DEVICE_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Reached only when no ioeventfd caught the write: notify by hand.
                let index = ((o - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER as u64) as usize;
                if let Some(evt) = self.device.notify_eventfds().get(index) {
                    let _ = evt.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bars(&self) -> Vec<(usize, Bar)> {
        self.config.bars().collect()
    }

    fn set_bar_address(&mut self, index: usize, address: u64) {
        if index == 0 {
            self.initial_bar0 = address;
        }
        self.config.set_bar_address(index, address);
    }

    fn ioeventfds(&self) -> Vec<(usize, u64, Arc<EventFd>)> {
        self.device
            .notify_eventfds()
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    0,
                    NOTIFY_OFFSET + i as u64 * NOTIFY_MULTIPLIER as u64,
                    e.clone(),
                )
            })
            .collect()
    }

    fn reset(&mut self) {
        self.device_reset();
        self.msix.reset();
        // Back to the VMM's placement, decoding off, as after power-on.
        let bar0 = self.initial_bar0;
        self.config.write(1, 0, &[0, 0]);
        self.config.set_bar_address(0, bar0);
        let ctrl = self.msix_control_offset();
        self.config.write(ctrl / 4, ctrl % 4, &[0, 0]);
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

/// A shared handle to a virtio PCI device, for the event loop and the bus.
pub type SharedVirtioPci = Arc<Mutex<VirtioPci>>;

mod state;
pub use state::{QueueSetupState, VirtioPciState};

#[cfg(test)]
mod tests;
