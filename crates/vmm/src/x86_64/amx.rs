//! `cpus.features.amx`: Intel's Advanced Matrix Extensions in the guest.
//!
//! Linux gives a process AMX tile state for its guests only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, XFEATURE_XTILEDATA)`, process-wide), after which
//! `KVM_GET_SUPPORTED_CPUID` lists AMX. A VM asking for AMX gets it that way, or is refused
//! at creation when the host or KVM cannot; a VM not asking never sees it, even once an
//! earlier VM of the same VMM had it.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// `arch_prctl` code asking for an extended state component in guests.
pub const ARCH_REQ_XCOMP_GUEST_PERM: u64 = 0x1025;
/// The AMX tile data state component.
pub const XFEATURE_XTILEDATA: u64 = 18;
/// The AMX tile configuration state component.
const XFEATURE_XTILECFG: u32 = 17;
/// CPUID 7.0 EDX: AMX-BF16, AMX-TILE, AMX-INT8.
const AMX_EDX: u32 = (1 << 22) | (1 << 24) | (1 << 25);
const AMX_TILE: u32 = 1 << 24;
/// Leaves that describe the tiles.
const LEAF_TILE_INFO: u32 = 0x1d;
const LEAF_TMUL_INFO: u32 = 0x1e;
const LEAF_XSAVE: u32 = 0xd;

/// Whether KVM's supported set offers AMX tiles.
pub fn offers_amx(supported: &CpuId) -> bool {
    supported
        .as_slice()
        .iter()
        .any(|e| e.function == 7 && e.index == 0 && e.edx & AMX_TILE != 0)
}

/// Asks for AMX state in guests and reads KVM's supported CPUID again; a one-line reason
/// when the host or KVM cannot give AMX.
pub fn enable(kvm: &Kvm) -> Result<CpuId, String> {
    // SAFETY: arch_prctl with two integer arguments; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_GUEST_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if r != 0 {
        return Err(format!(
            "cpus.features.amx: the host kernel gives guests no AMX state: {}",
            std::io::Error::last_os_error()
        ));
    }
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("cpus.features.amx: cannot read KVM's CPUID: {e}"))?;
    if !offers_amx(&supported) {
        return Err(
            "cpus.features.amx: KVM on this host offers guests no AMX (CPUID leaf 7 \
                    EDX bit 24 is clear in KVM_GET_SUPPORTED_CPUID): remove amx from \
                    --cpus features"
                .into(),
        );
    }
    Ok(supported)
}

fn strip_entry(e: &mut kvm_cpuid_entry2) {
    match (e.function, e.index) {
        (7, 0) => e.edx &= !AMX_EDX,
        (LEAF_XSAVE, 0) => e.eax &= !((1 << XFEATURE_XTILECFG) | (1 << XFEATURE_XTILEDATA)),
        (LEAF_XSAVE, i) if i == XFEATURE_XTILECFG || u64::from(i) == XFEATURE_XTILEDATA => {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0)
        }
        (LEAF_TILE_INFO | LEAF_TMUL_INFO, _) => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
        _ => {}
    }
}

/// `supported` without AMX, for a VM that does not ask for it.
pub fn without_amx(supported: &CpuId) -> CpuId {
    let mut entries = supported.as_slice().to_vec();
    entries.iter_mut().for_each(strip_entry);
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx: 0x1234,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn amx_is_found_and_stripped_everywhere_it_shows() {
        let amx = CpuId::from_entries(&[
            entry(7, 0, 2, AMX_EDX | 1),
            entry(LEAF_XSAVE, 0, 0x600e7, 0),
            entry(LEAF_XSAVE, 17, 0x40, 0),
            entry(LEAF_XSAVE, 18, 0x2000, 0),
            entry(LEAF_TILE_INFO, 0, 1, 0),
            entry(LEAF_TMUL_INFO, 0, 0, 0),
            entry(1, 0, 0x806f8, 0),
        ])
        .unwrap();
        assert!(offers_amx(&amx));
        let plain = without_amx(&amx);
        assert!(!offers_amx(&plain));
        let e = plain.as_slice();
        assert_eq!(e[0].edx, 1, "other leaf-7 features stay");
        assert_eq!(e[1].eax, 0xe7, "XCR0 without the tile components");
        assert!(e[2..6].iter().all(|x| x.eax == 0 && x.ebx == 0));
        assert_eq!(e[6], amx.as_slice()[6], "other leaves untouched");
    }
}
