//! The devices' configurations: consoles, disks, network devices and the entropy source,
//! with Cloud Hypervisor's field names and defaults.

use super::*;

/// Where a console's output goes (and its input comes from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleOutputMode {
    /// No device at all.
    Off,
    /// A new pseudo-terminal whose path is reported.
    Pty,
    /// Palisade's own terminal (standard input and output).
    Tty,
    /// Output appended to a file.
    File,
    /// A Unix socket (not supported by Palisade; present so that the error can say so).
    Socket,
    /// The device exists but its output is discarded.
    Null,
}

/// The serial port or the virtio console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The file for `File` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The socket for `Socket` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Where output goes.
    pub mode: ConsoleOutputMode,
    /// Compatibility: place the virtio console behind a virtual IOMMU (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// Compatibility: device identifier (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Compatibility: PCI segment (must be 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pci_segment: u16,
    /// Compatibility: PCI slot (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
}

impl ConsoleConfig {
    /// A console in `mode` with no file.
    pub fn with_mode(mode: ConsoleOutputMode) -> Self {
        ConsoleConfig {
            file: None,
            socket: None,
            mode,
            iommu: false,
            id: None,
            pci_segment: 0,
            pci_device_id: None,
        }
    }

    /// A console in `File` mode writing to `path`.
    pub fn with_file(path: impl Into<PathBuf>) -> Self {
        ConsoleConfig {
            file: Some(path.into()),
            ..Self::with_mode(ConsoleOutputMode::File)
        }
    }

    /// The serial port's default when a JSON config does not name one.
    pub fn default_serial() -> Self {
        Self::with_mode(ConsoleOutputMode::Null)
    }

    /// The virtio console's default when a JSON config does not name one, as in Cloud
    /// Hypervisor.
    pub fn default_console() -> Self {
        Self::with_mode(ConsoleOutputMode::Tty)
    }
}

/// The debug port console (compatibility only: Palisade has none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugConsoleConfig {
    /// The file for `File` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Where output goes (must be `Off`).
    pub mode: ConsoleOutputMode,
    /// The I/O port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iobase: Option<u16>,
}

/// Disk image formats (compatibility only: Palisade reads raw images).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    /// Fixed-size VHD.
    FixedVhd,
    /// QCOW2.
    Qcow2,
    /// Raw.
    Raw,
    /// VHDX.
    Vhdx,
    /// Not said (Palisade then reads the image as raw).
    Unknown,
}

/// How a disk image is locked (compatibility only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockGranularity {
    /// Byte-range locks (Cloud Hypervisor's default).
    #[default]
    ByteRange,
    /// A whole-file lock.
    Full,
}

/// A virtio block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Image file (raw).
    pub path: Option<PathBuf>,
    /// Advertise the disk read-only and refuse writes.
    #[serde(default)]
    pub readonly: bool,
    /// Open the image with `O_DIRECT`.
    #[serde(default)]
    pub direct: bool,
    /// Number of request queues.
    #[serde(default = "DiskConfig::default_num_queues")]
    pub num_queues: u16,
    /// Size of each queue.
    #[serde(default = "DiskConfig::default_queue_size")]
    pub queue_size: u16,
    /// Device identifier (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Serial number reported to the guest (`get-id`); defaults to the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Compatibility: behind a virtual IOMMU (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// Compatibility: vhost-user backend (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub vhost_user: bool,
    /// Compatibility: vhost-user socket (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<String>,
    /// The device's own rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<crate::RateLimiterConfig>,
    /// Compatibility: PCI segment (must be 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pci_segment: u16,
    /// Compatibility: PCI slot (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
    /// The `rate_limit_groups` entry whose limiter the disk shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_group: Option<String>,
    /// Compatibility: queue to host CPU affinity (must be absent or empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_affinity: Option<Vec<Value>>,
    /// Compatibility: follow backing files (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub backing_files: bool,
    /// Compatibility: keep the image sparse (must stay true, the default).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub sparse: bool,
    /// Do the disk's I/O with plain system calls on its thread instead of io_uring (Cloud
    /// Hypervisor's field).
    #[serde(default)]
    pub disable_io_uring: bool,
    /// Cloud Hypervisor's switch for its Linux AIO engine, which Palisade does not have:
    /// accepted, and without effect.
    #[serde(default)]
    pub disable_aio: bool,
    /// Compatibility: image format (absent, `Raw` or `Unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
    /// Compatibility: image lock granularity (must be absent or `ByteRange`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_granularity: Option<LockGranularity>,
}

impl DiskConfig {
    fn default_num_queues() -> u16 {
        DEFAULT_DISK_NUM_QUEUES
    }
    fn default_queue_size() -> u16 {
        DEFAULT_DISK_QUEUE_SIZE
    }

    /// A disk backed by the image at `path`, everything else at its default.
    pub fn with_path(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            path: Some(path.into()),
            ..Self::default()
        }
    }
}

impl Default for DiskConfig {
    /// No path (which does not validate), default queues.
    fn default() -> Self {
        DiskConfig {
            path: None,
            readonly: false,
            direct: false,
            num_queues: DEFAULT_DISK_NUM_QUEUES,
            queue_size: DEFAULT_DISK_QUEUE_SIZE,
            id: None,
            serial: None,
            iommu: false,
            vhost_user: false,
            vhost_socket: None,
            rate_limiter_config: None,
            pci_segment: 0,
            pci_device_id: None,
            rate_limit_group: None,
            queue_affinity: None,
            backing_files: false,
            sparse: true,
            disable_io_uring: false,
            disable_aio: false,
            image_type: None,
            lock_granularity: None,
        }
    }
}

/// Which side of a vhost-user socket connects (compatibility only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VhostMode {
    /// The VMM connects (Cloud Hypervisor's default).
    #[default]
    Client,
    /// The VMM listens.
    Server,
}

/// A virtio network device backed by a tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap device name; empty or absent creates a new tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Host-side IPv4 address of the tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Host-side IPv4 netmask of the tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Guest MAC address (random, locally administered, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Number of queues (receive and transmit pairs times two).
    #[serde(default = "NetConfig::default_num_queues")]
    pub num_queues: u16,
    /// Size of each queue.
    #[serde(default = "NetConfig::default_queue_size")]
    pub queue_size: u16,
    /// Device identifier (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tap file descriptors passed in by a supervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
    /// Compatibility: host-side MAC address (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mac: Option<String>,
    /// Compatibility: MTU (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Compatibility: behind a virtual IOMMU (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// Compatibility: vhost-user backend (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub vhost_user: bool,
    /// Compatibility: vhost-user socket (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<String>,
    /// Compatibility: vhost-user socket side (must be `Client`, the default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub vhost_mode: VhostMode,
    /// Compatibility: PCI segment (must be 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pci_segment: u16,
    /// Compatibility: PCI slot (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
    /// The device's own rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<crate::RateLimiterConfig>,
    /// Offer TCP segmentation offloads, both ways (only with `offload_csum`).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub offload_tso: bool,
    /// Offer UDP fragmentation offloads, both ways (only with `offload_csum`).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub offload_ufo: bool,
    /// Offer checksum offloads, both ways; without them no segmentation offload is offered.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub offload_csum: bool,
}

impl NetConfig {
    fn default_num_queues() -> u16 {
        DEFAULT_NET_NUM_QUEUES
    }
    fn default_queue_size() -> u16 {
        DEFAULT_NET_QUEUE_SIZE
    }
}

impl Default for NetConfig {
    /// A new tap with a random MAC, default queues.
    fn default() -> Self {
        NetConfig {
            tap: None,
            ip: None,
            mask: None,
            mac: None,
            num_queues: DEFAULT_NET_NUM_QUEUES,
            queue_size: DEFAULT_NET_QUEUE_SIZE,
            id: None,
            fds: None,
            host_mac: None,
            mtu: None,
            iommu: false,
            vhost_user: false,
            vhost_socket: None,
            vhost_mode: VhostMode::default(),
            pci_segment: 0,
            pci_device_id: None,
            rate_limiter_config: None,
            offload_tso: true,
            offload_ufo: true,
            offload_csum: true,
        }
    }
}

/// The virtio entropy device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Entropy source.
    pub src: PathBuf,
    /// Compatibility: device identifier (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Compatibility: behind a virtual IOMMU (must be false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// Compatibility: PCI segment (must be 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pci_segment: u16,
    /// Compatibility: PCI slot (must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
}

impl RngConfig {
    /// An entropy device reading `src`.
    pub fn with_src(src: impl Into<PathBuf>) -> Self {
        RngConfig {
            src: src.into(),
            id: None,
            iommu: false,
            pci_segment: 0,
            pci_device_id: None,
        }
    }
}

impl Default for RngConfig {
    fn default() -> Self {
        Self::with_src(DEFAULT_RNG_SOURCE)
    }
}

/// The memory balloon (`--balloon`), as Cloud Hypervisor's `BalloonConfig`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Bytes the balloon asks the guest for at boot.
    pub size: u64,
    /// Let the guest take pages back when it runs out of memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Free page reporting: the guest hands free memory back on its own.
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl BalloonConfig {
    /// Keys of `--balloon`.
    pub const KEYS: &'static [&'static str] = &["size", "deflate_on_oom", "free_page_reporting"];

    /// Parses `--balloon size=SIZE[,deflate_on_oom=on|off][,free_page_reporting=on|off]`.
    pub fn parse(input: &str) -> Result<Self, crate::OptionError> {
        let o = crate::option_parser::OptionParser::new(Self::KEYS).parse(input)?;
        Ok(BalloonConfig {
            size: o.get_size("size")?.unwrap_or(0),
            deflate_on_oom: o.get_bool("deflate_on_oom")?.unwrap_or(false),
            free_page_reporting: o.get_bool("free_page_reporting")?.unwrap_or(false),
        })
    }
}
