//! `vm.snapshot` and `vm.restore`: the VMM's side, between the API and the VM.
//!
//! A restore creates the VM from the snapshot's configuration as `vm.create` would — its
//! files opened, its devices in the slots they had — and confines the VMM as that
//! configuration asks, the snapshot's files being read (and so held) before; only then are
//! memory, devices and vCPUs taken back, with the VM paused.

use log::info;

use super::{wrong_state, Vmm};
use config::RestoreConfig;

use crate::control::{ErrorKind, Reply, RequestError, Response};
use crate::snapshot::{self, SnapshotError};
use crate::vm::{VmError, VmState};

fn snapshot_request_error(action: &str, e: SnapshotError) -> RequestError {
    let kind = match e {
        SnapshotError::Denied(_) => ErrorKind::Forbidden,
        SnapshotError::Url(_) | SnapshotError::Invalid { .. } => ErrorKind::BadRequest,
        // A missing file, or one of the wrong kind (a FIFO, a directory): the caller's.
        SnapshotError::Io { ref source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput
            ) =>
        {
            ErrorKind::BadRequest
        }
        SnapshotError::Io { .. } => ErrorKind::Internal,
    };
    RequestError::new(kind, format!("{action}: {e}"))
}

fn vm_request_error(action: &str, e: &VmError) -> RequestError {
    let kind = match e {
        VmError::Denied { .. } => ErrorKind::Forbidden,
        VmError::Snapshot(_) => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    };
    RequestError::from_error(kind, action, e)
}

impl Vmm {
    /// `vm.snapshot`: the paused VM into `url`'s directory.
    pub(super) fn snapshot_vm(&mut self, url: &str) -> Response {
        let action = "vm.snapshot";
        let state = self.require_vm(action)?;
        if state != VmState::Paused {
            return Err(wrong_state(action, state, "Paused"));
        }
        let dir = snapshot::directory_of(url).map_err(|e| snapshot_request_error(action, e))?;
        snapshot::check_directory(&dir).map_err(|e| snapshot_request_error(action, e))?;
        let Some(vm) = &self.vm else {
            return Ok(Reply::Done);
        };
        crate::events::emit("vm", "snapshotting");
        let started = std::time::Instant::now();
        vm.snapshot(&dir)
            .map_err(|e| vm_request_error(action, &e))?;
        crate::events::emit("vm", "snapshotted");
        info!(
            "snapshot of {} MiB written to {} in {:?}",
            vm.memory_size() >> 20,
            dir.display(),
            started.elapsed()
        );
        Ok(Reply::Done)
    }

    /// `vm.restore`: a VM from the snapshot in `restore.source_url`, paused (or resumed
    /// with `resume`).
    pub(super) fn restore_vm(&mut self, restore: RestoreConfig) -> Response {
        let action = "vm.restore";
        self.require_no_vm(action)?;
        restore
            .check()
            .map_err(|why| RequestError::new(ErrorKind::BadRequest, format!("{action}: {why}")))?;
        let started = std::time::Instant::now();
        let dir = snapshot::directory_of(&restore.source_url)
            .map_err(|e| snapshot_request_error(action, e))?;
        let mut loaded = snapshot::load(&dir).map_err(|e| snapshot_request_error(action, e))?;
        if let Some(net) = loaded.config.net.iter().flatten().find(|n| n.fds.is_some()) {
            return Err(RequestError::new(
                ErrorKind::BadRequest,
                format!(
                    "{action}: net {} was given as file descriptors, which a snapshot cannot carry; give it a tap name instead",
                    net.id.as_deref().unwrap_or("?")
                ),
            ));
        }
        let held = vec![snapshot::held(&dir)];
        let placement = crate::pci_devices::Placement {
            slots: crate::pci_devices::PciDevices::slots_of(&loaded.state.pci),
            defer_image_locks: false,
        };
        let config = loaded.config.clone();
        crate::events::emit("vm", "restoring");
        self.create_confined(config, action, placement, held)?;
        let restored = match &mut self.vm {
            Some(vm) => vm.restore(&self.kvm, &self.cpuid, &mut loaded, restore.prefault),
            None => return Ok(Reply::Done),
        };
        if let Err(e) = restored {
            // Nothing half-restored is left: the VM goes, the VMM waits for the next request.
            self.delete_vm(true);
            return Err(vm_request_error(action, &e));
        }
        crate::events::emit("vm", "restored");
        info!(
            "VM restored from {} in {:?}",
            dir.display(),
            started.elapsed()
        );
        if restore.resume {
            if let Some(vm) = &mut self.vm {
                vm.resume();
            }
            crate::events::emit("vm", "resumed");
        }
        Ok(Reply::Done)
    }
}
