//! The VM configuration types, as carried by `PUT /api/v1/vm.create` and built from the
//! command line.
//!
//! Every struct rejects unknown JSON fields so that a typo is an error rather than a silently
//! ignored setting.
//!
//! Besides the fields Palisade uses, the structs carry the other fields of Cloud Hypervisor's
//! `VmConfig` schema that its clients send (marked "compatibility" below). They are optional,
//! are left out of serialized output while at their default, and [`VmConfig::validate`] rejects
//! any other value with `<field>: not supported by Palisade`. Compatibility fields whose content
//! Palisade never looks at are kept as raw JSON ([`serde_json::Value`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default memory size: 512 MiB, as in Cloud Hypervisor.
pub const DEFAULT_MEMORY_SIZE: u64 = 512 << 20;
/// Default entropy source of the virtio-rng device.
pub const DEFAULT_RNG_SOURCE: &str = "/dev/urandom";
/// Default number of vCPUs started at boot.
pub const DEFAULT_BOOT_VCPUS: u8 = 1;
/// Default number of physical address bits given to the guest, as in Cloud Hypervisor.
pub const DEFAULT_MAX_PHYS_BITS: u8 = 46;
/// Default number of queues of a block device.
pub const DEFAULT_DISK_NUM_QUEUES: u16 = 1;
/// Default size of each block device queue.
pub const DEFAULT_DISK_QUEUE_SIZE: u16 = 128;
/// Default number of queues of a network device (one receive and one transmit queue).
pub const DEFAULT_NET_NUM_QUEUES: u16 = 2;
/// Default size of each network device queue.
pub const DEFAULT_NET_QUEUE_SIZE: u16 = 256;

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_true(b: &bool) -> bool {
    *b
}

pub(crate) fn is_zero(n: &u16) -> bool {
    *n == 0
}

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

pub(crate) fn default_true() -> bool {
    true
}

/// The whole configuration of one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vCPU counts.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest memory.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// What to boot.
    pub payload: PayloadConfig,
    /// The 16550 serial port.
    #[serde(default = "ConsoleConfig::default_serial")]
    pub serial: ConsoleConfig,
    /// The virtio console.
    #[serde(default = "ConsoleConfig::default_console")]
    pub console: ConsoleConfig,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// Network devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    /// The entropy device.
    #[serde(default)]
    pub rng: RngConfig,
    /// Confine the VMM process with Landlock when the VM is created.
    #[serde(default)]
    pub landlock_enable: bool,
    /// Extra paths the confined VMM may reach (for resources hot-plugged later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock_rules: Option<Vec<LandlockConfig>>,

    /// Rate limiters that disks share (`rate_limit_group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_groups: Option<Vec<crate::RateLimitGroupConfig>>,
    /// The memory balloon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// virtio-fs devices (vhost-user backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Vec<crate::FsConfig>>,
    /// Compatibility: generic vhost-user devices (must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_vhost_user: Option<Vec<Value>>,
    /// Persistent memory devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmem: Option<Vec<crate::PmemConfig>>,
    /// Compatibility: the debug port console (must be absent or in mode `Off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_console: Option<DebugConsoleConfig>,
    /// Compatibility: VFIO devices (must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<Value>>,
    /// Compatibility: user-space (vfio-user) devices (must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_devices: Option<Vec<Value>>,
    /// Compatibility: vDPA devices (must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdpa: Option<Vec<Value>>,
    /// The vsock device (one at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<crate::VsockConfig>,
    /// Compatibility: NUMA nodes (must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<Vec<Value>>,
    /// Compatibility: a virtual IOMMU (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// A watchdog the guest must keep petting (the IB700, `--watchdog`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub watchdog: bool,
    /// Compatibility: the virtio RTC (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<Value>,
    /// The pvpanic PCI device, through which a guest reports a panic.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pvpanic: bool,
    /// Compatibility: extra PCI segments (must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_segments: Option<Vec<crate::PciSegmentConfig>>,
    /// Platform settings: the SMBIOS identity of the machine, PCI segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformConfig>,
    /// Compatibility: a TPM (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
}

impl Default for VmConfig {
    /// The configuration a JSON body `{"payload": {}}` gives: every field at its JSON default
    /// (which includes no kernel, so it does not validate as is).
    fn default() -> Self {
        VmConfig {
            cpus: CpusConfig::default(),
            memory: MemoryConfig::default(),
            payload: PayloadConfig::default(),
            serial: ConsoleConfig::default_serial(),
            console: ConsoleConfig::default_console(),
            disks: None,
            net: None,
            rng: RngConfig::default(),
            landlock_enable: false,
            landlock_rules: None,
            rate_limit_groups: None,
            balloon: None,
            fs: None,
            generic_vhost_user: None,
            pmem: None,
            debug_console: None,
            devices: None,
            user_devices: None,
            vdpa: None,
            vsock: None,
            numa: None,
            iommu: false,
            watchdog: false,
            rtc: None,
            pvpanic: false,
            pci_segments: None,
            platform: None,
            tpm: None,
        }
    }
}

impl VmConfig {
    /// Whether a disk, network, pmem or fs device already uses `id` (for hot-plug requests).
    pub fn has_device_id(&self, id: &str) -> bool {
        let disk_ids = self.disks.iter().flatten().filter_map(|d| d.id.as_deref());
        let net_ids = self.net.iter().flatten().filter_map(|n| n.id.as_deref());
        let pmem_ids = self.pmem.iter().flatten().filter_map(|p| p.id.as_deref());
        let fs_ids = self.fs.iter().flatten().filter_map(|f| f.id.as_deref());
        let vsock_id = self.vsock.iter().filter_map(|v| v.id.as_deref());
        disk_ids
            .chain(net_ids)
            .chain(pmem_ids)
            .chain(fs_ids)
            .chain(vsock_id)
            .any(|i| i == id)
    }
}

/// How a scheduler's core-scheduling cookies are shared (compatibility only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreScheduling {
    /// One cookie for the whole VM (Cloud Hypervisor's default).
    #[default]
    Vm,
    /// One cookie per vCPU.
    Vcpu,
    /// No core scheduling.
    Off,
}

/// Which CPU model the guest sees (Cloud Hypervisor's `cpus.profile`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuProfile {
    /// The host's CPUID as KVM supports it.
    #[default]
    Host,
}

/// vCPU configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u8,
    /// vCPUs the guest may ever see (at least `boot_vcpus`).
    pub max_vcpus: u8,
    /// Expose Hyper-V enlightenments (not supported by Palisade: must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub kvm_hyperv: bool,
    /// Number of physical address bits advertised to the guest (clamped to the host's).
    #[serde(default = "CpusConfig::default_max_phys_bits")]
    pub max_phys_bits: u8,
    /// How the vCPUs are laid out in threads, cores, dies and packages (their product is
    /// `max_vcpus`); absent, one package of `max_vcpus` single-thread cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<CpuTopology>,
    /// Compatibility: nested virtualization (must stay true, the default).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub nested: bool,
    /// Host CPUs each vCPU thread may run on (vCPUs not listed run anywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Vec<CpuAffinity>>,
    /// Compatibility: extra CPU features (none may be enabled).
    #[serde(default, skip_serializing_if = "is_default")]
    pub features: CpuFeatures,
    /// Compatibility: core scheduling (`Vm`, the default, or `Off`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub core_scheduling: CoreScheduling,
    /// The CPU model shown to the guest: the host's, filtered by KVM (the only one).
    #[serde(default, skip_serializing_if = "is_default")]
    pub profile: CpuProfile,
}

/// The host CPUs of one vCPU, as Cloud Hypervisor's `CpuAffinity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuAffinity {
    /// The vCPU's index.
    pub vcpu: u8,
    /// Host CPU numbers it may run on.
    pub host_cpus: Vec<usize>,
}

/// A vCPU topology, as Cloud Hypervisor's `CpuTopology`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTopology {
    /// Threads of each core.
    pub threads_per_core: u8,
    /// Cores of each die.
    pub cores_per_die: u8,
    /// Dies of each package.
    pub dies_per_package: u8,
    /// Packages (sockets).
    pub packages: u8,
}

impl CpuTopology {
    /// vCPUs the topology holds.
    pub fn vcpus(&self) -> u32 {
        u32::from(self.threads_per_core)
            * u32::from(self.cores_per_die)
            * u32::from(self.dies_per_package)
            * u32::from(self.packages)
    }
}

impl CpusConfig {
    fn default_max_phys_bits() -> u8 {
        DEFAULT_MAX_PHYS_BITS
    }

    /// `boot` vCPUs at boot and `max` at most, everything else at its default.
    pub fn new(boot: u8, max: u8) -> Self {
        CpusConfig {
            boot_vcpus: boot,
            max_vcpus: max,
            ..Self::default()
        }
    }
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: DEFAULT_BOOT_VCPUS,
            max_vcpus: DEFAULT_BOOT_VCPUS,
            kvm_hyperv: false,
            max_phys_bits: DEFAULT_MAX_PHYS_BITS,
            topology: None,
            nested: true,
            affinity: None,
            features: CpuFeatures::default(),
            core_scheduling: CoreScheduling::default(),
            profile: CpuProfile::default(),
        }
    }
}

/// Extra CPU features (compatibility only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFeatures {
    /// Intel AMX: tile state and the AMX CPUID leaves (refused at creation where KVM has
    /// none).
    #[serde(default, skip_serializing_if = "is_false")]
    pub amx: bool,
}

/// How memory is hot-plugged (compatibility only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugMethod {
    /// ACPI memory devices (Cloud Hypervisor's default).
    #[default]
    Acpi,
    /// virtio-mem.
    VirtioMem,
}

/// Guest memory configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
    /// Room for memory hot-plugged later: guest physical address space kept free above RAM
    /// (the 64-bit PCI window starts past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    /// Compatibility: memory already hot-plugged (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
    /// Compatibility: KSM merging (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mergeable: bool,
    /// Compatibility: hot-plug method (must be `Acpi`, the default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub hotplug_method: HotplugMethod,
    /// Compatibility: shared (`MAP_SHARED`) memory (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
    /// Compatibility: huge pages (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub hugepages: bool,
    /// Compatibility: huge page size (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    /// Compatibility: populate memory at start (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefault: bool,
    /// Compatibility: reserve swap space (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub reserve: bool,
    /// Compatibility: transparent huge pages (must stay true, the default).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub thp: bool,
    /// Memory zones: with them `size` is 0 and they make up RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<crate::MemoryZoneConfig>>,
}

impl VmConfig {
    /// The number of PCI segments (`platform.num_pci_segments`, 1 when absent).
    pub fn num_pci_segments(&self) -> u16 {
        self.platform
            .as_ref()
            .and_then(|p| p.num_pci_segments)
            .unwrap_or(1)
            .max(1)
    }

    /// Each segment's share of the 32-bit and the 64-bit BAR windows (`pci_segments`'
    /// aperture weights; 1 and 1 for a segment not listed).
    pub fn pci_aperture_weights(&self) -> Vec<(u32, u32)> {
        (0..self.num_pci_segments())
            .map(|s| {
                let given = self
                    .pci_segments
                    .iter()
                    .flatten()
                    .find(|p| p.pci_segment == s);
                (
                    given.and_then(|p| p.mmio32_aperture_weight).unwrap_or(1),
                    given.and_then(|p| p.mmio64_aperture_weight).unwrap_or(1),
                )
            })
            .collect()
    }
}

impl MemoryConfig {
    /// `size` bytes of RAM, everything else at its default.
    /// RAM and the room kept for hot-plugged memory, in bytes.
    pub fn address_space(&self) -> u64 {
        self.size.saturating_add(self.hotplug_size.unwrap_or(0))
    }

    /// A configuration of `size` bytes, everything else at its default.
    pub fn with_size(size: u64) -> Self {
        MemoryConfig {
            size,
            ..Self::default()
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY_SIZE,
            hotplug_size: None,
            hotplugged_size: None,
            mergeable: false,
            hotplug_method: HotplugMethod::default(),
            shared: false,
            hugepages: false,
            hugepage_size: None,
            prefault: false,
            reserve: false,
            thp: true,
            zones: None,
        }
    }
}

/// What the VM boots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// Firmware image (not supported by Palisade; present so that the error can say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// Kernel image: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Initial RAM disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// Compatibility: IGVM image (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub igvm: Option<PathBuf>,
    /// Compatibility: confidential-computing host data (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
}

pub use devices::*;

mod devices;

/// One user-given Landlock rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockConfig {
    /// A file or a directory.
    pub path: PathBuf,
    /// `r`, `w` or `rw`.
    pub access: String,
}

/// Platform settings, as Cloud Hypervisor's `PlatformConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// PCI segments (only 1 is supported so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_pci_segments: Option<u16>,
    /// Segments behind a virtual IOMMU (none supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_segments: Option<Vec<u16>>,
    /// Address width of the virtual IOMMU (no IOMMU: ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_address_width_bits: Option<u8>,
    /// SMBIOS system serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_serial_number: Option<String>,
    /// The same, by its older name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// SMBIOS system UUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    /// The same, by its older name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// SMBIOS OEM strings (type 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oem_strings: Option<Vec<String>>,
    /// SMBIOS system manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_manufacturer: Option<String>,
    /// SMBIOS system product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_product_name: Option<String>,
    /// SMBIOS system version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_version: Option<String>,
    /// SMBIOS system family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_family: Option<String>,
    /// SMBIOS system SKU number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_sku_number: Option<String>,
    /// SMBIOS chassis asset tag (type 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_asset_tag: Option<String>,
    /// Intel TDX (not supported: must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tdx: bool,
    /// AMD SEV-SNP (not supported: must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub sev_snp: bool,
    /// VFIO through iommufd (no VFIO: must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommufd: bool,
    /// Peer-to-peer DMA between VFIO devices (no VFIO: ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio_p2p_dma: Option<bool>,
}

impl PlatformConfig {
    /// The system serial number, by either name.
    pub fn serial(&self) -> Option<&str> {
        self.system_serial_number
            .as_deref()
            .or(self.serial_number.as_deref())
    }

    /// The system UUID, by either name.
    pub fn uuid(&self) -> Option<&str> {
        self.system_uuid.as_deref().or(self.uuid.as_deref())
    }
}

/// Parses a UUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into its 16 bytes, in the
/// order written.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    if groups.len() != 5 || groups.iter().zip(lengths).any(|(g, l)| g.len() != l) {
        return None;
    }
    let hex: String = groups.concat();
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}
