//! Palisade's device models.
//!
//! Devices here see the guest only through small interfaces — a [`bus::BusDevice`] for
//! register accesses, an [`ioapic::InterruptLine`] for each interrupt and an
//! [`vmm_sys_util::eventfd::EventFd`] for each request they raise — so each one can be driven by a unit test without a VM.

pub mod bus;
pub mod cpu_hotplug;
pub mod hotplug;
pub mod ioapic;
pub mod legacy;
pub mod memory_hotplug;
#[cfg(any(test, feature = "test-util"))]
pub mod netns;
pub mod pci;
pub mod pvpanic;
pub mod rate_limiter;
pub mod serial;
pub mod tap;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod virtio;
pub mod watchdog;

pub use bus::{Bus, BusDevice, BusError};
