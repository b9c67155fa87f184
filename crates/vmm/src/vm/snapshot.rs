//! A paused VM written to a snapshot directory, and a created VM taking one back.

use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::Kvm;

use super::{Vm, VmError, VmState};
use crate::machine::Machine;
use crate::snapshot::{self, LoadedSnapshot, SnapshotError, SnapshotState};
use crate::vcpu::{self, VcpuControl};

/// Where a restored VM's memory comes from.
pub enum RestoreMemory<'a> {
    /// A snapshot's memory file.
    File {
        /// The file.
        file: &'a mut std::fs::File,
        /// Read every page, holes included.
        prefault: bool,
    },
    /// Already in guest memory (received by a migration).
    Received,
}

/// How long a snapshot waits for the disks' requests in flight to finish.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

fn snapshot_error(e: SnapshotError) -> VmError {
    match e {
        SnapshotError::Denied(why) => VmError::Denied {
            what: "snapshot",
            message: why,
        },
        other => VmError::Snapshot(other.to_string()),
    }
}

impl Vm {
    /// Why this VM cannot be snapshotted as it is, if it cannot.
    fn snapshot_refusal(&self) -> Option<String> {
        if self.config.cpus.features.amx {
            return Some(
                "VMs with AMX cannot be snapshotted yet (their XSAVE state is larger)".into(),
            );
        }
        if let Some(id) = self.unplugging.first() {
            return Some(format!(
                "device {id} is being removed and the guest has not ejected it yet; try again once it has"
            ));
        }
        for e in self.devices.pci.entries() {
            let Some(virtio) = &e.virtio else { continue };
            let transport = virtio.lock().unwrap_or_else(|p| p.into_inner());
            if !transport.device().serves_queues() {
                return Some(format!(
                    "device {} is served by a vhost-user backend, which keeps its queues' state; such VMs cannot be snapshotted",
                    e.id
                ));
            }
        }
        None
    }

    /// Writes the paused VM into the directory `dir` (which must exist): configuration,
    /// memory, vCPUs and devices. The VM stays paused and may resume afterwards.
    pub fn snapshot(&self, dir: &Path) -> Result<(), VmError> {
        snapshot::check_directory(dir).map_err(snapshot_error)?;
        self.with_state_held(|vm, state| {
            // Emptied first, written last: a snapshot cut short is never taken for a whole one.
            snapshot::create(dir, snapshot::STATE_FILE).map_err(snapshot_error)?;
            snapshot::write_json(dir, snapshot::CONFIG_FILE, &vm.config).map_err(snapshot_error)?;
            let (mut memory, path) =
                snapshot::create(dir, snapshot::MEMORY_FILE).map_err(snapshot_error)?;
            snapshot::memory::write(&mut memory, &vm.memory)
                .map_err(|source| snapshot_error(SnapshotError::Io { path, source }))?;
            snapshot::write_json(dir, snapshot::STATE_FILE, &state).map_err(snapshot_error)
        })
    }

    /// Runs `f` with the paused VM's state (everything but memory) while every device is
    /// held still with nothing in flight, so that guest memory does not change either.
    pub fn with_state_held<R>(
        &self,
        f: impl FnOnce(&Self, SnapshotState) -> Result<R, VmError>,
    ) -> Result<R, VmError> {
        let Some(machine) = &self.machine else {
            return Err(VmError::Snapshot("the VM is not running".into()));
        };
        if self.state != VmState::Paused {
            return Err(VmError::Snapshot("the VM must be paused first".into()));
        }
        if let Some(why) = self.snapshot_refusal() {
            return Err(VmError::Snapshot(why));
        }
        let vcpus =
            vcpu::capture_all(machine.control(), machine.threads()).map_err(VmError::Snapshot)?;
        // Every device held still, with nothing in flight, for as long as its state and
        // guest memory are copied.
        let handles: Vec<(String, devices::virtio::worker::DeviceHandle)> = self
            .devices
            .pci
            .entries()
            .iter()
            .filter_map(|e| {
                let v = e.virtio.as_ref()?;
                Some((
                    e.id.clone(),
                    v.lock().unwrap_or_else(|p| p.into_inner()).handle(),
                ))
            })
            .collect();
        let deadline = Instant::now() + DRAIN_WAIT;
        let _held = loop {
            let held: Vec<_> = handles.iter().map(|(_, h)| h.hold()).collect();
            let busy = handles.iter().find_map(|(id, h)| {
                let n = h.lock().in_flight();
                (n > 0).then(|| (id.clone(), n))
            });
            let Some((id, n)) = busy else { break held };
            drop(held);
            if Instant::now() > deadline {
                return Err(VmError::Snapshot(format!(
                    "device {id} still has {n} requests in flight after {DRAIN_WAIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let clock = machine
            .vm_fd()
            .get_clock()
            .map_err(super::kvm_err("read the guest clock"))?;
        let state = SnapshotState {
            format: snapshot::FORMAT.into(),
            version: snapshot::VERSION,
            palisade_version: env!("CARGO_PKG_VERSION").into(),
            memory: snapshot::memory::layout(&self.memory),
            clock,
            vcpus,
            ioapic: self
                .devices
                .ioapic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .state(),
            serial: self
                .devices
                .serial
                .as_ref()
                .map(|s| s.port.lock().unwrap_or_else(|p| p.into_inner()).state()),
            pci: self.devices.pci.state(),
            platform: self.devices.platform_state(),
        };
        f(self, state)
    }

    /// Takes the snapshot `loaded` (of this VM's configuration) into this freshly created
    /// VM: memory (every page populated with `prefault`), devices, then the vCPUs, which
    /// start parked. The VM is then Paused.
    pub fn restore(
        &mut self,
        kvm: &Kvm,
        supported_cpuid: &CpuId,
        loaded: &mut LoadedSnapshot,
        prefault: bool,
    ) -> Result<(), VmError> {
        let memory = RestoreMemory::File {
            file: &mut loaded.memory,
            prefault,
        };
        self.restore_state(kvm, supported_cpuid, &loaded.state, memory)?;
        self.came_from = Some(snapshot::held(&loaded.dir));
        Ok(())
    }

    /// Guest memory, as a migration fills it.
    pub fn guest_memory(&self) -> &vm_memory::GuestMemoryMmap {
        &self.memory
    }

    /// Takes `state` into this freshly created VM, its memory from `memory`: devices, then
    /// the vCPUs, which start parked. The VM is then Paused.
    pub fn restore_state(
        &mut self,
        kvm: &Kvm,
        supported_cpuid: &CpuId,
        state: &SnapshotState,
        memory: RestoreMemory<'_>,
    ) -> Result<(), VmError> {
        if self.state != VmState::Created || self.machine.is_some() {
            return Err(VmError::Snapshot(
                "only a VM that never ran can be restored into".into(),
            ));
        }
        self.devices
            .pci
            .check_state(&state.pci)
            .map_err(VmError::Snapshot)?;
        if state.serial.is_some() != self.devices.serial.is_some() {
            return Err(VmError::Snapshot(
                "the snapshot and its configuration disagree on the serial port".into(),
            ));
        }
        match memory {
            RestoreMemory::File { file, prefault } => {
                snapshot::memory::read(file, &state.memory, &self.memory, prefault)
                    .map_err(VmError::Snapshot)?
            }
            RestoreMemory::Received => {
                if state.memory != snapshot::memory::layout(&self.memory) {
                    return Err(VmError::Snapshot(
                        "the source's guest memory is not laid out as its configuration's".into(),
                    ));
                }
            }
        }
        let vm = self.new_kvm_vm(kvm)?;
        self.devices.attach(Some(vm.clone()));
        let result = self.restore_machine(kvm, supported_cpuid, vm, state);
        match result {
            Ok(machine) => {
                self.machine = Some(machine);
                self.state = VmState::Paused;
                Ok(())
            }
            Err(e) => {
                self.devices.attach(None);
                Err(e)
            }
        }
    }

    fn restore_machine(
        &mut self,
        kvm: &Kvm,
        supported_cpuid: &CpuId,
        vm: std::sync::Arc<kvm_ioctls::VmFd>,
        state: &SnapshotState,
    ) -> Result<Machine, VmError> {
        let mut clock = state.clock;
        // Only the clock's value is set; the flags KVM reported are its own.
        clock.flags = 0;
        vm.set_clock(&clock)
            .map_err(super::kvm_err("set the guest clock"))?;
        self.devices
            .ioapic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(&state.ioapic)
            .map_err(VmError::Snapshot)?;
        if let (Some(serial), Some(saved)) = (&self.devices.serial, &state.serial) {
            serial
                .port
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .restore(saved)
                .map_err(|e| VmError::Snapshot(e.to_string()))?;
        }
        self.devices
            .pci
            .restore(&state.pci)
            .map_err(VmError::Snapshot)?;
        self.devices
            .restore_platform(&state.platform)
            .map_err(VmError::Snapshot)?;
        let ctx = self.vcpu_context(kvm, VcpuControl::paused());
        let setup = self.vcpu_setup(supported_cpuid);
        Machine::start_restored(vm, ctx, setup, &state.vcpus)
    }
}
