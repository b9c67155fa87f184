//! Persistent memory's host side: the backing file opened, sized and mapped, and the mapping
//! made guest memory in a KVM memory slot of its own, which follows the VM across reboots
//! (each boot's new KVM VM gets it again) and leaves with the device.
//!
//! The region lies in its PCI segment's 64-bit window, where nothing else is RAM: the guest
//! finds it through the device's configuration space, not the memory map.

use std::fs::{File, OpenOptions};
use std::path::Path;

use config::pmem::PMEM_ALIGN;
use config::PmemConfig;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_allocator::RangeInclusive;
use vm_memory::{GuestAddress, GuestRegionMmap};

use devices::virtio::pmem::Pmem;
use vm_allocator::AllocPolicy;

use super::{PciDeviceError, PciEntry};

/// The first KVM memory slot of device memory, far above those of RAM (one per region,
/// hot-plugged ones included).
const FIRST_SLOT: u32 = 1024;
/// Device memory regions a VM may have at once.
const MAX_REGIONS: u32 = 256;

/// A region of device memory: a host mapping, where the guest sees it, and its KVM slot.
pub(super) struct DeviceMemory {
    /// The mapping, at its guest address.
    region: GuestRegionMmap,
    /// Its KVM memory slot.
    pub(super) slot: u32,
    /// The guest range, returned to the window's allocator when the device goes.
    pub(super) range: RangeInclusive,
}

impl DeviceMemory {
    /// Makes the region guest memory of `vm`.
    pub(super) fn map(&self, vm: &VmFd) -> Result<(), PciDeviceError> {
        crate::machine::map_region(vm, self.slot, &self.region)
            .map_err(|e| std::io::Error::other(e.to_string()).into())
    }

    /// Takes the region out of `vm` (before the mapping goes).
    fn unmap(&self, vm: &VmFd) {
        let empty = kvm_userspace_memory_region {
            slot: self.slot,
            memory_size: 0,
            ..Default::default()
        };
        // SAFETY: a zero size deletes the slot; no host memory is named.
        if let Err(e) = unsafe { vm.set_user_memory_region(empty) } {
            log::warn!(
                "cannot take device memory slot {} out of the VM: {e}",
                self.slot
            );
        }
    }
}

/// The backing file of `cfg`, opened as it needs (read-only with `discard_writes`), with the
/// region's size: `size` if given (a shorter writable file is extended), else the file's.
fn open_backing(cfg: &PmemConfig) -> Result<(File, u64), PciDeviceError> {
    let path = cfg.file.as_path();
    let writable = !cfg.discard_writes;
    let mut options = OpenOptions::new();
    options.read(true).write(writable);
    let file =
        crate::files::open(path, &mut options, 0, crate::files::Kind::Regular).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                let access = if writable {
                    sandbox::Access::ReadWrite
                } else {
                    sandbox::Access::Read
                };
                if let Some(why) = sandbox::explain_denial(path, access) {
                    return PciDeviceError::Denied(format!("pmem {why}"));
                }
            }
            pmem_error(path, e.to_string())
        })?;
    let len = file
        .metadata()
        .map_err(|e| pmem_error(path, e.to_string()))?
        .len();
    let size = match cfg.size {
        Some(size) => size,
        None if len == 0 => {
            return Err(pmem_error(
                path,
                "the file is empty: give the size (size=)".into(),
            ))
        }
        None if len % PMEM_ALIGN != 0 => {
            return Err(pmem_error(
                path,
                format!("its size ({len} bytes) is not a multiple of 2 MiB: give size="),
            ))
        }
        None => len,
    };
    if len < size {
        if !writable {
            return Err(pmem_error(
                path,
                format!(
                    "the file holds {len} bytes, less than size={size}, and discard_writes=on \
                     opens it read-only: extend the file or give a smaller size"
                ),
            ));
        }
        file.set_len(size)
            .map_err(|e| pmem_error(path, format!("cannot extend it to {size} bytes: {e}")))?;
    }
    Ok((file, size))
}

/// Maps `size` bytes of `file` at guest address `start`: shared with the file, or private
/// (copy on write: the guest's writes stay in this process) with `discard_writes`.
fn map_backing(
    file: &File,
    start: u64,
    size: u64,
    discard_writes: bool,
) -> std::io::Result<GuestRegionMmap> {
    let len = usize::try_from(size).map_err(std::io::Error::other)?;
    crate::guest_ram::map_file_region(GuestAddress(start), len, file, 0, !discard_writes)
}

fn pmem_error(path: &Path, detail: String) -> PciDeviceError {
    PciDeviceError::Pmem {
        path: path.to_owned(),
        detail,
    }
}

impl super::PciDevices {
    /// Opens and maps the backing file `cfg` names and plugs a virtio-pmem device for it
    /// with id `id`; the region is guest memory at once if the guest runs.
    pub fn add_pmem(&mut self, id: &str, cfg: &PmemConfig) -> Result<&PciEntry, PciDeviceError> {
        self.check_segment(cfg.pci_segment)?;
        let segment = usize::from(cfg.pci_segment);
        let (file, size) = open_backing(cfg)?;
        let slot = (FIRST_SLOT..FIRST_SLOT + MAX_REGIONS)
            .find(|s| {
                !self
                    .entries
                    .iter()
                    .any(|e| e.memory.as_ref().is_some_and(|m| m.slot == *s))
            })
            .ok_or_else(|| std::io::Error::other("every device memory slot is taken"))?;
        let window = &mut self.segments[segment].mmio64;
        let range = window
            .allocate(size, PMEM_ALIGN, AllocPolicy::FirstMatch)
            .map_err(|_| {
                pmem_error(
                    &cfg.file,
                    format!("no room for {size} bytes in PCI segment {segment}'s 64-bit window"),
                )
            })?;
        let memory = match map_backing(&file, range.start(), size, cfg.discard_writes) {
            Ok(region) => DeviceMemory {
                region,
                slot,
                range,
            },
            Err(e) => {
                let _ = window.free(&range);
                return Err(pmem_error(&cfg.file, format!("cannot map it: {e}")));
            }
        };
        let vm = self.mapper.vm.get();
        let mapped = vm.as_ref().map_or(Ok(()), |vm| memory.map(vm));
        let device = Pmem::new(file, range.start(), size, cfg.discard_writes);
        match mapped.and_then(|()| self.add_virtio(id, Box::new(device), cfg.pci_segment)) {
            Ok(_) => {
                let entry = self.entries.last_mut().expect("just plugged");
                entry.memory = Some(memory);
                Ok(entry)
            }
            Err(e) => {
                if let Some(vm) = &vm {
                    memory.unmap(vm);
                }
                let _ = self.segments[segment].mmio64.free(&memory.range);
                Err(e)
            }
        }
    }

    /// Frees the device memory of an entry just taken off the bus.
    pub(super) fn release_memory(&mut self, entry: &mut PciEntry) {
        if let Some(memory) = entry.memory.take() {
            if let Some(vm) = self.mapper.vm.get() {
                memory.unmap(&vm);
            }
            let _ = self.segments[usize::from(entry.segment)]
                .mmio64
                .free(&memory.range);
        }
    }
}
