//! The devices of one VM: the buses, the serial port and the legacy power controls, with the
//! host endpoints they use and the interrupts they raise.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use devices::cpu_hotplug::CpuHotplugController;
use devices::hotplug::{
    GenericEventDevice, PciHotplugController, GED_EVENT_CPU_HOTPLUG, GED_EVENT_MEMORY_HOTPLUG,
    GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON,
};
use devices::ioapic::{IoApic, IoApicPin, IOAPIC_BASE, IOAPIC_SIZE};
use devices::legacy::{AcpiPowerControl, ACPI_PM_BASE, ACPI_PM_LEN, I8042, I8042_BASE, I8042_LEN};
use devices::memory_hotplug::MemoryHotplugController;
use devices::serial::{SerialPort, COM1_BASE, COM1_IRQ, COM1_LEN};
use devices::{Bus, BusError};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::console::{self, ConsoleError, ConsoleInput};
use crate::pci_devices::{CurrentVm, PciDeviceError, PciDevices};
use crate::x86_64::layout;

mod snapshot;
pub use snapshot::PlatformState;

/// Errors setting up devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The serial port's host side.
    #[error("serial port: {0}")]
    Serial(#[source] ConsoleError),
    /// The virtio console's host side.
    #[error("console: {0}")]
    Console(#[source] ConsoleError),
    /// The entropy source could not be opened.
    #[error("rng source {path}: {source}")]
    Rng {
        /// The source.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// Standard input could not be shared with the virtio console.
    #[error("console: cannot read standard input: {0}")]
    Stdin(std::io::Error),
    /// Two devices claim the same addresses.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// A PCI device could not be plugged.
    #[error(transparent)]
    Pci(#[from] PciDeviceError),
}

/// Requests the guest makes of the machine, as eventfds the VMM polls.
pub struct MachineEvents {
    /// The guest asked for a reset.
    pub reset: EventFd,
    /// The guest powered off.
    pub poweroff: EventFd,
}

impl MachineEvents {
    /// Fresh, non-blocking eventfds.
    pub fn new() -> std::io::Result<Self> {
        Ok(MachineEvents {
            reset: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            poweroff: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }
}

/// The pvpanic device's id.
pub const PVPANIC_ID: &str = "_pvpanic0";

fn eventfd() -> Result<EventFd, DeviceError> {
    EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(DeviceError::EventFd)
}

fn clone_evt(evt: &EventFd) -> Result<EventFd, DeviceError> {
    evt.try_clone().map_err(DeviceError::EventFd)
}

/// The serial port with its host input.
pub struct SerialConsole {
    /// The UART.
    pub port: Arc<Mutex<SerialPort>>,
    /// Host input to forward to the guest, if any.
    pub input: Option<ConsoleInput>,
    /// Signalled when the guest has drained the UART's receive FIFO.
    pub input_drained: EventFd,
    _pty_slave: Option<std::fs::File>,
}

/// The watchdog (`--watchdog`): the IB700's deadline, the eventfd its writes signal, and the
/// VMM thread's timer for the deadline.
pub struct Watchdog {
    /// The deadline the guest keeps moving.
    pub state: Arc<devices::watchdog::WatchdogState>,
    /// Signalled by each start, pet or stop.
    pub pet_evt: EventFd,
    timer: Mutex<vmm_sys_util::timerfd::TimerFd>,
}

impl Watchdog {
    /// The timer's descriptor.
    pub fn timer_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.timer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_raw_fd()
    }

    /// Sets the timer to the guest's deadline (or stops it).
    pub fn arm(&self) {
        let mut timer = self.timer.lock().unwrap_or_else(|e| e.into_inner());
        let result = match self.state.deadline() {
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                // A zero duration would disarm the timer: fire at once instead.
                timer.reset(left.max(std::time::Duration::from_millis(1)), None)
            }
            None => timer.clear(),
        };
        if let Err(e) = result {
            log::warn!("watchdog: cannot set its timer: {e}");
        }
    }

    /// Takes the timer's expiry.
    pub fn consume_timer(&self) {
        let fd = self.timer_fd();
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count` from the timer's non-blocking descriptor.
        unsafe { libc::read(fd, count.as_mut_ptr().cast(), count.len()) };
    }
}

/// The id of the memory balloon (`--balloon`), as Cloud Hypervisor names it.
pub const BALLOON_ID: &str = "_balloon0";

/// All devices of a VM.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// The I/O APIC legacy interrupts go through.
    pub ioapic: Arc<Mutex<IoApic>>,
    vm: Arc<CurrentVm>,
    /// The PCI bus and its devices.
    pub pci: PciDevices,
    ged: Arc<Mutex<GenericEventDevice>>,
    hotplug: Arc<Mutex<PciHotplugController>>,
    cpu_hotplug: Arc<Mutex<CpuHotplugController>>,
    ejected_vcpus: Arc<Mutex<VecDeque<u8>>>,
    memory_hotplug: Arc<Mutex<MemoryHotplugController>>,
    /// Signalled when the guest ejected a hot-plugged device or vCPU.
    pub eject_evt: EventFd,
    ejected: Arc<Mutex<VecDeque<(u16, u8)>>>,
    /// COM1, unless the serial port is off.
    pub serial: Option<SerialConsole>,
    /// The pseudo-terminal of the serial port in `pty` mode.
    pub serial_pty: Option<std::path::PathBuf>,
    /// The pseudo-terminal of the virtio console in `pty` mode.
    pub console_pty: Option<std::path::PathBuf>,
    /// Whether the virtio console reads Palisade's standard input.
    pub console_on_stdin: bool,
    /// Each network device's id, tap name and guest MAC, as created.
    pub net_names: Vec<(String, String, String)>,
    /// The watchdog, if the VM has one.
    pub watchdog: Option<Watchdog>,
    /// What the pvpanic device (`--pvpanic`) records, if the VM has one.
    pub pvpanic: Option<Arc<devices::pvpanic::PanicEvents>>,
    // Held open so the console's pty master never reports a hang-up.
    _console_pty_slave: Option<std::fs::File>,
}

impl DeviceManager {
    /// Opens the host endpoints of the devices `cfg` asks for and places the devices on the
    /// buses. Nothing here touches KVM, so it may run before the VM exists.
    pub fn new(
        cfg: &config::VmConfig,
        events: &MachineEvents,
        ioapic_id: u8,
        mem: &GuestMemoryMmap,
        mmio64_start: u64,
        worker_setup: devices::virtio::worker::ThreadSetup,
        placement: crate::pci_devices::Placement,
    ) -> Result<Self, DeviceError> {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let vm = Arc::new(CurrentVm::default());
        let ioapic = Arc::new(Mutex::new(IoApic::new(ioapic_id, vm.clone())));
        mmio.insert(ioapic.clone(), IOAPIC_BASE, IOAPIC_SIZE)?;
        let ged = Arc::new(Mutex::new(GenericEventDevice::new(Arc::new(
            IoApicPin::new(ioapic.clone(), layout::ACPI_GED_IRQ as usize),
        ))));
        mmio.insert(ged.clone(), layout::ACPI_GED_START, layout::ACPI_GED_SIZE)?;
        let eject_evt = eventfd()?;
        let segments = cfg.num_pci_segments();
        let hotplug = PciHotplugController::new(segments, clone_evt(&eject_evt)?);
        let ejected = hotplug.ejected();
        let hotplug = Arc::new(Mutex::new(hotplug));
        mmio.insert(
            hotplug.clone(),
            layout::PCI_HOTPLUG_START,
            layout::PCI_HOTPLUG_SIZE,
        )?;
        let max_vcpus = cfg.cpus.max_vcpus.max(cfg.cpus.boot_vcpus);
        let cpu_hotplug =
            CpuHotplugController::new(max_vcpus, cfg.cpus.boot_vcpus, clone_evt(&eject_evt)?);
        let ejected_vcpus = cpu_hotplug.ejected();
        let cpu_hotplug = Arc::new(Mutex::new(cpu_hotplug));
        mmio.insert(
            cpu_hotplug.clone(),
            layout::CPU_HOTPLUG_START,
            layout::CPU_HOTPLUG_SIZE,
        )?;
        let memory_hotplug = Arc::new(Mutex::new(MemoryHotplugController::new()));
        mmio.insert(
            memory_hotplug.clone(),
            layout::MEMORY_HOTPLUG_START,
            layout::MEMORY_HOTPLUG_SIZE,
        )?;
        let mut pci = PciDevices::new(
            &pio,
            &mmio,
            vm.clone(),
            mem.clone(),
            mmio64_start,
            &cfg.pci_aperture_weights(),
            worker_setup,
            crate::rate_limits::RateLimits::new(cfg),
        )?;
        pci.plan(placement);
        pio.insert(
            Arc::new(Mutex::new(I8042::new(clone_evt(&events.reset)?))),
            I8042_BASE,
            I8042_LEN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(AcpiPowerControl::new(
                clone_evt(&events.reset)?,
                clone_evt(&events.poweroff)?,
            ))),
            ACPI_PM_BASE,
            ACPI_PM_LEN,
        )?;

        let mut serial = None;
        let mut serial_pty = None;
        if let Some(endpoint) = console::open(&cfg.serial).map_err(DeviceError::Serial)? {
            let input_drained = eventfd()?;
            let port = SerialPort::new(
                Arc::new(IoApicPin::new(ioapic.clone(), COM1_IRQ as usize)),
                clone_evt(&input_drained)?,
                endpoint.output,
            )
            .map_err(DeviceError::EventFd)?;
            let port = Arc::new(Mutex::new(port));
            pio.insert(port.clone(), COM1_BASE, COM1_LEN)?;
            serial_pty = endpoint.pty_path;
            serial = Some(SerialConsole {
                port,
                input: endpoint.input,
                input_drained,
                _pty_slave: endpoint.pty_slave,
            });
        }
        let mut manager = DeviceManager {
            pio,
            mmio,
            ioapic,
            vm,
            pci,
            ged,
            hotplug,
            cpu_hotplug,
            ejected_vcpus,
            memory_hotplug,
            eject_evt,
            ejected,
            serial,
            serial_pty,
            console_pty: None,
            console_on_stdin: false,
            net_names: Vec::new(),
            watchdog: None,
            pvpanic: None,
            _console_pty_slave: None,
        };
        if cfg.serial.mode == config::ConsoleOutputMode::Tty
            && cfg.console.mode == config::ConsoleOutputMode::Tty
        {
            log::warn!(
                "the serial port and the virtio console both use the terminal: both write to it, \
                 and input goes to the serial port"
            );
        }
        manager.add_console(
            &cfg.console,
            cfg.serial.mode == config::ConsoleOutputMode::Tty,
        )?;
        for (index, disk) in cfg.disks.iter().flatten().enumerate() {
            let id = disk.id.clone().unwrap_or_else(|| format!("_disk{index}"));
            manager.pci.add_disk(&id, disk)?;
        }
        for (index, net) in cfg.net.iter().flatten().enumerate() {
            let id = net.id.clone().unwrap_or_else(|| format!("_net{index}"));
            let (_, tap, mac) = manager.pci.add_net(&id, net)?;
            manager.net_names.push((id, tap, mac));
        }
        for (index, pmem) in cfg.pmem.iter().flatten().enumerate() {
            let id = pmem.id.clone().unwrap_or_else(|| format!("_pmem{index}"));
            manager.pci.add_pmem(&id, pmem)?;
        }
        for (index, fs) in cfg.fs.iter().flatten().enumerate() {
            let id = fs.id.clone().unwrap_or_else(|| format!("_fs{index}"));
            manager.pci.add_fs(&id, fs)?;
        }
        if let Some(vsock) = &cfg.vsock {
            let id = vsock.id.clone().unwrap_or_else(|| "_vsock0".into());
            manager.pci.add_vsock(&id, vsock)?;
        }
        // Like Cloud Hypervisor, every VM has an entropy device.
        let source = crate::files::open_read(&cfg.rng.src, crate::files::Kind::Source).map_err(
            |source| DeviceError::Rng {
                path: cfg.rng.src.clone(),
                source,
            },
        )?;
        manager.pci.add_virtio(
            "_rng0",
            Box::new(devices::virtio::rng::Rng::new(source)),
            cfg.rng.pci_segment,
        )?;
        if cfg.watchdog {
            let pet_evt = eventfd()?;
            let ib700 = devices::watchdog::Ib700::new(clone_evt(&pet_evt)?);
            let state = ib700.state();
            manager.pio.insert(
                Arc::new(Mutex::new(ib700)),
                devices::watchdog::WATCHDOG_BASE,
                devices::watchdog::WATCHDOG_LEN,
            )?;
            let timer = vmm_sys_util::timerfd::TimerFd::new()
                .map_err(|e| DeviceError::EventFd(std::io::Error::from_raw_os_error(e.errno())))?;
            // SAFETY: F_SETFL on the timer's own descriptor; no memory is passed.
            unsafe {
                libc::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(&timer),
                    libc::F_SETFL,
                    libc::O_NONBLOCK,
                )
            };
            manager.watchdog = Some(Watchdog {
                state,
                pet_evt,
                timer: Mutex::new(timer),
            });
        }
        if cfg.pvpanic {
            let device = devices::pvpanic::PvPanic::new(eventfd()?);
            manager.pvpanic = Some(device.events());
            let bar = devices::pvpanic::BAR_SIZE;
            manager
                .pci
                .add_function(PVPANIC_ID, Arc::new(Mutex::new(device)), bar)?;
        }
        if let Some(b) = &cfg.balloon {
            let options = devices::virtio::balloon::BalloonOptions {
                size: b.size,
                deflate_on_oom: b.deflate_on_oom,
                free_page_reporting: b.free_page_reporting,
            };
            let balloon = devices::virtio::balloon::Balloon::new(options);
            manager.pci.add_virtio(BALLOON_ID, Box::new(balloon), 0)?;
        }
        Ok(manager)
    }

    fn add_console(
        &mut self,
        cfg: &config::ConsoleConfig,
        cfg_serial_tty: bool,
    ) -> Result<(), DeviceError> {
        let Some(endpoint) = console::open(cfg).map_err(DeviceError::Console)? else {
            return Ok(());
        };
        let input: Option<OwnedFd> = match endpoint.input {
            // With the serial port on the terminal too, both write to it and the serial port
            // keeps its input (as Cloud Hypervisor does; one reader per terminal).
            Some(ConsoleInput::Stdin) if cfg_serial_tty => None,
            Some(ConsoleInput::Stdin) => {
                self.console_on_stdin = true;
                Some(
                    std::io::stdin()
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(DeviceError::Stdin)?,
                )
            }
            Some(ConsoleInput::Pty(file)) => Some(OwnedFd::from(file)),
            // Validation keeps sockets to the serial port.
            Some(ConsoleInput::Socket(_)) | None => None,
        };
        self.console_pty = endpoint.pty_path;
        self._console_pty_slave = endpoint.pty_slave;
        let model = devices::virtio::console::Console::new(endpoint.output, input);
        self.pci
            .add_virtio("_console0", Box::new(model), cfg.pci_segment)?;
        Ok(())
    }

    /// Delivers the devices' interrupts and notifications into `vm` (a new machine), or
    /// nowhere.
    pub fn attach(&self, vm: Option<Arc<VmFd>>) {
        if let Some(old) = self.vm.get() {
            self.pci.detach(&old);
        }
        self.vm.set(vm.clone());
        if let Some(vm) = vm {
            self.pci.attach(&vm);
        }
    }

    /// Tells the guest that `slot` of `segment` was plugged in.
    pub fn announce_plugged(&self, segment: u16, slot: u8) {
        self.hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plugged(segment, slot);
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(GED_EVENT_PCI_HOTPLUG);
    }

    /// Presses the power button: the guest's ACPI notifies `\_SB.PWRB`.
    pub fn press_power_button(&self) {
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(GED_EVENT_POWER_BUTTON);
    }

    /// Asks the guest to release `slot` of `segment`.
    pub fn request_eject(&self, segment: u16, slot: u8) {
        self.hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request_eject(segment, slot);
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(GED_EVENT_PCI_HOTPLUG);
    }

    /// Tells the guest that vCPU `index` was added.
    pub fn announce_vcpu(&self, index: u8) {
        self.cpu_hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plugged(index);
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(GED_EVENT_CPU_HOTPLUG);
    }

    /// Asks the guest to give up vCPU `index`.
    pub fn request_vcpu_removal(&self, index: u8) {
        self.cpu_hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request_removal(index);
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(GED_EVENT_CPU_HOTPLUG);
    }

    /// Memory hot-plug slots still free.
    pub fn free_memory_slots(&self) -> usize {
        self.memory_hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free_slots()
    }

    /// Describes `length` bytes of hot-plugged memory at `base` to the guest; tells a
    /// running one (`notify`) at once. False when no slot is free.
    pub fn announce_memory(&self, base: u64, length: u64, notify: bool) -> bool {
        let plugged = self
            .memory_hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plug(base, length)
            .is_some();
        if plugged && notify {
            self.ged
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .notify(GED_EVENT_MEMORY_HOTPLUG);
        }
        plugged
    }

    /// Guest memory grew: every device reaches the guest through `mem` from now on.
    pub fn set_memory(&mut self, mem: &GuestMemoryMmap) {
        self.pci.set_memory(mem);
    }

    /// The vCPUs the guest has ejected since the last call.
    pub fn take_ejected_vcpus(&self) -> Vec<u8> {
        self.ejected_vcpus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// The slots (segment, slot) the guest has ejected since the last call.
    pub fn take_ejected(&self) -> Vec<(u16, u8)> {
        let _ = self.eject_evt.read();
        self.ejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// Tells the vCPU hot-plug controller that the machine starts with `boot_vcpus`.
    pub fn power_on_vcpus(&self, boot_vcpus: u8) {
        self.cpu_hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset(boot_vcpus);
    }

    /// Returns every device to its power-on state (on reboot).
    pub fn reset(&self) {
        if let Some(w) = &self.watchdog {
            // A rebooted guest starts its watchdog again if it wants one.
            w.state.stop();
            w.arm();
        }
        self.memory_hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        self.ioapic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        self.hotplug
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        self.pci.reset();
        if let Some(serial) = &self.serial {
            let mut port = serial.port.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = port.reset() {
                log::warn!("serial reset: {e}");
            }
        }
    }

    /// Hands bytes from the host to the serial port; returns how many it took.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        match &self.serial {
            Some(s) => s
                .port
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(bytes),
            None => 0,
        }
    }

    /// Traffic counters of each device, by device name, for `vm.counters`.
    pub fn counters(&self) -> serde_json::Value {
        let mut all = serde_json::Map::new();
        for e in self.pci.entries() {
            let Some(virtio) = &e.virtio else {
                continue;
            };
            let device = virtio.lock().unwrap_or_else(|e| e.into_inner());
            let mut c = device.device().counters();
            c.insert("interrupts".into(), device.interrupts_delivered().into());
            all.insert(e.id.clone(), serde_json::Value::Object(c));
        }
        if let Some(serial) = &self.serial {
            let c = serial
                .port
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .counters();
            let get =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            all.insert(
                "serial".into(),
                serde_json::json!({
                    "tx_bytes": get(&c.tx_bytes),
                    "tx_lost_bytes": get(&c.tx_lost_bytes),
                    "rx_bytes": get(&c.rx_bytes),
                }),
            );
        }
        serde_json::Value::Object(all)
    }

    /// Whether the serial port can take host input now.
    pub fn serial_wants_input(&self) -> bool {
        self.serial.as_ref().is_some_and(|s| {
            s.port
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .wants_input()
        })
    }
}
