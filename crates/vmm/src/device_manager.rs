//! The devices of one VM: the buses, the serial port and the legacy power controls, with the
//! host endpoints they use and the interrupts they raise.

use std::sync::{Arc, Mutex};

use std::sync::RwLock;

use devices::ioapic::{IoApic, IoApicPin, MsiSink, IOAPIC_BASE, IOAPIC_SIZE};
use devices::legacy::{AcpiPowerControl, ACPI_PM_BASE, ACPI_PM_LEN, I8042, I8042_BASE, I8042_LEN};
use devices::serial::{SerialPort, COM1_BASE, COM1_IRQ, COM1_LEN};
use devices::{Bus, BusError};
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::console::{self, ConsoleError, ConsoleInput};

/// Errors setting up devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The serial port's host side.
    #[error("serial port: {0}")]
    Serial(#[source] ConsoleError),
    /// The virtio console is not available yet.
    #[error("--console {0:?}: the virtio console is not supported yet; use --console off")]
    ConsoleUnsupported(config::ConsoleOutputMode),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// Two devices claim the same addresses.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
}

/// Sends MSIs into whichever KVM VM currently runs the guest (a reboot builds a new one).
#[derive(Default)]
pub struct KvmMsi {
    vm: RwLock<Option<Arc<VmFd>>>,
}

impl KvmMsi {
    /// Points delivery at `vm`, or nowhere.
    pub fn set_vm(&self, vm: Option<Arc<VmFd>>) {
        *self.vm.write().unwrap_or_else(|e| e.into_inner()) = vm;
    }
}

impl MsiSink for KvmMsi {
    fn send_msi(&self, address: u64, data: u32) -> std::io::Result<()> {
        let vm = self.vm.read().unwrap_or_else(|e| e.into_inner());
        let Some(vm) = vm.as_ref() else {
            // No machine (stopped): the interrupt has nobody to go to.
            return Ok(());
        };
        let msi = kvm_msi {
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
            reset: EventFd::new(EFD_NONBLOCK)?,
            poweroff: EventFd::new(EFD_NONBLOCK)?,
        })
    }
}

fn eventfd() -> Result<EventFd, DeviceError> {
    EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)
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

/// All devices of a VM.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// The I/O APIC legacy interrupts go through.
    pub ioapic: Arc<Mutex<IoApic>>,
    msi: Arc<KvmMsi>,
    /// COM1, unless the serial port is off.
    pub serial: Option<SerialConsole>,
    /// The pseudo-terminal of the serial port in `pty` mode.
    pub serial_pty: Option<std::path::PathBuf>,
}

impl DeviceManager {
    /// Opens the host endpoints of the devices `cfg` asks for and places the devices on the
    /// buses. Nothing here touches KVM, so it may run before the VM exists.
    pub fn new(
        cfg: &config::VmConfig,
        events: &MachineEvents,
        ioapic_id: u8,
    ) -> Result<Self, DeviceError> {
        if cfg.console.mode != config::ConsoleOutputMode::Off {
            return Err(DeviceError::ConsoleUnsupported(cfg.console.mode));
        }
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let msi = Arc::new(KvmMsi::default());
        let ioapic = Arc::new(Mutex::new(IoApic::new(ioapic_id, msi.clone())));
        mmio.insert(ioapic.clone(), IOAPIC_BASE, IOAPIC_SIZE)?;
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
        Ok(DeviceManager {
            pio,
            mmio,
            ioapic,
            msi,
            serial,
            serial_pty,
        })
    }

    /// Delivers the devices' interrupts into `vm` (a new machine), or nowhere.
    pub fn attach(&self, vm: Option<Arc<VmFd>>) {
        self.msi.set_vm(vm);
    }

    /// Returns every device to its power-on state (on reboot).
    pub fn reset(&self) {
        self.ioapic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
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
