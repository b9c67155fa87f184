//! The VM's PCI side: the root bus with its configuration access paths, BAR placement, the
//! virtio devices plugged into it, and the plumbing of their queue notifications
//! (ioeventfds) into whichever KVM VM currently runs the guest.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use std::net::Ipv4Addr;

use config::{DiskConfig, NetConfig};
use devices::ioapic::MsiSink;
use devices::pci::{
    BarMapper, BarMove, BarRegion, EcamAccess, PciError, PciRoot, PioConfigAccess, SharedPciDevice,
    CONFIG_IO_BASE, CONFIG_IO_LEN,
};
use devices::tap::{Tap, TUN_DEVICE};
use devices::virtio::block::{Block, BlockOptions};
use devices::virtio::net::{format_mac, parse_mac, random_mac, Net, NetOptions};
use devices::virtio::pci::VirtioPci;
use devices::virtio::worker::{DeviceWorker, ThreadSetup};
use devices::virtio::VirtioDevice;
use devices::{Bus, BusError};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};
use vm_memory::GuestMemoryMmap;

use crate::interrupts::GsiRoutes;
use crate::x86_64::layout;

mod fs;
mod image_locks;
mod pmem;
mod snapshot;
mod vsock;
use pmem::DeviceMemory;
pub use snapshot::PciDeviceState;

/// I/O threads of a disk without io_uring: one per queue, within these bounds (two, so
/// that one request blocked in the kernel does not stop the others).
const POOL_THREADS_MIN: usize = 2;
const POOL_THREADS_MAX: usize = 8;

/// The KVM VM the guest runs in right now (none while stopped; a reboot builds a new one).
#[derive(Default)]
pub struct CurrentVm {
    vm: RwLock<Option<Arc<VmFd>>>,
}

impl CurrentVm {
    /// Points at `vm`, or nowhere.
    pub fn set(&self, vm: Option<Arc<VmFd>>) {
        *self.vm.write().unwrap_or_else(|e| e.into_inner()) = vm;
    }

    /// The current VM, if any.
    pub fn get(&self) -> Option<Arc<VmFd>> {
        self.vm.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl MsiSink for CurrentVm {
    fn send_msi(&self, address: u64, data: u32) -> std::io::Result<()> {
        let Some(vm) = self.get() else {
            // No machine (stopped): the interrupt has nobody to go to.
            return Ok(());
        };
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        vm.signal_msi(msi)
            .map(|_| ())
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Errors plugging or unplugging PCI devices.
#[derive(Debug, thiserror::Error)]
pub enum PciDeviceError {
    /// The disk image could not be opened.
    #[error("disk {path}: {source}")]
    Open {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is outside the Landlock ruleset.
    #[error("{0}")]
    Denied(String),
    /// A vhost-user backend that cannot be reached or does not serve the device.
    #[error("{0}")]
    Backend(String),
    /// A persistent memory file that cannot back a device.
    #[error("pmem {}: {detail}", path.display())]
    Pmem {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another disk holds a lock on the image that this one's access conflicts with.
    #[error(
        "disk {}: the image is in use: {holder} holds a {kind} lock on it; detach it there \
         first, or attach it read-only (readonly=on) everywhere",
        path.display()
    )]
    Locked {
        /// The image.
        path: std::path::PathBuf,
        /// Who holds the lock, as far as can be known.
        holder: String,
        /// `write` or `read`.
        kind: &'static str,
    },
    /// A disk needs a path.
    #[error("a disk needs a path")]
    NoPath,
    /// The bus is full.
    #[error(transparent)]
    Slot(#[from] PciError),
    /// No room for the device's BAR.
    #[error("no room left in the PCI window for another device")]
    NoBarSpace,
    /// Placing the device on the MMIO bus failed.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// A host resource failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Moves BAR mappings and their ioeventfds when the guest reprograms a BAR.
///
/// It holds the MMIO bus weakly: the bus holds the PCI root (through the ECAM window), which
/// holds this mapper, and a strong reference back would keep the whole machine — devices,
/// disk images, eventfds — alive after the VM is deleted.
struct KvmBarMapper {
    mmio: std::sync::Weak<Bus>,
    vm: Arc<CurrentVm>,
}

impl KvmBarMapper {
    fn ioevents(&self, device: &SharedPciDevice, bar: usize, base: u64, register: bool) {
        let Some(vm) = self.vm.get() else {
            return;
        };
        let events = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ioeventfds();
        for (b, offset, evt) in events.into_iter().filter(|(b, _, _)| *b == bar) {
            let addr = IoEventAddress::Mmio(base + offset);
            let result = if register {
                vm.register_ioevent(&evt, &addr, NoDatamatch)
            } else {
                vm.unregister_ioevent(&evt, &addr, NoDatamatch)
            };
            if let Err(e) = result {
                log::warn!("ioeventfd for BAR {b} at {:#x}: {e}", base + offset);
            }
        }
    }
}

impl BarMapper for KvmBarMapper {
    fn bar_moved(&self, device: &SharedPciDevice, moved: BarMove) {
        let Some(mmio) = self.mmio.upgrade() else {
            // The machine is being torn down.
            return;
        };
        self.ioevents(device, moved.index, moved.from, false);
        mmio.remove(moved.from);
        if moved.to == 0 {
            return;
        }
        let region = Arc::new(Mutex::new(BarRegion::new(device.clone(), moved.index)));
        if let Err(e) = mmio.insert(region, moved.to, moved.size) {
            log::warn!("the guest moved a BAR onto another device ({e}); it is not mapped");
            return;
        }
        self.ioevents(device, moved.index, moved.to, true);
    }
}

/// A plugged PCI device: a virtio device with the thread that serves it, or a plain PCI
/// function (pvpanic) that works on the vCPU threads.
pub struct PciEntry {
    /// Its id (from the config, or generated).
    pub id: String,
    /// Its PCI segment.
    pub segment: u16,
    /// Its slot on bus 0 of the segment.
    pub slot: u8,
    /// The function on the bus.
    pci: SharedPciDevice,
    /// The virtio device, for a virtio entry.
    pub virtio: Option<Arc<Mutex<VirtioPci>>>,
    /// Where its BAR 0 was placed (returned to the allocator when it goes).
    bar: RangeInclusive,
    /// The thread that serves a virtio device's queues; stopped when the entry goes.
    _worker: Option<DeviceWorker>,
    /// Guest memory the device brings (persistent memory), in a KVM slot of its own.
    memory: Option<DeviceMemory>,
}

impl PciEntry {
    /// Where the VMM placed its BAR 0: (base, size).
    pub fn bar0(&self) -> (u64, u64) {
        (self.bar.start(), self.bar.len())
    }

    /// The guest memory it brings (persistent memory): (base, size).
    pub fn device_memory(&self) -> Option<(u64, u64)> {
        self.memory
            .as_ref()
            .map(|m| (m.range.start(), m.range.len()))
    }

    /// Its segment and slot.
    pub fn address(&self) -> (u16, u8) {
        (self.segment, self.slot)
    }

    /// Its address as `segment:bus:device.function`.
    pub fn bdf(&self) -> String {
        format!("{:04x}:00:{:02x}.0", self.segment, self.slot)
    }
}

/// One PCI segment: its bus 0 and the 64-bit window its BARs are placed in.
struct Segment {
    root: Arc<Mutex<PciRoot>>,
    mmio64: AddressAllocator,
}

/// Where a VM that was not created here (restored, received) puts its devices, and how.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// The slot each device (by id) takes.
    pub slots: std::collections::BTreeMap<String, u8>,
    /// Open disk images unlocked; the locks are taken later ([`PciDevices::take_image_locks`]).
    pub defer_image_locks: bool,
}

/// The PCI segments and the devices on them.
pub struct PciDevices {
    segments: Vec<Segment>,
    mmio: Arc<Bus>,
    mapper: Arc<KvmBarMapper>,
    entries: Vec<PciEntry>,
    routes: Arc<GsiRoutes>,
    worker_setup: ThreadSetup,
    mem: GuestMemoryMmap,
    limits: crate::rate_limits::RateLimits,
    // Slots devices must take, by id (a restored VM's devices go where they were).
    planned: std::collections::BTreeMap<String, u8>,
    // Each disk's image and its lock.
    image_locks: Vec<image_locks::ImageLock>,
    // Disks open their images unlocked (a VM arriving by migration; see `image_locks`).
    defer_locks: bool,
}

impl PciDevices {
    /// A bus without devices for each segment of `weights`, each reachable through its ECAM
    /// region on `mmio`, segment 0's also through ports 0xCF8-0xCFF on `pio`; their BARs go in
    /// the 64-bit window from `mmio64_start`, shared out by the weights
    /// (`layout::pci_segment_windows`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pio: &Bus,
        mmio: &Arc<Bus>,
        vm: Arc<CurrentVm>,
        mem: GuestMemoryMmap,
        mmio64_start: u64,
        weights: &[(u32, u32)],
        worker_setup: ThreadSetup,
        limits: crate::rate_limits::RateLimits,
    ) -> Result<Self, PciDeviceError> {
        let mapper = Arc::new(KvmBarMapper {
            mmio: Arc::downgrade(mmio),
            vm: vm.clone(),
        });
        let mut all = Vec::new();
        for (index, windows) in layout::pci_segment_windows(weights, mmio64_start)
            .into_iter()
            .enumerate()
        {
            let root = Arc::new(Mutex::new(PciRoot::new(mapper.clone())));
            if index == 0 {
                pio.insert(
                    Arc::new(Mutex::new(PioConfigAccess::new(root.clone()))),
                    CONFIG_IO_BASE,
                    CONFIG_IO_LEN,
                )?;
            }
            mmio.insert(
                Arc::new(Mutex::new(EcamAccess::new(root.clone()))),
                layout::pci_ecam_start(index as u16),
                layout::PCI_ECAM_SIZE,
            )?;
            let (start, size) = windows.mmio64;
            let mmio64 = AddressAllocator::new(start, size)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            all.push(Segment { root, mmio64 });
        }
        Ok(PciDevices {
            segments: all,
            mmio: mmio.clone(),
            mapper,
            entries: Vec::new(),
            routes: Arc::new(GsiRoutes::new(vm)),
            worker_setup,
            mem,
            limits,
            planned: Default::default(),
            image_locks: Vec::new(),
            defer_locks: false,
        })
    }

    /// Devices plugged from now on go as `placement` says.
    pub fn plan(&mut self, placement: Placement) {
        self.planned = placement.slots;
        if placement.defer_image_locks {
            self.defer_image_locks();
        }
    }

    /// The plugged devices.
    pub fn entries(&self) -> &[PciEntry] {
        &self.entries
    }

    /// Guest memory grew: devices plugged from now on, and every device there is, use `mem`.
    pub fn set_memory(&mut self, mem: &GuestMemoryMmap) {
        self.mem = mem.clone();
        for device in self.entries.iter().filter_map(|e| e.virtio.as_ref()) {
            device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_memory(mem.clone());
        }
    }

    /// The entry with `id`.
    pub fn find(&self, id: &str) -> Option<&PciEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The entry in `slot` of `segment`.
    pub fn in_slot(&self, segment: u16, slot: u8) -> Option<&PciEntry> {
        self.entries
            .iter()
            .find(|e| e.segment == segment && e.slot == slot)
    }

    /// Opens a disk image as `cfg` says and plugs a virtio-blk device for it with id `id`.
    pub fn add_disk(&mut self, id: &str, cfg: &DiskConfig) -> Result<&PciEntry, PciDeviceError> {
        let path = cfg.path.as_deref().ok_or(PciDeviceError::NoPath)?;
        let file = if self.defer_locks {
            open_unlocked(path, cfg.readonly, cfg.direct)?
        } else {
            open_disk(path, cfg.readonly, cfg.direct)?
        };
        // The lock belongs to this open: a descriptor of it is kept to hand the lock over.
        let kept = file.try_clone()?;
        // The guest's GET_ID answer holds 20 bytes at most.
        let serial = cfg.serial.clone().unwrap_or_else(|| id.to_string());
        let mut end = serial.len().min(20);
        while !serial.is_char_boundary(end) {
            end -= 1;
        }
        let options = BlockOptions {
            readonly: cfg.readonly,
            id: serial[..end].to_string(),
            num_queues: cfg.num_queues,
            queue_size: cfg.queue_size,
            discard: true,
            write_zeroes: true,
        };
        let mut block = Block::new(file, options)?;
        let limiter = self.limits.for_disk(
            cfg.rate_limiter_config.as_ref(),
            cfg.rate_limit_group.as_deref(),
        )?;
        if let Some(limiter) = limiter {
            block.set_rate_limiter(limiter);
        }
        // Asynchronous I/O: through io_uring where the kernel offers it (set up here, on
        // the VMM thread: the device's own thread may only use the ring), and on a pool of
        // I/O threads for what the ring does badly: writes a file system must block for,
        // without `direct=on` (see `devices::virtio::block::engine`), or everything when
        // there is no ring (`disable_io_uring`, or a kernel without it). Each engine gets an
        // open of its own: the kernel lets go of a ring's files some time after the ring is
        // closed, and the image lock, which is on the first open, must go with the disk.
        // Guest RAM is not registered as the ring's fixed buffers: that would pin all of it
        // at creation (hundreds of milliseconds for 512 MiB here, and the whole of it
        // resident for the VM's life), where vectored requests on plain addresses cost the
        // kernel one page walk.
        let engine_file =
            || open_unlocked(path, cfg.readonly, cfg.direct).map_err(std::io::Error::other);
        let ring = if cfg.disable_io_uring {
            Err(std::io::Error::other("disable_io_uring is set"))
        } else {
            engine_file().and_then(|f| block.use_io_uring(f, None))
        };
        if let Err(e) = &ring {
            log::info!("disk {id}: no io_uring ({e})");
        }
        if ring.is_err() || (!cfg.direct && !cfg.readonly) {
            let name: String = format!("dio-{id}").chars().take(15).collect();
            // With a ring the pool only takes writes, which run one at a time.
            let threads = if ring.is_ok() {
                1
            } else {
                usize::from(cfg.num_queues).clamp(POOL_THREADS_MIN, POOL_THREADS_MAX)
            };
            let setup = Some(self.worker_setup.clone());
            match engine_file().and_then(|f| block.use_thread_pool(f, threads, &name, setup)) {
                Ok(()) => log::debug!("disk {id}: {threads} I/O thread(s)"),
                Err(e) => log::warn!("disk {id}: no I/O threads ({e})"),
            }
        }
        log::debug!("disk {id}: I/O through {}", block.io_engine());
        self.add_virtio(id, Box::new(block), cfg.pci_segment)?;
        self.keep_image(id, path.to_owned(), cfg.readonly, kept);
        Ok(self.entries.last().expect("just plugged"))
    }

    /// Opens (or adopts) the tap `cfg` names and plugs a virtio-net device for it with id
    /// `id`; returns the entry, the tap's name and the guest's MAC.
    pub fn add_net(
        &mut self,
        id: &str,
        cfg: &NetConfig,
    ) -> Result<(&PciEntry, String, String), PciDeviceError> {
        let pairs = (cfg.num_queues / 2).max(1) as usize;
        let taps = match &cfg.fds {
            Some(fds) if !fds.is_empty() => {
                // Only descriptors handed to Palisade for a device (see `passed_fds`).
                if let Some(n) = fds.iter().find(|&&n| !crate::passed_fds::holds(n)) {
                    return Err(std::io::Error::other(format!(
                        "fd {n} was not passed to Palisade: send tap descriptors with the \
                         request as SCM_RIGHTS ancillary data, or give them with --net fd= \
                         on the command line"
                    ))
                    .into());
                }
                fds.iter()
                    .filter_map(|&n| crate::passed_fds::take(n))
                    .map(Tap::from_fd)
                    .collect::<std::io::Result<Vec<Tap>>>()?
            }
            _ => {
                let name = cfg.tap.as_deref().filter(|n| !n.is_empty());
                let taps = Tap::open(name, pairs).map_err(|e| tap_error(e, TUN_DEVICE))?;
                let parse =
                    |s: &Option<String>| s.as_deref().and_then(|v| v.parse::<Ipv4Addr>().ok());
                if let Some(first) = taps.first() {
                    if let (Some(ip), Some(mask)) = (parse(&cfg.ip), parse(&cfg.mask)) {
                        first.configure(ip, mask)?;
                    }
                    first.up()?;
                }
                taps
            }
        };
        let tap_name = taps
            .first()
            .map(|t| t.name().to_string())
            .unwrap_or_default();
        let mac = match cfg.mac.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => parse_mac(m)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            None => random_mac(),
        };
        let options = NetOptions {
            queue_size: cfg.queue_size,
            csum: cfg.offload_csum,
            tso: cfg.offload_tso,
            ufo: cfg.offload_ufo,
        };
        let mut net = Net::new(taps, mac, options)?;
        // Each direction has buckets of its own, as with Cloud Hypervisor.
        let limits = cfg.rate_limiter_config.as_ref();
        let rx = crate::rate_limits::own_limiter(limits)?;
        let tx = crate::rate_limits::own_limiter(limits)?;
        if let (Some(rx), Some(tx)) = (rx, tx) {
            net.set_rate_limiters(rx, tx);
        }
        let entry = self.add_virtio(id, Box::new(net), cfg.pci_segment)?;
        Ok((entry, tap_name, format_mac(&mac)))
    }

    /// Plugs a virtio device model with id `id` on PCI segment `segment`.
    pub fn add_virtio(
        &mut self,
        id: &str,
        model: Box<dyn VirtioDevice>,
        segment: u16,
    ) -> Result<&PciEntry, PciDeviceError> {
        let setup = self.worker_setup.clone();
        self.add_virtio_confined(id, model, segment, setup)
    }

    /// As [`Self::add_virtio`], with a worker that confines itself with `setup` (a device
    /// whose work needs calls others may not make).
    pub fn add_virtio_confined(
        &mut self,
        id: &str,
        model: Box<dyn VirtioDevice>,
        segment: u16,
        setup: ThreadSetup,
    ) -> Result<&PciEntry, PciDeviceError> {
        self.check_segment(segment)?;
        let device = VirtioPci::new(model, self.mem.clone(), self.routes.clone())?;
        // Thread names hold 15 bytes.
        let name: String = format!("dev-{id}").chars().take(15).collect();
        let worker = DeviceWorker::start(&name, device.handle(), setup)?;
        let device = Arc::new(Mutex::new(device));
        let bar_size = devices::virtio::pci::BAR0_SIZE;
        self.plug(
            id,
            device.clone(),
            Some((device, worker)),
            segment,
            bar_size,
        )
    }

    /// Refuses a PCI segment the VM does not have.
    fn check_segment(&self, segment: u16) -> Result<(), PciDeviceError> {
        if usize::from(segment) >= self.segments.len() {
            return Err(std::io::Error::other(format!(
                "PCI segment {segment} does not exist: the VM has {}",
                self.segments.len()
            ))
            .into());
        }
        Ok(())
    }

    /// Plugs a plain PCI function (one 64-bit BAR 0 of `bar_size` bytes) with id `id` on
    /// PCI segment 0.
    pub fn add_function(
        &mut self,
        id: &str,
        device: SharedPciDevice,
        bar_size: u64,
    ) -> Result<&PciEntry, PciDeviceError> {
        self.plug(id, device, None, 0, bar_size)
    }

    fn plug(
        &mut self,
        id: &str,
        shared: SharedPciDevice,
        virtio: Option<(Arc<Mutex<VirtioPci>>, DeviceWorker)>,
        segment: u16,
        size: u64,
    ) -> Result<&PciEntry, PciDeviceError> {
        let (virtio, worker) = virtio.unzip();
        let seg = &mut self.segments[usize::from(segment)];
        let bar = seg
            .mmio64
            .allocate(size, size, AllocPolicy::FirstMatch)
            .map_err(|_| PciDeviceError::NoBarSpace)?;
        let slot = match seg
            .root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(self.planned.get(id).copied(), shared.clone())
        {
            Ok(slot) => slot,
            Err(e) => {
                let _ = seg.mmio64.free(&bar);
                return Err(e.into());
            }
        };
        shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_bar_address(0, bar.start());
        let region = Arc::new(Mutex::new(BarRegion::new(shared.clone(), 0)));
        if let Err(e) = self.mmio.insert(region, bar.start(), size) {
            seg.root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(slot);
            let _ = seg.mmio64.free(&bar);
            return Err(e.into());
        }
        self.mapper.ioevents(&shared, 0, bar.start(), true);
        self.entries.push(PciEntry {
            id: id.to_string(),
            segment,
            slot,
            pci: shared,
            virtio,
            bar,
            _worker: worker,
            memory: None,
        });
        Ok(self.entries.last().expect("just pushed"))
    }

    /// Takes the device with `id` off the bus and frees its resources.
    pub fn remove(&mut self, id: &str) -> Option<PciEntry> {
        let index = self.entries.iter().position(|e| e.id == id)?;
        self.forget_image(id);
        let mut entry = self.entries.remove(index);
        self.release_memory(&mut entry);
        let shared = entry.pci.clone();
        // Collected first: moving ioeventfds locks the device again.
        let bars = shared.lock().unwrap_or_else(|e| e.into_inner()).bars();
        for (bar, b) in bars {
            self.mapper.ioevents(&shared, bar, b.address, false);
            self.mmio.remove(b.address);
        }
        let seg = &mut self.segments[usize::from(entry.segment)];
        seg.root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(entry.slot);
        let _ = seg.mmio64.free(&entry.bar);
        Some(entry)
    }

    /// Unbinds every irqfd from `vm`, a machine going away.
    pub fn detach(&self, vm: &VmFd) {
        self.routes.detach(vm);
    }

    /// Registers every device's interrupt routes, irqfds and ioeventfds with the (new) KVM
    /// VM.
    pub fn attach(&self, vm: &VmFd) {
        self.routes.attach(vm);
        for e in &self.entries {
            if let Some(memory) = &e.memory {
                if let Err(e) = memory.map(vm) {
                    log::error!("device memory slot {}: {e}", memory.slot);
                }
            }
            let shared = e.pci.clone();
            let bars = shared.lock().unwrap_or_else(|e| e.into_inner()).bars();
            for (bar, b) in bars {
                self.mapper.ioevents(&shared, bar, b.address, true);
            }
        }
    }

    /// Resets every device (VM reset): BARs go back where the VMM placed them.
    pub fn reset(&self) {
        for e in &self.entries {
            let shared = e.pci.clone();
            let before = shared.lock().unwrap_or_else(|e| e.into_inner()).bars();
            shared.lock().unwrap_or_else(|e| e.into_inner()).reset();
            let after = shared.lock().unwrap_or_else(|e| e.into_inner()).bars();
            for ((index, old), (_, new)) in before.into_iter().zip(after) {
                if old.address != new.address {
                    self.mapper.bar_moved(
                        &shared,
                        BarMove {
                            index,
                            from: old.address,
                            to: new.address,
                            size: new.size,
                        },
                    );
                }
            }
        }
    }
}

/// Explains a failure to open `/dev/net/tun` under Landlock.
fn tap_error(e: std::io::Error, tun: &str) -> PciDeviceError {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        if let Some(why) = sandbox::explain_denial(Path::new(tun), sandbox::Access::ReadWrite) {
            return PciDeviceError::Denied(format!("net {why}"));
        }
    }
    PciDeviceError::Io(e)
}

/// Opens a disk image for a virtio-blk device, and locks it.
pub fn open_disk(
    path: &Path,
    readonly: bool,
    direct: bool,
) -> Result<std::fs::File, PciDeviceError> {
    let file = open_unlocked(path, readonly, direct)?;
    lock_image(&file, readonly).map_err(|(holder, kind)| PciDeviceError::Locked {
        path: path.to_owned(),
        holder,
        kind,
    })?;
    Ok(file)
}

/// Opens a disk image without locking it.
fn open_unlocked(
    path: &Path,
    readonly: bool,
    direct: bool,
) -> Result<std::fs::File, PciDeviceError> {
    let mut options = OpenOptions::new();
    options.read(true).write(!readonly);
    let flags = if direct { libc::O_DIRECT } else { 0 };
    let file = crate::files::open(path, &mut options, flags, crate::files::Kind::Disk).map_err(
        |source| {
            let access = if readonly {
                sandbox::Access::Read
            } else {
                sandbox::Access::ReadWrite
            };
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                if let Some(why) = sandbox::explain_denial(path, access) {
                    return PciDeviceError::Denied(format!("disk {why}"));
                }
            }
            PciDeviceError::Open {
                path: path.to_owned(),
                source,
            }
        },
    )?;
    Ok(file)
}

/// Locks a disk image as Cloud Hypervisor and QEMU do, with an open-file-description lock
/// over the whole file: shared for a read-only disk, exclusive otherwise, so an image has one
/// writer at most, in this VM or any other process that locks. The lock goes with the last
/// descriptor of this open. On a conflict, who holds the lock and its kind.
fn lock_image(file: &std::fs::File, readonly: bool) -> Result<(), (String, &'static str)> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock is plain data.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads `lock`, which outlives the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
        // A file system without locks: nothing to enforce, as with Cloud Hypervisor.
        log::warn!("cannot lock a disk image: {e}");
        return Ok(());
    }
    // SAFETY: F_OFD_GETLK fills `lock` with the conflicting lock.
    let known = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) } == 0;
    let kind = if known && lock.l_type == libc::F_RDLCK as libc::c_short {
        "read"
    } else {
        "write"
    };
    // Open-file-description locks carry no process (-1); classic ones do.
    let holder = if known && lock.l_pid > 0 {
        format!("process {}", lock.l_pid)
    } else {
        "another disk (in this VM or another process)".to_string()
    };
    Err((holder, kind))
}
