//! What each of the VMM's threads may do: the `ioctl` requests its role makes (KVM's, a
//! tap's, a terminal's), the capabilities it keeps, and its lock-down.
//!
//! The sandbox crate knows no KVM, so the request numbers are spelled here, from the
//! kernel's UAPI, with the same encoding macros kvm-ioctls uses internally (it does not
//! export them).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_enable_cap, kvm_fpu, kvm_ioeventfd,
    kvm_irq_routing, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_msr_list, kvm_msrs,
    kvm_nested_state, kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, KVMIO,
};
use sandbox::lockdown::{self, LockdownError, Registration, ThreadLandlock};
use sandbox::seccomp::{self, FilterContext, Filters, Role};
use sandbox::Capability;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use requests::*;

/// Request numbers (generated functions, one per request).
#[allow(non_snake_case)]
mod requests {
    use super::*;

    // /dev/kvm.
    ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
    ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
    ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
    ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
    ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
    ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_cpuid2);
    ioctl_iowr_nr!(KVM_GET_MSR_FEATURE_INDEX_LIST, KVMIO, 0x0a, kvm_msr_list);
    // A KVM VM.
    ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
    ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
    ioctl_iow_nr!(KVM_SET_IDENTITY_MAP_ADDR, KVMIO, 0x48, u64);
    ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
    ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
    ioctl_iow_nr!(KVM_ENABLE_CAP, KVMIO, 0xa3, kvm_enable_cap);
    ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
    ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    // A vCPU.
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
    ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
    ioctl_io_nr!(KVM_NMI, KVMIO, 0x9a);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
    ioctl_io_nr!(KVM_SET_TSC_KHZ, KVMIO, 0xa2);
    ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
    ioctl_iowr_nr!(KVM_GET_NESTED_STATE, KVMIO, 0xbe, kvm_nested_state);
    ioctl_iow_nr!(KVM_SET_NESTED_STATE, KVMIO, 0xbf, kvm_nested_state);
}

/// What a parked vCPU reads of itself for a snapshot (only reads: the state is set again
/// by the VMM thread on the restored vCPU, before its thread exists).
fn vcpu_snapshot_ioctls() -> [u64; 10] {
    [
        KVM_GET_TSC_KHZ(),
        KVM_GET_MSRS(),
        KVM_GET_FPU(),
        KVM_GET_LAPIC(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_GET_NESTED_STATE(),
    ]
}

/// What the VMM thread sets on a restored vCPU and VM.
fn vmm_restore_ioctls() -> [u64; 9] {
    [
        KVM_SET_VCPU_EVENTS(),
        KVM_SET_DEBUGREGS(),
        KVM_SET_TSC_KHZ(),
        KVM_GET_TSC_KHZ(),
        KVM_SET_XSAVE(),
        KVM_SET_XCRS(),
        KVM_SET_NESTED_STATE(),
        KVM_GET_CLOCK(),
        KVM_SET_CLOCK(),
    ]
}

/// What a vCPU thread asks once running: run, read registers for a fault report, and what
/// device emulation on its exits does (interrupts, moved notification addresses, and the
/// tap settings a network device applies when its driver starts it).
fn vcpu_ioctls() -> Vec<u64> {
    // Hot first: the filter checks them in this order.
    let kvm = [
        KVM_RUN(),
        KVM_SIGNAL_MSI(),
        KVM_GET_REGS(),
        KVM_IOEVENTFD(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        // `vm.nmi`, injected by each vCPU into itself.
        KVM_NMI(),
        // Its segments, kept as it parks (for `vm.coredump`).
        KVM_GET_SREGS(),
    ];
    let tap = [
        libc::TUNSETOFFLOAD,
        libc::TUNSETQUEUE,
        libc::TUNSETVNETHDRSZ,
    ];
    // Request numbers are `c_ulong`, which is `u64` on x86_64, the only target filtered.
    let mut all = kvm.to_vec();
    all.extend(tap);
    all.extend(vcpu_snapshot_ioctls());
    all
}

/// What a device's worker asks: nothing of KVM (interrupts are irqfd writes); a virtio
/// console's terminal settings are left to the VMM thread.
fn device_ioctls() -> Vec<u64> {
    Vec::new()
}

/// What the VMM thread asks: building VMs and vCPUs (also on reboot), the vCPUs' requests
/// (device work it does for them), taps, terminals and pseudo-terminals.
fn vmm_ioctls() -> Vec<u64> {
    let kvm = [
        KVM_GET_API_VERSION(),
        KVM_CREATE_VM(),
        KVM_GET_MSR_INDEX_LIST(),
        KVM_CHECK_EXTENSION(),
        KVM_GET_VCPU_MMAP_SIZE(),
        KVM_GET_SUPPORTED_CPUID(),
        KVM_GET_MSR_FEATURE_INDEX_LIST(),
        KVM_CREATE_VCPU(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_SET_TSS_ADDR(),
        KVM_SET_IDENTITY_MAP_ADDR(),
        KVM_ENABLE_CAP(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_GET_MSRS(),
        KVM_SET_MSRS(),
        KVM_GET_FPU(),
        KVM_SET_FPU(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_SET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_SET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
    ];
    let host = [
        libc::TUNSETIFF,
        libc::TUNGETIFF,
        libc::SIOCSIFADDR,
        libc::SIOCSIFNETMASK,
        libc::SIOCGIFFLAGS,
        libc::SIOCSIFFLAGS,
        libc::SIOCGIFHWADDR,
        libc::TCGETS,
        libc::TCSETS,
        libc::TCSETSW,
        libc::TCSETSF,
        libc::TIOCGPTN,
        libc::TIOCSPTLCK,
        libc::TIOCGWINSZ,
    ];
    // What it does for running vCPUs (interrupts above all) comes first: the filter checks
    // requests in order, and the rest happen once per VM.
    let mut all = vcpu_ioctls();
    all.extend(kvm);
    all.extend(vmm_restore_ioctls());
    all.extend(host);
    all
}

/// The capabilities the VMM thread keeps while another VM may still be created or a device
/// hot-plugged: creating taps, opening images that root does not own, and lowering its
/// bounding set once the VM exists (`CAP_SETPCAP`, so that threads it starts later cannot
/// hold more than it).
pub fn vmm_capabilities(net_hotplug: bool, may_create: bool) -> Vec<Capability> {
    let mut keep = Vec::new();
    if net_hotplug || may_create {
        keep.push(Capability::CAP_NET_ADMIN);
    }
    if may_create {
        keep.push(Capability::CAP_DAC_OVERRIDE);
        keep.push(Capability::CAP_SETPCAP);
    }
    keep
}

/// Builds the filters of a role of this VMM.
pub fn filters(role: Role, message_fd: Option<i32>) -> Result<Filters, seccomp::SeccompError> {
    let ioctls = match role {
        Role::Vmm => vmm_ioctls(),
        Role::Vcpu => vcpu_ioctls(),
        Role::Device | Role::Vsock => device_ioctls(),
        Role::Api | Role::Janitor | Role::Connector => Vec::new(),
    };
    let ctx = FilterContext {
        ioctls,
        message_fd: if role == Role::Vmm { message_fd } else { None },
    };
    seccomp::build(role, lockdown::seccomp_mode(), &ctx)
}

/// Locks a vCPU thread down: no file rights, no capability, the vCPU filter.
pub fn lock_down_vcpu(filters: &Filters) -> Result<Registration, LockdownError> {
    lockdown::lock_down(ThreadLandlock::NoFiles, &[], filters)
}

/// Locks a device's worker thread down: no file rights, no capability, the device filter.
pub fn lock_down_device(filters: &Filters) -> Result<Registration, LockdownError> {
    lockdown::lock_down(ThreadLandlock::NoFiles, &[], filters)
}

type CompiledFilters = std::sync::OnceLock<Result<std::sync::Arc<Filters>, String>>;

/// The confinement every device worker thread applies to itself first: the device
/// filters, compiled once per process.
pub fn device_thread_setup() -> Result<devices::virtio::worker::ThreadSetup, String> {
    static FILTERS: CompiledFilters = std::sync::OnceLock::new();
    worker_setup(&FILTERS, Role::Device)
}

/// The confinement of a vsock device's worker: a device's, with the vsock filter (which
/// also accepts host clients and watches their connections).
pub fn vsock_thread_setup() -> Result<devices::virtio::worker::ThreadSetup, String> {
    static FILTERS: CompiledFilters = std::sync::OnceLock::new();
    worker_setup(&FILTERS, Role::Vsock)
}

/// A worker's confinement with `role`'s filters, compiled once into `cell`.
fn worker_setup(
    cell: &'static CompiledFilters,
    role: Role,
) -> Result<devices::virtio::worker::ThreadSetup, String> {
    let filters = cell
        .get_or_init(|| {
            filters(role, None)
                .map(std::sync::Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()?;
    Ok(std::sync::Arc::new(move |_name: &str| {
        lock_down_device(&filters)
            .map(|kept| Box::new(kept) as Box<dyn std::any::Any>)
            .map_err(|e| e.to_string())
    }))
}

/// Locks the connector thread down: no file rights but making socket files (it binds vsock
/// sockets, at paths checked first), no capability, the connector filter.
pub fn lock_down_connector() -> Result<Registration, String> {
    let filters = filters(Role::Connector, None).map_err(|e| e.to_string())?;
    lockdown::lock_down(ThreadLandlock::SocketFilesOnly, &[], &filters).map_err(|e| e.to_string())
}

/// Locks the API thread down: no file rights, no capability, the API filter.
pub fn lock_down_api() -> Result<Registration, String> {
    let filters = filters(Role::Api, None).map_err(|e| e.to_string())?;
    lockdown::lock_down(ThreadLandlock::NoFiles, &[], &filters).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel() {
        // Spot checks against the values the kernel headers give.
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_CREATE_VM(), 0xae01);
        assert_eq!(KVM_SIGNAL_MSI(), 0x4020_aea5);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_SET_CPUID2(), 0x4008_ae90);
    }

    #[test]
    fn vcpus_cannot_build_vms_and_the_vmm_can() {
        let v = vcpu_ioctls();
        assert!(!v.contains(&KVM_CREATE_VM()));
        assert!(!v.contains(&libc::TUNSETIFF));
        let m = vmm_ioctls();
        assert!(m.contains(&KVM_CREATE_VM()) && m.contains(&KVM_RUN()));
        // A vCPU reads its own state for a snapshot; only the VMM thread sets one.
        assert!(v.contains(&KVM_GET_XSAVE()) && v.contains(&KVM_GET_NESTED_STATE()));
        for set in vmm_restore_ioctls() {
            assert!(m.contains(&set));
        }
        assert!(!v.contains(&KVM_SET_XSAVE()) && !v.contains(&KVM_SET_CLOCK()));
        assert_eq!(KVM_GET_XSAVE(), 0x9000_aea4);
        assert_eq!(KVM_SET_TSC_KHZ(), 0xaea2);
    }

    #[test]
    fn capabilities_follow_what_may_still_happen() {
        assert!(vmm_capabilities(false, false).is_empty());
        assert_eq!(
            vmm_capabilities(true, false),
            vec![Capability::CAP_NET_ADMIN]
        );
        assert_eq!(vmm_capabilities(false, true).len(), 3);
    }
}
