//! A vCPU's architectural state as KVM holds it: read by the vCPU's own thread while it is
//! parked, set by the VMM thread on a new vCPU before its thread exists.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::{KvmNestedStateBuffer, VcpuFd};
use serde::{Deserialize, Serialize};

/// Everything a vCPU needs to carry on where it stopped: registers, special registers,
/// XSAVE (FPU, SSE, AVX…), XCRs, debug registers, local APIC, run state, pending events,
/// the MSRs KVM lists (TSC among them), the TSC frequency, and nested state when there is
/// any. The KVM structures are kept as their bytes.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index (its thread's number; the APIC id follows from the topology).
    pub index: u8,
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER, descriptor tables.
    pub sregs: kvm_sregs,
    /// The XSAVE area.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Running, halted, waiting for SIPI…
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Each MSR KVM reported and could read.
    pub msrs: Vec<kvm_msr_entry>,
    /// The TSC frequency in kHz, when KVM tells it.
    pub tsc_khz: Option<u32>,
    /// Nested virtualization state, only when the vCPU has some.
    pub nested: Option<KvmNestedStateBuffer>,
}

fn err(what: &str) -> impl Fn(kvm_ioctls::Error) -> String + '_ {
    move |e| format!("cannot {what}: {e}")
}

/// Reads the MSRs of `indices` that `vcpu` has; an MSR KVM lists but cannot read on this
/// host is left out (it was never the guest's).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, String> {
    let mut left: Vec<u32> = indices.to_vec();
    let mut read = Vec::with_capacity(indices.len());
    while !left.is_empty() {
        let entries: Vec<kvm_msr_entry> = left
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| format!("MSR list: {e:?}"))?;
        let n = vcpu.get_msrs(&mut msrs).map_err(err("read MSRs"))?;
        read.extend_from_slice(&msrs.as_slice()[..n.min(left.len())]);
        // KVM stops at the first MSR it cannot read: skip that one and go on.
        left.drain(..(n + 1).min(left.len()));
    }
    Ok(read)
}

impl VcpuState {
    /// Reads the state of `vcpu` (number `index`, not running), with the MSRs of
    /// `msr_indices`.
    pub fn capture(index: u8, vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<Self, String> {
        let nested = {
            let mut buffer = KvmNestedStateBuffer::empty();
            match vcpu.nested_state(&mut buffer) {
                Ok(Some(_)) => Some(buffer),
                // EINVAL: this KVM keeps no nested state for the vCPU (no VMX/SVM in use).
                Ok(None) | Err(_) => None,
            }
        };
        Ok(VcpuState {
            index,
            regs: vcpu.get_regs().map_err(err("read registers"))?,
            sregs: vcpu.get_sregs().map_err(err("read special registers"))?,
            xsave: vcpu.get_xsave().map_err(err("read the XSAVE area"))?,
            xcrs: vcpu.get_xcrs().map_err(err("read the XCRs"))?,
            debugregs: vcpu.get_debug_regs().map_err(err("read debug registers"))?,
            lapic: vcpu.get_lapic().map_err(err("read the local APIC"))?,
            mp_state: vcpu.get_mp_state().map_err(err("read the run state"))?,
            events: vcpu.get_vcpu_events().map_err(err("read pending events"))?,
            msrs: read_msrs(vcpu, msr_indices)?,
            tsc_khz: vcpu.get_tsc_khz().ok(),
            nested,
        })
    }

    /// Sets this state on `vcpu`, whose CPUID is set already. The order matters: the TSC
    /// frequency before the MSRs (the TSC among them), the local APIC before the MSRs (its
    /// deadline timer), the events last.
    pub fn apply(&self, vcpu: &VcpuFd) -> Result<(), String> {
        if let Some(khz) = self.tsc_khz {
            if vcpu.get_tsc_khz().ok() != Some(khz) {
                vcpu.set_tsc_khz(khz).map_err(|e| {
                    format!("cannot run the TSC at the snapshot's {khz} kHz on this host: {e}")
                })?;
            }
        }
        vcpu.set_mp_state(self.mp_state)
            .map_err(err("set the run state"))?;
        vcpu.set_regs(&self.regs).map_err(err("set registers"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(err("set special registers"))?;
        // SAFETY: `xsave` is a whole kvm_xsave read from KVM by `capture` (and checked for
        // its size when deserialized); KVM reads no more than that structure. Palisade's
        // snapshots refuse VMs with AMX, whose state would need the larger KVM_GET_XSAVE2.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(err("set the XSAVE area"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(err("set the XCRs"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(err("set debug registers"))?;
        vcpu.set_lapic(&self.lapic)
            .map_err(err("set the local APIC"))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|e| format!("MSR list: {e:?}"))?;
        let set = vcpu.set_msrs(&msrs).map_err(err("set MSRs"))?;
        if set != self.msrs.len() {
            let failed = self.msrs.get(set).map_or(0, |m| m.index);
            return Err(format!(
                "cannot set MSR {failed:#x} (this host's KVM refuses the snapshot's value)"
            ));
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(err("set pending events"))?;
        if let Some(nested) = &self.nested {
            vcpu.set_nested_state(nested)
                .map_err(err("set nested state"))?;
        }
        Ok(())
    }
}
