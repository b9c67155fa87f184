//! Where each vCPU sits: thread, core, die and package, and the APIC id that follows.
//!
//! An APIC id is the vCPU's thread, core, die and package numbers side by side, each field as
//! many bits as its count needs (rounded up to a power of two), as on real x86 parts; CPUID
//! leaves 0x1, 0x4, 0xB and 0x1F describe the same fields, and the MP table and the MADT list
//! the same ids. Without a topology the vCPUs are single-thread cores of one package.

use config::{CpuTopology, CpusConfig};

/// A vCPU topology with its APIC id layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Threads of each core.
    pub threads_per_core: u8,
    /// Cores of each die.
    pub cores_per_die: u8,
    /// Dies of each package.
    pub dies_per_package: u8,
    /// Packages.
    pub packages: u8,
}

fn bits(n: u8) -> u32 {
    u32::from(n.max(1)).next_power_of_two().trailing_zeros()
}

impl Topology {
    /// The topology `cpus` describes, or one package of `max_vcpus` cores.
    pub fn of(cpus: &CpusConfig) -> Self {
        let max = cpus.max_vcpus.max(cpus.boot_vcpus).max(1);
        let t = cpus.topology.unwrap_or(CpuTopology {
            threads_per_core: 1,
            cores_per_die: max,
            dies_per_package: 1,
            packages: 1,
        });
        Topology {
            threads_per_core: t.threads_per_core.max(1),
            cores_per_die: t.cores_per_die.max(1),
            dies_per_package: t.dies_per_package.max(1),
            packages: t.packages.max(1),
        }
    }

    /// Bits of the APIC id that number a core's threads.
    pub fn smt_bits(&self) -> u32 {
        bits(self.threads_per_core)
    }

    /// Bits that number a die's cores.
    pub fn core_bits(&self) -> u32 {
        bits(self.cores_per_die)
    }

    /// Bits that number a package's dies.
    pub fn die_bits(&self) -> u32 {
        bits(self.dies_per_package)
    }

    /// Bits below the package number.
    pub fn package_shift(&self) -> u32 {
        self.smt_bits() + self.core_bits() + self.die_bits()
    }

    /// vCPUs of one package.
    pub fn per_package(&self) -> u32 {
        u32::from(self.threads_per_core)
            * u32::from(self.cores_per_die)
            * u32::from(self.dies_per_package)
    }

    /// The APIC id of vCPU `index` (vCPUs fill threads, then cores, dies, packages).
    pub fn apic_id(&self, index: u8) -> u8 {
        let i = u32::from(index);
        let tpc = u32::from(self.threads_per_core);
        let cpd = u32::from(self.cores_per_die);
        let dpp = u32::from(self.dies_per_package);
        let thread = i % tpc;
        let core = (i / tpc) % cpd;
        let die = (i / (tpc * cpd)) % dpp;
        let package = i / (tpc * cpd * dpp);
        let id = (package << self.package_shift())
            | (die << (self.smt_bits() + self.core_bits()))
            | (core << self.smt_bits())
            | thread;
        // Validation keeps ids below 254 (`config::topology_max_apic_id`).
        u8::try_from(id).unwrap_or(u8::MAX)
    }

    /// The APIC ids of vCPUs `0..count`.
    pub fn apic_ids(&self, count: u8) -> Vec<u8> {
        (0..count).map(|i| self.apic_id(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(t: u8, c: u8, d: u8, p: u8) -> Topology {
        Topology {
            threads_per_core: t,
            cores_per_die: c,
            dies_per_package: d,
            packages: p,
        }
    }

    #[test]
    fn apic_ids_pack_the_levels_side_by_side() {
        // The default: dense ids.
        let cpus = CpusConfig::new(2, 4);
        assert_eq!(Topology::of(&cpus).apic_ids(4), [0, 1, 2, 3]);
        // Two packages of three cores: two bits of core number each.
        assert_eq!(topo(1, 3, 1, 2).apic_ids(6), [0, 1, 2, 4, 5, 6]);
        // Two threads per core, two cores, two dies.
        let t = topo(2, 2, 2, 1);
        assert_eq!(t.apic_ids(8), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!((t.smt_bits(), t.core_bits(), t.die_bits()), (1, 1, 1));
        // Three threads per core: two bits.
        assert_eq!(topo(3, 2, 1, 1).apic_ids(6), [0, 1, 2, 4, 5, 6]);
        assert_eq!(topo(1, 3, 1, 2).per_package(), 3);
    }
}
