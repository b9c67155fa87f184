//! Per-vCPU CPUID: KVM's supported set, with the topology and APIC id of each vCPU filled in
//! (see [`super::topology`] for how the ids are laid out).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::topology::Topology;

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
const LEVEL_TYPE_DIE: u32 = 5;

/// Rewrites one entry of leaf 0x1 or 0x4 for the vCPU with `apic_id`.
fn patch(entry: &mut kvm_cpuid_entry2, apic_id: u8, topo: &Topology) {
    match entry.function {
        LEAF_FEATURES => {
            entry.ebx &= !(0xff << EBX_APIC_ID_SHIFT | 0xff << EBX_LOGICAL_COUNT_SHIFT);
            entry.ebx |= u32::from(apic_id) << EBX_APIC_ID_SHIFT;
            // Addressable ids per package.
            let addressable = (1u32 << topo.package_shift()).min(255);
            entry.ebx |= addressable << EBX_LOGICAL_COUNT_SHIFT;
            if topo.per_package() > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
            entry.ecx |= ECX_HYPERVISOR;
        }
        LEAF_CACHE => {
            // EAX[31:26]: addressable core ids per package minus one; EAX[25:14]: ids sharing
            // this cache minus one (levels 1 and 2 belong to a core, the last level to the
            // package).
            let cache_type = entry.eax & 0x1f;
            if cache_type != 0 {
                let level = (entry.eax >> 5) & 0x7;
                let cores = (1u32 << (topo.core_bits() + topo.die_bits())).min(64);
                let sharing_bits = if level >= 3 {
                    topo.package_shift()
                } else {
                    topo.smt_bits()
                };
                let sharing = (1u32 << sharing_bits).min(4096) - 1;
                entry.eax &= 0x3fff;
                entry.eax |= ((cores - 1) << 26) | (sharing << 14);
            }
        }
        _ => {}
    }
}

/// The levels of leaf 0xB (`v2`: 0x1F, which also has the die level when there are
/// several dies): (level type, bits below the next level, vCPUs in it).
fn levels(topo: &Topology, v2: bool) -> Vec<(u32, u32, u32)> {
    let tpc = u32::from(topo.threads_per_core);
    let mut l = vec![(LEVEL_TYPE_SMT, topo.smt_bits(), tpc)];
    if v2 && topo.dies_per_package > 1 {
        let cores = tpc * u32::from(topo.cores_per_die);
        l.push((LEVEL_TYPE_CORE, topo.smt_bits() + topo.core_bits(), cores));
        l.push((LEVEL_TYPE_DIE, topo.package_shift(), topo.per_package()));
    } else {
        l.push((LEVEL_TYPE_CORE, topo.package_shift(), topo.per_package()));
    }
    l
}

/// The entries of topology leaf `function` for `apic_id`, ending with an invalid level.
fn topology_entries(function: u32, apic_id: u8, topo: &Topology) -> Vec<kvm_cpuid_entry2> {
    let levels = levels(topo, function == LEAF_TOPOLOGY_V2);
    let end = levels.len() as u32;
    levels
        .into_iter()
        .chain(std::iter::once((0, 0, 0)))
        .enumerate()
        .map(|(index, (kind, shift, count))| {
            let index = index as u32;
            kvm_cpuid_entry2 {
                function,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: count,
                ecx: (kind << 8) | index.min(end),
                edx: u32::from(apic_id),
                ..Default::default()
            }
        })
        .collect()
}

/// The CPUID of the vCPU with `apic_id` in `topo`, from KVM's supported set.
pub fn for_vcpu(supported: &CpuId, apic_id: u8, topo: &Topology) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = Vec::new();
    for mut entry in supported.as_slice().iter().copied() {
        match entry.function {
            // Rebuilt whole below: the supported set may list fewer levels than needed.
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                if entry.index == 0 {
                    entries.extend(topology_entries(entry.function, apic_id, topo));
                }
            }
            _ => {
                patch(&mut entry, apic_id, topo);
                entries.push(entry);
            }
        }
    }
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
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
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0, 0x806f0),
            entry(LEAF_CACHE, 0, 0x121), // L1 data cache.
            entry(LEAF_CACHE, 3, 0x163), // L3 unified cache.
            entry(LEAF_TOPOLOGY, 0, 0),
            entry(LEAF_TOPOLOGY, 1, 0),
            entry(LEAF_TOPOLOGY_V2, 0, 0),
        ])
        .unwrap()
    }

    fn cores(n: u8) -> Topology {
        Topology::of(&config::CpusConfig::new(n, n))
    }

    fn topo(t: u8, c: u8, d: u8, p: u8) -> Topology {
        Topology {
            threads_per_core: t,
            cores_per_die: c,
            dies_per_package: d,
            packages: p,
        }
    }

    #[test]
    fn each_vcpu_reports_its_own_apic_id() {
        let t = cores(4);
        for id in 0..4u8 {
            let c = for_vcpu(&sample(), id, &t);
            let leaf1 = find(&c, LEAF_FEATURES, 0);
            assert_eq!(leaf1.ebx >> 24, u32::from(id));
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
            assert_ne!(leaf1.edx & EDX_HTT, 0);
            assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
            for sub in 0..3 {
                assert_eq!(find(&c, LEAF_TOPOLOGY, sub).edx, u32::from(id));
            }
        }
    }

    #[test]
    fn topology_leaf_describes_one_package_of_cores() {
        let c = for_vcpu(&sample(), 2, &cores(3));
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
    fn threads_dies_and_packages_are_described() {
        // 2 threads × 3 cores × 2 dies × 2 packages: SMT 1 bit, cores 2, dies 1.
        let t = topo(2, 3, 2, 2);
        let c = for_vcpu(&sample(), t.apic_id(13), &t);
        let leaf1 = find(&c, LEAF_FEATURES, 0);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 16, "ids per package");
        let smt = find(&c, LEAF_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx), (1, 2));
        let core = find(&c, LEAF_TOPOLOGY, 1);
        assert_eq!(
            (core.eax, core.ebx),
            (4, 12),
            "0xB: core level up to the package"
        );
        let core = find(&c, LEAF_TOPOLOGY_V2, 1);
        assert_eq!(
            (core.eax, core.ebx, (core.ecx >> 8) & 0xff),
            (3, 6, LEVEL_TYPE_CORE)
        );
        let die = find(&c, LEAF_TOPOLOGY_V2, 2);
        assert_eq!(
            (die.eax, die.ebx, (die.ecx >> 8) & 0xff),
            (4, 12, LEVEL_TYPE_DIE)
        );
        assert_eq!((find(&c, LEAF_TOPOLOGY_V2, 3).ecx >> 8) & 0xff, 0);
        // vCPU 13: package 1, die 0, core 0, thread 1.
        assert_eq!(find(&c, LEAF_TOPOLOGY_V2, 0).edx, (1 << 4) | 1);
        let l1 = find(&c, LEAF_CACHE, 0);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (7, 1));
        let l3 = find(&c, LEAF_CACHE, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 15);
    }

    #[test]
    fn cache_leaf_counts_cores_and_sharing() {
        let c = for_vcpu(&sample(), 0, &cores(4));
        let l1 = find(&c, LEAF_CACHE, 0);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (3, 0));
        assert_eq!(l1.eax & 0x3fff, 0x121);
        let l3 = find(&c, LEAF_CACHE, 3);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (3, 3));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let c = for_vcpu(&sample(), 0, &cores(1));
        assert_eq!(find(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
    }
}
