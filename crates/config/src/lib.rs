//! Palisade's VM configuration.
//!
//! The types here are the JSON bodies of the REST API (field names and defaults follow Cloud
//! Hypervisor's `VmConfig`, so clients written for it work unchanged) and the result of parsing
//! the command line's `key=value,…` option strings. This crate knows nothing of KVM: the remote
//! client uses it alone.
//!
//! - [`vm`]: the types;
//! - [`option_parser`]: the `key=value,…` syntax and value helpers;
//! - [`params`]: each flag's option string to its config type, and [`VmConfig::from_params`];
//! - [`memory_zone`]: memory zones;
//! - [`platform`]: the `--platform` option;
//! - [`rate_limit`]: rate limiters and their groups;
//! - [`validate`]: [`VmConfig::validate`] and the per-device checks.
//!
//! ```
//! use config::{VmConfig, VmParams, DiskConfig};
//!
//! let params = VmParams {
//!     kernel: Some("/boot/vmlinux".into()),
//!     cpus: Some("boot=2".into()),
//!     disks: vec!["path=/img/root.raw,readonly=on".into()],
//!     ..VmParams::default()
//! };
//! let vm = VmConfig::from_params(&params).unwrap();
//! assert_eq!(vm.cpus.max_vcpus, 2);
//!
//! let bad = VmParams { cpus: Some("boot=0".into()), ..params };
//! assert_eq!(
//!     VmConfig::from_params(&bad).unwrap_err().to_string(),
//!     "--cpus: boot=0: must be at least 1"
//! );
//!
//! // A hot-plugged disk from `palisade-remote add-disk path=...`, or from JSON:
//! let disk = DiskConfig::parse("path=/img/data.raw,id=data").unwrap();
//! disk.validate().unwrap();
//! assert!(!vm.has_device_id("data"));
//! ```

pub mod fs;
pub mod memory_zone;
pub mod migration;
pub mod option_parser;
pub mod params;
pub mod platform;
pub mod pmem;
pub mod rate_limit;
pub mod restore;
pub mod validate;
pub mod vm;
pub mod vsock;

pub use fs::FsConfig;
pub use memory_zone::*;
pub use migration::{ReceiveMigration, SendMigration};
pub use option_parser::{OptionError, ValueError};
pub use params::*;
pub use platform::PciSegmentConfig;
pub use pmem::PmemConfig;
pub use rate_limit::*;
pub use restore::RestoreConfig;
pub use validate::*;
pub use vm::*;
pub use vsock::VsockConfig;

#[cfg(test)]
mod tests;
