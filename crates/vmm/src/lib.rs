//! Palisade's VM monitor: the KVM VM and its vCPUs, x86_64 boot, the devices of a VM, and
//! the lifecycle the API drives.
//!
//! The [`vmm::Vmm`] owns at most one [`vm::Vm`] and runs the event loop of the VMM thread;
//! everything that wants the VM to change — the command line, the REST API — sends it a
//! [`control::Request`].

pub mod connector;
pub mod console;
pub mod control;
pub mod coredump;
pub mod device_manager;
pub mod events;
pub mod files;
pub mod guest_ram;
pub mod interrupts;
pub mod machine;
pub mod migration;
pub mod passed_fds;
pub mod pci_devices;
pub mod ram;
pub mod rate_limits;
pub mod serial_socket;
pub mod signals;
pub mod snapshot;
pub mod thread_policy;
pub mod vcpu;
pub mod vm;
pub mod vmm;
pub mod x86_64;

pub use control::{ErrorKind, Reply, Request, RequestError, Response};
pub use vmm::{ExitReason, Vmm, VmmOptions};
