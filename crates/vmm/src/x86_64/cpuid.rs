//! Per-vCPU CPUID: KVM's supported set, with the topology and APIC id of each vCPU filled in.
//!
//! Palisade presents one package with one thread per core and `max_vcpus` cores, the APIC id
//! of vCPU `n` being `n` — the same ids the MP table (and later the MADT) list.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const EBX_APIC_ID_SHIFT: u32 = 24;
const EBX_LOGICAL_COUNT_SHIFT: u32 = 16;
const EDX_HTT: u32 = 1 << 28;
const ECX_HYPERVISOR: u32 = 1 << 31;

const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits of the APIC id that number the cores of a package of `count` cores.
pub fn core_id_bits(count: u8) -> u32 {
    (count.max(1) as u32).next_power_of_two().trailing_zeros()
}

/// Rewrites one entry for vCPU `apic_id` among `max_vcpus`.
fn patch(entry: &mut kvm_cpuid_entry2, apic_id: u8, max_vcpus: u8) {
    let count = max_vcpus.max(1) as u32;
    match entry.function {
        LEAF_FEATURES => {
            entry.ebx &= !(0xff << EBX_APIC_ID_SHIFT | 0xff << EBX_LOGICAL_COUNT_SHIFT);
            entry.ebx |= (apic_id as u32) << EBX_APIC_ID_SHIFT;
            let addressable = count.next_power_of_two().min(255);
            entry.ebx |= addressable << EBX_LOGICAL_COUNT_SHIFT;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
            entry.ecx |= ECX_HYPERVISOR;
        }
        LEAF_CACHE => {
            // EAX[31:26]: addressable core ids per package minus one; EAX[25:14]: threads
            // sharing this cache minus one (the last level is shared by all cores).
            let cache_type = entry.eax & 0x1f;
            if cache_type != 0 {
                let level = (entry.eax >> 5) & 0x7;
                let cores = count.next_power_of_two().min(64);
                let sharing = if level >= 3 { cores - 1 } else { 0 };
                entry.eax &= 0x3fff;
                entry.eax |= ((cores - 1) << 26) | ((sharing & 0xfff) << 14);
            }
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            entry.edx = apic_id as u32;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = LEVEL_TYPE_SMT << 8;
                }
                1 => {
                    entry.eax = core_id_bits(max_vcpus);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | 1;
                }
                index => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = index & 0xff;
                }
            }
        }
        _ => {}
    }
}

/// The CPUID of vCPU `apic_id` out of `max_vcpus`, from KVM's supported set.
pub fn for_vcpu(supported: &CpuId, apic_id: u8, max_vcpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        patch(entry, apic_id, max_vcpus);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0, 0x806f0),
            entry(LEAF_CACHE, 0, 0x121), // L1 data cache.
            entry(LEAF_CACHE, 3, 0x163), // L3 unified cache.
            entry(LEAF_TOPOLOGY, 0, 0),
            entry(LEAF_TOPOLOGY, 1, 0),
            entry(LEAF_TOPOLOGY, 2, 0),
        ])
        .unwrap()
    }

    #[test]
    fn each_vcpu_reports_its_own_apic_id() {
        for id in 0..4u8 {
            let c = for_vcpu(&sample(), id, 4);
            let leaf1 = find(&c, LEAF_FEATURES, 0);
            assert_eq!(leaf1.ebx >> 24, id as u32);
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
            assert_ne!(leaf1.edx & EDX_HTT, 0);
            assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
            for sub in 0..3 {
                assert_eq!(find(&c, LEAF_TOPOLOGY, sub).edx, id as u32);
            }
        }
    }

    #[test]
    fn topology_leaf_describes_one_package_of_cores() {
        let c = for_vcpu(&sample(), 2, 3);
        let smt = find(&c, LEAF_TOPOLOGY, 0);
        assert_eq!(
            (smt.eax, smt.ebx, (smt.ecx >> 8) & 0xff),
            (0, 1, LEVEL_TYPE_SMT)
        );
        let core = find(&c, LEAF_TOPOLOGY, 1);
        assert_eq!(
            (core.eax, core.ebx, (core.ecx >> 8) & 0xff),
            (2, 3, LEVEL_TYPE_CORE)
        );
        let end = find(&c, LEAF_TOPOLOGY, 2);
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff), (0, 0));
    }

    #[test]
    fn cache_leaf_counts_cores_and_sharing() {
        let c = for_vcpu(&sample(), 0, 4);
        let l1 = find(&c, LEAF_CACHE, 0);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (3, 0));
        assert_eq!(l1.eax & 0x3fff, 0x121);
        let l3 = find(&c, LEAF_CACHE, 3);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (3, 3));
    }

    #[test]
    fn single_vcpu_has_no_htt_and_zero_core_bits() {
        let c = for_vcpu(&sample(), 0, 1);
        assert_eq!(find(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(5), 3);
    }
}
