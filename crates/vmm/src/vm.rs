//! One VM: its configuration, guest memory, held files and devices, and — while it runs — the
//! KVM machine (VM fd and vCPU threads).
//!
//! Creating a VM opens every file it will ever need and allocates its memory; booting builds
//! a fresh KVM machine, loads the kernel and starts the vCPUs. A reboot tears the machine
//! down and boots a new one over the same memory and devices (a warm reset: RAM keeps its
//! contents, the kernel image is loaded again), so it never re-opens a path.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use config::VmConfig;
use kvm_bindings::{kvm_enable_cap, CpuId, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::Kvm;
use serde::Serialize;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use std::os::fd::AsRawFd;

use sandbox::janitor::Janitor;

use crate::device_manager::{DeviceError, DeviceManager, MachineEvents};
use crate::machine::{Machine, VcpuSetup};
use crate::vcpu::{self, FaultSink, VcpuContext, VcpuControl};
use crate::x86_64::boot::{self, BootError, DEFAULT_INITRD_ADDR_MAX};
use crate::x86_64::layout::{self, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::x86_64::regs::{self, EntryMode};
use crate::x86_64::topology::Topology;
use crate::x86_64::{acpi, mptable, smbios};

mod hotplug;
mod resize;
mod snapshot;
pub use snapshot::RestoreMemory;

/// The lifecycle state of a VM, named as in the REST API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmState {
    /// Created, never booted.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
    /// Stopped after running; may be booted again.
    Shutdown,
}

/// Errors creating or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The process is confined and the path is outside its Landlock ruleset.
    #[error("{what} {message}")]
    Denied {
        /// Which config item.
        what: &'static str,
        /// The explanation, naming the path and the rule that would allow it.
        message: String,
    },
    /// A file of the VM could not be opened.
    #[error("{what} {path}: {source}")]
    Open {
        /// Which config item.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No kernel in the payload.
    #[error("no kernel given: set payload.kernel (--kernel)")]
    NoKernel,
    /// Guest memory could not be allocated.
    #[error("cannot allocate {size} bytes of guest memory: {detail}")]
    Memory {
        /// Requested size.
        size: u64,
        /// Why.
        detail: String,
    },
    /// Device set-up failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A KVM call failed.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Loading the kernel or writing boot structures failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The MP table could not be built.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// The SMBIOS tables could not be written.
    #[error(transparent)]
    Smbios(#[from] smbios::SmbiosError),
    /// The ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// An eventfd could not be duplicated.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    /// A snapshot could not be taken or restored.
    #[error("{0}")]
    Snapshot(String),
}

pub(crate) fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn open(what: &'static str, path: &Path) -> Result<File, VmError> {
    crate::files::open_read(path, crate::files::Kind::Regular).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            if let Some(why) = sandbox::explain_denial(path, sandbox::Access::Read) {
                return VmError::Denied { what, message: why };
            }
        }
        VmError::Open {
            what,
            path: path.to_owned(),
            source,
        }
    })
}

/// What removing a device did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The device is gone (the VM was not running).
    Done,
    /// The guest was asked to eject it; it goes when the guest has.
    Requested,
}

/// Errors adding or removing devices.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The configuration is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The id is taken.
    #[error("a device with id {0} already exists; choose another id")]
    Duplicate(String),
    /// No device has that id.
    #[error("no device with id {0}; vm.info lists the devices")]
    NotFound(String),
    /// No memory zone has that id.
    #[error("no memory zone {0}; vm.info lists the VM's memory.zones")]
    NoZone(String),
    /// The file is outside the Landlock ruleset.
    #[error("{0}")]
    Denied(String),
    /// What the device needs is in use (a locked disk image).
    #[error("{0}")]
    Busy(String),
    /// Plugging failed.
    #[error("{0}")]
    Failed(String),
}

/// A VM.
pub struct Vm {
    config: VmConfig,
    memory: GuestMemoryMmap,
    // RAM at creation (its zones), which the boot tables describe; hot-plugged memory lies
    // above it (`layout::hotplug_memory_start`) and reaches the guest through ACPI memory
    // devices, while `config.memory.size` counts both.
    ram: crate::ram::Ram,
    kernel: File,
    initramfs: Option<(File, u64)>,
    devices: DeviceManager,
    faults: Arc<FaultSink>,
    reset_evt: Arc<vmm_sys_util::eventfd::EventFd>,
    janitor: Option<Arc<Janitor>>,
    machine: Option<Machine>,
    state: VmState,
    // Devices removed through the API that the guest has not ejected yet: already gone from
    // the config, taken off the bus when the guest ejects them or the VM next boots.
    unplugging: Vec<String>,
    // The vCPU threads' system-call filter, compiled once for every boot and reboot.
    vcpu_filters: Arc<sandbox::seccomp::Filters>,
    // Where this VM came from when it was not created here: the snapshot it was restored
    // from, or the socket it was received on (as the Landlock report names them).
    came_from: Option<sandbox::policy::Held>,
}

impl Vm {
    /// Opens the VM's files, allocates its memory and builds its devices.
    /// `placement` puts devices (by id) in given PCI slots — a restored or received VM's go
    /// where they were — and may defer disk image locks (a received VM's).
    pub fn create(
        mut config: VmConfig,
        events: &MachineEvents,
        faults: Arc<FaultSink>,
        janitor: Option<Arc<Janitor>>,
        placement: crate::pci_devices::Placement,
    ) -> Result<Self, VmError> {
        let kernel_path = config.payload.kernel.as_deref().ok_or(VmError::NoKernel)?;
        let kernel = open("kernel", kernel_path)?;
        let initramfs = match &config.payload.initramfs {
            Some(path) => {
                let file = open("initramfs", path)?;
                let size = file
                    .metadata()
                    .map_err(|source| VmError::Open {
                        what: "initramfs",
                        path: path.clone(),
                        source,
                    })?
                    .len();
                Some((file, size))
            }
            None => None,
        };
        // Every device has an id, reported by vm.info and used by vm.remove-device.
        for (index, disk) in config.disks.iter_mut().flatten().enumerate() {
            disk.id.get_or_insert_with(|| format!("_disk{index}"));
        }
        for (index, net) in config.net.iter_mut().flatten().enumerate() {
            net.id.get_or_insert_with(|| format!("_net{index}"));
        }
        for (index, pmem) in config.pmem.iter_mut().flatten().enumerate() {
            pmem.id.get_or_insert_with(|| format!("_pmem{index}"));
        }
        for (index, fs) in config.fs.iter_mut().flatten().enumerate() {
            fs.id.get_or_insert_with(|| format!("_fs{index}"));
        }
        if let Some(vsock) = &mut config.vsock {
            vsock.id.get_or_insert_with(|| "_vsock0".into());
        }
        let memory_error = |size: u64| {
            move |e: std::io::Error| VmError::Memory {
                size,
                detail: e.to_string(),
            }
        };
        let mut ram =
            crate::ram::Ram::plan(&config.memory).map_err(memory_error(config.memory.size))?;
        let boot_ram = ram.boot_size();
        let memory = ram.map_boot().map_err(memory_error(boot_ram))?;
        let devices = DeviceManager::new(
            &config,
            events,
            ioapic_id_of(&config.cpus),
            &memory,
            layout::pci_mmio64_start(boot_ram, ram.room()),
            crate::thread_policy::device_thread_setup()
                .map_err(|e| VmError::Thread(std::io::Error::other(e)))?,
            placement,
        )?;
        if let Some(pty) = &devices.serial_pty {
            // Report the pty the way a file would be reported.
            config.serial.file = Some(pty.clone());
            log::info!("serial port on {}", pty.display());
        }
        // Report the taps the kernel named and the MACs generated.
        for (net, (_, tap, mac)) in config.net.iter_mut().flatten().zip(&devices.net_names) {
            net.tap = Some(tap.clone());
            net.mac = Some(mac.clone());
        }
        if let Some(pty) = &devices.console_pty {
            config.console.file = Some(pty.clone());
            log::info!("virtio console on {}", pty.display());
        }
        let reset_evt = Arc::new(events.reset.try_clone().map_err(VmError::EventFd)?);
        let vcpu_filters = crate::thread_policy::filters(sandbox::Role::Vcpu, None)
            .map_err(|e| VmError::Thread(std::io::Error::other(e)))?;
        let mut vm = Vm {
            ram,
            config,
            memory,
            kernel,
            initramfs,
            devices,
            faults,
            reset_evt,
            janitor,
            machine: None,
            state: VmState::Created,
            unplugging: Vec::new(),
            vcpu_filters: Arc::new(vcpu_filters),
            came_from: None,
        };
        // What the firmware tables cannot describe is refused now, not at boot.
        acpi::checked(&vm.acpi_layout())?;
        // Memory a zone had hot-plugged (a configuration from `vm.info`) is added again.
        let added: Vec<(usize, u64)> = vm
            .config
            .memory
            .zones
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, z)| Some((i, z.hotplugged_size.filter(|&n| n > 0)?)))
            .collect();
        for (index, bytes) in added {
            vm.add_memory(index, bytes).map_err(|e| VmError::Memory {
                size: bytes,
                detail: e.to_string(),
            })?;
        }
        Ok(vm)
    }

    /// The configuration (with pty paths filled in).
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The snapshot or migration socket the VM came from, if it was not created here.
    pub fn came_from(&self) -> Option<&sandbox::policy::Held> {
        self.came_from.as_ref()
    }

    /// Lets go of the disk images' locks (a migrating source, paused).
    pub fn release_image_locks(&mut self) {
        self.devices.pci.release_image_locks();
    }

    /// Takes the disk images' locks not held (a received VM, or a source taking them back).
    pub fn take_image_locks(&mut self) -> Result<(), VmError> {
        self.devices
            .pci
            .take_image_locks()
            .map_err(|e| VmError::Device(e.into()))
    }

    /// Records where the VM came from (a restore, a migration).
    pub fn set_came_from(&mut self, held: sandbox::policy::Held) {
        self.came_from = Some(held);
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// The devices.
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// Bytes of guest RAM.
    pub fn memory_size(&self) -> u64 {
        self.memory.iter().map(|r| r.len()).sum()
    }

    /// Builds a KVM machine, loads the kernel and starts the vCPUs.
    pub fn boot(&mut self, kvm: &Kvm, supported_cpuid: &CpuId) -> Result<(), VmError> {
        // What was removed stays removed, whether the guest ejected it or not.
        for id in std::mem::take(&mut self.unplugging) {
            self.devices.pci.remove(&id);
        }
        self.devices.power_on_vcpus(self.config.cpus.boot_vcpus);
        let machine = self.build_machine(kvm, supported_cpuid)?;
        self.machine = Some(machine);
        self.state = VmState::Running;
        Ok(())
    }

    /// Stops the vCPUs and puts every device back in its power-on state (queues, MSI-X,
    /// BARs, tap offloads), so that nothing of this boot reaches the next; the VM may be
    /// booted again.
    pub fn shutdown(&mut self) {
        if let Some(machine) = self.machine.take() {
            machine.stop(&self.devices);
            self.devices.reset();
        }
        self.state = VmState::Shutdown;
    }

    /// Warm reset: a new machine over the same memory and devices (reset by
    /// [`Vm::shutdown`]), the kernel loaded again.
    pub fn reboot(&mut self, kvm: &Kvm, supported_cpuid: &CpuId) -> Result<(), VmError> {
        self.shutdown();
        self.boot(kvm, supported_cpuid)
    }

    /// Writes the paused guest's memory and vCPU registers to `path` as an ELF core.
    pub fn coredump(&self, path: &std::path::Path) -> Result<(), HotplugError> {
        let Some(machine) = &self.machine else {
            return Err(HotplugError::Invalid("the VM is not running".into()));
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| {
                let denied = e.kind() == std::io::ErrorKind::PermissionDenied;
                match sandbox::explain_denial(path, sandbox::Access::Write).filter(|_| denied) {
                    Some(why) => HotplugError::Denied(why),
                    // Only directory rules with write access let files be created.
                    None if denied && sandbox::enforce::current().is_some() && !path.exists() => {
                        HotplugError::Denied(format!(
                            "{}: the sandbox lets Palisade create files only in directories \
                             with a write rule; create the file first (empty is fine)",
                            path.display()
                        ))
                    }
                    None => HotplugError::Failed(format!("{}: {e}", path.display())),
                }
            })?;
        let registers = machine.control().parked_registers();
        crate::coredump::write(&mut file, &self.memory, &registers)
            .map_err(|e| HotplugError::Failed(format!("{}: {e}", path.display())))
    }

    /// Resizes the image of disk `id` to `bytes`; a running guest gets a configuration
    /// interrupt with the new capacity.
    pub fn resize_disk(&mut self, id: &str, bytes: u64) -> Result<(), HotplugError> {
        let entry = self
            .devices
            .pci
            .find(id)
            .ok_or_else(|| HotplugError::NotFound(id.to_string()))?;
        let Some(virtio) = &entry.virtio else {
            return Err(HotplugError::Invalid(format!(
                "{id} is not a disk: only disks can be resized"
            )));
        };
        let device = virtio.lock().unwrap_or_else(|e| e.into_inner());
        let result = device.device().resize(bytes);
        result.map_err(HotplugError::Invalid)
    }

    /// Removes the device `id`: at once when the VM is not running, otherwise by asking the
    /// guest to eject it.
    pub fn remove_device(&mut self, id: &str) -> Result<Removal, HotplugError> {
        let slot = self
            .devices
            .pci
            .find(id)
            .map(|e| (e.segment, e.slot))
            .ok_or_else(|| HotplugError::NotFound(id.to_string()))?;
        if matches!(self.state, VmState::Running | VmState::Paused) {
            // Gone from the config at once, as with Cloud Hypervisor: a reboot never brings
            // it back, even if the guest never ejects it.
            self.forget(id);
            if !self.unplugging.iter().any(|u| u == id) {
                self.unplugging.push(id.to_string());
            }
            self.devices.request_eject(slot.0, slot.1);
            return Ok(Removal::Requested);
        }
        self.unplug(id);
        Ok(Removal::Done)
    }

    /// Takes away the devices and vCPUs the guest ejected; returns the devices' ids.
    pub fn finish_ejects(&mut self) -> Vec<String> {
        self.finish_vcpu_ejects();
        let mut gone = Vec::new();
        for (segment, slot) in self.devices.take_ejected() {
            if let Some(id) = self
                .devices
                .pci
                .in_slot(segment, slot)
                .map(|e| e.id.clone())
            {
                self.unplug(&id);
                gone.push(id);
            }
        }
        gone
    }

    fn unplug(&mut self, id: &str) {
        self.devices.pci.remove(id);
        self.unplugging.retain(|u| u != id);
        self.forget(id);
    }

    /// Takes device `id` out of the config.
    fn forget(&mut self, id: &str) {
        if let Some(disks) = &mut self.config.disks {
            disks.retain(|d| d.id.as_deref() != Some(id));
        }
        if let Some(nets) = &mut self.config.net {
            nets.retain(|n| n.id.as_deref() != Some(id));
        }
        if let Some(pmem) = &mut self.config.pmem {
            pmem.retain(|p| p.id.as_deref() != Some(id));
        }
        if let Some(fs) = &mut self.config.fs {
            fs.retain(|f| f.id.as_deref() != Some(id));
        }
        if self.config.vsock.as_ref().and_then(|v| v.id.as_deref()) == Some(id) {
            self.config.vsock = None;
        }
    }

    /// Parks every vCPU.
    pub fn pause(&mut self) {
        if let Some(m) = &self.machine {
            vcpu::pause_all(m.control(), m.threads());
            self.state = VmState::Paused;
        }
    }

    /// Sends every vCPU a non-maskable interrupt.
    pub fn nmi(&self) {
        if let Some(m) = &self.machine {
            vcpu::nmi_all(m.control(), m.threads());
        }
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&mut self) {
        if let Some(m) = &self.machine {
            vcpu::resume_all(m.control());
            self.state = VmState::Running;
        }
    }

    fn build_machine(&mut self, kvm: &Kvm, supported_cpuid: &CpuId) -> Result<Machine, VmError> {
        let vm = self.new_kvm_vm(kvm)?;
        self.devices.attach(Some(vm.clone()));
        let entry = self.load_payload()?;
        let ctx = self.vcpu_context(kvm, VcpuControl::default());
        let setup = self.vcpu_setup(supported_cpuid);
        Machine::start(vm, ctx, setup, self.config.cpus.boot_vcpus, entry)
    }

    /// A new KVM VM with the machine's fixed set-up (TSS, identity map, split irqchip) and
    /// guest memory mapped.
    fn new_kvm_vm(&self, kvm: &Kvm) -> Result<Arc<kvm_ioctls::VmFd>, VmError> {
        let vm = kvm.create_vm().map_err(kvm_err("create the VM"))?;
        if let Some(janitor) = &self.janitor {
            // SAFETY: the VM's descriptor is open for the duration of this borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(vm.as_raw_fd()) };
            // The janitor keeps a reference, so the VM's (slow) teardown happens there and
            // not on this thread's exit or reboot path. Without it, the teardown just
            // happens here.
            if let Err(e) = janitor.hold(fd) {
                log::debug!("the janitor cannot hold the VM: {e}");
            }
        }
        vm.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("set the TSS address"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set the identity map address"))?;
        // Local APICs in KVM, the I/O APIC in userspace (see `devices::ioapic`).
        let mut split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        split.args[0] = devices::ioapic::NUM_PINS as u64;
        vm.enable_cap(&split)
            .map_err(kvm_err("create the local APICs (split irqchip)"))?;
        for (slot, region) in self.memory.iter().enumerate() {
            crate::machine::map_region(&vm, slot as u32, region)?;
        }
        Ok(Arc::new(vm))
    }

    /// What the vCPU threads of a new machine share, steered by `control`.
    fn vcpu_context(&self, kvm: &Kvm, control: VcpuControl) -> VcpuContext {
        // KVM's list does not change: read once, for every machine of the process.
        static MSR_INDICES: std::sync::OnceLock<Arc<Vec<u32>>> = std::sync::OnceLock::new();
        let msr_indices = MSR_INDICES
            .get_or_init(|| {
                let list = kvm.get_msr_index_list();
                Arc::new(list.map(|l| l.as_slice().to_vec()).unwrap_or_default())
            })
            .clone();
        VcpuContext {
            pio: self.devices.pio.clone(),
            mmio: self.devices.mmio.clone(),
            ioapic: self.devices.ioapic.clone(),
            control: Arc::new(control),
            faults: self.faults.clone(),
            reset: self.reset_evt.clone(),
            filters: self.vcpu_filters.clone(),
            msr_indices,
        }
    }

    /// What every vCPU of a new machine is built from.
    fn vcpu_setup(&self, supported_cpuid: &CpuId) -> VcpuSetup {
        VcpuSetup {
            topology: Topology::of(&self.config.cpus),
            supported_cpuid: if self.config.cpus.features.amx {
                supported_cpuid.clone()
            } else {
                crate::x86_64::amx::without_amx(supported_cpuid)
            },
            affinity: self.config.cpus.affinity.clone().unwrap_or_default(),
            core_scheduling: self.config.cpus.core_scheduling,
        }
    }

    /// Writes the MP and ACPI tables; returns the RSDP's address.
    fn write_firmware_tables(&self) -> Result<u64, VmError> {
        let boot_vcpus = self.config.cpus.boot_vcpus;
        let max_vcpus = self.config.cpus.max_vcpus.max(boot_vcpus);
        let apic_ids = Topology::of(&self.config.cpus).apic_ids(max_vcpus);
        let ioapic_id = ioapic_id_of(&self.config.cpus);
        mptable::setup(
            &self.memory,
            &apic_ids[..usize::from(boot_vcpus)],
            ioapic_id,
        )?;
        Ok(acpi::write(&self.memory, &self.acpi_layout())?)
    }

    /// What the ACPI tables describe.
    fn acpi_layout(&self) -> acpi::AcpiLayout {
        let boot_vcpus = self.config.cpus.boot_vcpus;
        let max_vcpus = self.config.cpus.max_vcpus.max(boot_vcpus);
        acpi::AcpiLayout {
            boot_vcpus,
            max_vcpus,
            apic_ids: Topology::of(&self.config.cpus).apic_ids(max_vcpus),
            // The same id the MP table and the I/O APIC model use.
            ioapic_id: ioapic_id_of(&self.config.cpus),
            ram_size: self.ram.boot_size(),
            // The 64-bit PCI window starts past the room for hot-plugged memory.
            hotplug_size: self.ram.room(),
            pci_weights: self.config.pci_aperture_weights(),
            serial: self.devices.serial.is_some(),
            hotplug_slots: acpi::HOTPLUG_SLOT_RANGE.collect(),
        }
    }

    /// Loads kernel, initramfs, command line and the boot structures of the entry protocol.
    fn load_payload(&mut self) -> Result<(EntryMode, u64), VmError> {
        let rsdp = self.write_firmware_tables()?;
        let kernel = boot::load_kernel(&self.memory, &mut self.kernel)?;
        let ram = self.ram.boot_size();
        let initramfs = match &mut self.initramfs {
            Some((file, size)) => {
                let addr_max = kernel
                    .setup_header
                    .map(|h| h.initrd_addr_max as u64)
                    .filter(|&m| m != 0)
                    .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
                let addr = boot::initramfs_address(*size, ram, kernel.end, addr_max)?;
                boot::load_initramfs(&self.memory, file, addr, *size)?;
                Some((addr, *size))
            }
            None => None,
        };
        let cmdline = boot::build_cmdline(self.config.payload.cmdline.as_deref().unwrap_or(""))?;
        let cmdline_len = boot::write_cmdline(&self.memory, &cmdline)?;
        regs::write_boot_tables(&self.memory).map_err(|e| BootError::Write {
            what: "the boot page tables",
            detail: e.to_string(),
        })?;
        match kernel.mode {
            EntryMode::Pvh => boot::write_pvh(&self.memory, ram, initramfs, rsdp)?,
            EntryMode::Linux64 => boot::write_linux(
                &self.memory,
                &boot::linux_boot_params(ram, kernel.setup_header, cmdline_len, initramfs, rsdp),
            )?,
        }
        Ok((kernel.mode, kernel.entry))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // vCPU threads use the memory: stop them before it is unmapped.
        if let Some(machine) = self.machine.take() {
            machine.stop(&self.devices);
        }
        self.ram.release();
    }
}

/// The I/O APIC's id: the first after the APIC ids of every vCPU the guest may have.
fn ioapic_id_of(cpus: &config::CpusConfig) -> u8 {
    let max = cpus.max_vcpus.max(cpus.boot_vcpus);
    mptable::ioapic_id(&Topology::of(cpus).apic_ids(max))
}

/// Opens `/dev/kvm` and reads the CPUID it supports.
pub fn open_kvm() -> Result<(Kvm, CpuId), VmError> {
    let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("read supported CPUID"))?;
    Ok((kvm, cpuid))
}
