//! A running KVM incarnation of a VM: the VM descriptor and its vCPU threads, which vCPU
//! hot-plug adds to and takes from.
//!
//! KVM cannot destroy a vCPU, so one the guest ejected keeps its descriptor here, idle, and
//! runs again on a new thread (confined like every vCPU thread) when it is plugged back in.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::{
    kvm_mp_state, kvm_userspace_memory_region, CpuId, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryRegion, GuestRegionMmap};

use crate::device_manager::DeviceManager;
use crate::vcpu::{self, VcpuContext, VcpuControl, VcpuThread};
use crate::vm::{kvm_err, VmError};
use crate::x86_64::cpuid;
use crate::x86_64::regs::{self, EntryMode};
use crate::x86_64::topology::Topology;

/// What every vCPU of the machine is built from.
pub struct VcpuSetup {
    /// The guest's topology (and so each vCPU's APIC id).
    pub topology: Topology,
    /// What KVM supports, from which each vCPU's CPUID is made.
    pub supported_cpuid: CpuId,
    /// `cpus.affinity`.
    pub affinity: Vec<config::CpuAffinity>,
    /// `cpus.core_scheduling`.
    pub core_scheduling: config::CoreScheduling,
}

/// The KVM VM and its vCPU threads.
pub struct Machine {
    // Dropped after the vCPU threads are joined (see `stop`).
    vm_fd: Arc<VmFd>,
    control: Arc<VcpuControl>,
    threads: Vec<VcpuThread>,
    idle: BTreeMap<u8, VcpuFd>,
    ctx: VcpuContext,
    setup: VcpuSetup,
}

impl Machine {
    /// Creates the first `boot_vcpus` vCPUs (vCPU 0 entering the kernel at `entry`), then
    /// starts them: all exist before any runs, so the boot vCPU's start-up IPIs find them.
    pub fn start(
        vm_fd: Arc<VmFd>,
        ctx: VcpuContext,
        setup: VcpuSetup,
        boot_vcpus: u8,
        entry: (EntryMode, u64),
    ) -> Result<Machine, VmError> {
        crate::x86_64::core_scheduling::at_boot(setup.core_scheduling);
        let mut fds = Vec::with_capacity(usize::from(boot_vcpus));
        for index in 0..boot_vcpus {
            fds.push(new_vcpu(
                &vm_fd,
                index,
                &setup,
                (index == 0).then_some(entry),
            )?);
        }
        let fds = fds.into_iter().enumerate().map(|(i, fd)| (i as u8, fd));
        Machine::run(vm_fd, ctx, setup, fds.collect())
    }

    /// Creates the vCPUs of a snapshot, each set to its state, and starts their threads
    /// parked (`ctx.control` is a paused one): the machine waits for `vm.resume`.
    pub fn start_restored(
        vm_fd: Arc<VmFd>,
        ctx: VcpuContext,
        setup: VcpuSetup,
        states: &[crate::snapshot::vcpu_state::VcpuState],
    ) -> Result<Machine, VmError> {
        crate::x86_64::core_scheduling::at_boot(setup.core_scheduling);
        let mut fds = Vec::with_capacity(states.len());
        for state in states {
            let fd = create_vcpu(&vm_fd, state.index, &setup)?;
            state
                .apply(&fd)
                .map_err(|e| VmError::Snapshot(format!("vCPU {}: {e}", state.index)))?;
            fds.push((state.index, fd));
        }
        let machine = Machine::run(vm_fd, ctx, setup, fds)?;
        vcpu::wait_all_parked(&machine.control, &machine.threads);
        Ok(machine)
    }

    /// The machine of `vm_fd`, its vCPUs `fds` (by index) each started on its thread; if
    /// one cannot start, those started are stopped again.
    fn run(
        vm_fd: Arc<VmFd>,
        ctx: VcpuContext,
        setup: VcpuSetup,
        fds: Vec<(u8, VcpuFd)>,
    ) -> Result<Machine, VmError> {
        let mut machine = Machine {
            vm_fd,
            control: ctx.control.clone(),
            threads: Vec::with_capacity(fds.len()),
            idle: BTreeMap::new(),
            ctx,
            setup,
        };
        for (index, fd) in fds {
            if let Err(e) = machine.spawn(index, fd) {
                vcpu::stop_all(&machine.control, std::mem::take(&mut machine.threads));
                return Err(e);
            }
        }
        Ok(machine)
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    fn spawn(&mut self, index: u8, fd: VcpuFd) -> Result<(), VmError> {
        let thread = VcpuThread::spawn(index, fd, self.ctx.clone()).map_err(VmError::Thread)?;
        crate::x86_64::core_scheduling::for_vcpu(self.setup.core_scheduling, thread.tid());
        let pin = self.setup.affinity.iter().find(|a| a.vcpu == index);
        let pinned = pin.map_or(Ok(()), |a| thread.pin(&a.host_cpus));
        // Kept even when pinning failed, so that the caller's clean-up stops it.
        self.threads.push(thread);
        pinned.map_err(|e| {
            VmError::Thread(std::io::Error::other(format!(
                "cannot pin vCPU {index} to host CPUs {:?}: {e}",
                pin.map(|a| a.host_cpus.clone()).unwrap_or_default()
            )))
        })
    }

    /// Starts vCPU `index` (waiting for the guest's INIT and start-up IPIs, as a hot-added
    /// processor does); nothing if it runs already.
    pub fn add_vcpu(&mut self, index: u8) -> Result<(), VmError> {
        if self.threads.iter().any(|t| t.index() == index) {
            return Ok(());
        }
        let fd = match self.idle.remove(&index) {
            Some(fd) => {
                // CPUID and MSRs stay as set; only the run state goes back to power-on.
                let parked = fd.set_mp_state(kvm_mp_state {
                    mp_state: KVM_MP_STATE_UNINITIALIZED,
                });
                if let Err(e) = parked {
                    self.idle.insert(index, fd);
                    return Err(kvm_err("park a re-plugged vCPU")(e));
                }
                fd
            }
            None => new_vcpu(&self.vm_fd, index, &self.setup, None)?,
        };
        if let Err(e) = self.spawn(index, fd) {
            self.retire_vcpu(index);
            return Err(e);
        }
        Ok(())
    }

    /// Ends the thread of vCPU `index`, keeping the vCPU for a later [`Machine::add_vcpu`];
    /// returns whether it was running.
    pub fn retire_vcpu(&mut self, index: u8) -> bool {
        let Some(pos) = self.threads.iter().position(|t| t.index() == index) else {
            return false;
        };
        let thread = self.threads.remove(pos);
        if let Some(fd) = vcpu::retire(&self.control, thread) {
            self.idle.insert(index, fd);
        }
        true
    }

    /// Makes `region` guest memory in KVM slot `slot` (memory hot-plug).
    pub fn map_memory(&self, slot: u32, region: &GuestRegionMmap) -> Result<(), VmError> {
        map_region(&self.vm_fd, slot, region)
    }

    /// The indices of the running vCPUs, in order.
    pub fn vcpus(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self.threads.iter().map(VcpuThread::index).collect();
        v.sort_unstable();
        v
    }

    /// The steering the vCPU threads share.
    pub fn control(&self) -> &VcpuControl {
        &self.control
    }

    /// The running vCPU threads.
    pub fn threads(&self) -> &[VcpuThread] {
        &self.threads
    }

    /// Stops every vCPU, then disconnects the devices from the VM.
    pub fn stop(self, devices: &DeviceManager) {
        vcpu::stop_all(&self.control, self.threads);
        devices.attach(None);
        drop(self.idle);
        drop(self.vm_fd);
    }
}

/// Maps `region` into `vm` as KVM memory slot `slot`.
pub fn map_region(vm: &VmFd, slot: u32, region: &GuestRegionMmap) -> Result<(), VmError> {
    let mapping = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: region.start_addr().raw_value(),
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping of `memory_size` bytes held by the VM's guest
    // memory, which outlives the KVM VM (the machine is stopped and dropped before the
    // memory, see `Drop for Vm`).
    unsafe { vm.set_user_memory_region(mapping) }.map_err(kvm_err("map guest memory"))
}

/// Creates vCPU `index` and sets it up; `entry` is given for the boot vCPU.
fn new_vcpu(
    vm: &VmFd,
    index: u8,
    setup: &VcpuSetup,
    entry: Option<(EntryMode, u64)>,
) -> Result<VcpuFd, VmError> {
    let fd = create_vcpu(vm, index, setup)?;
    configure_vcpu(&fd, entry)?;
    Ok(fd)
}

/// Creates vCPU `index` with its CPUID (KVM gives a vCPU its id as APIC id).
fn create_vcpu(vm: &VmFd, index: u8, setup: &VcpuSetup) -> Result<VcpuFd, VmError> {
    let apic_id = setup.topology.apic_id(index);
    let fd = vm
        .create_vcpu(u64::from(apic_id))
        .map_err(kvm_err("create a vCPU"))?;
    fd.set_cpuid2(&cpuid::for_vcpu(
        &setup.supported_cpuid,
        apic_id,
        &setup.topology,
    ))
    .map_err(kvm_err("set CPUID"))?;
    Ok(fd)
}

/// Sets a new vCPU's MSRs, FPU, local APIC and, for the boot vCPU, entry registers.
fn configure_vcpu(fd: &VcpuFd, entry: Option<(EntryMode, u64)>) -> Result<(), VmError> {
    let msrs = regs::boot_msrs_fam().map_err(|_| VmError::Kvm {
        what: "build the MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    fd.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
    fd.set_fpu(&regs::boot_fpu())
        .map_err(kvm_err("set the FPU"))?;
    let mut lapic = fd.get_lapic().map_err(kvm_err("read the local APIC"))?;
    regs::set_lint(&mut lapic);
    fd.set_lapic(&lapic)
        .map_err(kvm_err("set the local APIC"))?;
    match entry {
        Some((mode, entry)) => {
            let sregs = fd.get_sregs().map_err(kvm_err("read special registers"))?;
            fd.set_sregs(&regs::boot_sregs(sregs, mode))
                .map_err(kvm_err("set special registers"))?;
            fd.set_regs(&regs::boot_regs(mode, entry))
                .map_err(kvm_err("set registers"))?;
            fd.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(kvm_err("make the boot vCPU runnable"))?;
        }
        None => {
            // Application processors wait for INIT and SIPI from the boot processor.
            fd.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_UNINITIALIZED,
            })
            .map_err(kvm_err("park an application processor"))?;
        }
    }
    Ok(())
}
