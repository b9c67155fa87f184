//! Snapshots: a paused VM written to a directory, and read back into a fresh VMM.
//!
//! A snapshot directory holds three files (the names Cloud Hypervisor uses):
//!
//! | file | content |
//! | --- | --- |
//! | `config.json` | the VM's configuration ([`config::VmConfig`], with hot-plugged devices) |
//! | `state.json` | [`SnapshotState`]: format and version, the memory layout, KVM's clock, each vCPU, the I/O APIC, the serial port, each PCI device, the platform devices |
//! | `memory-ranges` | guest memory, each range of `state.json`'s `memory` in order |
//!
//! `state.json` is written last, after being emptied first: a snapshot cut short never
//! looks whole. Loading checks everything before anything is built — the format name, the
//! version (a newer one is refused), that the memory ranges tile the memory file exactly —
//! and the VM refuses, before it runs, any device state that does not fit its devices.

pub mod memory;
pub mod vcpu_state;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use devices::ioapic::IoApicState;
use devices::serial::SerialPortState;
use kvm_bindings::kvm_clock_data;
use serde::{Deserialize, Serialize};

use crate::pci_devices::PciDeviceState;
use vcpu_state::VcpuState;

/// The `format` every Palisade snapshot names.
pub const FORMAT: &str = "palisade-snapshot";
/// The version of the format this Palisade writes and reads.
pub const VERSION: u32 = 1;
/// The configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// The state file.
pub const STATE_FILE: &str = "state.json";
/// The memory file.
pub const MEMORY_FILE: &str = "memory-ranges";

/// One range of guest memory and where the memory file holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRange {
    /// Guest physical address.
    pub guest_address: u64,
    /// Length in bytes.
    pub length: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// Everything of a paused VM but its configuration and memory contents.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version ([`VERSION`] when written by this Palisade).
    pub version: u32,
    /// The Palisade that wrote it.
    pub palisade_version: String,
    /// Guest memory, range by range.
    pub memory: Vec<MemoryRange>,
    /// KVM's clock for the guest (kvmclock).
    pub clock: kvm_clock_data,
    /// Each running vCPU.
    pub vcpus: Vec<VcpuState>,
    /// The I/O APIC.
    pub ioapic: IoApicState,
    /// The serial port, if the VM has one.
    pub serial: Option<SerialPortState>,
    /// Each PCI device.
    pub pci: Vec<PciDeviceState>,
    /// The ACPI event device, the hot-plug controllers, the watchdog.
    pub platform: crate::device_manager::PlatformState,
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The URL is not `file:///DIR`.
    #[error("{0:?} is not file:///DIR (an absolute path to a directory)")]
    Url(String),
    /// A file of the snapshot could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The snapshot's files are not a snapshot this Palisade can restore.
    #[error("{}: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The sandbox refuses the path.
    #[error("{0}")]
    Denied(String),
}

/// How the Landlock report names the snapshot a VM was restored from: read before the VMM
/// was confined, so it needs no rule.
pub fn held(dir: &Path) -> sandbox::policy::Held {
    sandbox::policy::Held {
        path: dir.join(MEMORY_FILE),
        how: "snapshot the VM was restored from: its state read and its memory file held open before confinement".into(),
        origin: sandbox::policy::Origin::Snapshot,
    }
}

/// The directory of a `file:///DIR` URL.
pub fn directory_of(url: &str) -> Result<PathBuf, SnapshotError> {
    let path = url
        .strip_prefix("file://")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| SnapshotError::Url(url.to_string()))?;
    Ok(PathBuf::from(path))
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| {
        let denied = source.kind() == std::io::ErrorKind::PermissionDenied;
        match sandbox::explain_denial(path, sandbox::Access::Write).filter(|_| denied) {
            Some(why) => SnapshotError::Denied(why),
            None => SnapshotError::Io {
                path: path.to_owned(),
                source,
            },
        }
    }
}

/// Checks that `dir` is a directory (not a file, FIFO or missing).
pub fn check_directory(dir: &Path) -> Result<(), SnapshotError> {
    let meta = std::fs::metadata(dir).map_err(io_error(dir))?;
    if !meta.is_dir() {
        return Err(SnapshotError::Invalid {
            path: dir.to_owned(),
            why: "is not a directory; a snapshot is a directory of files".into(),
        });
    }
    Ok(())
}

/// Creates (or empties) `name` in `dir` for writing; never follows a symbolic link there.
pub fn create(dir: &Path, name: &str) -> Result<(File, PathBuf), SnapshotError> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_error(&path))?;
    let ok = file.metadata().map_err(io_error(&path))?.is_file();
    if !ok {
        return Err(SnapshotError::Invalid {
            path,
            why: "is not a regular file".into(),
        });
    }
    Ok((file, path))
}

/// Writes `value` as JSON into `name` in `dir`, and syncs it.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), SnapshotError> {
    let (mut file, path) = create(dir, name)?;
    let json = serde_json::to_vec(value).map_err(|e| SnapshotError::Invalid {
        path: path.clone(),
        why: e.to_string(),
    })?;
    file.write_all(&json).map_err(io_error(&path))?;
    file.sync_all().map_err(io_error(&path))
}

/// Opens `name` in `dir` for reading: a regular file only.
pub fn open(dir: &Path, name: &str) -> Result<(File, PathBuf), SnapshotError> {
    let path = dir.join(name);
    let file = crate::files::open_read(&path, crate::files::Kind::Regular).map_err(|source| {
        let denied = source.kind() == std::io::ErrorKind::PermissionDenied;
        match sandbox::explain_denial(&path, sandbox::Access::Read).filter(|_| denied) {
            Some(why) => SnapshotError::Denied(why),
            None => SnapshotError::Io {
                path: path.clone(),
                source,
            },
        }
    })?;
    Ok((file, path))
}

/// Largest `state.json` read (a VM with 255 vCPUs and 31 devices needs a few MiB).
const MAX_STATE_BYTES: u64 = 64 << 20;

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Result<T, SnapshotError> {
    let (file, path) = open(dir, name)?;
    let len = file.metadata().map_err(io_error(&path))?.len();
    if len > MAX_STATE_BYTES {
        return Err(SnapshotError::Invalid {
            path,
            why: format!("is {len} bytes; more than a snapshot's {MAX_STATE_BYTES}"),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_STATE_BYTES), &mut bytes)
        .map_err(io_error(&path))?;
    if bytes.is_empty() {
        return Err(SnapshotError::Invalid {
            path,
            why: "is empty: the snapshot was not finished".into(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Invalid {
        path,
        why: format!("is not a Palisade snapshot file: {e}"),
    })
}

/// A snapshot read from its directory and checked: its configuration and state, and the
/// memory file, open.
pub struct LoadedSnapshot {
    /// The directory.
    pub dir: PathBuf,
    /// The VM's configuration.
    pub config: config::VmConfig,
    /// Its state.
    pub state: SnapshotState,
    /// The memory file.
    pub memory: File,
}

/// Reads the snapshot in `dir`, refusing (with what is wrong, on one line) a directory that
/// does not hold a whole snapshot of this format and version.
pub fn load(dir: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    check_directory(dir)?;
    let state_path = dir.join(STATE_FILE);
    // The version is looked at first, so that a newer snapshot is named as such even if the
    // rest of its state has changed shape.
    let header: serde_json::Value = read_json(dir, STATE_FILE)?;
    let invalid = |why: String| SnapshotError::Invalid {
        path: state_path.clone(),
        why,
    };
    if header.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(invalid(format!("is not a {FORMAT} state file")));
    }
    let version = header.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != u64::from(VERSION) {
        let written_by = header
            .get("palisade_version")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        return Err(invalid(format!(
            "is format version {version} (written by Palisade {written_by}); this Palisade ({}) restores version {VERSION} only",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let state: SnapshotState =
        serde_json::from_value(header).map_err(|e| invalid(format!("is damaged: {e}")))?;
    let config: config::VmConfig = read_json(dir, CONFIG_FILE)?;
    config.validate().map_err(|e| SnapshotError::Invalid {
        path: dir.join(CONFIG_FILE),
        why: e.to_string(),
    })?;
    let (memory, memory_path) = open(dir, MEMORY_FILE)?;
    let size = memory.metadata().map_err(io_error(&memory_path))?.len();
    memory::check_layout(&state.memory, size).map_err(|why| SnapshotError::Invalid {
        path: memory_path,
        why,
    })?;
    if state.vcpus.is_empty() {
        return Err(invalid("has no vCPU".into()));
    }
    Ok(LoadedSnapshot {
        dir: dir.to_owned(),
        config,
        state,
        memory,
    })
}
